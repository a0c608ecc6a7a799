"""The container files name settings and flags the service really reads (nothing here needs Docker)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from inspector.cli import build_parser, serve
from inspector.service.config import load_settings

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_env() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", text, flags=re.M):
        env.update(pair.split("=", 1) for pair in shlex.split(line))
    return env


def test_compose_service_starts_with_the_images_settings_and_real_flags() -> None:
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["inspector"]
    env = {**dockerfile_env(), "INSPECTOR_CAMERA_KEY": "cam", "INSPECTOR_OPERATOR_KEY": "op"}
    assert set(service["environment"]) <= set(env)
    settings = load_settings(env=env)
    assert settings.host == "0.0.0.0"
    assert settings.has_keys
    assert settings.store.dir == Path("/data/inspections")
    assert settings.web_dir is None  # the package ships the page
    assert any(volume.endswith(":/data/inspections") for volume in service["volumes"])
    assert env["INSPECTOR_OFFLINE"] == "1"  # the container never reaches for the weights hub

    command = [arg.replace("${INSPECTOR_MODEL:-bottle}", "bottle") for arg in service["command"]]
    args = build_parser().parse_args(command)
    assert args.handler is serve.run
    assert args.model_dir == ["/app/models/bottle"]
    assert any(volume.endswith(":/app/models") for volume in service["volumes"])
