"""Recipes: several models served at once from `models_dir`, a memory budget, and loading and unloading a model
while the line keeps inspecting with the others."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from inspector.calibration import activate_calibration
from inspector.link.sink import UnknownRecipe
from inspector.service.config import ModelSpec, ServiceConfigError, Settings, StoreSettings, load_settings
from inspector.service.memory import estimate_mb
from inspector.service.recipes import served_models
from tests.test_service import running

CAMERA, OPERATOR = "camera-key-r1", "operator-key-r2"
AS_CAMERA, AS_OPERATOR = {"X-API-Key": CAMERA}, {"X-API-Key": OPERATOR}


def recipe(source: Path, target: Path, calibration: str = "mid") -> Path:
    """A copy of the session's model as another recipe; "lax" passes every part, so answers tell recipes apart."""
    shutil.copytree(source, target)
    activate_calibration(target, calibration)
    return target


def settings(models_dir: Path, store_dir: Path, **overrides: Any) -> Settings:
    return Settings(
        models_dir=models_dir,
        warmup_runs=1,
        threads=2,
        camera_key=SecretStr(CAMERA),
        operator_key=SecretStr(OPERATOR),
        store=StoreSettings(dir=store_dir, min_free_disk_mb=0),
        **overrides,
    )


def inspect(client: TestClient, image: Path, model: str) -> dict[str, Any]:
    data = {"image": ("p.png", image.read_bytes())}
    answer = client.post("/v1/inspect", files=data, params={"model": model}, headers=AS_CAMERA)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_two_recipes_each_answer_their_own_requests(
    service_model_dir: Path, tmp_path: Path, images: dict[str, Path]
) -> None:
    recipe(service_model_dir, tmp_path / "models" / "b_lax", "lax")
    recipe(service_model_dir, tmp_path / "models" / "a_strict")
    (tmp_path / "models" / "notes").mkdir()  # a folder without a model is no recipe
    with running(settings(tmp_path / "models", tmp_path / "store")) as c:
        c.headers.update(AS_CAMERA)
        strict, lax = inspect(c, images["defect"], "a_strict"), inspect(c, images["defect"], "b_lax")
        assert (strict["model"], strict["verdict"], strict["calibration"]) == ("a_strict", "fail", "mid")
        assert (lax["model"], lax["verdict"], lax["calibration"]) == ("b_lax", "pass", "lax")
        assert c.post("/v1/inspect", files={"image": ("p.png", images["good"].read_bytes())}).status_code == 400
        assert c.app.state.links.controls.line_status().recipes == ("a_strict", "b_lax")  # type: ignore[attr-defined]

        models = {m["name"]: m for m in c.get("/v1/models").json()}
        assert list(models) == ["a_strict", "b_lax"]
        assert all(m["resident_mb"] >= 0 and m["estimated_mb"] > 0 for m in models.values())
        assert 'inspector_model_resident_bytes{model="b_lax"}' in c.get("/metrics").text


def test_a_load_over_the_memory_budget_is_refused_and_nothing_else_changes(
    service_model_dir: Path, tmp_path: Path, images: dict[str, Path]
) -> None:
    recipe(service_model_dir, tmp_path / "models" / "a")
    recipe(service_model_dir, tmp_path / "models" / "b")  # over the budget already at start-up
    extra = recipe(service_model_dir, tmp_path / "elsewhere" / "c")
    budget = estimate_mb(extra) * 1.5  # room for one model
    with running(settings(tmp_path / "models", tmp_path / "store", model_memory_budget_mb=budget)) as c:
        c.headers.update(AS_OPERATOR)
        ready = c.get("/readyz").json()
        assert ready["models"] == {"a": True, "b": False}
        assert "model 'b'" in ready["detail"] and "model_memory_budget_mb" in ready["detail"]

        refused = c.post("/v1/models", json={"dir": str(extra)})
        assert refused.status_code == 507
        detail = refused.json()["detail"]
        assert "model 'c' (estimated" in detail and "a " in detail and f"model_memory_budget_mb {budget:g}" in detail

        assert inspect(c, images["defect"], "a")["verdict"] == "fail"
        assert c.post("/v1/inspect", params={"model": "b"}, files={"image": ("p.png", b"x")}).status_code == 507
        assert [m["name"] for m in c.get("/v1/models").json()] == ["a"]
        assert c.get("/readyz").status_code == 200


