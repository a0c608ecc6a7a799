"""kill -9 in the middle of fit, calibrate and export: the model, calibration or bundle that was there before stays
whole and loadable, or the new one is there whole; never a mixture, never a torn file. A damaged model file at
start or at reload: a clear error for that recipe while the others (or the previous version) keep serving. And
the store's disk filling up under the line (a real tmpfs): answered, counted, nothing damaged, resumed.

The kill is placed exactly rather than by timing: the command runs in a child interpreter whose file-writing
helpers (common/files.py) send the process SIGKILL at the n-th write, or at the directory swap, so every test
hits the window it names on any machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from inspector.calibration import load_active_calibration
from inspector.calibration.store import model_fingerprint
from inspector.data.synthetic import make_category
from inspector.models.persistence import read_manifest
from inspector.models.scoring import load_scorer
from inspector.service.config import StoreSettings
from inspector.service.store import InspectionStore
from tests.test_service import running, settings_for

# Runs `inspector ARGS` and kills itself at the KILL_AT-th durable write ("swap": just before the directory
# exchange, "after-swap": just after it).
KILLER = """
import os, signal, sys
import inspector.common.files as files

target, writes = os.environ["KILL_AT"], [0]
synced, exchange = files.write_synced, files.exchange_dirs

def write_synced(path, data):
    writes[0] += 1
    if target == str(writes[0]):
        os.kill(os.getpid(), signal.SIGKILL)
    synced(path, data)

def exchange_dirs(a, b):
    if target == "swap":
        os.kill(os.getpid(), signal.SIGKILL)
    exchange(a, b)
    if target == "after-swap":
        os.kill(os.getpid(), signal.SIGKILL)

files.write_synced, files.exchange_dirs = write_synced, exchange_dirs
from inspector.cli import main
sys.exit(main(sys.argv[1:]))
"""
SIZE = 64


def run_killed(args: list[str], kill_at: str) -> int:
    """Run `inspector ARGS` with a kill at `kill_at`; its exit status (-9 when the kill came)."""
    env = {**os.environ, "KILL_AT": kill_at, "INSPECTOR_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", KILLER, *args], env=env, capture_output=True, timeout=300).returncode


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    make_category(root, "tiny", n_train=8, n_test_good=4, n_test_defect_per_type=2, size=SIZE, seed=3)
    return root


def fit_args(data: Path, out: Path, ratio: float) -> list[str]:
    args = ["fit", "--category", "tiny", "--data-root", str(data), "--out", str(out), "--image-size", str(SIZE)]
    return [*args, "--coreset-ratio", str(ratio), "--threads", "1", "-q"]


@pytest.fixture(scope="module")
def model(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fitted, calibrated model: the one that must survive."""
    out = tmp_path_factory.mktemp("model") / "tiny"
    assert run_killed(fit_args(data, out, 0.2), "never") == 0
    calibrate = ["calibrate", "--model-dir", str(out), "--category", "tiny", "--data-root", str(data)]
    assert run_killed([*calibrate, "--name", "first"], "never") == 0
    return out


def assert_whole(model_dir: Path) -> str:
    """The folder verifies against its manifest's checksums and scores; its fingerprint."""
    read_manifest(model_dir, verify=True)
    load_scorer(model_dir, threads=1)
    assert not list(model_dir.parent.glob(f".{model_dir.name}.tmp-*/{model_dir.name}")), "no nested leftovers"
    return model_fingerprint(model_dir)


@pytest.mark.parametrize("kill_at", ["1", "swap"])
def test_kill_9_during_fit_leaves_the_previous_model_whole(
    model: Path, data: Path, tmp_path: Path, kill_at: str
) -> None:
    target = tmp_path / "tiny"
    shutil.copytree(model, target)
    before = assert_whole(target)
    assert run_killed(fit_args(data, target, 0.5), kill_at) == -signal.SIGKILL
    assert assert_whole(target) == before
    assert load_active_calibration(target) is not None  # the calibration that belongs to it is still active
    if kill_at == "swap":  # and the next fit over the leftovers works and replaces it
        assert run_killed(fit_args(data, target, 0.5), "never") == 0
        assert assert_whole(target) != before


@pytest.mark.parametrize("kill_at", ["1", "2"])
def test_kill_9_during_calibrate_leaves_the_active_calibration_whole(
    model: Path, data: Path, tmp_path: Path, kill_at: str
) -> None:
    target = tmp_path / "tiny"
    shutil.copytree(model, target)
    before = (target / "calibration.json").read_bytes()
    args = ["calibrate", "--model-dir", str(target), "--category", "tiny", "--data-root", str(data), "--name", "x"]
    assert run_killed(args, kill_at) == -signal.SIGKILL
    after = (target / "calibration.json").read_bytes()
    json.loads(after)  # never torn
    active = load_active_calibration(target)
    assert active is not None and active.name in ("first", "x")
    assert after == before or active.name == "x"
    assert not list(target.glob(".calibration.json.tmp-*")) or kill_at == "2"


