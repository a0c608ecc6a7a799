"""Review to re-fit: a recipe re-fitted in the background from the images operators reviewed lands as a new version
in shadow while the line keeps inspecting; a cancelled or failing re-fit leaves the models folder and the active
model as they were; only operators may start one; every step is in the audit log."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from inspector.calibration import load_active_calibration, save_calibration
from inspector.data import Dataset
from inspector.data.mvtec import list_images
from inspector.models.persistence import read_manifest
from inspector.service import refit
from inspector.service.app import DEFAULT_WEB_DIR
from tests.helpers import wait_for
from tests.test_recipes import CAMERA, OPERATOR, settings
from tests.test_service import running
from tests.test_web_e2e import CHROMIUM, CHROMIUM_ARGS, SCREEN, serving

AS_CAMERA, AS_OPERATOR = {"X-API-Key": CAMERA}, {"X-API-Key": OPERATOR, "X-Operator": "ana"}
FIT_TIMEOUT_S = 240  # two child processes that import torch, on a shared 2-core box


@pytest.fixture
def models_dir(patchcore_dir: Path, service_model_dir: Path, tmp_path: Path) -> Path:
    """One recipe: the session's PatchCore (which records its training images), calibrated as the service's."""
    recipe = tmp_path / "models" / "synthetic"
    shutil.copytree(patchcore_dir, recipe)
    calibration = load_active_calibration(service_model_dir)
    assert calibration is not None
    save_calibration(recipe, replace(calibration, model_fingerprint=""))
    return recipe.parent


@pytest.fixture
def client(models_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    with running(settings(models_dir, tmp_path / "store")) as c:
        yield c


def inspect(client: httpx.Client, image: Path) -> dict[str, Any]:
    files = {"image": ("part.png", image.read_bytes())}
    answer = client.post("/v1/inspect", files=files, params={"model": "synthetic"}, headers=AS_CAMERA)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def review_parts(client: httpx.Client, dataset: Dataset, n_good: int = 4, n_defect: int = 2) -> None:
    """Inspect test parts and mark them as an operator would: good ones good, defective ones defect."""
    samples = dataset.test()
    chosen = [s for s in samples if not s.is_defect][:n_good] + [s for s in samples if s.is_defect][:n_defect]
    for sample in chosen:
        record = inspect(client, sample.path)
        verdict = "defect" if sample.is_defect else "good"
        r = client.post(f"/v1/inspections/{record['id']}/review", json={"verdict": verdict}, headers=AS_OPERATOR)
        assert r.status_code == 200, r.text


def job_ended(client: TestClient, job_id: str) -> dict[str, Any] | None:
    job = client.get(f"/v1/refits/{job_id}", headers=AS_OPERATOR).json()
    return None if job["state"] == "running" else dict(job)


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def refit_audit(client: TestClient, kind: str = "refit") -> list[dict[str, Any]]:
    """The audit log's entries of one kind, oldest first."""
    items = client.get("/v1/audit", params={"kind": kind}, headers=AS_OPERATOR).json()["items"]
    return list(reversed(items))


