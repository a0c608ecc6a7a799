"""Service settings: built-in defaults < one config file (YAML or TOML) < INSPECTOR_* environment < flags.

Every key, its environment variable and its default are described once, on the pydantic fields below; the
`inspector serve --help` epilog and the package's configs/service.example.yaml are written from the same
descriptions.
API keys are `SecretStr`, so printing or logging the settings never shows them.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from inspector.common.errors import InspectorError
from inspector.link.settings import LinkSettings
from inspector.service.keys import check_configured

ENV_PREFIX = "INSPECTOR_"
CONFIG_ENV = "INSPECTOR_SERVICE_CONFIG"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ServiceConfigError(InspectorError, ValueError):
    """A service config file or override that cannot be read or is invalid; the message says which key."""


class ModelSpec(BaseModel):
    """One model to serve: a fitted model directory and the name clients use for it."""

    model_config = ConfigDict(extra="forbid")

    dir: Path
    name: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]*$")

    def model_post_init(self, __context: Any) -> None:
        if not self.name:
            self.name = Path(self.dir).name

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """`models/bottle` or `bottle=models/bottle_v2`, as given on the command line or in the environment."""
        name, sep, path = text.partition("=")
        try:
            return cls(dir=Path(path), name=name) if sep else cls(dir=Path(text))
        except ValidationError as exc:
            problems = "; ".join(e["msg"] for e in exc.errors())
            raise ServiceConfigError(f"model {text!r}: {problems} (expected DIR or NAME=DIR)") from exc


class StoreSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dir: Path = Field(default=Path("inspections"), description="folder for the SQLite database and the image/map files")
    synchronous: Literal["full", "normal"] = Field(
        default="full",
        description="SQLite fsync policy: full survives power loss; normal survives kill -9 but may lose the "
        "last commits on power loss",
    )
    retention_days: float | None = Field(
        default=90.0, gt=0, description="delete inspections older than this (null: keep)"
    )
    max_disk_mb: float | None = Field(
        default=10240.0,
        gt=0,
        description="disk budget for records and files; oldest deleted beyond it (null: no budget)",
    )
    min_free_disk_mb: float = Field(
        default=1024.0, ge=0, description="keep this much disk free: below it inspections are not recorded (when_full)"
    )
    when_full: Literal["inspect", "refuse"] = Field(
        default="inspect",
        description="below min_free_disk_mb or when a write finds the disk full: `inspect` answers inspections "
        "unrecorded (recorded: false, counted, named in /readyz); `refuse` answers 503 (a line that may not pass a "
        "part without its record)",
    )
    keep_reviewed: bool = Field(
        default=True, description="age retention spares operator-reviewed records (the disk budget still applies)"
    )
    maintenance_interval_s: float = Field(default=60.0, gt=0, description="seconds between retention passes")


class Settings(BaseModel):
    """Everything `inspector serve` reads. Keys nest as in the file: `store.dir`, `store.max_disk_mb`, ..."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port")
    models: list[ModelSpec] = Field(
        default_factory=list,
        description="models to serve: list of {dir, name}; env/flags take DIR or NAME=DIR (env: separated by ':')",
    )
    models_dir: Path | None = Field(
        default=None,
        description="every folder below it holding a model is a recipe named after the folder, after `models`, "
        "in sorted order; operators load more from it at run time (POST /v1/models)",
    )
    golden_dir: Path = Field(
        default=Path("golden"),
        description="golden samples per recipe, <golden_dir>/<recipe>/{good,defect}/: images a shadow version "
        "must judge as labelled before it may be promoted (`inspector gate` checks the same)",
    )
    model_memory_budget_mb: float | None = Field(
        default=None,
        gt=0,
        description="MiB; refuse a model load whose file sizes would take the loaded models (each counted at its "
        "measured RSS growth or file sizes, whichever is larger) over this (null: no budget)",
    )
    camera_key: SecretStr | None = Field(
        default=None,
        description="API key for cameras: inspect and read records (the key, or its hash from `inspector keys hash`)",
    )
    operator_key: SecretStr | None = Field(
        default=None,
        description="API key for operators: everything, incl. review, calibration and reload (key or its hash)",
    )
    tls_cert: Path | None = Field(
        default=None, description="PEM certificate (chain) to serve HTTPS with; needs tls_key (null: plain HTTP)"
    )
    tls_key: Path | None = Field(default=None, description="PEM private key of tls_cert")
    allow_remote_without_keys: bool = Field(
        default=False, description="without any key the service binds to loopback only unless this is true"
    )
    workers: int = Field(default=1, ge=1, le=64, description="inference threads working on the queue")
    threads: int | None = Field(default=None, ge=1, description="CPU threads per worker (default: cores / workers)")
    queue_size: int = Field(
        default=4,
        ge=0,
        description="requests allowed to wait for a worker; beyond it 503 at once (each adds ~1 inference)",
    )
    warmup_runs: int = Field(default=3, ge=0, description="dummy inferences per model before /readyz turns ready")
    max_image_mb: float = Field(default=20.0, gt=0, description="largest accepted upload, in MiB (413 beyond)")
    max_image_pixels: int = Field(
        default=40_000_000, gt=0, description="largest accepted image, width x height (413 beyond)"
    )
    upload_timeout_s: float = Field(
        default=10.0, gt=0, description="seconds an upload may take to arrive in full (408 beyond: a stalled sender)"
    )
    max_connections: int = Field(
        default=64,
        ge=2,
        description="open HTTP connections served at once, operator pages' event streams included (503 beyond)",
    )
    max_regions: int = Field(
        default=50, ge=0, description="at most this many defect regions per inspection, highest first"
    )
    require_calibration: bool = Field(
        default=False, description="answer 409 for a model without a valid calibration instead of verdict null"
    )
    web_dir: Path | None = Field(default=None, description="static web UI served at / when it holds index.html")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="log level")
    access_log: bool = Field(default=False, description="log every HTTP request (uvicorn access log)")
    store: StoreSettings = Field(default_factory=StoreSettings)
    links: LinkSettings = Field(default_factory=LinkSettings)

    @field_validator("models", mode="before")
    @classmethod
    def _models_from_strings(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v for v in value.split(os.pathsep) if v]
        if isinstance(value, list):
            return [ModelSpec.parse(str(v)) if isinstance(v, (str, Path)) else v for v in value]
        return value

    @field_validator("camera_key", "operator_key")
    @classmethod
    def _key_or_hash(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_configured(value.get_secret_value())
        return value

    @field_validator("models")
    @classmethod
    def _unique_names(cls, value: list[ModelSpec]) -> list[ModelSpec]:
        names = [m.name for m in value]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}; name them with NAME=DIR")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both for HTTPS, or neither")
        return self

    @property
    def has_keys(self) -> bool:
        return self.camera_key is not None or self.operator_key is not None

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_mb * 1024 * 1024)


