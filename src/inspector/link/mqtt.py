"""MQTT for MES and dashboards: one JSON message per inspection, a retained status, and a last will.

    <prefix>/<line>/<camera>/result   each inspection's `LineResult.to_json()`, QoS 1, not retained
    <prefix>/<line>/status            retained: {"status": "online", "state": ..., ...} while the service runs;
                                      exactly `OFFLINE` after a clean stop, and as the last will the broker
                                      publishes when the connection dies without a disconnect

The paho client runs its network loop on its own thread and reconnects with a doubling wait. `publish` only
appends to a bounded queue (oldest dropped, counted as failed) and wakes the sink's worker thread, which hands
results to paho while connected, at most `WINDOW` unacknowledged at a time. Paho keeps those few and re-sends
them after a reconnect; everything else waits in the sink's queue, where the bound applies. So a dead broker
costs memory for `queue` results and never a moment of the inspection's time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlunsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from inspector.link.result import LineResult, LineStatus
from inspector.link.settings import MqttSettings
from inspector.link.sink import Backlog, LinkError, Sink, SinkHealth, endpoint

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    from inspector.link.hub import LinkHub

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
DEFAULT_PREFIX = "inspector"
OFFLINE = b'{"status": "offline"}'  # the last will and the clean stop's status, byte for byte
QOS = 1
WINDOW = 20  # results handed to paho and not yet acknowledged (paho's own in-flight default)
STATUS_POLL_S = 1.0
STOP_FLUSH_S = 2.0  # how long stop waits for the broker to acknowledge what is left
_TOPIC_UNSAFE = str.maketrans({"+": "_", "#": "_", "/": "_", "\0": "_"})


def topic_level(value: str | None, default: str) -> str:
    """One topic level from a field a camera sends: wildcards and separators would change the topic's meaning."""
    return (value or "").translate(_TOPIC_UNSAFE) or default


def status_payload(status: LineStatus) -> bytes:
    """The retained online status. `busy` is left out: it flips with every inspection and would make the
    retained message churn."""
    return json.dumps(
        {
            "status": "online",
            "state": status.state,
            "models_loaded": status.models_loaded,
            "error": status.error,
            "recipes": list(status.recipes),
            "selected_recipe": status.selected_recipe,
            "drift": status.drift,
        }
    ).encode()


