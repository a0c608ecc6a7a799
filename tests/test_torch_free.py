"""The scoring half runs without the training stack: with `import torch` and `import timm` made to fail, a
model directory still loads, scores an image, and the service answers /v1/inspect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from inspector.data import Dataset
from inspector.models.estimators import Padim

BLOCKED = ("torch", "timm", "torchvision")

# Runs in a fresh interpreter: a meta-path finder refuses the training stack before anything is imported.
SCRIPT = """
import importlib.abc, json, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the scoring half must not import it")
        return None

sys.meta_path.insert(0, Blocker())
for name in BLOCKED:
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"the blocker failed for {name}")

from fastapi.testclient import TestClient

from inspector.data.io import read_image
from inspector.models.scoring import load_scorer
from inspector.service.app import create_app
from inspector.service.config import ModelSpec, Settings, StoreSettings

out = {}
for name, model_dir in MODELS.items():
    result = load_scorer(model_dir).score([read_image(IMAGE)])
    out[name] = {"score": float(result.scores[0]), "map_shape": list(result.maps.shape)}

settings = Settings(models=[ModelSpec(dir=d, name=n) for n, d in MODELS.items()], store=StoreSettings(dir=STORE))
with TestClient(create_app(settings)) as client:
    import time
    deadline = time.time() + 120
    while client.get("/readyz").status_code != 200:
        if time.time() > deadline:
            raise SystemExit("the service never became ready")
        time.sleep(0.2)
    with open(IMAGE, "rb") as f:
        answer = client.post("/v1/inspect?model=patchcore", files={"image": ("part.png", f, "image/png")})
    out["inspect"] = {"status": answer.status_code, **answer.json()}
out["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def padim_dir(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = Padim(image_size=64, n_features=20).fit(dataset.train()[:6], progress=False)
    return model.save(tmp_path_factory.mktemp("padim") / "padim")


def test_scoring_and_serving_need_neither_torch_nor_timm(
    patchcore_dir: Path, padim_dir: Path, dataset: Dataset, tmp_path: Path
) -> None:
    image = dataset.test()[-1].path
    header = (
        f"BLOCKED = {BLOCKED!r}\nIMAGE = {str(image)!r}\nSTORE = {str(tmp_path / 'store')!r}\n"
        f"MODELS = {{'patchcore': {str(patchcore_dir)!r}, 'padim': {str(padim_dir)!r}}}\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", header + SCRIPT], capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["patchcore"]["map_shape"] == [1, 128, 128]
    assert out["padim"]["map_shape"] == [1, 64, 64]
    assert out["inspect"]["status"] == 200
    assert out["inspect"]["score"] == pytest.approx(out["patchcore"]["score"], rel=1e-5)
