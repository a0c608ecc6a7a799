"""MQTT against a real broker: Debian's mosquitto, started by the tests on a free loopback port.

A subscriber (paho) checks what MES and dashboards would see: one QoS 1 message per inspection on its topic with
the inspection's values, the retained status, the last will when the service's client dies, and that a broker
outage fails no inspection and loses only what the bounded queue cannot hold.
"""

from __future__ import annotations

import getpass
import json
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from inspector.data import Dataset
from inspector.link.hub import LinkHub
from inspector.link.mqtt import OFFLINE, MqttSink, topic_level
from inspector.link.settings import LinkSettings, MqttSettings
from inspector.link.sink import LinkError
from tests.helpers import StubControls, certificates, free_port, link_health, link_metric, wait_for
from tests.test_service import running, settings_for

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


class Broker:
    """A mosquitto process on a loopback port; `kill` and `start` again keep the port (and, when persistent,
    the sessions and subscriptions, saved on every change so that even SIGKILL keeps them)."""

    def __init__(self, directory: Path, persistent: bool = False, options: tuple[str, ...] = ()) -> None:
        if MOSQUITTO is None:
            pytest.skip("no mosquitto broker: install Debian's mosquitto package (.ci/run does)")
        self.port = free_port()
        self.directory = directory
        self.config = directory / "mosquitto.conf"
        # `user`: run as whoever runs the tests (as root, mosquitto would switch to a user that cannot read tmp)
        lines = [f"listener {self.port} 127.0.0.1", f"user {getpass.getuser()}", *(options or ["allow_anonymous true"])]
        if persistent:
            lines += [
                "persistence true",
                f"persistence_location {directory}/",
                "autosave_on_changes true",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        assert MOSQUITTO is not None
        log = (self.directory / "mosquitto.log").open("ab")
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while True:
            assert self.process.poll() is None, (self.directory / "mosquitto.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not start listening"
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the broker vanishes mid-conversation, as a crashed or powered-off one does."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(5)

    def url(self, prefix: str = "plant1") -> str:
        return f"mqtt://127.0.0.1:{self.port}/{prefix}"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path).start()
    yield b
    if b.process and b.process.poll() is None:
        b.process.terminate()
        b.process.wait(5)


class Subscriber:
    """What MES or a dashboard sees: every message on `topic`, as received."""

    def __init__(self, port: int, topic: str, client_id: str = "", clean: bool = True) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "subscriber not subscribed"

    def next(self, topic: str, timeout: float = 10, where: Any = None) -> mqtt.MQTTMessage:
        """The next message on `topic` (whose JSON satisfies `where`, if given); others are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no message on {topic} within {timeout} s") from None
            if msg.topic == topic and (where is None or where(json.loads(msg.payload))):
                return msg

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def defect(dataset: Dataset) -> bytes:
    return next(s.path for s in dataset.test() if s.defect_type == "hole").read_bytes()


def inspect(client: TestClient, image: bytes, **params: str) -> dict[str, Any]:
    r = client.post("/v1/inspect", files={"image": ("part.png", image, "image/png")}, params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


# ---- results and status -----------------------------------------------------------------------------------------


def test_each_inspection_is_one_qos1_message_with_its_values(
    broker: Broker, service_model_dir: Path, tmp_path: Path, defect: bytes
) -> None:
    sub = Subscriber(broker.port, "plant1/#")
    mqtt_settings = MqttSettings(url=broker.url(), client_id="inspector-results", line="L3", camera="cam0")
    try:
        with running(settings_for(service_model_dir, tmp_path, links=LinkSettings(mqtt=mqtt_settings))) as client:
            online = sub.next("plant1/L3/status", where=lambda s: s["state"] == "Operational")
            assert online.qos == 1
            status = json.loads(online.payload)
            assert status["status"] == "online"
            assert (status["models_loaded"], status["recipes"], status["drift"]) == (True, ["synthetic"], False)

            answer = inspect(client, defect, part_id="P-17", meas_id="M-9", camera="cam/2+#")
            msg = sub.next("plant1/L3/cam_2__/result")  # no line in the request: the configured one
            assert (msg.qos, msg.retain) == (1, False)
            body = json.loads(msg.payload)
            assert body["sequence"] == 1
            assert body["inspection_id"] == answer["id"]
            assert body["verdict"] == answer["verdict"] == "fail"
            assert body["verdict_code"] == 3
            assert body["score"] == answer["score"]
            assert body["threshold"] == answer["threshold"]
            assert (body["part_id"], body["meas_id"], body["camera"]) == ("P-17", "M-9", "cam/2+#")
            largest = max(answer["regions"], key=lambda r: (r["area"], r["peak"]))
            top = body["regions"][0]
            assert [top[k] for k in ("x", "y", "width", "height", "area")] == [
                largest[k] for k in ("x", "y", "width", "height", "area")
            ]
            assert (top["center_x"], top["center_y"]) == (
                largest["x"] + largest["width"] // 2,
                largest["y"] + largest["height"] // 2,
            )
            assert len(body["regions"]) == len(answer["regions"])

            second = inspect(client, defect, line="L4", camera="top")
            nxt = sub.next("plant1/L4/top/result")
            assert json.loads(nxt.payload)["sequence"] == 2  # exactly one message per inspection, nothing between
            assert json.loads(nxt.payload)["inspection_id"] == second["id"]
            results = [m for m in list(sub.messages.queue) if m.topic.endswith("/result")]
            assert results == []

            link = link_health(client, "mqtt")
            assert link["up"] and link["detail"].startswith("connected")
            assert (link["published"], link["failed"], link["name"]) == (2, 0, f"mqtt://127.0.0.1:{broker.port}/plant1")
        stopped = sub.next("plant1/L3/status", where=lambda s: s["status"] == "offline")
        assert stopped.payload == OFFLINE  # a clean stop leaves the same retained form as the last will
    finally:
        sub.close()


DYING_CLIENT = """
import sys, time
from inspector.link.hub import LinkHub
from inspector.link.mqtt import MqttSink
from inspector.link.result import LineStatus
from inspector.link.settings import MqttSettings


class Controls:
    def line_status(self):
        return LineStatus("Operational", True, False, None, ("synthetic",), 0)


sink = MqttSink(MqttSettings(url=sys.argv[1], client_id="dying", line="L1"))
LinkHub([sink], Controls()).start()
while not sink.health().up:
    time.sleep(0.02)
print("connected", flush=True)
time.sleep(60)
"""


def test_last_will_is_offline_when_the_client_dies_without_disconnecting(broker: Broker) -> None:
    sub = Subscriber(broker.port, "plant1/L1/status")
    process = subprocess.Popen([sys.executable, "-c", DYING_CLIENT, broker.url()], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"connected\n"
        online = json.loads(sub.next("plant1/L1/status").payload)
        assert (online["status"], online["state"]) == ("online", "Operational")
        process.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker sees the socket close and sends the will
        process.wait(5)
        will = sub.next("plant1/L1/status", timeout=5)
        assert will.payload == OFFLINE
    finally:
        process.kill()
        sub.close()
    late = Subscriber(broker.port, "plant1/L1/status")  # a dashboard that starts now learns it at once: retained
    try:
        retained = late.next("plant1/L1/status", timeout=5)
        assert (retained.payload, retained.retain) == (OFFLINE, True)
    finally:
        late.close()


# ---- outage -----------------------------------------------------------------------------------------------------


def test_broker_outage_fails_no_inspection_and_the_queue_is_delivered_after_reconnect(
    service_model_dir: Path, tmp_path: Path, defect: bytes
) -> None:
    # A persistent broker and session: the subscriber's subscription survives the restart, so what the service
    # sends after reconnecting reaches it whichever of the two reconnects first.
    broker = Broker(tmp_path, persistent=True).start()
    sub = Subscriber(broker.port, "plant1/+/+/result", client_id="mes", clean=False)
    time.sleep(1.5)  # the broker saves the new subscription (autosave after each change, checked once a second)
    mqtt_settings = MqttSettings(url=broker.url(), client_id="inspector-outage", queue=3, reconnect_max_s=2)
    try:
        with running(settings_for(service_model_dir, tmp_path / "store", links=LinkSettings(mqtt=mqtt_settings))) as c:
            wait_for(lambda: link_health(c, "mqtt")["up"], what="link up")
            inspect(c, defect, part_id="before")
            assert json.loads(sub.next("plant1/line/camera/result").payload)["part_id"] == "before"

            broker.kill()
            wait_for(lambda: not link_health(c, "mqtt")["up"], what="link down")
            ready = c.get("/readyz")
            assert ready.status_code == 200, ready.text  # the service still inspects: ready, the link named down
            assert f"link {broker.url()} down: " in ready.json()["detail"]
            assert link_metric(c, "inspector_link_up", "mqtt") == 0

            took = []
            for i in range(5):
                started = time.perf_counter()
                inspect(c, defect, part_id=f"during-{i}")
                took.append(time.perf_counter() - started)
            assert max(took) < 3, took  # answered at inference speed; nothing waits for the broker
            link = link_health(c, "mqtt")
            assert (link["published"], link["failed"]) == (6, 2)  # queue of 3: the two oldest dropped, counted
            assert "3 queued" in link["detail"]
            assert link_metric(c, "inspector_link_failed", "mqtt") == 2
            time.sleep(2.5)  # a few reconnect attempts against the dead port: the detail says so
            assert "retrying" in link_health(c, "mqtt")["detail"]

            broker.start()  # same port; reconnects within reconnect_max_s
            got = [json.loads(sub.next("plant1/line/camera/result", timeout=15).payload) for _ in range(3)]
            assert [g["part_id"] for g in got] == ["during-2", "during-3", "during-4"]
            assert [g["sequence"] for g in got] == [4, 5, 6]
            wait_for(lambda: link_health(c, "mqtt")["up"], what="link up again")
            assert "down" not in c.get("/readyz").json()["detail"]
            assert link_metric(c, "inspector_link_up", "mqtt") == 1
    finally:
        sub.close()
        if broker.process and broker.process.poll() is None:
            broker.process.terminate()
            broker.process.wait(5)


def test_a_dead_broker_at_start_up_neither_blocks_nor_stops_the_service(tmp_path: Path) -> None:
    sink = MqttSink(MqttSettings(url=f"mqtt://127.0.0.1:{free_port()}/plant1", reconnect_max_s=1))
    started = time.perf_counter()
    sink.start(LinkHub([sink], StubControls()))
    try:
        assert time.perf_counter() - started < 0.5
        wait_for(lambda: "cannot connect to broker" in sink.health().detail, what="connect failure reported")
        assert not sink.health().up
    finally:
        started = time.perf_counter()
        sink.stop()
        assert time.perf_counter() - started < 3  # stop does not wait out the reconnect loop


def test_mqtts_checks_the_broker_certificate_and_logs_in_with_the_password(tmp_path: Path) -> None:
    ca, cert, key = certificates(tmp_path)
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.skip("mosquitto_passwd (Debian's mosquitto package) is missing")
    subprocess.run([passwd, "-b", "-c", str(tmp_path / "passwd"), "mes", "s3cret"], check=True)
    options = ("allow_anonymous false", f"password_file {tmp_path / 'passwd'}", f"cafile {ca}")
    broker = Broker(tmp_path, options=(*options, f"certfile {cert}", f"keyfile {key}")).start()
    url = f"mqtts://mes@127.0.0.1:{broker.port}/plant1"
    good = MqttSink(MqttSettings(url=url, password=SecretStr("s3cret"), ca_file=ca, client_id="tls-good"))
    wrong = MqttSink(MqttSettings(url=url, password=SecretStr("guess"), ca_file=ca, client_id="tls-wrong"))
    untrusted = MqttSink(MqttSettings(url=url, password=SecretStr("s3cret"), client_id="tls-untrusted"))
    hub = LinkHub([good, wrong, untrusted], StubControls())
    try:
        hub.start()
        wait_for(lambda: good.health().up, what="TLS connection with the password")
        wait_for(lambda: "refused" in wrong.health().detail, what="wrong password refused")
        wait_for(lambda: "cannot connect" in untrusted.health().detail, what="certificate of an unknown CA refused")
        assert not (wrong.health().up or untrusted.health().up)
        assert good.name == f"mqtts://127.0.0.1:{broker.port}/plant1"
    finally:
        hub.stop()
        assert broker.process is not None
        broker.process.terminate()
        broker.process.wait(5)
    with pytest.raises(LinkError, match="ca_file"):
        MqttSink(MqttSettings(url=url, ca_file=tmp_path / "missing.pem")).start(hub)


# ---- configuration ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://broker/plant1", "mqtt:///plant1", "mqtt://broker:99999/plant1", "mqtt://broker/plant+1", "mqtt://b/$SYS"],
)
def test_a_malformed_broker_url_is_a_link_error(url: str) -> None:
    with pytest.raises(LinkError):
        MqttSink(MqttSettings(url=url))


def test_name_hides_credentials_and_topics_cannot_be_widened() -> None:
    sink = MqttSink(MqttSettings(url="mqtts://mes:s3cret@broker.plant/plant1/hall2/"))
    assert sink.name == "mqtts://broker.plant/plant1/hall2"
    assert (sink.user, sink.port, sink.tls, sink.prefix) == ("mes", 8883, True, "plant1/hall2")
    assert sink.status_topic == "plant1/hall2/line/status"
    assert topic_level("a/b+c#d", "x") == "a_b_c_d"
    assert topic_level("", "x") == topic_level(None, "x") == "x"
    assert MqttSink(MqttSettings(url="mqtt://broker")).prefix == "inspector"
