"""Which class fits and which class scores each kind of model; a class joins by declaring its kind.

    class PatchCoreScorer(Scorer, kind="patchcore"): ...      # scoring half, no torch
    class PatchCore(AnomalyModel, kind="patchcore"): ...      # fitting half

The kinds themselves are `ModelKind` (inspector.common.names), so a class cannot join under a misspelt name and
the CLI can list the kinds without importing any model.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from inspector.common.errors import InspectorError
from inspector.common.names import ModelKind, choices

T = TypeVar("T")


class UnknownModelKind(InspectorError, ValueError):
    """A model kind (in a manifest, a config or a flag) that no class has declared."""


class Registry(Generic[T]):
    """kind -> class, filled by the classes themselves as their modules are imported."""

    def __init__(self, role: str) -> None:
        self.role = role
        self._classes: dict[str, type[T]] = {}

    def add(self, kind: str, cls: type[T]) -> None:
        if kind not in choices(ModelKind):
            raise TypeError(f"{cls.__name__} declares kind {kind!r}, which is not a ModelKind {choices(ModelKind)}")
        if kind in self._classes:
            raise TypeError(f"{cls.__name__} declares kind {kind!r}, already taken by {self._classes[kind].__name__}")
        self._classes[kind] = cls

    def __getitem__(self, kind: str) -> type[T]:
        if kind not in self._classes:
            raise UnknownModelKind(f"unknown model kind {kind!r}; this inspector knows {', '.join(self._classes)}")
        return self._classes[kind]

    def __contains__(self, kind: object) -> bool:
        return kind in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)
