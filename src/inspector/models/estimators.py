"""Every estimator in one import, so each has joined the registry: `create_model(kind)` builds any of them."""

from __future__ import annotations

from typing import Any

from inspector.models.estimator import ESTIMATORS, AnomalyModel
from inspector.models.fastflow import FastFlow
from inspector.models.padim import Padim
from inspector.models.patchcore import PatchCore


def create_model(kind: str, **params: Any) -> AnomalyModel:
    """A new, unfitted model of the named kind; an unknown kind is a user error naming the known ones."""
    return ESTIMATORS[kind](**params)


__all__ = ["ESTIMATORS", "AnomalyModel", "FastFlow", "Padim", "PatchCore", "create_model"]
