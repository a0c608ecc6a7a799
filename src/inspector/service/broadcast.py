"""Live push for the operator page: every committed inspection and saved review, fanned out to open streams.

The publisher never waits: each stream keeps at most BACKLOG events, and a slow client loses its oldest ones
(the page shows the newest part; an old one it missed is in the history anyway).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from pydantic import BaseModel

BACKLOG = 64  # events kept for a slow client; beyond it the oldest are dropped, the publisher never waits


class Broadcaster:
    """Fans events out to every open stream. `publish` may be called from any thread (sync routes run in a
    thread pool); each stream has its own queue on its own event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[str | None]]] = set()
        self._closed = False

    def publish(self, kind: str, payload: BaseModel) -> None:
        self._send(f"event: {kind}\ndata: {payload.model_dump_json()}\n\n")

    def close(self) -> None:
        """End every stream, and any opened from now on (the service is stopping); pages reconnect later."""
        self._closed = True
        self._send(None)

    @contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[str | None]]:
        stream = (asyncio.get_running_loop(), asyncio.Queue[str | None](BACKLOG))
        with self._lock:
            self._streams.add(stream)
            if self._closed:
                stream[1].put_nowait(None)
        try:
            yield stream[1]
        finally:
            with self._lock:
                self._streams.discard(stream)

    def _send(self, message: str | None) -> None:
        with self._lock:
            streams = list(self._streams)
        for loop, queue in streams:
            with suppress(RuntimeError):  # that stream's loop has just closed
                loop.call_soon_threadsafe(_offer, queue, message)


def _offer(queue: asyncio.Queue[str | None], message: str | None) -> None:
    if queue.full():
        queue.get_nowait()  # the page shows the newest part; an old one it missed is in the history anyway
    queue.put_nowait(message)
