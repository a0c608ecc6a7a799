"""What every sink is: started with the hub, handed results without waiting, asked for its health, stopped.

`LoopThread` is the event loop the asyncio-based servers (Modbus, OPC UA) run on: one thread of their own, so
a busy PLC client never competes with the HTTP event loop that answers the camera. `Backlog` is the bounded queue
of the client sinks (MQTT, webhooks) that hold results while their far end is away.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import SplitResult, urlsplit

from inspector.common.errors import InspectorError
from inspector.link.result import LineResult

if TYPE_CHECKING:
    from inspector.link.hub import LinkHub

T = TypeVar("T")
log = logging.getLogger(__name__)


class LinkError(InspectorError, ValueError):
    """A link that cannot be set up as configured (bad URL, port in use, missing certificate)."""


def endpoint(url: str, default_ports: Mapping[str, int]) -> tuple[SplitResult, str, int]:
    """The parts, host and port of a link URL whose scheme is one of `default_ports` (its port when omitted)."""
    parts = urlsplit(url)
    if parts.scheme not in default_ports:
        raise LinkError(f"{url!r}: expected {' or '.join(f'{s}://HOST[:PORT]' for s in default_ports)}")
    try:
        port = parts.port or default_ports[parts.scheme]
    except ValueError as exc:
        raise LinkError(f"{url!r}: {exc}") from exc
    if not parts.hostname:
        raise LinkError(f"{url!r} names no host; e.g. {parts.scheme}://0.0.0.0:{port}")
    return parts, parts.hostname, port


class UnknownRecipe(LinkError):
    """A PLC asked for a recipe (model) that is not served."""


@dataclass(frozen=True)
class SinkHealth:
    """How one sink is doing, for /readyz, /v1/links, /metrics and the operator page."""

    name: str  # the URL it was configured with, credentials removed
    kind: str  # modbus, opcua, mqtt, webhook
    up: bool  # listening (servers) or connected / delivering (clients)
    detail: str  # one line a person reads: "2 clients", "broker unreachable: ..."
    published: int  # results handed over since start
    failed: int  # results that could not be delivered (dropped, refused)
    clients: int | None = None  # servers: connected clients


class Sink(ABC):
    """One destination of line results. `publish` and `status` must return at once (they are called on the
    inspection path); everything slow happens on the sink's own thread."""

    kind: str
    name: str

    @abstractmethod
    def start(self, hub: LinkHub) -> None:
        """Open the server or connection; raise `LinkError` when it cannot be opened as configured."""

    @abstractmethod
    def publish(self, result: LineResult) -> None:
        """Hand a result over; never blocks, never raises for a dead peer."""

    @abstractmethod
    def health(self) -> SinkHealth: ...

    @abstractmethod
    def stop(self) -> None:
        """Close within a few seconds."""


class LoopThread:
    """An asyncio event loop on a daemon thread of its own."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the loop soon; returns at once."""
        self.loop.call_soon_threadsafe(fn, *args)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine on the loop and wait for its result (start-up and shutdown only)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


class Backlog:
    """Results waiting for a link that is slow or away: bounded, dropping the oldest first (the line needs the
    current part more than an old one), with one warning when a spell of drops begins rather than one per
    inspection. Not locked itself: its sink calls it holding its own lock."""

    def __init__(self, capacity: int, link: str) -> None:
        self.capacity = capacity
        self.link = link  # "MQTT mqtt://broker/prefix", for the log
        self._results: deque[LineResult] = deque()
        self._dropped_in_spell = 0

    def __len__(self) -> int:
        return len(self._results)

    def push(self, result: LineResult) -> bool:
        """Queue a result; True when the oldest had to go to make room."""
        self._results.append(result)
        if len(self._results) <= self.capacity:
            return False
        self._results.popleft()
        self._dropped_in_spell += 1
        if self._dropped_in_spell == 1:
            log.warning("%s: queue of %d full, dropping the oldest results", self.link, self.capacity)
        return True

    def pop(self) -> LineResult:
        return self._results.popleft()

    def clear(self) -> int:
        """Empty the queue (the sink stops); how many results were in it."""
        count = len(self._results)
        self._results.clear()
        return count

    def end_spell(self) -> int:
        """The far end is back: how many results were dropped while it was away, and count afresh."""
        dropped, self._dropped_in_spell = self._dropped_in_spell, 0
        return dropped