class MqttSink(Sink):
    kind = "mqtt"

    def __init__(self, settings: MqttSettings) -> None:
        if not settings.url:
            raise LinkError("MQTT needs a broker URL: mqtt://[user@]host[:port]/prefix")
        parts, host, port = endpoint(settings.url, DEFAULT_PORTS)
        prefix = unquote(parts.path).strip("/") or DEFAULT_PREFIX
        if any(c in prefix for c in "+#\0") or prefix.startswith("$") or "//" in prefix:
            raise LinkError(f"{settings.url!r}: the topic prefix {prefix!r} may not hold +, #, empty levels or start $")
        if settings.reconnect_max_s < settings.reconnect_min_s:
            raise LinkError("mqtt.reconnect_max_s must not be below mqtt.reconnect_min_s")
        self.settings = settings
        self.host, self.port, self.tls, self.prefix = host, port, parts.scheme == "mqtts", prefix
        self.user = unquote(parts.username) if parts.username else None
        secret = settings.password.get_secret_value() if settings.password else None
        self._password = secret or (unquote(parts.password) if parts.password else None)
        netloc = parts.netloc.rpartition("@")[2]
        self.name = urlunsplit((parts.scheme, netloc, "/" + prefix, "", ""))
        self.status_topic = f"{prefix}/{topic_level(settings.line, 'line')}/status"

        self._cond = threading.Condition()  # guards the fields below; never held while calling into paho
        self._pending = Backlog(settings.queue, f"MQTT {self.name}")
        self._connected = False
        self._stopping = False
        self._status_due = False  # set on every connect: the broker may have lost the retained status
        self._status_sent = b""
        self._detail = "connecting"
        self._published = self._failed = 0
        self._inflight: list[mqtt.MQTTMessageInfo] = []  # handed to paho; only the worker adds and prunes
        self._client: mqtt.Client | None = None
        self._worker: threading.Thread | None = None
        self._hub: LinkHub | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------------------

    def start(self, hub: LinkHub) -> None:
        """Set up the client and return: the connection is made (and remade) on paho's thread, so a broker that
        is down at start-up shows in the health and the results wait in the queue."""
        self._hub = hub
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.settings.client_id, protocol=mqtt.MQTTv311)
        if self.user:
            client.username_pw_set(self.user, self._password)
        if self.tls:
            ca_file = self.settings.ca_file
            try:
                client.tls_set(ca_certs=str(ca_file) if ca_file else None)
            except (OSError, ValueError) as exc:  # missing or unreadable CA file
                raise LinkError(f"MQTT broker {self.name}: mqtt.ca_file {ca_file}: {exc}") from exc
        client.will_set(self.status_topic, OFFLINE, qos=QOS, retain=True)
        client.reconnect_delay_set(self.settings.reconnect_min_s, self.settings.reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        try:
            client.connect_async(self.host, self.port, keepalive=self.settings.keepalive_s)
        except ValueError as exc:
            raise LinkError(f"MQTT broker {self.name}: {exc}") from exc
        self._client = client
        client.loop_start()
        self._worker = threading.Thread(target=self._work, name=f"mqtt {self.name}", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Deliver what is left (for at most `STOP_FLUSH_S`), leave the retained status "offline", disconnect."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker:
            self._worker.join(STOP_FLUSH_S + 3)
        client = self._client
        if client is None:
            return
        if self._connected:
            offline = client.publish(self.status_topic, OFFLINE, qos=QOS, retain=True)
            deadline = time.monotonic() + 1.0
            while self._connected and not offline.is_published() and time.monotonic() < deadline:
                time.sleep(0.01)
        client.disconnect()
        client.loop_stop()
        with self._cond:
            lost = self._pending.clear() + self._unacked()
            self._failed += lost
        if lost:
            log.warning("MQTT %s stopped with %d results undelivered", self.name, lost)

    # ---- the inspection path ------------------------------------------------------------------------------------

    def publish(self, result: LineResult) -> None:
        with self._cond:
            self._published += 1
            if self._pending.push(result):
                self._failed += 1
            self._cond.notify_all()

    def health(self) -> SinkHealth:
        with self._cond:
            queued = len(self._pending) + self._unacked()
            detail = self._detail + (f"; {queued} queued" if queued else "")
            return SinkHealth(
                name=self.name,
                kind=self.kind,
                up=self._connected,
                detail=detail,
                published=self._published,
                failed=self._failed,
            )

    def topic(self, result: LineResult) -> str:
        line = topic_level(result.line, topic_level(self.settings.line, "line"))
        camera = topic_level(result.camera, topic_level(self.settings.camera, "camera"))
        return f"{self.prefix}/{line}/{camera}/result"

    # ---- the worker: hands results to paho, keeps the retained status current -----------------------------------

    def _work(self) -> None:
        next_poll = 0.0
        while True:
            with self._cond:
                self._cond.wait_for(self._has_work, timeout=max(0.0, next_poll - time.monotonic()))
                stopping, connected, status_due = self._stopping, self._connected, self._status_due
                self._status_due = False
            self._settle()
            now = time.monotonic()
            if now >= next_poll or status_due:
                if connected:
                    self._send_status(force=status_due)
                next_poll = now + STATUS_POLL_S
            if connected:
                self._hand_over(window=None if stopping else WINDOW)
            if stopping:
                self._await_acks(time.monotonic() + STOP_FLUSH_S)
                return

    def _has_work(self) -> bool:
        """Whether the worker should wake before its next status poll (called holding the lock)."""
        if self._stopping:
            return True
        if not self._connected:
            return False
        return self._status_due or (bool(self._pending) and self._unacked() < WINDOW)

    def _unacked(self) -> int:
        """Results handed to paho that the broker has not acknowledged yet (called holding the lock)."""
        return sum(not info.is_published() for info in self._inflight)

    def _hand_over(self, window: int | None) -> None:
        """Pass queued results to paho while connected, up to `window` unacknowledged (None: all, at stop)."""
        assert self._client is not None
        while True:
            with self._cond:
                if not (self._pending and self._connected) or (window is not None and self._unacked() >= window):
                    return
                result = self._pending.pop()
            payload = json.dumps(result.to_json()).encode()
            info = self._client.publish(self.topic(result), payload, qos=QOS)
            # NO_CONN: the connection dropped just now; paho keeps the message and sends it after the reconnect
            if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                with self._cond:
                    self._inflight.append(info)
            else:
                log.error("MQTT %s refused result %d: %s", self.name, result.sequence, mqtt.error_string(info.rc))
                with self._cond:
                    self._failed += 1

    def _settle(self) -> None:
        """Forget the results the broker acknowledged."""
        with self._cond:
            self._inflight = [info for info in self._inflight if not info.is_published()]

    def _await_acks(self, deadline: float) -> None:
        while self._inflight and self._connected and time.monotonic() < deadline:
            time.sleep(0.01)
            self._settle()

    def _send_status(self, force: bool) -> None:
        """Publish the retained status when it changed (or, `force`, after a connect)."""
        assert self._client is not None and self._hub is not None
        try:
            payload = status_payload(self._hub.status())
        except Exception:  # the service's state could not be read: keep the last one rather than stop the worker
            log.exception("MQTT %s: could not read the service status", self.name)
            return
        if force or payload != self._status_sent:
            self._client.publish(self.status_topic, payload, qos=QOS, retain=True)
            self._status_sent = payload

    # ---- paho callbacks (paho's network thread) -----------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode, props: Properties | None
    ) -> None:
        with self._cond:
            if reason.is_failure:
                self._detail = f"broker {self.host}:{self.port} refused the connection: {reason}"
                log.warning("MQTT %s: %s", self.name, self._detail)
                return
            dropped = self._pending.end_spell()
            if dropped:
                log.warning("MQTT %s: %d results dropped while the broker was away", self.name, dropped)
            self._connected, self._status_due = True, True
            self._detail = f"connected to {self.host}:{self.port}"
            self._cond.notify_all()
        log.info("MQTT %s connected", self.name)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        with self._cond:
            self._detail = (
                f"cannot connect to broker {self.host}:{self.port} (down, unreachable or TLS refused); retrying"
            )

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        with self._cond:
            was_connected, self._connected = self._connected, False
            if self._stopping:
                self._detail = "stopped"
            elif was_connected:
                self._detail = f"lost the broker {self.host}:{self.port} ({reason}); reconnecting"
            self._cond.notify_all()
        if was_connected and not self._stopping:
            log.warning("MQTT %s: %s", self.name, self._detail)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties) -> None:
        with self._cond:
            self._cond.notify_all()
