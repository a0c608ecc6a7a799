"""The webhook against a real local HTTP server (http.server on a thread): the JSON arrives; an endpoint that
answers 500, is gone, or hangs past the timeout is retried a bounded number of times with backoff, counted as
failed, reported down, and never delays the inspection's answer."""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inspector.components.regions import Region
from inspector.data import Dataset
from inspector.link.hub import LinkHub
from inspector.link.result import LineResult
from inspector.link.settings import LinkSettings, WebhookSettings
from inspector.link.sink import LinkError
from inspector.link.webhook import STOP_DRAIN_S, WebhookSink
from tests.helpers import StubControls, link_health, link_metric
from tests.helpers import wait_for as wait_for_value
from tests.test_service import running, settings_for


class Endpoint:
    """An HTTP endpoint whose behaviour the test switches: ok (200), 500, 404, 302, or hang (until released)."""

    def __init__(self, port: int = 0) -> None:
        self.mode = "ok"
        self.bodies: queue.Queue[tuple[dict[str, Any], dict[str, str]]] = queue.Queue()
        self.attempts: list[tuple[float, int]] = []  # when, and which result's sequence
        self.entered = threading.Event()  # a request reached the hanging handler
        self.release = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.attempts.append((time.monotonic(), json.loads(body)["sequence"]))
                if endpoint.mode == "hang":
                    endpoint.entered.set()
                    endpoint.release.wait(30)
                status = {"500": 500, "404": 404, "302": 302}.get(endpoint.mode, 200)
                if status == 200:
                    endpoint.bodies.put((json.loads(body), dict(self.headers)))
                try:
                    self.send_response(status)
                    if status == 302:
                        self.send_header("Location", "/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the client gave up waiting (timeout): nobody to answer
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, credentials: str = "") -> str:
        return f"http://{credentials}127.0.0.1:{self.port}/inspections"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint()
    yield e
    e.close()


def result(sequence: int) -> LineResult:
    return LineResult(
        sequence=sequence,
        inspection_id=f"insp-{sequence}",
        created=time.time(),
        model="synthetic",
        recipe=1,
        model_version="v1",
        verdict="fail",
        score=2.5,
        normalized_score=1.25,
        threshold=2.0,
        regions=(Region(10, 20, 30, 40, 900, 3.0),),
        width=128,
        height=128,
        part_id=f"P{sequence}",
        meas_id=None,
        line=None,
        camera=None,
        inference_ms=12.0,
        total_ms=20.0,
    )


def started(url: str, **settings: Any) -> WebhookSink:
    sink = WebhookSink(url, WebhookSettings(urls=[url], **settings))
    sink.start(LinkHub([sink], StubControls()))
    return sink


wait_for = partial(wait_for_value, timeout=15)  # retries with backoff take longer than a broker's round trip


@pytest.fixture(scope="module")
def defect(dataset: Dataset) -> bytes:
    return next(s.path for s in dataset.test() if s.defect_type == "hole").read_bytes()


def inspect(client: TestClient, image: bytes, **params: str) -> tuple[dict[str, Any], float]:
    """The inspection's answer and how long it took."""
    begun = time.perf_counter()
    r = client.post("/v1/inspect", files={"image": ("part.png", image, "image/png")}, params=params)
    took = time.perf_counter() - begun
    assert r.status_code == 200, r.text
    return dict(r.json()), took


# ---- through the service ----------------------------------------------------------------------------------------


def test_the_endpoint_gets_the_inspection_json(
    endpoint: Endpoint, service_model_dir: Path, tmp_path: Path, defect: bytes
) -> None:
    hook = WebhookSettings(urls=[endpoint.url("mes:p%40ss@")])
    with running(settings_for(service_model_dir, tmp_path, links=LinkSettings(webhook=hook))) as client:
        answer, _ = inspect(client, defect, part_id="P-17", line="L3")
        body, headers = endpoint.bodies.get(timeout=10)
        assert body["inspection_id"] == answer["id"]
        assert body["verdict"] == answer["verdict"] == "fail"
        assert body["score"] == answer["score"]
        assert (body["part_id"], body["line"], body["sequence"]) == ("P-17", "L3", 1)
        largest = max(answer["regions"], key=lambda r: (r["area"], r["peak"]))
        box = ("x", "y", "width", "height")
        assert [body["regions"][0][k] for k in box] == [largest[k] for k in box]
        assert headers["Content-Type"] == "application/json"
        assert headers["Authorization"] == "Basic " + base64.b64encode(b"mes:p@ss").decode()

        link = wait_for(
            lambda: (h := link_health(client, "webhook"))["detail"].endswith("delivered") and h, what="delivered"
        )
        assert (link["up"], link["published"], link["failed"]) == (True, 1, 0)
        assert link["name"] == endpoint.url()  # the credentials stay out of /readyz, /metrics and the log
        assert link_metric(client, "inspector_link_up", "webhook") == 1