def test_a_refit_from_reviewed_images_lands_as_a_shadow_version_while_the_line_inspects(
    client: TestClient, models_dir: Path, dataset: Dataset, images: dict[str, Path], tmp_path: Path
) -> None:
    review_parts(client, dataset)
    active = client.get("/v1/models/synthetic", headers=AS_CAMERA).json()
    assert client.post("/v1/models/synthetic/refit", headers=AS_CAMERA).status_code == 403
    assert client.post("/v1/models/synthetic/refit").status_code == 401

    answered: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def line() -> None:
        data = {"image": ("p.png", images["good"].read_bytes())}
        while not stop.is_set():
            r = client.post("/v1/inspect", files=data, params={"model": "synthetic"}, headers=AS_CAMERA)
            if r.status_code != 200 or r.json()["model_version"] != active["version"]:
                failures.append(r.text)
            answered.append(r.json()["timings_ms"]["total"])

    started = client.post("/v1/models/synthetic/refit", json={"reason": "new batch"}, headers=AS_OPERATOR)
    assert started.status_code == 202, started.text
    job = started.json()
    assert (job["state"], job["model"], job["user"], job["operator"]) == ("running", "synthetic", "operator", "ana")
    again = client.post("/v1/models/synthetic/refit", headers=AS_OPERATOR)
    assert again.status_code == 409 and job["id"] in again.json()["detail"]  # one re-fit per recipe at a time

    inspecting = threading.Thread(target=line)
    inspecting.start()
    try:
        ended = wait_for(lambda: job_ended(client, job["id"]), FIT_TIMEOUT_S, "the re-fit")
    finally:
        stop.set()
        inspecting.join()
    assert ended["state"] == "succeeded", ended["message"]
    assert not failures and len(answered) > 10  # the line was answered, by the active model, throughout

    version = models_dir / "synthetic.versions" / "synthetic-v2"
    assert (ended["version"], ended["dir"], ended["stage"]) == ("synthetic-v2", str(version), "done")
    n_train = len(dataset.train())
    assert ended["counts"] == {
        "train_images": n_train + 2,
        "train_reviewed_good": 2,
        "calibration_good": 2,
        "calibration_defect": 2,
    }
    manifest = read_manifest(version)
    train_dir = Path(manifest["data"]["train_dir"])
    assert train_dir.is_relative_to(tmp_path / "store" / "refits") and len(list_images(train_dir)) == n_train + 2
    calibration = load_active_calibration(version)
    assert calibration is not None and calibration.name == f"refit-{job['id']}"
    assert calibration.data["n_good"] == 2 and calibration.data["n_defect"] == 2  # the held-out reviewed parts

    registry = client.app.state.inspector.registry  # type: ignore[attr-defined]
    assert registry.shadow("synthetic").dir == version
    assert client.get("/v1/models/synthetic", headers=AS_CAMERA).json()["version"] == active["version"]
    assert not list((models_dir / "synthetic.versions").glob(".refit-*"))

    entries = refit_audit(client)
    assert [e["new"] for e in entries] == ["started", "succeeded"]
    assert all(e["subject"] == job["id"] and e["operator"] == "ana" for e in entries)
    assert entries[0]["reason"] == "new batch" and "synthetic-v2" in entries[1]["reason"]
    (landed,) = refit_audit(client, "model_shadow")
    assert (landed["new"], landed["subject"], landed["user"]) == (
        registry.shadow("synthetic").version,
        job["id"],
        "operator",
    )
    listed = client.get("/v1/refits", headers=AS_OPERATOR).json()
    assert [j["id"] for j in listed] == [job["id"]]

    # Promoted, the new version is re-fitted in its turn: from its own training set, less a part fitted on before
    # that an operator has since marked defect.
    registry.promote("synthetic")
    relabelled = next(p for p in list_images(train_dir) if len(p.stem) == 24)  # a reviewed part (id-named)
    r = client.post(f"/v1/inspections/{relabelled.stem}/review", json={"verdict": "defect"}, headers=AS_OPERATOR)
    assert r.status_code == 200, r.text
    job = client.post("/v1/models/synthetic/refit", headers=AS_OPERATOR).json()
    ended = wait_for(lambda: job_ended(client, job["id"]), FIT_TIMEOUT_S, "the second re-fit")
    assert (ended["state"], ended["version"]) == ("succeeded", "synthetic-v3"), ended["message"]
    assert ended["counts"] == {
        "train_images": n_train + 2 - 1 + 1,
        "train_reviewed_good": 1,
        "calibration_good": 1,
        "calibration_defect": 3,
    }
    third = Path(read_manifest(Path(ended["dir"]))["data"]["train_dir"])
    assert relabelled.name not in {p.name for p in list_images(third)}


