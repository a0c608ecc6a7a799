"""The service's limits that need a real server to show: a stalled upload ends in 408, connections beyond
max_connections get 503, and a multipart body with more parts than an inspection needs is refused before it is
read, text values and defect regions are capped. (Bytes, pixels and the queue are tested in test_service.py and
test_fuzz_images.py; README has the table.)"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from inspector.components.regions import find_regions
from inspector.data import read_image
from inspector.models.scoring import Scorer
from inspector.service.analysis import analyze
from inspector.service.config import ModelSpec, Settings, StoreSettings
from tests.helpers import wait_for
from tests.test_web_e2e import serving


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


@pytest.fixture(scope="module")
def url(service_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings(
        models=[ModelSpec(dir=service_model_dir)],
        warmup_runs=1,
        threads=2,
        upload_timeout_s=1.0,
        max_connections=4,
        log_level="warning",
        store=StoreSettings(dir=tmp_path_factory.mktemp("store"), min_free_disk_mb=0),
    )
    with serving(settings) as (address, _):
        yield address


def _raw(url: str, head: str, body: bytes = b"") -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=10)
    conn.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    return conn


def _answer(conn: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def test_a_stalled_upload_ends_in_408_and_frees_its_slot(url: str, images: dict[str, Path]) -> None:
    started = time.monotonic()
    head = "POST /v1/inspect HTTP/1.1\nHost: x\nContent-Type: image/png\nContent-Length: 100000\n"
    with _raw(url, head, b"\x89PNG\r\n\x1a\n") as stalled:  # 8 of the 100,000 bytes promised, then nothing
        answer = _answer(stalled)
    assert answer.startswith("HTTP/1.1 408"), answer
    assert time.monotonic() - started < 5
    good = images["good"].read_bytes()
    ok = httpx.post(f"{url}/v1/inspect", files={"image": ("a.png", good, "image/png")}, timeout=30)
    assert ok.status_code == 200, ok.text


def test_connections_beyond_max_connections_get_503(url: str) -> None:
    """Open event streams (the operator pages) hold connections; at the cap (which counts the new connection
    too) the next request is refused at once instead of queueing without bound, and capacity returns when they
    close."""
    streams: list[socket.socket] = []
    try:
        for _ in range(10):
            stream = _raw(url, "GET /v1/events HTTP/1.1\nHost: x\n")
            streams.append(stream)
            if not _answer(stream).startswith("HTTP/1.1 200"):
                break
        assert len(streams) == 4, "3 streams served, the 4th connection (max_connections) refused"
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 503
    finally:
        for stream in streams:
            stream.close()
    wait_for(lambda: _status(f"{url}/healthz") == 200, timeout=10, what="capacity after the streams closed")


@pytest.mark.parametrize(
    ("files", "data", "why"),
    [
        ({"image": ("a.png", b"x" * 10, "image/png"), "other": ("b.png", b"y", "image/png")}, {}, "files"),
        ({"image": ("a.png", b"x" * 10, "image/png")}, {f"f{i}": "v" for i in range(20)}, "fields"),
        ({"image": ("a.png", b"x" * 10, "image/png")}, {"part_id": "p" * 10_000}, "size"),
    ],
    ids=["two-files", "twenty-fields", "long-field"],
)
def test_multipart_bodies_with_more_than_an_inspection_needs_are_refused(
    url: str, files: dict[str, tuple[str, bytes, str]], data: dict[str, str], why: str
) -> None:
    answer = httpx.post(f"{url}/v1/inspect", files=files, data=data, timeout=10)
    assert answer.status_code == 400, answer.text
    assert "multipart" in answer.json()["detail"]


def test_regions_are_capped_at_max_regions_highest_peak_first(
    patchcore_scorer: Scorer, images: dict[str, Path]
) -> None:
    """A map with five separate hot spots yields five regions, and the service's cap keeps the two hottest."""
    amap = np.zeros((64, 64), np.float32)
    for i, peak in enumerate((3.0, 9.0, 5.0, 7.0, 4.0)):
        amap[4 + 12 * i : 8 + 12 * i, 10:14] = peak
    assert [r.peak for r in find_regions(amap, 1.0, 1000)] == [9.0, 7.0, 5.0, 4.0, 3.0]
    assert [r.peak for r in find_regions(amap, 1.0, 2)] == [9.0, 7.0]
    rgb = read_image(images["defect"])
    assert analyze(patchcore_scorer, 0.0, rgb, max_regions=0).regions == []
    assert len(analyze(patchcore_scorer, 0.0, rgb, max_regions=1).regions) == 1


def test_text_values_longer_than_128_characters_are_refused(url: str, images: dict[str, Path]) -> None:
    good = images["good"].read_bytes()
    answer = httpx.post(
        f"{url}/v1/inspect", params={"part_id": "p" * 129}, files={"image": ("a.png", good, "image/png")}, timeout=30
    )
    assert answer.status_code == 422
