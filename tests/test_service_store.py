"""The inspection store (durability, retention, crash clean-up), service settings, and a real kill -9."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from inspector.cli import build_parser
from inspector.service.app import bind_host
from inspector.service.config import ServiceConfigError, Settings, StoreSettings, load_settings
from inspector.service.store import InspectionStore, new_id
from tests.test_service import service_model_dir  # noqa: F401  (shared fixture)

DAY = 86400.0


def add(store: InspectionStore, created: float, nbytes: int = 1000, verdict: str | None = "pass") -> str:
    record_id = new_id(created)
    files = store.write_files(record_id, created, b"x" * nbytes, ".png", np.zeros((4, 4), np.float32))
    store.insert({"id": record_id, "created": created, "model": "m", "verdict": verdict, "score": 1.0}, files)
    return record_id


def test_retention_by_age_spares_reviewed_and_by_disk_budget_oldest_first(tmp_path: Path) -> None:
    now = time.time()
    store = InspectionStore(StoreSettings(dir=tmp_path, retention_days=30, max_disk_mb=None, min_free_disk_mb=0))
    old, reviewed, fresh = add(store, now - 40 * DAY), add(store, now - 40 * DAY), add(store, now - DAY)
    store.review(reviewed, "defect", "keep me", None)
    old_files = [store.path(store.get(old)[k]) for k in ("image_file", "map_file")]
    assert store.enforce_retention(now) == 1
    assert store.get(old) is None and store.get(reviewed) and store.get(fresh)
    assert not any(p.exists() for p in old_files)

    store.settings.max_disk_mb = (store.stats()[1] + store._db_bytes() - 500) / 1024 / 1024  # just over budget
    assert store.enforce_retention(now) == 1
    assert store.get(fresh) is None and store.get(reviewed)  # unreviewed go first
    assert store.stats()[0] == 1 and store.integrity_ok()
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
    assert names == {kept} and not (store.files / "19700101").exists()
    store.close()


def test_disk_floor(tmp_path: Path) -> None:
    store = InspectionStore(StoreSettings(dir=tmp_path, min_free_disk_mb=1e12))
    assert not store.disk_ok()
    with pytest.raises(Exception, match="free"):
        store.check_space()
    store.close()


# ---- settings -----------------------------------------------------------------------------------------------------


def test_settings_from_yaml_toml_env_and_flags(tmp_path: Path) -> None:
    yaml_file = tmp_path / "s.yaml"
    yaml_file.write_text("port: 9000\nworkers: 2\nmodels:\n  - dir: models/bottle\n  - {dir: m/s2, name: screw}\n"
                         "store:\n  dir: /data/insp\n  max_disk_mb: 500\ncamera_key: from-file\n")  # fmt: skip
    s = load_settings(yaml_file, env={})
    assert (s.port, s.workers, s.store.max_disk_mb, s.store.dir) == (9000, 2, 500, Path("/data/insp"))
    assert [m.name for m in s.models] == ["bottle", "screw"] and s.camera_key.get_secret_value() == "from-file"
    assert "from-file" not in repr(s)

    toml_file = tmp_path / "s.toml"
    toml_file.write_text("port = 9100\n[store]\nretention_days = 7\n")
    env = {"INSPECTOR_STORE_DIR": "/env/store", "INSPECTOR_OPERATOR_KEY": "op", "INSPECTOR_PORT": "9200",
           "INSPECTOR_MODELS": "a=models/x:models/y", "INSPECTOR_STORE_MAX_DISK_MB": "null"}  # fmt: skip
    s = load_settings(toml_file, env=env, overrides={"port": 9300, "workers": None})
    assert s.port == 9300 and s.store.retention_days == 7 and s.store.dir == Path("/env/store")
    assert s.operator_key.get_secret_value() == "op" and s.store.max_disk_mb is None
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
    for needle in ("INSPECTOR_CAMERA_KEY", "INSPECTOR_OPERATOR_KEY", "INSPECTOR_STORE_DIR", "store.max_disk_mb",
                   "store.retention_days", "queue_size", "allow_remote_without_keys", "YAML or TOML"):  # fmt: skip
        assert needle in out, needle


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[1] / "configs" / "service.example.yaml"
    assert load_settings(example, env={}).store.synchronous == "full"


# ---- kill -9 --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kill_9_during_writes_loses_no_acknowledged_inspection(service_model_dir: Path, tmp_path: Path,  # noqa: F811
                                                               dataset) -> None:  # fmt: skip
    store_dir, port = tmp_path / "store", free_port()
    cmd = [sys.executable, "-m", "inspector", "serve", "--model-dir", str(service_model_dir), "--store-dir",
           str(store_dir), "--port", str(port), "--workers", "2", "--queue-size", "8"]  # fmt: skip
    env = {**os.environ, "INSPECTOR_STORE_MIN_FREE_DISK_MB": "0", "INSPECTOR_WARMUP_RUNS": "1"}
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.stderr.read().decode()
            assert time.monotonic() < deadline
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
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
        assert store.path(record["image_file"]).is_file() and store.path(record["map_file"]).is_file()
    on_disk = {p.name.split(".")[0] for p in store.files.rglob("*") if p.is_file()}
    assert on_disk == {r["id"] for r in store.iter_all()}  # no orphans left, no record without files
    store.close()
