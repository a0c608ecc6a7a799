"""The audit trail: one entry per change that alters what the line is told, append-only, readable as pages and
CSV by the operator only, and every acknowledged change present after a kill -9 of a real server."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from inspector.service.audit import AUDIT_DB, CSV_COLUMNS, AuditLog, AuditRecord, write_csv
from inspector.service.config import ModelSpec, Settings, StoreSettings
from tests.helpers import free_port, wait_ready
from tests.test_service import running

CAMERA, OPERATOR = "camera-audit-1", "operator-audit-2"
AS_OPERATOR = {"X-API-Key": OPERATOR}


@pytest.fixture
def model_dir(service_model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the session's model (calibrations `mid`, active, and `lax`): switching writes to it."""
    return Path(shutil.copytree(service_model_dir, tmp_path / "synthetic"))


def settings_for(model_dir: Path, store_dir: Path, **keys: str) -> Settings:
    return Settings(
        models=[ModelSpec(dir=model_dir)],
        warmup_runs=1,
        threads=2,
        store=StoreSettings(dir=store_dir, min_free_disk_mb=0),
        **keys,  # type: ignore[arg-type]
    )


def entries(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    r = client.get("/v1/audit", params=params, headers=AS_OPERATOR)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def newest(client: TestClient, count: int) -> list[dict[str, Any]]:
    """The newest `count` entries, oldest of them first."""
    return entries(client, limit=count)[::-1]


def inspect(client: TestClient, image: Path) -> str:
    r = client.post("/v1/inspect", files={"image": ("p.png", image.read_bytes())}, headers={"X-API-Key": CAMERA})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def test_each_change_makes_one_entry_with_old_new_and_user(
    model_dir: Path, tmp_path: Path, images: dict[str, Path]
) -> None:
    settings = settings_for(model_dir, tmp_path / "store", camera_key=CAMERA, operator_key=OPERATOR)
    with running(settings) as c:
        version = c.get("/v1/models/synthetic", headers=AS_OPERATOR).json()["version"]
        start = newest(c, 10)
        assert [(e["kind"], e["subject"], e["old"]) for e in start] == [
            ("key", "camera", None),
            ("key", "operator", None),
            ("model_load", None, None),
        ]
        assert {e["user"] for e in start} == {"service"}
        assert start[2]["model"] == "synthetic"
        assert start[2]["new"] == version
        assert all(len(e["new"]) == 16 and e["new"] not in (CAMERA, OPERATOR) for e in start[:2])  # prints only

        r = c.put(
            "/v1/models/synthetic/calibration",
            json={"name": "lax", "reason": "new batch of parts"},
            headers={**AS_OPERATOR, "X-Operator": "Ann Lee"},
        )
        assert r.status_code == 200, r.text
        (switched,) = newest(c, 1)
        assert switched | {"id": 0, "created": ""} == {
            "id": 0,
            "created": "",
            "kind": "calibration",
            "user": "operator",
            "operator": "Ann Lee",
            "model": "synthetic",
            "subject": None,
            "old": "mid",
            "new": "lax",
            "reason": "new batch of parts",
        }
        assert c.put("/v1/models/synthetic/calibration", json={"name": "nope"}, headers=AS_OPERATOR).status_code == 404
        assert newest(c, 1) == [switched]  # a refused change is no change

        assert c.post("/v1/models/reload", headers=AS_OPERATOR).status_code == 200
        (reloaded,) = newest(c, 1)
        assert (reloaded["kind"], reloaded["user"], reloaded["old"], reloaded["new"]) == (
            "model_reload",
            "operator",
            version,
            version,
        )

        record_id = inspect(c, images["defect"])
        for verdict, note in (("defect", "burr"), ("good", "was dust")):
            review = {"verdict": verdict, "note": note, "operator": "Bo"}
            assert c.post(f"/v1/inspections/{record_id}/review", json=review, headers=AS_OPERATOR).status_code == 200
        first, second = newest(c, 2)
        assert (first["kind"], first["subject"], first["old"], first["new"], first["reason"]) == (
            "review",
            record_id,
            None,
            "defect",
            "burr",
        )
        assert (second["old"], second["new"], second["operator"], second["user"]) == (
            "defect",
            "good",
            "Bo",
            "operator",
        )

        links = c.app.state.links  # type: ignore[attr-defined]  # what the Modbus register and OPC UA method call
        links.select_recipe(1)
        links.select_recipe("synthetic")  # the same again: not a change
        links.select_recipe(0)
        chosen, cleared = newest(c, 2)
        assert (chosen["kind"], chosen["user"], chosen["old"], chosen["new"]) == ("recipe", "plc", None, "synthetic")
        assert (cleared["old"], cleared["new"]) == ("synthetic", None)

        links.set_review_band("synthetic", (0.9, 1.1))
        (band,) = newest(c, 1)
        assert (band["kind"], band["user"], band["model"], band["old"], band["new"]) == (
            "review_band",
            "opcua operator",
            "synthetic",
            "none",
            "0.9..1.1",
        )
        assert len(entries(c, limit=500)) == 10
        assert [e["kind"] for e in entries(c, kind="review")] == ["review", "review"]
        assert entries(c, model="nope") == []


def test_keys_changed_since_the_last_run_and_the_last_version_at_start(model_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    with running(settings_for(model_dir, store)) as c:
        assert c.put("/v1/models/synthetic/calibration", json={"name": "lax"}).status_code == 200
        items = c.get("/v1/audit").json()["items"]
        assert [(e["kind"], e["user"]) for e in items] == [("calibration", "none"), ("model_load", "service")]
        version = c.get("/v1/models/synthetic").json()["version"]
    with running(settings_for(model_dir, store, camera_key=CAMERA, operator_key=OPERATOR)):
        pass
    with running(settings_for(model_dir, store, camera_key=CAMERA, operator_key="another-operator-key")) as c:
        items = c.get("/v1/audit", params={"limit": 2}, headers={"X-API-Key": "another-operator-key"}).json()["items"]
        items.reverse()
    assert [(e["kind"], e["subject"]) for e in items] == [("key", "operator"), ("model_load", None)]
    assert items[0]["old"] and items[0]["new"] and items[0]["old"] != items[0]["new"]
    assert (items[1]["old"], items[1]["new"]) == (version, version)  # what the last run served
    log = AuditLog(store)
    assert len(list(log.iter_all(kind="key"))) == 3  # both keys set, then the operator key changed
    assert sum(OPERATOR.encode() in p.read_bytes() for p in store.glob(f"{AUDIT_DB}*")) == 0
    log.close()


def test_only_the_operator_reads_the_log_and_the_csv_parses_back(model_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(model_dir, tmp_path / "store", camera_key=CAMERA, operator_key=OPERATOR)
    with running(settings) as c:
        c.app.state.links.select_recipe(1)  # type: ignore[attr-defined]
        for path in ("/v1/audit", "/v1/audit.csv"):
            assert c.get(path).status_code == 401
            assert c.get(path, headers={"X-API-Key": CAMERA}).status_code == 403
        r = c.get("/v1/audit.csv", headers=AS_OPERATOR)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/csv")
        assert r.headers["content-disposition"].startswith('attachment; filename="audit-')
        rows = list(csv.DictReader(io.StringIO(r.text)))
        page = entries(c)
        assert tuple(rows[0]) == CSV_COLUMNS
        assert [row["id"] for row in rows] == [str(e["id"]) for e in page]
        assert (rows[0]["kind"], rows[0]["old"], rows[0]["new"]) == ("recipe", "", "synthetic")
        r = c.get("/v1/audit.csv", params={"kind": "recipe"}, headers=AS_OPERATOR)
        assert len(list(csv.DictReader(io.StringIO(r.text)))) == 1


def test_pages_and_the_database_refuse_to_rewrite_history(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    made = [log.append("recipe", user="plc", old=None, new=f"m{i}", reason="test") for i in range(5)]
    assert all(isinstance(r, AuditRecord) for r in made)
    first, cursor = log.page(limit=2)
    assert [r.new for r in first] == ["m4", "m3"]
    second, cursor = log.page(limit=2, cursor=cursor)
    third, cursor = log.page(limit=2, cursor=cursor)
    assert [r.new for r in second + third] == ["m2", "m1", "m0"]
    assert cursor is None
    assert log.page(since=made[3].created)[0] == [made[4], made[3]]
    log.close()
    db = sqlite3.connect(tmp_path / AUDIT_DB)
    for sql in ("UPDATE audit SET new = 'x'", "DELETE FROM audit", "UPDATE meta SET value = 'x'", "DELETE FROM meta"):
        with pytest.raises(sqlite3.IntegrityError):
            db.execute(sql)
    db.close()


# ---- kill -9 --------------------------------------------------------------------------------------------------


def test_every_acknowledged_change_is_in_the_log_after_kill_9(
    model_dir: Path, tmp_path: Path, images: dict[str, Path]
) -> None:
    store_dir, port = tmp_path / "store", free_port()
    cmd = [sys.executable, "-m", "inspector", "serve", "--model-dir", str(model_dir), "--store-dir", str(store_dir)]
    cmd += ["--port", str(port)]
    env = {
        **os.environ,
        "INSPECTOR_STORE_MIN_FREE_DISK_MB": "0",
        "INSPECTOR_WARMUP_RUNS": "1",
        "INSPECTOR_CAMERA_KEY": CAMERA,
        "INSPECTOR_OPERATOR_KEY": OPERATOR,
    }
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(server, url)
        with httpx.Client(base_url=url, headers=AS_OPERATOR, timeout=30) as client:
            image = {"image": ("p.png", images["defect"].read_bytes())}
            record_id = client.post("/v1/inspect", files=image).raise_for_status().json()["id"]
            client.put("/v1/models/synthetic/calibration", json={"name": "lax"}).raise_for_status()
            client.post("/v1/models/reload").raise_for_status()
            client.post(f"/v1/inspections/{record_id}/review", json={"verdict": "defect"}).raise_for_status()
            server.send_signal(signal.SIGKILL)  # at once after the last acknowledgement
        server.wait(10)
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(10)

    log = AuditLog(store_dir)
    kinds = [(r.kind, r.subject, r.old, r.new) for r in reversed(list(log.iter_all()))]
    log.close()
    assert [k[:2] for k in kinds[:3]] == [("key", "camera"), ("key", "operator"), ("model_load", None)]
    assert kinds[3][0] == "calibration" and kinds[3][2:] == ("mid", "lax")
    assert kinds[4][0] == "model_reload"
    assert kinds[5] == ("review", record_id, None, "defect")
    assert len(kinds) == 6


def test_the_csv_never_hands_a_spreadsheet_a_formula(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    log.append("review", user="operator", old=None, new="defect", reason='=HYPERLINK("http://x","open")')
    log.append("review", user="operator", old="good", new="defect", reason="burr, 2 mm")
    out = io.StringIO()
    write_csv(log.iter_all(), out)
    reasons = [row["reason"] for row in csv.DictReader(io.StringIO(out.getvalue()))]
    assert sorted(reasons) == ['\'=HYPERLINK("http://x","open")', "burr, 2 mm"]
    log.close()
