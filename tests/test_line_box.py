"""The line box as shipped: `pip install .` alone, no torch, no timm. It serves a model fitted on the engineering
PC, and `fit` there stops with one line naming the extra to install.

The interpreter is $INSPECTOR_LINEBOX_PYTHON (.ci/run builds it in .linebox/); without it these tests skip. The
install is a copy of the tree it was built from: rebuild it after changing the code.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from inspector.cli.arguments import FIT_EXTRA
from inspector.data import Dataset
from tests.helpers import free_port, wait_ready

CAMERA, OPERATOR = "line-camera-key", "line-operator-key"


@pytest.fixture(scope="module")
def linebox() -> Path:
    value = os.environ.get("INSPECTOR_LINEBOX_PYTHON")
    if not value:
        pytest.skip("INSPECTOR_LINEBOX_PYTHON is not set (.ci/run builds a torch-free venv in .linebox/)")
    python = Path(value)
    if not python.is_file():
        pytest.skip(f"INSPECTOR_LINEBOX_PYTHON={python} does not exist")
    return python


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that could put the checkout's or the dev venv's packages on
    the line box's path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, **extra}


def test_the_line_box_has_no_training_stack(linebox: Path) -> None:
    probe = "import importlib.util as u; print([n for n in ('torch', 'timm', 'torchvision') if u.find_spec(n)])"
    run = subprocess.run([str(linebox), "-c", probe], env=clean_env(), capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_the_line_box_serves_a_model_fitted_with_the_training_stack(
    linebox: Path, service_model_dir: Path, dataset: Dataset, tmp_path: Path
) -> None:
    port = free_port()
    env = clean_env(
        INSPECTOR_CAMERA_KEY=CAMERA,
        INSPECTOR_OPERATOR_KEY=OPERATOR,
        INSPECTOR_STORE_MIN_FREE_DISK_MB="0",
        INSPECTOR_WARMUP_RUNS="1",
    )
    command = [str(linebox.parent / "inspector"), "serve", "--model-dir", str(service_model_dir)]
    command += ["--port", str(port), "--store-dir", str(tmp_path / "store"), "--threads", "2"]
    server = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(server, url, timeout_s=120)
        defect = next(s.path for s in dataset.test() if s.is_defect)
        headers = {"X-API-Key": CAMERA}
        assert httpx.post(f"{url}/v1/inspect", files={"image": ("p.png", defect.read_bytes())}).status_code == 401
        answer = httpx.post(
            f"{url}/v1/inspect", files={"image": ("p.png", defect.read_bytes(), "image/png")}, headers=headers
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["verdict"] in ("pass", "fail")
        assert body["calibrated"]
        assert body["score"] > 0
        (info,) = httpx.get(f"{url}/v1/models", headers=headers).json()
        assert info["runtime"].startswith("onnxruntime/")
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            _, stderr = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0, stderr.decode()[-3000:]
    assert b"Traceback" not in stderr


@pytest.mark.parametrize("launch", ["script", "-m inspector", "-m inspector.cli"])
@pytest.mark.parametrize("train_dir", ["empty", "missing"])
def test_fit_on_the_line_box_names_the_extra_in_one_line(
    linebox: Path, tmp_path: Path, launch: str, train_dir: str
) -> None:
    """Whatever else is wrong with the command line, the missing training stack is what the user hears first."""
    train = tmp_path / "train"
    if train_dir == "empty":
        train.mkdir()
    out = tmp_path / "model"
    command = [str(linebox.parent / "inspector")] if launch == "script" else [str(linebox), *launch.split()]
    run = subprocess.run(
        [*command, "fit", "--train-dir", str(train), "--out", str(out)],
        env=clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    (line,) = run.stderr.splitlines()
    assert line.startswith("error: ")
    assert FIT_EXTRA in line
    assert run.stdout == ""
    assert not out.exists()