def test_load_and_unload_at_run_time_while_the_line_keeps_inspecting(
    service_model_dir: Path, tmp_path: Path, images: dict[str, Path]
) -> None:
    models_dir = tmp_path / "models"
    recipe(service_model_dir, models_dir / "a")
    recipe(service_model_dir, models_dir / "b")
    with running(settings(models_dir, tmp_path / "store")) as c:
        hub = c.app.state.links  # type: ignore[attr-defined]
        failures: list[str] = []
        stop = threading.Event()

        def keep_inspecting() -> None:
            data = images["good"].read_bytes()
            while not stop.is_set():
                r = c.post("/v1/inspect", files={"image": ("p.png", data)}, params={"model": "a"}, headers=AS_CAMERA)
                if r.status_code != 200 or r.json()["model"] != "a":
                    failures.append(r.text)

        line = threading.Thread(target=keep_inspecting)
        line.start()
        try:
            recipe(service_model_dir, models_dir / "c", "lax")
            assert c.post("/v1/models", json={"name": "c"}, headers=AS_CAMERA).status_code == 403
            loaded = c.post("/v1/models", json={"name": "c", "reason": "new part"}, headers=AS_OPERATOR)
            assert loaded.status_code == 201, loaded.text
            assert inspect(c, images["defect"], "c")["verdict"] == "pass"
            assert hub.controls.line_status().recipes == ("a", "b", "c")
            assert c.post("/v1/models", json={"name": "c"}, headers=AS_OPERATOR).status_code == 409

            assert c.delete("/v1/models/b", headers=AS_OPERATOR).status_code == 200
            assert hub.controls.line_status().recipes == ("a", "", "c")  # the others keep their numbers
            assert hub.select_recipe(3) == "c"
            with pytest.raises(UnknownRecipe, match="unloaded"):
                hub.select_recipe(2)
            gone = c.post("/v1/inspect", params={"model": "b"}, files={"image": ("p.png", b"x")}, headers=AS_CAMERA)
            assert gone.status_code == 404
        finally:
            stop.set()
            line.join()
        assert failures == []

        entries = c.get("/v1/audit", headers=AS_OPERATOR).json()["items"]
        kinds = [(e["kind"], e["model"], e["user"]) for e in entries]
        assert ("model_load", "c", "operator") in kinds
        assert ("model_unload", "b", "operator") in kinds


def test_a_name_cannot_reach_outside_the_models_dir(service_model_dir: Path, tmp_path: Path) -> None:
    recipe(service_model_dir, tmp_path / "models" / "a")
    recipe(service_model_dir, tmp_path / "outside")
    with running(settings(tmp_path / "models", tmp_path / "store")) as c:
        c.headers.update(AS_OPERATOR)
        for body in ({"name": "../outside"}, {"dir": "../outside"}, {"dir": "a/../../outside"}):
            refused = c.post("/v1/models", json=body)
            assert refused.status_code == 400, body
            assert "outside models_dir" in refused.json()["detail"]
        assert c.post("/v1/models", json={"name": "missing"}).status_code == 404
        assert [m["name"] for m in c.get("/v1/models").json()] == ["a"]


def test_a_name_in_both_models_and_models_dir_is_a_config_error(service_model_dir: Path, tmp_path: Path) -> None:
    recipe(service_model_dir, tmp_path / "models" / "a")
    clash = Settings(models=[ModelSpec(dir=service_model_dir, name="a")], models_dir=tmp_path / "models")
    with pytest.raises(ServiceConfigError, match=r"clash.*: a;"):
        served_models(clash)
    env = {"INSPECTOR_MODELS_DIR": str(tmp_path / "models")}
    assert [s.name for s in served_models(load_settings(env=env))] == ["a"]