def test_a_failing_endpoint_is_retried_counted_and_reported_but_never_delays_the_inspection(
    endpoint: Endpoint, service_model_dir: Path, tmp_path: Path, defect: bytes
) -> None:
    timeout_s, retries, backoff_s = 1.5, 2, 0.1
    hook = WebhookSettings(urls=[endpoint.url()], timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
    with running(settings_for(service_model_dir, tmp_path, links=LinkSettings(webhook=hook))) as client:

        def failed(count: int, reason: str) -> None:
            link = wait_for(
                lambda: (h := link_health(client, "webhook"))["failed"] == count and h, what=f"{count} failed"
            )
            assert not link["up"]
            assert reason in link["detail"] and f"after {retries + 1} attempts" in link["detail"], link["detail"]
            ready = client.get("/readyz")
            assert ready.status_code == 200  # still inspecting: ready, the link named down
            assert f"link {endpoint.url()} down: " in ready.json()["detail"]
            assert (
                link_metric(client, "inspector_link_up", "webhook"),
                link_metric(client, "inspector_link_failed", "webhook"),
            ) == (0, count)

        endpoint.mode = "500"
        inspect(client, defect)
        failed(1, "HTTP 500")
        assert len(endpoint.attempts) == retries + 1  # bounded: no attempt after the last retry
        times = [t for t, _ in endpoint.attempts]
        gaps = [b - a for a, b in pairwise(times)]
        assert gaps[0] >= backoff_s * 0.9 and gaps[1] >= 2 * backoff_s * 0.9, gaps  # doubling backoff

        port = endpoint.port
        endpoint.close()  # a dead port: connection refused
        inspect(client, defect)
        failed(2, "refused")

        slow = Endpoint(port)  # back, but answering only after the timeout
        slow.mode = "hang"
        try:
            _, took = inspect(client, defect)
            assert took < timeout_s, took  # answered before the webhook's first attempt could even time out
            assert slow.entered.wait(5)  # ...while the webhook's request is hanging in the endpoint
            assert not slow.release.is_set()
            _, took = inspect(client, defect)  # and the next part, with the webhook still stuck, just as fast
            assert took < timeout_s, took
            failed(3, "timed out")
            wait_for(lambda: link_health(client, "webhook")["failed"] == 4, what="the second slow result given up")
            assert [sequence for _, sequence in slow.attempts] == [3] * (retries + 1) + [4] * (retries + 1)
            assert link_health(client, "webhook")["published"] == 4
        finally:
            slow.close()


# ---- the sink alone ---------------------------------------------------------------------------------------------


def test_the_queue_is_bounded_and_drops_the_oldest(endpoint: Endpoint) -> None:
    endpoint.mode = "hang"
    sink = started(endpoint.url(), queue=2, retries=0, timeout_s=10)
    try:
        sink.publish(result(1))
        assert endpoint.entered.wait(5)  # result 1 is in the endpoint; 2 to 5 queue behind it
        for sequence in range(2, 6):
            sink.publish(result(sequence))
        health = sink.health()
        assert (health.published, health.failed) == (5, 2)  # 2 and 3 dropped
        assert health.detail.endswith("2 queued")
        endpoint.mode = "ok"
        endpoint.release.set()
        delivered = [endpoint.bodies.get(timeout=10)[0]["part_id"] for _ in range(3)]
        assert delivered == ["P1", "P4", "P5"]
        wait_for(lambda: sink.health().detail == "result 5 delivered", what="all delivered")
        assert sink.health().up
    finally:
        sink.stop()


def test_stop_does_not_wait_for_a_hanging_endpoint_or_its_retries(endpoint: Endpoint) -> None:
    endpoint.mode = "hang"
    sink = started(endpoint.url(), retries=5, timeout_s=20)
    for sequence in (1, 2, 3):
        sink.publish(result(sequence))
    assert endpoint.entered.wait(5)
    begun = time.monotonic()
    sink.stop()
    assert time.monotonic() - begun < STOP_DRAIN_S + 1
    assert sink.health().failed == 2  # the queued two; the hanging one fails when its attempt ends


@pytest.mark.parametrize(("mode", "reason"), [("404", "HTTP 404"), ("302", "HTTP 302")])
def test_a_refusal_or_redirect_is_not_retried(endpoint: Endpoint, mode: str, reason: str) -> None:
    endpoint.mode = mode
    sink = started(endpoint.url(), retries=3, backoff_s=0.05)
    try:
        sink.publish(result(1))
        wait_for(lambda: sink.health().failed == 1, what="failed")
        time.sleep(0.3)  # time for retries, were there any
        assert len(endpoint.attempts) == 1
        assert not sink.health().up
        assert f"after 1 attempt: {reason}" in sink.health().detail
    finally:
        sink.stop()


@pytest.mark.parametrize("url", ["ftp://host/x", "http://", "http://host:99999/x", "mqtt://host/x"])
def test_a_malformed_url_is_a_link_error(url: str) -> None:
    with pytest.raises(LinkError):
        WebhookSink(url, WebhookSettings(urls=[url]))
