"""Models behind one interface (`AnomalyModel`): construct by name, fit, score, save, load."""

from inspector.models.base import AnomalyModel, ScoreResult, load_model
from inspector.models.fastflow import FastFlow
from inspector.models.padim import Padim
from inspector.models.patchcore import PatchCore

MODELS: dict[str, type[AnomalyModel]] = {"patchcore": PatchCore, "padim": Padim, "fastflow": FastFlow}


def create_model(kind: str, **params) -> AnomalyModel:
    """A new, unfitted model of the named kind."""
    if kind not in MODELS:
        raise ValueError(f"unknown model '{kind}', choose from {', '.join(MODELS)}")
    return MODELS[kind](**params)


__all__ = ["MODELS", "AnomalyModel", "FastFlow", "Padim", "PatchCore", "ScoreResult", "create_model", "load_model"]
