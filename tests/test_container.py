"""The container files name settings, flags and packages the project really has (nothing here needs Docker).

The images themselves are built and run by scripts/container_smoke.sh (docs/deploy.md); these tests keep the
Dockerfile, docker-compose.yml, .dockerignore and that script consistent with the code between such runs.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from inspector.cli import build_parser, serve
from inspector.service.config import Settings, _fields, env_name, load_settings

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("inspector-line", "inspector-fit")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
SETTINGS_ENV = {env_name(path) for path, _ in _fields(Settings)}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [rest for name, rest in self.instructions if name == instruction]

    @property
    def run(self) -> str:
        return "\n".join(self.args("RUN"))


def dockerfile_lines() -> list[str]:
    """Instructions, one per line: comments dropped, continuation lines joined."""
    kept = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    return [line.strip() for line in "\n".join(kept).replace("\\\n", " ").splitlines() if line.strip()]


def stages() -> dict[str, Stage]:
    out: dict[str, Stage] = {}
    current: Stage | None = None
    for line in dockerfile_lines():
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), flags=re.I)
            assert match, f"every stage is named: FROM {rest}"
            current = out[match[2]] = Stage(name=match[2], base=match[1])
        elif current is not None:
            current.instructions.append((instruction, rest.strip()))
    return out


def chain(name: str) -> list[Stage]:
    """A target and every stage it is built from (its FROM ancestors and the stages it copies or mounts)."""
    all_stages = stages()
    seen: list[Stage] = []

    def visit(stage_name: str) -> None:
        if stage_name not in all_stages or any(s.name == stage_name for s in seen):
            return
        stage = all_stages[stage_name]
        seen.append(stage)
        visit(stage.base)
        for _, rest in stage.instructions:
            for ref in re.findall(r"(?:--|,)from=([^\s,]+)", rest):
                visit(ref)

    visit(name)
    return seen


def stage_env(stage_names: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in stage_names:
        for line in stages()[name].args("ENV"):
            env.update(pair.split("=", 1) for pair in shlex.split(line))
    return env


def ancestors(target: str) -> list[Stage]:
    """The target and its FROM ancestors (the stages whose layers the image is made of)."""
    all_stages, out, name = stages(), [], target
    while name in all_stages:
        out.append(all_stages[name])
        name = all_stages[name].base
    return out


def target_env(target: str) -> dict[str, str]:
    """The environment a target's containers start with (ENV of the target and its FROM ancestors)."""
    return stage_env([s.name for s in reversed(ancestors(target))])


def arg_defaults() -> dict[str, str]:
    defaults: dict[str, str] = {}
    for line in dockerfile_lines():
        if line.upper().startswith("ARG "):
            name, _, value = line[4:].strip().partition("=")
            defaults.setdefault(name, value)
    return defaults


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} for the values these tests look at."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match[1], match[2], match[3]
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


# ---- the compose service starts from the image's settings with real flags ----------------------------------


def test_compose_service_starts_with_the_images_settings_and_real_flags() -> None:
    service = compose()["services"]["inspector"]
    keys = {"INSPECTOR_CAMERA_KEY": "cam", "INSPECTOR_OPERATOR_KEY": "op"}
    image_env = target_env("inspector-line")
    env = {**image_env, **{k: interpolate(str(v), keys) for k, v in service["environment"].items()}}
    links = {"INSPECTOR_LINKS_PLC", "INSPECTOR_LINKS_MQTT_URL"}  # off unless the integrator sets them
    assert set(service["environment"]) <= set(image_env) | set(keys) | links
    settings = load_settings(env=env)
    assert not settings.links.any
    assert settings.host == "0.0.0.0"
    assert settings.has_keys
    assert settings.store.dir == Path("/data/inspections")
    assert settings.web_dir is None  # the package ships the page
    assert env["INSPECTOR_OFFLINE"] == "1"  # the container never reaches for the weights hub
    with pytest.raises(KeyError, match="INSPECTOR_CAMERA_KEY"):  # compose refuses to start without the keys
        interpolate(service["environment"]["INSPECTOR_CAMERA_KEY"], {})

    volumes = [interpolate(v, {}) for v in service["volumes"]]
    assert any(volume.endswith(":/data/inspections") for volume in volumes)
    assert any(volume.endswith(":/app/models") for volume in volumes)
    plc = {**keys, "INSPECTOR_LINKS_PLC": "modbus://0.0.0.0:5020,opcua://0.0.0.0:4840"}
    with_plc = load_settings(
        env={**image_env, **{k: interpolate(str(v), plc) for k, v in service["environment"].items()}}
    )
    published = {interpolate(p, {}).rsplit(":", 1)[1] for p in service["ports"]}
    assert {url.rsplit(":", 1)[1] for url in with_plc.links.plc} <= published  # the PLC servers' ports are published

    command = [interpolate(arg, {"INSPECTOR_MODEL": "bottle"}) for arg in service["command"]]
    args = build_parser().parse_args(command)
    assert args.handler is serve.run
    assert args.model_dir == ["/app/models/bottle"]


