"""A non-editable install carries what the package finds through its own folder: the category configs and the
operator page. Built as a wheel and installed into a scratch folder, so nothing comes from this checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHECK = """
import inspector
from inspector.models.settings import find_category_config
from inspector.service.app import DEFAULT_WEB_DIR
assert inspector.__file__.startswith(SITE), inspector.__file__
config = find_category_config("bottle")
assert config is not None and str(config).startswith(SITE), config
assert (DEFAULT_WEB_DIR / "index.html").is_file() and str(DEFAULT_WEB_DIR).startswith(SITE), DEFAULT_WEB_DIR
print("ok")
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("inspector-*.whl")
    return built


def test_the_wheel_ships_configs_and_the_operator_page(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "inspector/configs/mvtec/bottle.yaml" in names
    assert "inspector/configs/service.example.yaml" in names
    assert "inspector/service/web/index.html" in names
    assert "inspector/service/web/js/app.js" in names


def test_an_installed_wheel_finds_them_from_any_folder(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    run = subprocess.run(
        [sys.executable, "-c", f"SITE = {str(site)!r}\n" + CHECK],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "ok"
