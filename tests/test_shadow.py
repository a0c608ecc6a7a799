"""Shadow and promote: a second version of a recipe scores in shadow without reaching the line; promotion and
rollback swap versions atomically under load, are audited, refused by a failing golden gate, and survive a
restart."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from inspector.calibration import Calibration, activate_calibration, save_calibration
from inspector.data import Dataset, read_image
from inspector.link.result import LineResult
from inspector.models.estimators import PatchCore
from inspector.service.metrics import ServiceMetrics
from inspector.service.recipes import POINTER_FILE, versions_dir
from inspector.service.shadow import ShadowScorer
from tests.conftest import SIZE
from tests.helpers import wait_for
from tests.test_recipes import AS_CAMERA, AS_OPERATOR, recipe, settings
from tests.test_service import running


def fit_version(dataset: Dataset, model_dir: Path, coreset_ratio: float = 0.05) -> Path:
    """Another fitted version of the session's recipe (a smaller coreset: other scores, another manifest), with
    a "mid" calibration between its good and defect test scores and a "lax" one that passes every part."""
    model = PatchCore(image_size=SIZE, coreset_ratio=coreset_ratio, threads=2).fit(dataset.train(), progress=False)
    model.save(model_dir, data={"category": "synthetic"})
    samples = dataset.test()
    scores = model.score([read_image(s.path) for s in samples]).scores
    good = max(s for s, x in zip(scores, samples, strict=True) if not x.is_defect)
    bad = sorted(s for s, x in zip(scores, samples, strict=True) if x.is_defect)
    threshold = float(good + bad[len(bad) // 2]) / 2
    save_calibration(model_dir, Calibration(image_threshold=threshold * 100, rule="test", name="lax"), activate=False)
    save_calibration(
        model_dir, Calibration(image_threshold=threshold, rule="test", name="mid", pixel_threshold=threshold)
    )
    return model_dir


@pytest.fixture(scope="module")
def version_two(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_version(dataset, tmp_path_factory.mktemp("v2") / "synthetic-v2")


def lax_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    activate_calibration(target, "lax")
    return target


def post(client: TestClient, image: Path, model: str = "a") -> dict[str, Any]:
    answer = client.post(
        "/v1/inspect", files={"image": ("p.png", image.read_bytes())}, params={"model": model}, headers=AS_CAMERA
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_shadow_verdicts_are_recorded_but_never_returned_to_the_line(
    service_model_dir: Path, version_two: Path, tmp_path: Path, images: dict[str, Path]
) -> None:
    recipe(service_model_dir, tmp_path / "models" / "a")
    shadow_dir = lax_copy(version_two, tmp_path / "models" / "a.versions" / "v2")  # passes every part
    with running(settings(tmp_path / "models", tmp_path / "store")) as c:
        told: list[LineResult] = []
        hub = c.app.state.links  # type: ignore[attr-defined]
        hub.publish = told.append  # what the PLC, MQTT and webhooks would be handed
        active = c.get("/v1/models/a", headers=AS_CAMERA).json()
        body = {"dir": "a.versions/v2", "reason": "candidate"}
        assert c.put("/v1/models/a/shadow", json=body, headers=AS_CAMERA).status_code == 403
        loaded = c.put("/v1/models/a/shadow", json=body, headers=AS_OPERATOR)
        assert loaded.status_code == 200, loaded.text
        shadow = loaded.json()
        assert shadow["version"] != active["version"] and shadow["dir"] == str(shadow_dir.resolve())

        answers = [post(c, images["defect"]), post(c, images["good"])]
        for answer in answers:
            assert answer["model_version"] == active["version"] and "shadow" not in str(sorted(answer))
        assert answers[0]["verdict"] == "fail"
        assert [(r.inspection_id, r.verdict, r.model_version) for r in told] == [
            (a["id"], a["verdict"], active["version"]) for a in answers
        ]

        c.app.state.inspector.shadow.join()  # type: ignore[attr-defined]
        results = c.get(f"/v1/inspections/{answers[0]['id']}/shadow", headers=AS_CAMERA).json()
        assert [(r["shadow_version"], r["verdict"], r["calibration"]) for r in results] == [
            (shadow["version"], "pass", "lax")
        ]
        assert c.get(f"/v1/inspections/{answers[0]['id']}", headers=AS_CAMERA).json()["verdict"] == "fail"

        page = c.get("/v1/models/a/disagreements", headers=AS_CAMERA).json()
        assert (page["agree"], page["disagree"]) == (1, 1)
        assert {(p["active"], p["shadow"], p["count"]) for p in page["pairs"]} == {
            ("fail", "pass", 1),
            ("pass", "pass", 1),
        }
        (item,) = page["items"]
        assert item["inspection"]["id"] == answers[0]["id"] and item["shadow"]["verdict"] == "pass"
        for url in (item["inspection"]["heatmap_url"], item["shadow"]["heatmap_url"]):
            png = c.get(url, headers=AS_CAMERA)
            assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
        assert 'inspector_shadow_inspections_total{agreement="disagree",model="a"} 1.0' in c.get("/metrics").text

        # Retention deletes the shadow results and their maps with their inspection.
        store = c.app.state.inspector.store  # type: ignore[attr-defined]
        maps = list(store.files.rglob("*.shadow-*"))
        assert len(maps) == 2
        assert store.enforce_retention(now=time.time() + 1000 * 86400) == 2
        assert not any(m.exists() for m in maps) and store.shadow_results(answers[0]["id"]) == []
        assert store.stats() == (0, 0)

        assert c.delete("/v1/models/a/shadow", headers=AS_OPERATOR).status_code == 200
        assert c.get("/v1/models/a/shadow", headers=AS_CAMERA).status_code == 404
        kinds = [(e["kind"], e["old"], e["new"]) for e in c.get("/v1/audit", headers=AS_OPERATOR).json()["items"]]
        assert ("model_shadow", None, shadow["version"]) in kinds and ("model_shadow", shadow["version"], None) in kinds


def test_a_shadow_that_falls_behind_skips_and_counts_instead_of_queueing(tmp_path: Path) -> None:
    release = threading.Event()
    scored: list[str] = []

    def slow_score(images: list[np.ndarray]) -> SimpleNamespace:
        release.wait(10)
        return SimpleNamespace(scores=[1.0], maps=[np.zeros((4, 4), np.float32)])

    shadow = SimpleNamespace(
        version="v2", scorer=SimpleNamespace(score=slow_score, preprocessing=None), calibration=None, map_threshold=None
    )
    registry = SimpleNamespace(shadow=lambda recipe: shadow)

    def insert_shadow(result: Any, amap: np.ndarray) -> bool:
        scored.append(result.inspection_id)
        return True

    store = SimpleNamespace(shadow_map_file=lambda record, version: "x", insert_shadow=insert_shadow)
    metrics = ServiceMetrics()
    scorer = ShadowScorer(registry, store, metrics, capacity=1)  # type: ignore[arg-type]
    for i in range(5):
        record = SimpleNamespace(id=f"{i}", model="a", model_version="v1", verdict="pass")
        scorer.submit(record, np.zeros((4, 4, 3), np.uint8))  # type: ignore[arg-type]
    skipped = metrics.shadow_skipped.labels("a", "behind")._value.get()
    assert 3 <= skipped <= 4  # one scoring, at most one waiting: the rest skipped at once
    release.set()
    scorer.join()
    assert len(scored) + skipped == 5
    scorer.shutdown()


def test_promotion_and_rollback_are_atomic_under_load_and_audited(
    service_model_dir: Path, version_two: Path, tmp_path: Path, images: dict[str, Path]
) -> None:
    recipe(service_model_dir, tmp_path / "models" / "a")
    recipe(service_model_dir, tmp_path / "models" / "b")
    shutil.copytree(version_two, tmp_path / "models" / "a.versions" / "v2")
    with running(settings(tmp_path / "models", tmp_path / "store", workers=2)) as c:
        c.put("/v1/models/a/shadow", json={"dir": "a.versions/v2"}, headers=AS_OPERATOR).raise_for_status()
        # What each version answers for this image, to check that no answer mixes two versions.
        first = post(c, images["defect"])
        c.app.state.inspector.shadow.join()  # type: ignore[attr-defined]
        (second,) = c.get(f"/v1/inspections/{first['id']}/shadow", headers=AS_CAMERA).json()
        expected = {
            first["model_version"]: (first["score"], first["calibration"]),
            second["shadow_version"]: (second["score"], second["calibration"]),
        }
        assert len(expected) == 2 and first["score"] != pytest.approx(second["score"], rel=1e-3)

        answers: list[dict[str, Any]] = []
        failures: list[str] = []
        stop = threading.Event()

        def line() -> None:
            data = images["defect"].read_bytes()
            while not stop.is_set():
                r = c.post("/v1/inspect", files={"image": ("p.png", data)}, params={"model": "a"}, headers=AS_CAMERA)
                (answers.append(r.json()) if r.status_code == 200 else failures.append(r.text))

        threads = [threading.Thread(target=line) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for action in ("promote", "rollback", "rollback"):  # the second rollback undoes the first
                three_more(answers)
                body = {"reason": f"test {action}"}
                done = c.post(f"/v1/models/a/{action}", json=body, headers=AS_OPERATOR)
                assert done.status_code == 200, done.text
            three_more(answers)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert failures == []
        seen = {a["model_version"] for a in answers}
        assert seen == set(expected)
        for a in answers:
            score, calibration = expected[a["model_version"]]
            assert a["score"] == pytest.approx(score, rel=1e-4) and a["calibration"] == calibration
        assert c.get("/v1/models/a", headers=AS_CAMERA).json()["version"] == second["shadow_version"]

        entries = c.get("/v1/audit", headers=AS_OPERATOR).json()["items"]
        v1, v2 = first["model_version"], second["shadow_version"]
        swaps = [e for e in entries if e["kind"] in ("model_promote", "model_rollback")][::-1]
        assert [(e["kind"], e["old"], e["new"], e["user"]) for e in swaps] == [
            ("model_promote", v1, v2, "operator"),
            ("model_rollback", v2, v1, "operator"),
            ("model_rollback", v1, v2, "operator"),
        ]
        assert all(e["reason"].startswith("test ") for e in swaps)
        assert post(c, images["good"], "b")["model"] == "b"  # the other recipe never noticed


def three_more(answers: list[dict[str, Any]]) -> None:
    """Until the line has had three more answers."""
    start = len(answers)
    wait_for(lambda: len(answers) >= start + 3, 60, "three more answers")


def test_the_gate_refuses_a_promotion_that_would_pass_a_known_defect(
    service_model_dir: Path, version_two: Path, tmp_path: Path, images: dict[str, Path]
) -> None:
    recipe(service_model_dir, tmp_path / "models" / "a")
    lax_copy(version_two, tmp_path / "models" / "a.versions" / "v2")
    golden = tmp_path / "golden"
    with running(settings(tmp_path / "models", tmp_path / "store", golden_dir=golden)) as c:
        c.put("/v1/models/a/shadow", json={"dir": "a.versions/v2"}, headers=AS_OPERATOR).raise_for_status()
        defect, good = post(c, images["defect"]), post(c, images["good"])
        for answer, verdict in ((defect, "defect"), (good, "good")):
            review = c.post(f"/v1/inspections/{answer['id']}/review", json={"verdict": verdict}, headers=AS_OPERATOR)
            review.raise_for_status()
        seeded = c.post("/v1/models/a/golden", json={"inspections": None}, headers=AS_OPERATOR).json()
        assert (seeded["good"], seeded["defect"]) == (1, 1)
        assert (golden / "a" / "defect" / f"{defect['id']}.png").read_bytes() == images["defect"].read_bytes()

        gate = c.get("/v1/models/a/gate", headers=AS_CAMERA).json()
        assert (gate["checked"], gate["passed"]) == (True, False)
        (failed,) = [check for check in gate["checks"] if check["failed"]]
        assert failed["name"] == f"defect/{defect['id']}.png"
        assert gate["failures"] == [f"{failed['name']}: {failed['problem']}"]
        assert c.get("/v1/models/a/gate?version=active", headers=AS_CAMERA).json()["passed"] is True

        refused = c.post("/v1/models/a/promote", json={"reason": "try"}, headers=AS_OPERATOR)
        assert refused.status_code == 409
        assert f"defect/{defect['id']}.png: expected fail, got pass" in refused.json()["detail"]
        assert c.get("/v1/models/a", headers=AS_CAMERA).json()["version"] == defect["model_version"]
        kinds = {e["kind"] for e in c.get("/v1/audit", headers=AS_OPERATOR).json()["items"]}
        assert "model_promote" not in kinds


def test_a_promotion_survives_a_restart_and_keeps_the_recipe_number(
    service_model_dir: Path, version_two: Path, tmp_path: Path, images: dict[str, Path]
) -> None:
    recipe(service_model_dir, tmp_path / "models" / "a")
    recipe(service_model_dir, tmp_path / "models" / "b")
    shutil.copytree(version_two, tmp_path / "models" / "b.versions" / "v2")
    config = settings(tmp_path / "models", tmp_path / "store")
    with running(config) as c:
        v1 = c.get("/v1/models/b", headers=AS_CAMERA).json()["version"]
        c.put("/v1/models/b/shadow", json={"dir": "b.versions/v2"}, headers=AS_OPERATOR).raise_for_status()
        v2 = c.post("/v1/models/b/promote", headers=AS_OPERATOR).json()["version"]
    assert (versions_dir(tmp_path / "models" / "b") / POINTER_FILE).is_file()
    with running(config) as c:
        assert post(c, images["good"], "b")["model_version"] == v2
        start = c.get("/v1/audit", params={"kind": "model_load", "model": "b"}, headers=AS_OPERATOR).json()["items"][0]
        assert (start["old"], start["new"], start["reason"]) == (v2, v2, "service start")
        versions = c.get("/v1/models/b/versions", headers=AS_CAMERA).json()
        assert versions["recipe_number"] == 2 and versions["shadow"] is None
        assert versions["previous"] == {
            "version": v1,
            "dir": str((tmp_path / "models" / "b").resolve()),
            "in_memory": False,
        }
        assert c.app.state.links.controls.line_status().recipes == ("a", "b")  # type: ignore[attr-defined]
        assert c.post("/v1/models/b/rollback", headers=AS_OPERATOR).json()["version"] == v1  # loads it first
        assert post(c, images["good"], "b")["model_version"] == v1
        c.put("/v1/models/b/shadow", json={"dir": "b.versions/v2"}, headers=AS_OPERATOR).raise_for_status()
    with running(config) as c:
        assert c.get("/v1/models/b", headers=AS_CAMERA).json()["version"] == v1
        assert wait_for(lambda: c.get("/v1/models/b/shadow", headers=AS_CAMERA).json().get("version")) == v2


def test_a_version_without_calibration_is_not_promoted_over_a_calibrated_one(
    service_model_dir: Path, version_two: Path, tmp_path: Path
) -> None:
    recipe(service_model_dir, tmp_path / "models" / "a")
    bare = shutil.copytree(version_two, tmp_path / "models" / "a.versions" / "bare")
    (bare / "calibration.json").unlink()
    with running(settings(tmp_path / "models", tmp_path / "store")) as c:
        c.put("/v1/models/a/shadow", json={"dir": "a.versions/bare"}, headers=AS_OPERATOR).raise_for_status()
        refused = c.post("/v1/models/a/promote", headers=AS_OPERATOR)
        assert refused.status_code == 409 and "would stop the line's verdicts" in refused.json()["detail"]
        assert c.get("/v1/models/a", headers=AS_CAMERA).json()["dir"] == str((tmp_path / "models" / "a").resolve())