def test_every_inspector_variable_in_the_images_is_a_setting() -> None:
    """A misspelt INSPECTOR_* variable would be ignored silently by the service."""
    for target in TARGETS:
        names = {n for n in target_env(target) if n.startswith("INSPECTOR_")}
        assert names <= SETTINGS_ENV | {"INSPECTOR_OFFLINE"}, target
    service_env = {n for s in compose()["services"].values() for n in s["environment"]}
    assert service_env <= SETTINGS_ENV


def test_compose_only_variables_never_collide_with_settings() -> None:
    """The host-side variables (folders, port, user) are read by compose only: were one a setting's name, a
    shell that exports it for a host `inspector serve` would configure both."""
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    passed = {n for s in compose()["services"].values() for n in s["environment"]}
    assert used - passed, "the compose file has host-side variables"
    assert not (used - passed) & SETTINGS_ENV


# ---- two targets from one Dockerfile -----------------------------------------------------------------------


def test_two_targets_from_a_local_base() -> None:
    all_stages = stages()
    assert set(TARGETS) <= set(all_stages)
    assert all_stages["inspector-fit"].base == "inspector-line"  # the fit image = the line image + the extra
    assert not (ROOT / "Dockerfile").read_text().lstrip().startswith("# syntax")  # that would pull a frontend
    roots = {s.base for s in all_stages.values() if s.base not in all_stages}
    assert roots == {"${BASE_IMAGE}"}, "every stage starts from the locally built base, no registry image"
    assert arg_defaults()["BASE_IMAGE"] == "inspector-base:bookworm"
    script = (ROOT / "scripts" / "container_smoke.sh").read_text()
    assert "BASE_IMAGE:-inspector-base:bookworm" in script
    assert "debootstrap --variant=minbase bookworm" in script
    base = all_stages["python"]
    assert re.search(r"apt-get install .*\bpython3\b.*\bpython3-venv\b", base.run)


def test_the_line_image_holds_no_training_stack() -> None:
    line = chain("inspector-line")
    built = "\n".join(s.run for s in line)
    assert "[fit]" not in built and "[dev]" not in built
    assert not re.search(r"\b(torch|torchvision|timm)\b", built)
    fit_extra = PYPROJECT["project"]["optional-dependencies"]["fit"]
    assert any(req.startswith("torch==") for req in fit_extra)
    assert all(not req.startswith(("torch", "timm")) for req in PYPROJECT["project"]["dependencies"])
    # what the line image is made of: its venv is copied from the stage that installs the plain wheel
    copied = [rest for s in ancestors("inspector-line") for rest in s.args("COPY")]
    assert any(re.search(r"--from=line-venv\s+/opt/inspector\s+/opt/inspector", c) for c in copied)
    run = stages()["line-venv"].run
    assert 'wheel="$(ls /wheels/inspector-*.whl)"' in run
    assert 'pip install --no-cache-dir "$wheel" && /opt/inspector/bin/pip check' in run  # no extra by default


def test_the_fit_image_adds_the_fit_extra() -> None:
    fit = stages()["inspector-fit"]
    assert '"${wheel}[fit]"' in fit.run
    assert "pip check" in fit.run
    assert "TORCH_INDEX_URL" in fit.run and arg_defaults()["TORCH_INDEX_URL"] == ""  # plain PyPI unless given
    assert fit.args("USER")[-1] == "inspector"
    assert fit.args("HEALTHCHECK") == ["NONE"]


def test_the_wheel_is_built_from_what_the_build_context_sends() -> None:
    """.dockerignore sends only the package source; every COPY from the context must be among it."""
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]

    def sent(path: str) -> bool:
        included = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                included = negate
        return included

    sources = []
    for stage in stages().values():
        for rest in stage.args("COPY"):
            if "--from=" not in rest:
                sources += shlex.split(rest)[:-1]
    assert sources, "the wheel stage copies the source"
    for source in sources:
        assert sent(source), source
    assert sent("src/inspector/service/app.py")
    for never in (".venv", "models", "datasets", "inspections", ".git", "tests", "build"):
        assert not sent(never), never
    assert not sent("src/inspector/__pycache__")


