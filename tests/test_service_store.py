"""The inspection store (durability, retention, crash clean-up), service settings, and a real kill -9."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest

import inspector
from inspector.calibration import Verdict
from inspector.cli import build_parser
from inspector.components.regions import Region
from inspector.data import Dataset
from inspector.features.preprocess import Preprocessing
from inspector.service.app import bind_host
from inspector.service.config import ServiceConfigError, Settings, StoreSettings, load_settings
from inspector.service.schemas import Inspection
from inspector.service.store import DB_FILE, InspectionRecord, InspectionStore, StoreReader, new_id
from tests.helpers import free_port, wait_ready

DAY = 86400.0
TIMINGS = {
    "queue": 0.1,
    "decode": 1.0,
    "preprocess": 2.0,
    "features": 3.0,
    "search": 0.5,
    "postprocess": 1.5,
    "store": 4.0,
    "total": 12.5,
}


def add(
    store: InspectionStore,
    created: float,
    nbytes: int = 1000,
    verdict: Verdict | None = "pass",
    score: float = 1.0,
    model: str = "m",
    version: str = "v1",
    record_id: str | None = None,
) -> str:
    record_id = record_id or new_id(created)
    files = store.write_files(record_id, created, b"x" * nbytes, ".png", np.zeros((4, 4), np.float32))
    record = InspectionRecord(
        id=record_id,
        created=created,
        model=model,
        model_version=version,
        calibrated=verdict is not None,
        calibration="mid" if verdict else None,
        verdict=verdict,
        score=score,
        normalized_score=score / 2 if verdict else None,
        threshold=2.0 if verdict else None,
        pixel_threshold=2.0 if verdict else None,
        regions=(),
        width=4,
        height=4,
        media_type="image/png",
        preprocessing=Preprocessing((4, 4)),
        timings_ms=TIMINGS,
        image_file=files.image_file,
        map_file=files.map_file,
        bytes=files.nbytes,
    )
    assert store.insert(record) == record
    return record_id


def test_retention_by_age_spares_reviewed_and_by_disk_budget_oldest_first(tmp_path: Path) -> None:
    now = time.time()
    store = InspectionStore(StoreSettings(dir=tmp_path, retention_days=30, max_disk_mb=None, min_free_disk_mb=0))
    old, reviewed, fresh = add(store, now - 40 * DAY), add(store, now - 40 * DAY), add(store, now - DAY)
    store.review(reviewed, "defect", "keep me", None)
    old_record = store.get(old)
    assert old_record is not None
    old_files = [store.path(old_record.image_file), store.path(old_record.map_file)]
    assert store.enforce_retention(now) == 1
    assert store.get(old) is None
    assert store.get(reviewed)
    assert store.get(fresh)
    assert not any(p.exists() for p in old_files)

    store.settings.max_disk_mb = (store.stats()[1] + store._db_bytes() - 500) / 1024 / 1024  # just over budget
    assert store.enforce_retention(now) == 1
    assert store.get(fresh) is None
    assert store.get(reviewed)  # unreviewed go first
    assert store.stats()[0] == 1
    assert store.integrity_ok()
    store.close()


def test_files_without_a_row_are_removed_at_restart(tmp_path: Path) -> None:
    settings = StoreSettings(dir=tmp_path, min_free_disk_mb=0)
    store = InspectionStore(settings)
    kept = add(store, time.time())
    orphan = new_id()
    store.write_files(orphan, time.time(), b"y" * 10, ".jpg", np.zeros((2, 2), np.float32))  # crash before insert
    (store.files / "19700101").mkdir()
    (store.files / "19700101" / ".half.png.tmp").write_bytes(b"z")
    store.close()
    store = InspectionStore(settings)
    assert store.cleanup_orphans() == 3
    names = {p.name.split(".")[0] for p in store.files.rglob("*") if p.is_file()}
    assert names == {kept}
    assert not (store.files / "19700101").exists()
    store.close()


def test_disk_floor(tmp_path: Path) -> None:
    store = InspectionStore(StoreSettings(dir=tmp_path, min_free_disk_mb=1e12, when_full="refuse"))
    assert not store.disk_ok()
    with pytest.raises(Exception, match="free"):
        store.check_space()
    store.close()
    store = InspectionStore(StoreSettings(dir=tmp_path, min_free_disk_mb=1e12))  # the default: inspect unrecorded
    store.check_space()
    store.close()


# ---- the stored format and the read-only reader ------------------------------------------------------------------

# A row as the service wrote it before the record became a typed class (same columns, same `data` JSON, byte for
# byte): a store written then must read unchanged, and a record written now must store the same bytes.
OLD_ID = "018f0c2a3b4c5d6e7f8091a2"
OLD_DATA = (
    '{"model_version": "0123456789ab", "calibrated": true, "calibration": "mid", "score": 3.25, '
    '"normalized_score": 1.625, "threshold": 2.0, "pixel_threshold": 1.5, "regions": [{"x": 10, "y": 12, '
    '"width": 30, "height": 20, "area": 410, "peak": 3.25}, {"x": 60, "y": 5, "width": 4, "height": 3, "area": 9, '
    '"peak": 1.75}], "width": 320, "height": 240, "media_type": "image/png", "preprocessing": {"image_size": '
    '[256, 256], "crop_size": [224, 224]}, "timings_ms": {"queue": 0.012, "decode": 1.5, "preprocess": 0.8, '
    '"features": 20.25, "search": 0.4, "postprocess": 1.1, "store": 3.3, "total": 28.0}}'
)
OLD_ROW = {
    "id": OLD_ID,
    "created": 1714000000.123456,
    "model": "bottle",
    "verdict": "fail",
    "part_id": "A7",
    "line": "L2",
    "camera": None,
    "image_file": f"20240424/{OLD_ID}.png",
    "map_file": f"20240424/{OLD_ID}.map.npy",
    "bytes": 12345,
    "data": OLD_DATA,
    "review_verdict": "defect",
    "review_note": "burr",
    "review_operator": "ana",
    "reviewed_at": 1714000100.5,
}


def test_a_store_written_before_reads_unchanged_and_new_records_store_the_same_bytes(tmp_path: Path) -> None:
    store = InspectionStore(StoreSettings(dir=tmp_path, min_free_disk_mb=0))
    store.close()
    with sqlite3.connect(tmp_path / DB_FILE) as db:
        db.execute(
            f"INSERT INTO inspections ({', '.join(OLD_ROW)}) VALUES ({', '.join('?' * len(OLD_ROW))})",
            tuple(OLD_ROW.values()),
        )
    store = InspectionStore(StoreSettings(dir=tmp_path, min_free_disk_mb=0))
    record = store.get(OLD_ID)
    assert record is not None
    assert record.regions == (Region(10, 12, 30, 20, 410, 3.25), Region(60, 5, 4, 3, 9, 1.75))
    assert record.preprocessing == Preprocessing((256, 256), (224, 224))
    assert (record.verdict, record.review_verdict, record.part_id, record.camera) == ("fail", "defect", "A7", None)
    assert record.data_json() == OLD_DATA
    assert StoreReader(tmp_path).get(OLD_ID) == record
    assert store.page(verdict="fail", reviewed=True) == ([record], None)

    api = Inspection.from_record(record).model_dump(mode="json")
    assert api["regions"][0] == {"x": 10, "y": 12, "width": 30, "height": 20, "area": 410, "peak": 3.25}
    assert api["review"]["verdict"] == "defect"
    assert api["review"]["note"] == "burr"
    assert api["map_url"] == f"/v1/inspections/{OLD_ID}/map.png"
    assert api["timings_ms"]["total"] == 28.0

    fresh = replace(record, id=new_id(), review_verdict=None, review_note=None, review_operator=None, reviewed_at=None)
    store.insert(fresh)
    with sqlite3.connect(tmp_path / DB_FILE) as db:
        (data,) = db.execute("SELECT data FROM inspections WHERE id = ?", (fresh.id,)).fetchone()
    assert data == OLD_DATA
    assert json.loads(data)["regions"][1]["peak"] == 1.75
    store.close()


def test_the_reader_counts_and_lists_scores_without_the_store_lock(tmp_path: Path) -> None:
    now = time.time()
    store = InspectionStore(StoreSettings(dir=tmp_path, min_free_disk_mb=0))
    old = add(store, now - DAY, verdict="review", score=1.0)
    review = add(store, now - 10, verdict="review", score=2.0)
    add(store, now - 5, verdict=None, score=3.0)
    newest = add(store, now, verdict="fail", score=4.0, version="v2")
    add(store, now, verdict="pass", model="other")
    store.review(review, "good", "", None)
    reader = StoreReader(tmp_path)
    with store._lock:  # the store is busy: the reader does not wait for it
        counts = reader.summary(now - 60, "m", recent_since=now - 7)
        everything = reader.summary(0.0, None, recent_since=now + 1)
        scores = reader.recent_scores("m", "v1", limit=10)
        latest = reader.recent_scores("m", "v2", limit=10)
    assert counts.verdicts == {"pass": 0, "review": 1, "fail": 1, "none": 1}
    assert counts.reviewed == 1
    assert counts.review_open == 1  # `old`: any time, not only since
    assert counts.recent == 2
    assert everything.verdicts == {"pass": 1, "review": 2, "fail": 1, "none": 1}
    assert everything.recent == 0
    assert [(s.score, s.review) for s in scores] == [(3.0, None), (2.0, "good"), (1.0, None)]
    assert [s.score for s in latest] == [4.0]
    assert reader.count() == 5
    assert reader.integrity_ok()
    assert [r.id for r in reader.iter_all(model="m", verdict="review")] == [review, old]
    assert reader.path(store.get(newest).image_file).is_file()
    store.close()


# ---- settings -----------------------------------------------------------------------------------------------------


def test_settings_from_yaml_toml_env_and_flags(tmp_path: Path) -> None:
    yaml_file = tmp_path / "s.yaml"
    yaml_file.write_text(
        "port: 9000\nworkers: 2\nmodels:\n  - dir: models/bottle\n  - {dir: m/s2, name: screw}\n"
        "store:\n  dir: /data/insp\n  max_disk_mb: 500\ncamera_key: from-file\n"
    )
    s = load_settings(yaml_file, env={})
    assert (s.port, s.workers, s.store.max_disk_mb, s.store.dir) == (9000, 2, 500, Path("/data/insp"))
    assert [m.name for m in s.models] == ["bottle", "screw"]
    assert s.camera_key.get_secret_value() == "from-file"
    assert "from-file" not in repr(s)

    toml_file = tmp_path / "s.toml"
    toml_file.write_text("port = 9100\n[store]\nretention_days = 7\n")
    env = {
        "INSPECTOR_STORE_DIR": "/env/store",
        "INSPECTOR_OPERATOR_KEY": "op",
        "INSPECTOR_PORT": "9200",
        "INSPECTOR_MODELS": "a=models/x:models/y",
        "INSPECTOR_STORE_MAX_DISK_MB": "null",
    }
    s = load_settings(toml_file, env=env, overrides={"port": 9300, "workers": None})
    assert s.port == 9300
    assert s.store.retention_days == 7
    assert s.store.dir == Path("/env/store")
    assert s.operator_key.get_secret_value() == "op"
    assert s.store.max_disk_mb is None
    assert [(m.name, str(m.dir)) for m in s.models] == [("a", "models/x"), ("y", "models/y")]
    assert load_settings(env={"INSPECTOR_SERVICE_CONFIG": str(toml_file)}).port == 9100

    with pytest.raises(ServiceConfigError, match=r"store\.nope"):
        load_settings(env={}, overrides={"store.nope": 1})
    with pytest.raises(ServiceConfigError, match="unique"):
        load_settings(env={"INSPECTOR_MODELS": "a/m:b/m"})
    with pytest.raises(ServiceConfigError, match="workers"):
        load_settings(env={"INSPECTOR_WORKERS": "zero"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ServiceConfigError, match="mapping"):
        load_settings(bad, env={})


def test_without_keys_the_service_stays_on_loopback(caplog: pytest.LogCaptureFixture) -> None:
    assert bind_host(Settings(host="0.0.0.0")) == "127.0.0.1"
    assert "no API keys" in caplog.text
    assert bind_host(Settings(host="0.0.0.0", allow_remote_without_keys=True)) == "0.0.0.0"
    assert bind_host(Settings(host="0.0.0.0", camera_key="k")) == "0.0.0.0"


def test_serve_help_documents_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for needle in (
        "INSPECTOR_CAMERA_KEY",
        "INSPECTOR_OPERATOR_KEY",
        "INSPECTOR_STORE_DIR",
        "store.max_disk_mb",
        "store.retention_days",
        "queue_size",
        "allow_remote_without_keys",
        "YAML or TOML",
    ):
        assert needle in out, needle


def test_example_config_is_valid() -> None:
    example = Path(inspector.__file__).parent / "configs" / "service.example.yaml"
    assert load_settings(example, env={}).store.synchronous == "full"


# ---- kill -9 --------------------------------------------------------------------------------------------------


def test_kill_9_during_writes_loses_no_acknowledged_inspection(
    service_model_dir: Path,
    tmp_path: Path,
    dataset: Dataset,
) -> None:
    store_dir, port = tmp_path / "store", free_port()
    cmd = [
        sys.executable,
        "-m",
        "inspector",
        "serve",
        "--model-dir",
        str(service_model_dir),
        "--store-dir",
        str(store_dir),
        "--port",
        str(port),
        "--workers",
        "2",
        "--queue-size",
        "8",
    ]
    env = {**os.environ, "INSPECTOR_STORE_MIN_FREE_DISK_MB": "0", "INSPECTOR_WARMUP_RUNS": "1"}
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(server, url)
        images = [p.read_bytes() for p in (s.path for s in dataset.test())]
        acked: list[str] = []
        stop = threading.Event()

        def camera(k: int) -> None:
            with httpx.Client(timeout=10) as client:
                for i in range(10_000):
                    if stop.is_set():
                        return
                    try:
                        r = client.post(f"{url}/v1/inspect", files={"image": ("p.png", images[(i + k) % len(images)])})
                    except httpx.HTTPError:
                        return  # the server died mid-request: not acknowledged
                    if r.status_code == 200:
                        acked.append(r.json()["id"])

        cameras = [threading.Thread(target=camera, args=(k,)) for k in range(4)]
        for t in cameras:
            t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        stop.set()
        for t in cameras:
            t.join(15)
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(10)
    assert len(acked) >= 12

    store = InspectionStore(StoreSettings(dir=store_dir, min_free_disk_mb=0))
    store.cleanup_orphans()
    assert store.integrity_ok()
    for record_id in acked:
        record = store.get(record_id)
        assert record is not None, f"acknowledged {record_id} lost"
        assert store.path(record.image_file).is_file()
        assert store.path(record.map_file).is_file()
    on_disk = {p.name.split(".")[0] for p in store.files.rglob("*") if p.is_file()}
    assert on_disk == {r.id for r in store.iter_all()}  # no orphans left, no record without files
    store.close()


def test_a_clock_set_back_keeps_ids_and_the_disk_budget_in_inspection_order(tmp_path: Path) -> None:
    """The box's clock jumps back a day between inspections: ids still follow the order of inspections (pages,
    the budget's oldest-first deletion), age retention deletes nothing early, and `created` keeps the clock's word."""
    store = InspectionStore(StoreSettings(dir=tmp_path, min_free_disk_mb=0, retention_days=0.5, max_disk_mb=None))
    now = 1_800_000_000.0
    first = [store.new_id(now + i) for i in range(3)]
    later = [store.new_id(now - 86_400 + i) for i in range(3)]  # a day earlier by the clock, after in fact
    assert first + later == sorted(first + later)
    for i, record_id in enumerate(first + later):
        created = now + i if i < 3 else now - 86_400 + i - 3
        add(store, created, record_id=record_id)
    assert store.enforce_retention(now=now - 86_400 + 3) == 0  # by the set-back clock nothing is past 12 hours
    records, _ = store.page(limit=10)
    assert [r.id for r in records] == list(reversed(first + later))  # newest first
    store.close()
    reopened = InspectionStore(StoreSettings(dir=tmp_path, min_free_disk_mb=0))
    assert reopened.new_id(now - 2 * 86_400) > later[-1]  # also across a restart
    reopened.close()