def env_name(path: tuple[str, ...]) -> str:
    """The environment variable for a settings key: store.dir -> INSPECTOR_STORE_DIR."""
    return ENV_PREFIX + "_".join(path).upper()


def _fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out: list[tuple[tuple[str, ...], Any]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += _fields(annotation, (*prefix, name))
        else:
            out.append(((*prefix, name), field))
    return out


def read_settings_file(path: Path) -> dict[str, Any]:
    """A YAML (.yaml/.yml) or TOML (.toml) config file as a mapping."""
    path = Path(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ServiceConfigError(f"cannot read service config {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ServiceConfigError(f"service config {path} must be a mapping of settings")
    return data


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        node = data.get(key)
        if not isinstance(node, dict):
            node = data[key] = {}
        data = node
    data[path[-1]] = value


def load_settings(
    config: Path | None = None, env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Defaults < `config` (or $INSPECTOR_SERVICE_CONFIG) < INSPECTOR_* variables < `overrides` (dotted keys)."""
    env = os.environ if env is None else env
    config = config or (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
    data = read_settings_file(config) if config else {}
    for path, _ in _fields(Settings):
        value = env.get(env_name(path))
        if value is not None and value != "":
            _set(data, path, None if value.lower() in ("null", "none") else value)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(data, tuple(key.split(".")), value)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        source = f" (file {config})" if config else ""
        problems = "; ".join(_problem(e["loc"], e["type"], e["msg"]) for e in exc.errors())
        raise ServiceConfigError(f"invalid service settings{source}: {problems}") from exc


def _problem(location: tuple[int | str, ...], kind: str, message: str) -> str:
    """One validation error as a person fixes it: the dotted key first, and an unknown key called unknown."""
    key = ".".join(str(part) for part in location)
    if kind == "extra_forbidden":
        return f"unknown key {key!r} (see `inspector serve --help` for the keys)"
    return f"{key or '(top level)'}: {message}"


def settings_help() -> str:
    """The config keys, their environment variables and defaults, for `inspector serve --help`."""
    lines = [
        "configuration: --config FILE (YAML or TOML; or $INSPECTOR_SERVICE_CONFIG) < environment < flags.",
        "Example: inspector/configs/service.example.yaml (in the package). Keys (environment variable, default):",
    ]
    for path, field in _fields(Settings):
        default = field.get_default(call_default_factory=True)
        shown = "none" if default is None or default == [] else default
        lines.append(f"  {'.'.join(path):<28} {env_name(path)} (default {shown})")
        lines.append(f"      {field.description}")
    lines.append("Without camera_key/operator_key the service binds to 127.0.0.1 (see allow_remote_without_keys).")
    return "\n".join(lines)