@pytest.fixture(scope="module")
def bundle(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    assert run_killed(["export", "--model-dir", str(model), "--out", str(out), "--threads", "1"], "never") == 0
    return out


@pytest.mark.parametrize("kill_at", ["2", "swap", "after-swap"])
def test_kill_9_during_export_leaves_a_whole_bundle_with_its_calibration(
    model: Path, bundle: Path, tmp_path: Path, kill_at: str
) -> None:
    """Before the swap the previous bundle stays; after it the new one is there with its calibrations already."""
    target = tmp_path / "tiny"
    shutil.copytree(bundle, target)
    (target / "previous-bundle").touch()  # a re-export of the same model may be byte-identical: tell them apart
    before = assert_whole(target)
    args = ["export", "--model-dir", str(model), "--out", str(target), "--threads", "1"]
    assert run_killed(args, kill_at) == -signal.SIGKILL
    swapped = kill_at == "after-swap"
    assert (target / "previous-bundle").exists() is not swapped
    assert swapped or assert_whole(target) == before
    assert_whole(target)
    calibration = load_active_calibration(target)  # raises if stale
    assert calibration is not None and calibration.name == "first"


# ---- a damaged model --------------------------------------------------------------------------------------------


def damage(model_dir: Path) -> None:
    """Cut the memory bank in half, as a failed copy or a bad sector does."""
    bank = model_dir / "memory_bank.npz"
    bank.write_bytes(bank.read_bytes()[: bank.stat().st_size // 2])


def test_a_damaged_model_at_start_is_refused_and_the_other_recipes_serve(
    service_model_dir: Path, tmp_path: Path, images: dict[str, Path]
) -> None:
    for name in ("a", "b"):
        shutil.copytree(service_model_dir, tmp_path / "models" / name)
    damage(tmp_path / "models" / "b")
    settings = settings_for(service_model_dir, tmp_path / "store", models_dir=tmp_path / "models")
    settings.models = []
    with running(settings) as client:
        ready = client.get("/readyz").json()
        assert ready["models"] == {"a": True, "b": False}
        assert "'b' could not be loaded" in ready["detail"] and "memory_bank.npz" in ready["detail"]
        part = {"image": ("p.png", images["defect"].read_bytes(), "image/png")}
        assert client.post("/v1/inspect", files=part, params={"model": "a"}).status_code == 200
        refused = client.post("/v1/inspect", files=part, params={"model": "b"})
        assert refused.status_code == 503 and "could not be loaded" in refused.json()["detail"]


def test_a_model_damaged_after_loading_fails_its_reload_and_keeps_serving(
    service_model_dir: Path, tmp_path: Path, images: dict[str, Path]
) -> None:
    model_dir = tmp_path / "synthetic"
    shutil.copytree(service_model_dir, model_dir)
    with running(settings_for(model_dir, tmp_path / "store")) as client:
        part = {"image": ("p.png", images["defect"].read_bytes(), "image/png")}
        before = client.post("/v1/inspect", files=part).json()
        damage(model_dir)
        reload = client.post("/v1/models/reload")
        assert reload.status_code == 409 and "previous model keeps serving" in reload.json()["detail"]
        after = client.post("/v1/inspect", files=part).json()
        assert (after["model_version"], after["score"]) == (before["model_version"], before["score"])


# ---- a full disk ------------------------------------------------------------------------------------------------


@contextmanager
def small_disk(folder: Path, megabytes: int) -> Iterator[Path]:
    """A tmpfs of `megabytes` mounted at `folder` (root only: skips elsewhere)."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip() or 'not root'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; the file, to delete when space should return."""
    filler = disk / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
                os.fsync(out.fileno())
        except OSError:
            pass
    return filler


def test_a_full_disk_answers_inspections_unrecorded_and_recording_resumes(
    service_model_dir: Path, tmp_path: Path, images: dict[str, Path]
) -> None:
    """The store's disk fills up while the line runs: every part is still answered (recorded: false), the gap
    is counted and named in /readyz, nothing recorded before is damaged, and recording resumes once space
    returns."""
    part = {"image": ("p.png", images["defect"].read_bytes(), "image/png")}
    with small_disk(tmp_path / "disk", 16) as disk:
        with running(settings_for(service_model_dir, disk / "store")) as client:
            before = client.post("/v1/inspect", files=part).json()
            assert before["recorded"] is True
            filler = fill(disk)
            answers = [client.post("/v1/inspect", files=part) for _ in range(3)]
            assert [a.status_code for a in answers] == [200, 200, 200]
            assert all(a.json()["recorded"] is False and a.json()["verdict"] == before["verdict"] for a in answers)
            ready = client.get("/readyz")
            assert ready.status_code == 200 and "not recorded since" in ready.json()["detail"]
            assert "3 so far" in ready.json()["detail"]
            metric = link_metric_value(client.get("/metrics").text, "inspector_unrecorded_inspections_total")
            assert metric == 3
            assert client.get(f"/v1/inspections/{before['id']}/image").status_code == 200
            assert [r["id"] for r in client.get("/v1/inspections").json()["items"]] == [before["id"]]

            filler.unlink()
            after = client.post("/v1/inspect", files=part).json()
            assert after["recorded"] is True
            assert "not recorded" not in client.get("/readyz").json()["detail"]
            assert client.get(f"/v1/inspections/{after['id']}/heatmap.png").status_code == 200
        store = InspectionStore(StoreSettings(dir=disk / "store", min_free_disk_mb=0))
        assert store.integrity_ok() and store.cleanup_orphans() == 0
        assert [r.id for r in store.page(limit=10)[0]] == [after["id"], before["id"]]
        store.close()


def link_metric_value(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))
