"""The line-side service through its HTTP API, as a camera, an operator and a monitoring system use it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from inspector.calibration import Calibration, save_calibration
from inspector.cli import main
from inspector.data import Dataset, list_images, read_image
from inspector.models.estimators import PatchCore
from inspector.service.app import create_app
from inspector.service.config import ModelSpec, Settings, StoreSettings
from inspector.service.errors import Unavailable
from inspector.service.metrics import ServiceMetrics
from inspector.service.queue import WorkQueue

CAMERA, OPERATOR = "camera-secret-1", "operator-secret-2"


def settings_for(model_dir: Path, store_dir: Path, **overrides: Any) -> Settings:
    store_settings = {"dir": store_dir, "min_free_disk_mb": 0, **overrides.pop("store", {})}
    defaults: dict[str, Any] = {"models": [ModelSpec(dir=model_dir)], "warmup_runs": 1, "threads": 2}
    return Settings(**{**defaults, **overrides, "store": StoreSettings(**store_settings)})


@contextmanager
def running(settings: Settings) -> Iterator[TestClient]:
    """A started app whose models are loaded (readyz 200)."""
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.05)
        yield client


@pytest.fixture(scope="module")
def client(service_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with running(
        settings_for(service_model_dir, tmp_path_factory.mktemp("store"), max_image_pixels=2_000_000, max_image_mb=1.0)
    ) as c:
        yield c


def png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def post(client: TestClient, data: bytes, name: str = "part.png", ctype: str = "image/png", **params: Any):
    return client.post("/v1/inspect", files={"image": (name, data, ctype)}, params=params)


# ---- inspect ----------------------------------------------------------------------------------------------------


def test_inspect_answers_verdict_score_regions_and_timings(client: TestClient, images: dict[str, Path]) -> None:
    good = post(client, images["good"].read_bytes(), part_id="A1", line="L1", camera="C1")
    assert good.status_code == 200, good.text
    body = good.json()
    assert body["verdict"] == "pass"
    assert body["calibrated"]
    assert body["calibration"] == "mid"
    assert body["normalized_score"] == pytest.approx(body["score"] / body["threshold"])
    assert (body["part_id"], body["line"], body["camera"]) == ("A1", "L1", "C1")
    assert set(body["timings_ms"]) == {
        "queue",
        "decode",
        "preprocess",
        "features",
        "search",
        "postprocess",
        "store",
        "total",
    }
    assert body["heatmap_url"] == f"/v1/inspections/{body['id']}/heatmap.png"

    form = client.post(
        "/v1/inspect",
        files={"image": ("p.png", images["good"].read_bytes(), "image/png")},
        data={"part_id": "F7", "line": "L2"},
    )
    assert (form.json()["part_id"], form.json()["line"]) == ("F7", "L2")  # form fields work like the query

    bad = post(client, images["defect"].read_bytes()).json()
    assert bad["verdict"] == "fail"
    assert bad["normalized_score"] >= 1.0
    h, w = read_image(images["defect"]).shape[:2]
    assert bad["regions"]
    assert (bad["width"], bad["height"]) == (w, h)
    top = bad["regions"][0]
    assert 0 <= top["x"] < w
    assert 0 <= top["y"] < h
    assert top["area"] > 0
    assert top["peak"] >= bad["pixel_threshold"]
    assert [r["peak"] for r in bad["regions"]] == sorted((r["peak"] for r in bad["regions"]), reverse=True)


def test_raw_body_and_every_pixel_format_is_accepted(client: TestClient, images: dict[str, Path]) -> None:
    rgb = read_image(images["good"])
    gray16 = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    bgra = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    large = cv2.resize(rgb, (900, 700))
    for data, ctype in (
        (png(gray16), "image/png"),
        (png(bgra), "image/png"),
        (png(large), "image/png"),
        (cv2.imencode(".jpg", rgb)[1].tobytes(), "image/jpeg"),
        (cv2.imencode(".tiff", gray16)[1].tobytes(), "application/octet-stream"),
    ):
        r = client.post("/v1/inspect", content=data, headers={"Content-Type": ctype})
        assert r.status_code == 200, r.text
        assert r.json()["score"] > 0  # a gray copy of a colour part may fail; the point is it is scored
    stored = client.get(f"/v1/inspections/{r.json()['id']}/image")
    assert stored.content == data
    assert stored.headers["content-type"] == "image/tiff"


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("not_an_image", 422),
        ("truncated", 422),
        ("too_small", 422),
        ("empty", 400),
        ("raw_empty", 400),
        ("text_content_type", 415),
        ("json_content_type", 415),
        ("no_content_type", 415),
        ("part_type", 415),
        ("no_image_field", 400),
        ("too_many_bytes", 413),
        ("too_many_pixels", 413),
        ("unknown_model", 404),
    ],
)
def test_bad_input_gets_a_clear_4xx(client: TestClient, images: dict[str, Path], kind: str, status: int) -> None:
    good = images["good"].read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)
    requests = {
        "not_an_image": lambda: post(client, b"this is not an image at all"),
        "truncated": lambda: post(client, good[: len(good) // 2]),
        "too_small": lambda: post(client, png(np.zeros((1, 1, 3), np.uint8))),
        "empty": lambda: post(client, b""),
        "raw_empty": lambda: client.post("/v1/inspect", content=b"", headers={"Content-Type": "image/png"}),
        "text_content_type": lambda: client.post("/v1/inspect", content=good, headers={"Content-Type": "text/plain"}),
        "json_content_type": lambda: client.post("/v1/inspect", json={"image": "x"}),
        "no_content_type": lambda: client.post("/v1/inspect", content=good),
        "part_type": lambda: post(client, good, ctype="text/plain"),
        "no_image_field": lambda: client.post("/v1/inspect", files={"picture": ("a.png", good, "image/png")}),
        "too_many_bytes": lambda: post(client, png(noise)),  # ~1.9 MB > max_image_mb 1.0
        "too_many_pixels": lambda: post(client, png(np.zeros((1500, 1500), np.uint8))),  # small file, 2.25 MP
        "unknown_model": lambda: post(client, good, model="nope"),
    }
    r = requests[kind]()
    assert r.status_code == status, r.text
    assert isinstance(r.json()["detail"], str)
    assert r.json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_queue_full_answers_503_with_retry_after_at_once(
    service_model_dir: Path, tmp_path: Path, images: dict[str, Path]
) -> None:
    with running(settings_for(service_model_dir, tmp_path, workers=1, queue_size=0)) as c:
        scorer = c.app.state.inspector.registry.entries["synthetic"].scorer
        release, started = threading.Event(), threading.Event()
        score = scorer.score

        def slow_score(batch):
            started.set()
            release.wait(10)
            return score(batch)

        scorer.score = slow_score
        first: list[Any] = []
        worker = threading.Thread(target=lambda: first.append(post(c, images["good"].read_bytes())))
        worker.start()
        assert started.wait(10)
        t0 = time.perf_counter()
        refused = post(c, images["good"].read_bytes())
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert time.perf_counter() - t0 < 1.0
        release.set()
        worker.join(10)
        assert first[0].status_code == 200
        assert 'inspector_errors_total{reason="queue_full"} 1.0' in c.get("/metrics").text


# ---- records ------------------------------------------------------------------------------------------------------


def test_records_list_filter_paginate_and_pictures(client: TestClient, images: dict[str, Path]) -> None:
    ids = [post(client, images[k].read_bytes(), line="L9").json()["id"] for k in ("good", "defect", "defect")]
    page = client.get("/v1/inspections", params={"limit": 2}).json()
    assert [i["id"] for i in page["items"]] == ids[::-1][:2]
    assert page["next_cursor"] == ids[1]
    rest = client.get("/v1/inspections", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert rest["items"][0]["id"] == ids[0]
    fails = client.get("/v1/inspections", params={"verdict": "fail", "limit": 500}).json()["items"]
    assert {ids[1], ids[2]} <= {i["id"] for i in fails}
    assert all(i["verdict"] == "fail" for i in fails)
    since = client.get(f"/v1/inspections/{ids[1]}").json()["created"]
    recent = client.get("/v1/inspections", params={"since": since, "model": "synthetic"}).json()["items"]
    assert {i["id"] for i in recent} == set(ids[1:])
    assert client.get("/v1/inspections", params={"model": "other"}).json()["items"] == []

    record = client.get(f"/v1/inspections/{ids[1]}").json()
    assert record["line"] == "L9"
    assert record["review"] is None
    assert client.get(f"/v1/inspections/{ids[1]}/image").content == images["defect"].read_bytes()
    heat = cv2.imdecode(np.frombuffer(client.get(record["heatmap_url"]).content, np.uint8), cv2.IMREAD_COLOR)
    assert heat.shape[:2] == (record["height"], record["width"])
    raw = client.get(record["map_url"])
    amap = cv2.imdecode(np.frombuffer(raw.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert amap.dtype == np.uint16
    assert amap.shape == (record["height"], record["width"])
    peak = amap.max() / 65535 * float(raw.headers["X-Map-Scale"])
    assert peak == pytest.approx(record["regions"][0]["peak"], rel=0.02)
    assert client.get("/v1/inspections/0123456789abcdef01234567").status_code == 404
    assert client.get("/v1/inspections/not-an-id/image").status_code == 422


def test_review_is_kept_and_exported_as_mvtec_folder(
    client: TestClient, images: dict[str, Path], tmp_path: Path
) -> None:
    good_id = post(client, images["good"].read_bytes()).json()["id"]
    bad_id = post(client, images["defect"].read_bytes()).json()["id"]
    r = client.post(f"/v1/inspections/{bad_id}/review", json={"verdict": "defect", "note": "hole", "operator": "ana"})
    assert r.status_code == 200
    assert r.json()["review"]["verdict"] == "defect"
    assert r.json()["review"]["note"] == "hole"
    client.post(f"/v1/inspections/{good_id}/review", json={"verdict": "defect"})
    client.post(f"/v1/inspections/{good_id}/review", json={"verdict": "good"})  # a later review replaces it
    assert client.get(f"/v1/inspections/{good_id}").json()["review"]["verdict"] == "good"
    assert client.post(f"/v1/inspections/{good_id}/review", json={"verdict": "maybe"}).status_code == 422
    assert client.post("/v1/inspections/0123456789abcdef01234567/review", json={"verdict": "good"}).status_code == 404
    reviewed = client.get("/v1/inspections", params={"reviewed": True}).json()["items"]
    assert {good_id, bad_id} <= {i["id"] for i in reviewed}

    store = client.app.state.settings.store.dir
    out = tmp_path / "export"
    assert main(["dataset", "export", "--store-dir", str(store), "--out", str(out)]) == 2  # --reviewed is required
    assert main(["dataset", "export", "--store-dir", str(store), "--out", str(out), "--reviewed"]) == 0
    category = out / "synthetic"
    assert f"{good_id}.png" in {p.name for p in list_images(category / "train" / "good")}
    assert (category / "test" / "defect" / f"{bad_id}.png").read_bytes() == images["defect"].read_bytes()
    assert not (category / "test" / "defect" / f"{good_id}.png").exists()
    assert Dataset(out, "synthetic").train()
    assert "hole" in (category / "reviews.csv").read_text()


# ---- models -------------------------------------------------------------------------------------------------------


def test_models_calibration_switch_and_reload_without_dropping_requests(
    service_model_dir: Path, tmp_path: Path, images: dict[str, Path]
) -> None:
    with running(settings_for(service_model_dir, tmp_path)) as c:
        (info,) = c.get("/v1/models").json()
        assert info["name"] == "synthetic"
        assert info["kind"] == "patchcore"
        assert info["calibration"]["name"] == "mid"
        assert len(info["version"]) == 12
        assert info["category"] == "synthetic"
        cals = {x["name"]: x for x in c.get("/v1/models/synthetic/calibrations").json()}
        assert cals["mid"]["active"]
        assert not cals["lax"]["active"]
        assert not cals["lax"]["stale"]
        defect = images["defect"].read_bytes()
        assert post(c, defect).json()["verdict"] == "fail"
        try:
            r = c.put("/v1/models/synthetic/calibration", json={"name": "lax"})
            assert r.status_code == 200
            assert r.json()["calibration"]["name"] == "lax"
            after = post(c, defect).json()
            assert after["verdict"] == "pass"
            assert after["calibration"] == "lax"
            assert c.put("/v1/models/synthetic/calibration", json={"name": "nope"}).status_code == 404
        finally:
            c.put("/v1/models/synthetic/calibration", json={"name": "mid"})
        assert c.get("/v1/models/nope").status_code == 404

        statuses: list[int] = []
        stop = threading.Event()

        def keep_posting() -> None:
            while not stop.is_set():
                statuses.append(post(c, images["good"].read_bytes()).status_code)

        poster = threading.Thread(target=keep_posting)
        poster.start()
        try:
            r = c.post("/v1/models/reload", json={"model": "synthetic"})
        finally:
            stop.set()
            poster.join(30)
        assert r.status_code == 200, r.text
        assert r.json()[0]["loaded_at"] > info["loaded_at"]
        assert statuses
        assert set(statuses) <= {200, 503}  # never an error; 503 only if the queue was full
        assert c.post("/v1/models/reload").status_code == 200  # no body: all models


def test_stale_calibration_and_uncalibrated_model(
    fitted_patchcore: PatchCore, tmp_path: Path, images: dict[str, Path]
) -> None:
    model_dir = tmp_path / "m"
    fitted_patchcore.save(model_dir, data={"category": "synthetic"})
    save_calibration(
        model_dir, Calibration(image_threshold=1.0, rule="test", name="old", model_fingerprint="0" * 64), activate=True
    )
    with running(settings_for(model_dir, tmp_path / "store")) as c:
        info = c.get("/v1/models/m").json()
        assert not info["calibrated"]
        assert "earlier fit" in info["calibration_error"]
        body = post(c, images["defect"].read_bytes()).json()
        assert body["verdict"] is None
        assert body["calibrated"] is False
        assert body["regions"] == []
        assert body["normalized_score"] is None
        assert body["score"] > 0
        assert c.get("/v1/inspections", params={"verdict": "none"}).json()["items"][0]["id"] == body["id"]
        assert c.get(body["heatmap_url"]).status_code == 200
        assert c.put("/v1/models/m/calibration", json={"name": "old"}).status_code == 409
        c.app.state.settings.require_calibration = True
        assert post(c, images["good"].read_bytes()).status_code == 409


# ---- system -------------------------------------------------------------------------------------------------------


def test_health_ready_metrics_and_docs(client: TestClient, images: dict[str, Path]) -> None:
    # Every counter the needles below look for is made here, so the test passes alone and in any order.
    assert post(client, images["defect"].read_bytes()).status_code == 200
    assert post(client, b"not an image").status_code == 422
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"]
    assert ready["models"] == {"synthetic": True}
    assert ready["disk_ok"]
    text = client.get("/metrics").text
    for needle in (
        'inspector_inspections_total{model="synthetic",verdict="fail"}',
        "inspector_queue_depth 0.0",
        'inspector_stage_seconds_bucket{le="0.25",stage="features"}',
        "inspector_store_records",
        'inspector_http_requests_total{method="POST",route="/v1/inspect",status="200"}',
        'inspector_model_info{calibration="mid"',
        'inspector_errors_total{reason="bad_image"}',
    ):
        assert needle in text, needle
    schema = client.get("/openapi.json").json()
    assert "multipart/form-data" in schema["paths"]["/v1/inspect"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("when_full", ["inspect", "refuse"])
def test_below_the_disk_floor_inspections_go_unrecorded_or_are_refused(
    service_model_dir: Path, tmp_path: Path, images: dict[str, Path], when_full: str
) -> None:
    store = {"min_free_disk_mb": 1e12, "when_full": when_full}
    with TestClient(create_app(settings_for(service_model_dir, tmp_path, store=store))) as c:
        deadline = time.monotonic() + 60
        while not c.get("/readyz").json()["models"]["synthetic"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = post(c, images["good"].read_bytes())
        ready = c.get("/readyz")
        assert not ready.json()["disk_ok"]
        if when_full == "refuse":  # a line that may not pass a part without its record
            assert ready.status_code == 503
            assert r.status_code == 503
            assert "free" in r.json()["detail"]
            assert r.headers["Retry-After"] == "60"
        else:  # the default: the line is answered, the gap in the records is counted and shown
            assert ready.status_code == 200 and "not recorded" in ready.json()["detail"]
            assert r.status_code == 200 and r.json()["recorded"] is False and r.json()["heatmap_url"] is None
            assert c.get(f"/v1/inspections/{r.json()['id']}").status_code == 404
            assert "inspector_unrecorded_inspections_total" in c.get("/metrics").text


def test_web_ui_is_served_when_present(service_model_dir: Path, tmp_path: Path) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<h1>line</h1>")
    with running(settings_for(service_model_dir, tmp_path / "store", web_dir=web)) as c:
        assert "<h1>line</h1>" in c.get("/").text
        assert c.get("/healthz").status_code == 200


# ---- auth ---------------------------------------------------------------------------------------------------------


def test_api_keys_guard_camera_and_operator_routes(
    service_model_dir: Path, tmp_path: Path, images: dict[str, Path]
) -> None:
    settings = settings_for(service_model_dir, tmp_path, camera_key=CAMERA, operator_key=OPERATOR)
    with running(settings) as c:
        data = images["good"].read_bytes()
        files = {"image": ("a.png", data, "image/png")}
        assert c.post("/v1/inspect", files=files).status_code == 401
        assert c.post("/v1/inspect", files=files, headers={"X-API-Key": "wrong"}).status_code == 401
        ok = c.post("/v1/inspect", files=files, headers={"X-API-Key": CAMERA})
        assert ok.status_code == 200
        rid = ok.json()["id"]
        assert c.get(f"/v1/inspections/{rid}/heatmap.png", headers={"X-API-Key": CAMERA}).status_code == 200
        review = {"verdict": "good"}
        assert c.post(f"/v1/inspections/{rid}/review", json=review, headers={"X-API-Key": CAMERA}).status_code == 403
        assert c.post("/v1/models/reload", headers={"X-API-Key": CAMERA}).status_code == 403
        assert (
            c.put("/v1/models/synthetic/calibration", json={"name": "mid"}, headers={"X-API-Key": CAMERA}).status_code
            == 403
        )
        bearer = {"Authorization": f"Bearer {OPERATOR}"}
        assert c.post(f"/v1/inspections/{rid}/review", json=review, headers=bearer).status_code == 200
        assert c.post("/v1/inspect", files=files, headers=bearer).status_code == 200  # operator may inspect too
        assert c.get("/v1/inspections").status_code == 401
        assert all(c.get(p).status_code == 200 for p in ("/healthz", "/readyz", "/metrics"))


def test_secrets_never_reach_the_log(
    service_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, images: dict[str, Path]
) -> None:
    settings = settings_for(service_model_dir, tmp_path, camera_key=CAMERA, operator_key=OPERATOR)
    with caplog.at_level("DEBUG"), running(settings) as c:
        c.post("/v1/inspect", files={"image": ("a.png", images["good"].read_bytes())}, headers={"X-API-Key": "bad"})
    text = caplog.text + repr(settings) + str(settings.model_dump())
    assert CAMERA not in text
    assert OPERATOR not in text


def test_inspections_survive_in_the_store_across_restart(
    service_model_dir: Path, tmp_path: Path, images: dict[str, Path]
) -> None:
    settings = settings_for(service_model_dir, tmp_path)
    with running(settings) as c:
        rid = post(c, images["defect"].read_bytes()).json()["id"]
    with running(settings) as c:
        again = c.get(f"/v1/inspections/{rid}")
        assert again.status_code == 200
        assert again.json()["verdict"] == "fail"
        assert c.get(f"/v1/inspections/{rid}/image").content == images["defect"].read_bytes()


def test_a_client_that_leaves_keeps_its_slot_until_the_work_ends() -> None:
    queue = WorkQueue(workers=1, queue_size=0, metrics=ServiceMetrics())
    release = threading.Event()

    async def scenario() -> None:
        abandoned = asyncio.create_task(queue.run(lambda _: release.wait(5), lambda r: r))
        await asyncio.sleep(0.05)
        abandoned.cancel()
        await asyncio.sleep(0.01)
        assert queue.full  # the CPU is still busy with it, so the bound still counts it
        with pytest.raises(Unavailable):
            await queue.run(lambda _: 1, lambda r: r)
        release.set()
        for _ in range(100):
            if not queue.full:
                break
            await asyncio.sleep(0.01)
        assert await queue.run(lambda _: 2, lambda r: r + 1) == 3

    asyncio.run(scenario())
    queue.shutdown()
