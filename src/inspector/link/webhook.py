"""A webhook for systems that speak only HTTP: each result's JSON POSTed to a URL, retried a bounded number of times.

One worker thread per URL delivers results in order from a bounded queue (oldest dropped beyond it, counted as
failed). An attempt that ends in a connection error, a timeout, a 5xx, 408 or 429 is retried `retries` times,
waiting `backoff_s`, then twice as long each time (at most `MAX_BACKOFF_S`); any other 4xx is the endpoint
refusing this body, so it is not retried. A redirect is not followed (urllib would turn the POST into a GET) and
counts as a failure. The stdlib client is enough for this: no new dependency on the line box.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlunsplit

from inspector import __version__
from inspector.link.result import LineResult
from inspector.link.settings import WebhookSettings
from inspector.link.sink import Backlog, Sink, SinkHealth, endpoint

if TYPE_CHECKING:
    from inspector.link.hub import LinkHub

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
STOP_DRAIN_S = 2.0  # at stop, queued results get one attempt each for this long; the rest count as failed
RETRY_STATUS = {408, 429}  # besides 5xx: the endpoint asks to try again


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Make a redirect an error: following it would re-send the result as a GET without its body."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class WebhookSink(Sink):
    kind = "webhook"

    def __init__(self, url: str, settings: WebhookSettings) -> None:
        parts, _, _ = endpoint(url, {"http": 80, "https": 443})
        self.settings = settings
        netloc = parts.netloc.rpartition("@")[2]
        self.url = self.name = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        self._headers = {"Content-Type": "application/json", "User-Agent": f"inspector/{__version__}"}
        if parts.username:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        self._opener = urllib.request.build_opener(_NoRedirect)

        self._cond = threading.Condition()
        self._queue = Backlog(settings.queue, f"webhook {self.name}")
        self._stopping = False
        self._drain_until = 0.0
        self._up = True
        self._detail = "nothing sent yet"
        self._published = self._failed = 0
        self._worker: threading.Thread | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------------------

    def start(self, hub: LinkHub) -> None:
        """Start the worker; the endpoint is not contacted until there is a result (it may come up later)."""
        self._worker = threading.Thread(target=self._work, name=f"webhook {self.name}", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        """Give queued results one attempt each for `STOP_DRAIN_S`, without retries, then count the rest as failed.
        An attempt still hanging then is left to its timeout on the daemon thread: stop does not wait for it."""
        with self._cond:
            self._stopping = True
            self._drain_until = time.monotonic() + STOP_DRAIN_S
            self._cond.notify_all()
        if self._worker:
            self._worker.join(STOP_DRAIN_S + 0.5)
        with self._cond:
            lost = self._queue.clear()
            self._failed += lost
        if lost:
            log.warning("webhook %s stopped with %d results undelivered", self.name, lost)

    # ---- the inspection path ------------------------------------------------------------------------------------

    def publish(self, result: LineResult) -> None:
        with self._cond:
            self._published += 1
            if self._queue.push(result):
                self._failed += 1
            self._cond.notify_all()

    def health(self) -> SinkHealth:
        with self._cond:
            queued = len(self._queue)
            return SinkHealth(
                name=self.name,
                kind=self.kind,
                up=self._up,
                detail=self._detail + (f"; {queued} queued" if queued else ""),
                published=self._published,
                failed=self._failed,
            )

    # ---- the worker ---------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if not self._queue or (self._stopping and time.monotonic() > self._drain_until):
                    return
                result = self._queue.pop()
            self._deliver(result)

    def _deliver(self, result: LineResult) -> None:
        body = json.dumps(result.to_json()).encode()
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            error, retry = self._post(body)
            if error is None:
                with self._cond:
                    self._up, self._detail = True, f"result {result.sequence} delivered"
                    dropped = self._queue.end_spell()
                if dropped:
                    log.warning("webhook %s delivers again; %d results were dropped meanwhile", self.name, dropped)
                return
            if not retry or attempt + 1 == attempts:
                break
            delay = min(self.settings.backoff_s * 2**attempt, MAX_BACKOFF_S)
            with self._cond:
                if self._cond.wait_for(lambda: self._stopping, timeout=delay):
                    break
        tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
        with self._cond:
            self._up, self._detail = False, f"result {result.sequence} not delivered after {tries}: {error}"
            self._failed += 1
        log.warning("webhook %s: %s", self.name, self._detail)

    def _post(self, body: bytes) -> tuple[str | None, bool]:
        """One attempt: (None, _) when the endpoint took it, else (what went wrong, whether to retry)."""
        request = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.settings.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code} {exc.reason}", exc.code >= 500 or exc.code in RETRY_STATUS
        except urllib.error.URLError as exc:  # refused, unreachable, name unknown, connect timed out
            return f"{exc.reason}", True
        except (OSError, http.client.HTTPException) as exc:  # timed out or cut off while waiting for the answer
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, True
        return None, False
