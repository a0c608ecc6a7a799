"""The uvicorn server `serve` runs: one process, and a stop that ends the operator page's event streams first.

uvicorn lets open responses finish before it stops, and an event stream never finishes by itself, so every
stop would otherwise wait out the graceful-shutdown timeout. A SIGTERM (docker stop, systemd) ends in exit
status 0 once the stop is done, as Ctrl-C does.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import uvicorn
from fastapi import FastAPI

from inspector.service.broadcast import Broadcaster


class Server(uvicorn.Server):
    """A uvicorn server that ends the app's event streams when it begins to stop."""

    def __init__(self, app: FastAPI, **options: Any) -> None:
        super().__init__(uvicorn.Config(app, **options))
        self.broadcaster: Broadcaster = app.state.events

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.broadcaster.close()
        await super().shutdown(sockets)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, less its re-raise of a SIGTERM it has already turned into a graceful stop: that kills the
        finished process by the signal (status -15, 143 in a shell), which reads as a crash."""
        with super().capture_signals():
            yield
            # uvicorn (pinned) re-raises what this list holds once its handlers are restored.
            self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def run(app: FastAPI, **options: Any) -> None:
    """`uvicorn.run(app, **options)` for one process, with event streams that end at a stop."""
    server = Server(app, **options)
    with suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it has already handled
        server.run()
    if not server.started:
        raise SystemExit(3)  # as uvicorn.run: the app could not start
