"""Which model directories are recipes: the folders below `models_dir` at start-up, and a directory an operator
names at run time.

Recipes found in `models_dir` come after the `models:` list, in sorted folder-name order, so recipe numbers are
the same at every start while the folder holds the same models.
"""

from __future__ import annotations

from pathlib import Path

from inspector.models.persistence import MANIFEST
from inspector.service.config import ModelSpec, ServiceConfigError, Settings
from inspector.service.errors import NotFound, ServiceError


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