def test_a_cancelled_or_failing_refit_leaves_the_models_folder_and_the_active_model_untouched(
    client: TestClient, models_dir: Path, dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nothing = client.post("/v1/models/synthetic/refit", headers=AS_OPERATOR)
    assert nothing.status_code == 409 and "reviewed as good" in nothing.json()["detail"]
    review_parts(client, dataset, n_good=2, n_defect=0)
    active = client.get("/v1/models/synthetic", headers=AS_CAMERA).json()
    before = tree(models_dir)

    job = client.post("/v1/models/synthetic/refit", headers=AS_OPERATOR).json()
    wait_for(lambda: client.get(f"/v1/refits/{job['id']}", headers=AS_OPERATOR).json()["stage"] == "fit", 60)
    pid = wait_for(lambda: client.app.state.refits.get(job["id"]).pid, 10)  # type: ignore[attr-defined]
    wait_for(lambda: os.getpriority(os.PRIO_PROCESS, pid) == 19, 10, "the fit's niceness")  # the line goes first
    assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    cancelled = client.delete(f"/v1/refits/{job['id']}", headers=AS_OPERATOR)
    assert cancelled.status_code == 200, cancelled.text
    ended = wait_for(lambda: job_ended(client, job["id"]), 60, "the cancel")
    assert ended["state"] == "cancelled" and "active model is unchanged" in ended["message"]
    assert client.delete(f"/v1/refits/{job['id']}", headers=AS_OPERATOR).status_code == 409

    # A fit that fails: the recipe's parameters, as its manifest records them, are not valid any more.
    manifest_file = models_dir / "synthetic" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["params"]["coreset_ratio"] = 5.0
    manifest_file.write_text(json.dumps(manifest))
    before = tree(models_dir)
    job = client.post("/v1/models/synthetic/refit", headers=AS_OPERATOR).json()
    ended = wait_for(lambda: job_ended(client, job["id"]), FIT_TIMEOUT_S, "the failing re-fit")
    assert ended["state"] == "failed" and "coreset_ratio" in ended["message"], ended["message"]

    assert tree(models_dir) == before
    assert not (tmp_path / "store" / "refits").exists() or not any((tmp_path / "store" / "refits").iterdir())
    registry = client.app.state.inspector.registry  # type: ignore[attr-defined]
    assert registry.shadow("synthetic") is None
    assert client.get("/v1/models/synthetic", headers=AS_CAMERA).json()["version"] == active["version"]
    entries = refit_audit(client)
    assert [e["new"] for e in entries] == ["started", "cancelled", "started", "failed"]
    assert entries[1]["user"] == "operator" and entries[1]["operator"] == "ana"

    # The line box: no training stack, a clear refusal naming the extra.
    monkeypatch.setattr(refit, "missing_training_package", lambda: "torch")
    refused = client.post("/v1/models/synthetic/refit", headers=AS_OPERATOR)
    assert refused.status_code == 501 and 'pip install "inspector[fit]"' in refused.json()["detail"]


def test_the_page_fits_a_new_version_and_shows_its_progress(models_dir: Path, dataset: Dataset, tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium chromium-driver)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="needs the playwright package (pip install)", exc_type=ImportError
    )
    config = settings(models_dir, tmp_path / "store").model_copy(update={"web_dir": DEFAULT_WEB_DIR})
    with serving(config) as (url, _), sync_api.sync_playwright() as p:
        with httpx.Client(base_url=url, timeout=30) as http:
            review_parts(http, dataset, n_good=2, n_defect=0)
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        errors: list[str] = []

        def unlocked(key: str) -> Any:
            page = browser.new_context(viewport=SCREEN).new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/#/recipes")
            page.wait_for_selector("#key-dialog[open]")
            page.fill("#key-form input[name=key]", key)
            page.click("#key-form button[type=submit]")
            return page

        # A station with the camera key sees the button; merely showing it asks for no other key.
        camera = unlocked(CAMERA)
        camera.wait_for_selector(".recipe[data-recipe=synthetic] .recipe-refit >> text=Enter the operator key")
        assert not camera.locator("#key-dialog[open]").count()
        page = unlocked(OPERATOR)
        page.evaluate("document.addEventListener('refit-ended', (e) => (document.body.dataset.ended = e.detail.state))")
        panel = page.locator(".recipe[data-recipe=synthetic] .recipe-refit")
        panel.locator("button.refit-start").click()
        panel.locator("progress").wait_for()
        assert panel.locator("button.refit-start").is_disabled() and panel.get_attribute("data-state") == "running"
        page.wait_for_selector("body[data-ended=succeeded]", state="attached", timeout=FIT_TIMEOUT_S * 1000)
        text = panel.inner_text()
        assert "New version synthetic-v2 is the shadow." in text and "good-only normal rule" in text
        browser.close()
    assert not errors, errors


def test_what_a_crash_left_of_a_refit_is_removed_at_start_up(models_dir: Path, tmp_path: Path) -> None:
    staging = models_dir / "synthetic.versions" / ".refit-0123456789ab" / "model"
    staging.mkdir(parents=True)
    unfinished = tmp_path / "store" / "refits" / "0123456789ab"
    landed = tmp_path / "store" / "refits" / "ba9876543210" / "synthetic" / "train" / "good"
    for folder in (unfinished, landed):
        folder.mkdir(parents=True)
    (unfinished / refit.INCOMPLETE).touch()
    with running(settings(models_dir, tmp_path / "store")):
        assert not (models_dir / "synthetic.versions").exists() and not unfinished.exists()
        assert landed.is_dir()  # the data set of a version that landed: its manifest names it