def test_the_line_image_runs_the_service_as_a_user_with_volumes_and_a_readiness_check() -> None:
    line = stages()["inspector-line"]
    assert line.args("USER") == ["inspector"]
    assert "useradd" in stages()["python"].run and "--uid 10001" in stages()["python"].run
    volumes = yaml.safe_load(line.args("VOLUME")[0])
    assert set(volumes) == {"/app/models", str(load_settings(env=target_env("inspector-line")).store.dir)}
    for volume in volumes:
        assert re.search(rf"chown inspector:inspector .*{re.escape(volume)}", line.run), volume
    assert shlex.split(line.args("ENTRYPOINT")[0].strip("[]").replace(",", " ")) == ["inspector"]
    assert line.args("STOPSIGNAL") == ["SIGTERM"]
    check = line.args("HEALTHCHECK")[0]
    assert "/readyz" in check and "urllib.request" in check and "curl" not in check
    assert env_name(("port",)) in check  # follows a changed port
    env = target_env("inspector-line")
    assert env["PATH"].startswith("/opt/inspector/bin:")
    assert env["MPLCONFIGDIR"].startswith("/tmp/")  # nothing writes under the read-only root


# ---- compose: read-only, non-root, graceful stop, a GPU profile --------------------------------------------


def test_compose_hardens_the_line_service() -> None:
    service = compose()["services"]["inspector"]
    assert service["image"] == f"inspector-line:{VERSION}"
    assert service["build"]["target"] == "inspector-line"
    assert service["read_only"] is True
    assert "/tmp" in service["tmpfs"]
    assert interpolate(service["user"], {}) == "10001:10001"
    assert service["cap_drop"] == ["ALL"]
    assert interpolate(service["ports"][0], {}).endswith(f":{Settings().port}")
    assert "restart" in service


def test_the_grace_period_outlasts_the_servers_graceful_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    """compose's SIGKILL must come after uvicorn has let admitted inspections finish and closed the store."""
    from inspector.models import persistence
    from inspector.service import app

    options: dict[str, Any] = {}
    monkeypatch.setattr(persistence, "read_manifest", lambda *a, **k: None)
    monkeypatch.setattr(app.server, "run", lambda _app, **kw: options.update(kw))
    app.serve(Settings(models=[{"dir": "/app/models/x"}], camera_key="k"))
    graceful = options["timeout_graceful_shutdown"]
    service = compose()["services"]["inspector"]
    grace = int(service["stop_grace_period"].rstrip("s"))
    assert graceful is not None and grace >= graceful + 10
    assert service["stop_signal"] == "SIGTERM"
    script = (ROOT / "scripts" / "container_smoke.sh").read_text()
    assert f"GRACE_S={grace} " in script  # the smoke test checks the stop against the same period


def test_the_gpu_profile_requests_the_nvidia_device_and_gpu_runtimes() -> None:
    services = compose()["services"]
    gpu = services["inspector-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert "profiles" not in services["inspector"]  # `docker compose up` starts the CPU service only
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["build"]["target"] == "inspector-line"
    args = gpu["build"]["args"]
    assert set(args) <= set(arg_defaults())
    assert arg_defaults()["LINE_EXTRAS"] == ""  # the plain line image: no extra
    gpu_extra = PYPROJECT["project"]["optional-dependencies"][args["LINE_EXTRAS"]]
    gpu_packages = {re.match(r"[\w-]+", r)[0] for r in gpu_extra}
    assert gpu_packages == {"onnxruntime-gpu", "faiss-gpu-cu12"}
    # the CPU builds the base install brings are removed and exactly those GPU builds reinstalled over them
    cpu_packages = {re.match(r"[\w-]+", r)[0] for r in PYPROJECT["project"]["dependencies"]}
    assert {"onnxruntime", "faiss-cpu"} <= cpu_packages
    run = stages()["line-venv"].run
    assert "pip uninstall -y onnxruntime faiss-cpu" in run
    assert "grep -iE '^(onnxruntime-gpu|faiss-gpu-cu12)=='" in run
    for key in ("read_only", "user", "volumes", "environment", "command", "stop_grace_period"):
        assert gpu[key] == services["inspector"][key], key


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_smoke_script_parses() -> None:
    script = ROOT / "scripts" / "container_smoke.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for target in TARGETS:
        assert f"build {target} " in text
    assert "PRAGMA integrity_check" in text and "/readyz" in text and "/v1/inspections" in text
