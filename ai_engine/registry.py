"""Explicit registry of anomaly models: model id -> "module:Class", imported lazily.

The model id is the folder name under ``ai_engine/models``, the config name under
``training/configs`` and the key here. Nothing is discovered by magic.
"""

from __future__ import annotations

import importlib

from ai_engine.errors import ModelLoadError, UnknownModelError
from ai_engine.models.base import AnomalyModel

MODELS: dict[str, str] = {
    "conv_ae": "ai_engine.models.conv_ae.model:ConvAEModel",
    "vae": "ai_engine.models.vae.model:VAEModel",
    "ganomaly": "ai_engine.models.ganomaly.model:GanomalyModel",
    "alocc": "ai_engine.models.alocc.model:AloccModel",
    "cnn_supervised": "ai_engine.models.cnn_supervised.model:CnnSupervisedModel",
    "brainomaly": "ai_engine.models.brainomaly.model:BrainomalyModel",
    "sagan": "ai_engine.models.sagan.model:SaganModel",
    "reversed_ae": "ai_engine.models.reversed_ae.model:ReversedAEModel",
    "healthygan": "ai_engine.models.healthygan.model:HealthyGANModel",
    "anogan": "ai_engine.models.anogan.model:AnoGANModel",
    "fanogan": "ai_engine.models.fanogan.model:FAnoGANModel",
    "alad": "ai_engine.models.alad.model:ALADModel",
    "flair_threshold": "ai_engine.models.flair_threshold.model:FlairThresholdModel",
    "dae": "ai_engine.models.dae.model:DenoisingAEModel",
    "simsid": "ai_engine.models.simsid.model:SimSIDModel",
}

#: Optional packages a model needs beyond the core install, by model id.
OPTIONAL_DEPENDENCIES: dict[str, tuple[str, ...]] = {}


def list_ids() -> list[str]:
    """All registered model ids, sorted."""
    return sorted(MODELS)


def get(model_id: str) -> type[AnomalyModel]:
    """The model class registered under ``model_id``.

    Raises:
        UnknownModelError: ``model_id`` is not registered (the message lists valid ids).
        ModelLoadError: the model's module or an optional dependency cannot be imported.
    """
    try:
        target = MODELS[model_id]
    except KeyError:
        raise UnknownModelError(
            f"unknown model id {model_id!r}; valid ids: {', '.join(list_ids())}"
        ) from None
    for package in OPTIONAL_DEPENDENCIES.get(model_id, ()):
        try:
            importlib.import_module(package)
        except ImportError as exc:
            raise ModelLoadError(f"model {model_id!r} unavailable: install {package}") from exc
    module_name, _, class_name = target.partition(":")
    cls: type[AnomalyModel] = getattr(importlib.import_module(module_name), class_name)
    return cls
