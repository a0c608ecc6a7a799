"""Which model directories are recipes: the folders below `models_dir` at start-up, and a directory an operator
names at run time.

Recipes found in `models_dir` come after the `models:` list, in sorted folder-name order, so recipe numbers are
the same at every start while the folder holds the same models.

A recipe may have several versions: its folder is the first; others (re-fits, candidates) live anywhere, by
convention in `<folder>.versions/`, where the pointer file says which version is active, which served before it
and which runs in shadow. A promotion rewrites the pointer, so it survives a restart, and the recipe keeps its
name and its number.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from inspector.common.files import fsync_dir, write_atomic
from inspector.models.persistence import MANIFEST
from inspector.service.config import ModelSpec, ServiceConfigError, Settings
from inspector.service.errors import NotFound, ServiceError

log = logging.getLogger(__name__)


def served_models(settings: Settings) -> list[ModelSpec]:
    """The `models:` list, then every folder of `models_dir` that holds a model (sorted by name)."""
    specs = list(settings.models)
    if settings.models_dir is not None:
        root = Path(settings.models_dir)
        if not root.is_dir():
            raise ServiceConfigError(f"models_dir {root} is not a directory")
        for folder in sorted(root.iterdir()):
            if (folder / MANIFEST).is_file():
                try:
                    specs.append(ModelSpec(dir=folder, name=folder.name))
                except ValueError as exc:
                    raise ServiceConfigError(
                        f"models_dir folder {folder.name!r} is no valid model name (letters, digits, '.', '_', '-')"
                    ) from exc
    names = [s.name for s in specs]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ServiceConfigError(
            f"model names clash between models: and models_dir: {', '.join(clashes)}; rename the folder or name "
            "the model with NAME=DIR"
        )
    return specs


def resolve_model_dir(models_dir: Path | None, dir: str | None, name: str | None) -> ModelSpec:
    """The model an operator asks to load: an absolute `dir`, or a folder of `models_dir` (by `dir` or by `name`)
    that stays inside it, so a name like `../x` cannot reach elsewhere on the disk."""
    if not dir and not name:
        raise ServiceError("give the model's `dir` or the `name` of a folder in models_dir")
    path = Path(dir or str(name))
    if not path.is_absolute():
        if models_dir is None:
            raise ServiceError("no models_dir is configured: give the model's absolute `dir`")
        root = Path(models_dir).resolve()
        path = (root / path).resolve()
        if not path.is_relative_to(root) or path == root:
            raise ServiceError(f"{dir or name!r} lies outside models_dir; give an absolute `dir` to load elsewhere")
    if not (path / MANIFEST).is_file():
        raise NotFound(f"{path} is not a model directory: {MANIFEST} is missing")
    try:
        return ModelSpec(dir=path, name=name or path.name)
    except ValueError as exc:
        raise ServiceError(f"invalid model name {name or path.name!r}: letters, digits, '.', '_' and '-'") from exc


# ---- versions of a recipe -----------------------------------------------------------------------------------------

VERSIONS_SUFFIX = ".versions"
POINTER_FILE = "pointer.json"
POINTER_KEYS = ("active", "previous", "shadow")


@dataclass(frozen=True)
class VersionPointer:
    """Which model directory serves a recipe (`active`), which served before it (`previous`, for a rollback) and
    which runs in shadow; what a promotion changes, kept on disk so it survives a restart."""

    active: Path
    previous: Path | None = None
    shadow: Path | None = None


def versions_dir(home: Path) -> Path:
    """Where a recipe's other versions and its pointer live: `<home>.versions/` beside the recipe's folder. It
    holds no manifest of its own, so `models_dir` never serves it as a recipe."""
    home = Path(home)
    return home.parent / f"{home.name}{VERSIONS_SUFFIX}"


def read_pointer(home: Path) -> VersionPointer:
    """The recipe's pointer; without one (never promoted) the recipe's own folder is active. A pointer naming a
    directory that no longer holds a model is ignored with an error in the log, and the folder serves."""
    path = versions_dir(home) / POINTER_FILE
    if not path.is_file():
        return VersionPointer(Path(home))
    base = Path(home).parent
    try:
        data = json.loads(path.read_text())
        active, previous, shadow = (None if data.get(k) is None else base / data[k] for k in POINTER_KEYS)
    except (OSError, ValueError, TypeError) as exc:
        log.error("%s is unreadable (%s); serving %s", path, exc, home)
        return VersionPointer(Path(home))
    if active is None or not (active / MANIFEST).is_file():
        log.error("%s names %s, which holds no model; serving %s", path, active, home)
        return VersionPointer(Path(home))
    return VersionPointer(active, previous, shadow)


def write_pointer(home: Path, pointer: VersionPointer) -> None:
    """Replace the pointer atomically and durably: after a crash the old or the new one is there, never a mix.
    Paths are stored relative to the recipe folder's parent where they lie below it, so a models folder mounted
    elsewhere (a container) still resolves."""
    folder = versions_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    base = Path(home).parent.resolve()
    data = {
        key: None if value is None else os.path.relpath(Path(value).resolve(), base)
        for key, value in zip(POINTER_KEYS, (pointer.active, pointer.previous, pointer.shadow), strict=True)
    }
    write_atomic(folder / POINTER_FILE, json.dumps(data, indent=2).encode())
    fsync_dir(folder)
