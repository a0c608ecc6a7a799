"""Model directories fitted before the restructuring load and score identically after it.

The fixture directories are made by the project itself: the source tree of the last commit before the
restructuring is taken from git, and that code fits and saves one model of each kind on generated data and
records the scores its own loader gives. This code then loads the same directories and must give the same
scores and maps (1e-6). Skipped where the git history is not available (e.g. a source archive).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

from inspector.data.io import read_image
from inspector.models.scoring import load_scorer

BEFORE = "4088d540de73a51ff9ac2ee06ed99de4c4531739"  # main before the restructuring (model format 1)
REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
from pathlib import Path
import numpy as np
import inspector
assert inspector.__file__.startswith(OLD_SRC), inspector.__file__
from inspector.data import Dataset, read_image
from inspector.data.synthetic import make_category
from inspector.models import create_model, load_model

root = Path(OUT)
make_category(root / "data", "part", n_train=8, n_test_good=3, n_test_defect_per_type=1, size=64, seed=0)
dataset = Dataset(root / "data", "part")
settings = {
    "patchcore": {"coreset_ratio": 0.1},
    "padim": {"n_features": 30},
    "fastflow": {"epochs": 2, "flow_steps": 2},
}
images = [s.path for s in dataset.test()]
for kind, params in settings.items():
    model = create_model(kind, image_size=64, threads=1, **params).fit(dataset.train(), progress=False)
    model.save(root / kind, data={"category": "part"})
    result = load_model(root / kind, threads=1).score([read_image(p) for p in images])
    np.save(root / f"{kind}_scores.npy", result.scores)
    np.save(root / f"{kind}_maps.npy", result.maps)
(root / "images.json").write_text(json.dumps([str(p) for p in images]))
"""


def _old_source(tmp: Path) -> Path:
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", BEFORE, "src"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"git history with commit {BEFORE[:8]} is not available here ({exc})")
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(tmp, filter="data")
    return tmp / "src"


@pytest.fixture(scope="module")
def old_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    old_src = _old_source(tmp_path_factory.mktemp("before"))
    out = tmp_path_factory.mktemp("fitted_before")
    header = f"OLD_SRC = {str(old_src)!r}\nOUT = {str(out)!r}\n"
    env = {**os.environ, "PYTHONPATH": str(old_src), "INSPECTOR_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", header + SCRIPT], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return out


@pytest.mark.parametrize("kind", ["patchcore", "padim", "fastflow"])
def test_a_model_fitted_before_scores_identically(old_models: Path, kind: str) -> None:
    images = [read_image(p) for p in json.loads((old_models / "images.json").read_text())]
    scorer = load_scorer(old_models / kind, threads=1)
    assert scorer.kind == kind
    result = scorer.score(images)
    np.testing.assert_allclose(result.scores, np.load(old_models / f"{kind}_scores.npy"), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(result.maps, np.load(old_models / f"{kind}_maps.npy"), rtol=1e-6, atol=1e-6)
