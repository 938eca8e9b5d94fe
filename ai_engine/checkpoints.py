"""Checkpoint folders: ``weights.safetensors`` + ``card.json`` (+ ``README.md`` model card).

A checkpoint is named by a shipped name (a folder under ``ai_engine/checkpoints/``, e.g.
``default-cxr``) or by a path to such a folder. The weights' sha256 is checked against the
card on every load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ai_engine.errors import ModelLoadError
from ai_engine.types import Calibration, ModelCard

if TYPE_CHECKING:  # reading cards needs no torch (the node's router reads them); weights do
    import torch

    from ai_engine.models.base import AnomalyModel

logger = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).resolve().parent / "checkpoints"
WEIGHTS_NAME = "weights.safetensors"
CARD_NAME = "card.json"


def shipped_names() -> list[str]:
    """Names of the checkpoints that ship with the package."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / CARD_NAME).is_file())


def resolve(name_or_path: str | Path) -> Path:
    """The checkpoint folder for a shipped name or a path.

    Raises:
        ModelLoadError: neither a shipped name nor a folder holding ``card.json``.
    """
    candidate = Path(name_or_path)
    if candidate.is_file() and candidate.name in (CARD_NAME, WEIGHTS_NAME):
        candidate = candidate.parent
    if (candidate / CARD_NAME).is_file():
        return candidate
    shipped = SHIPPED_DIR / str(name_or_path)
    if (shipped / CARD_NAME).is_file():
        return shipped
    raise ModelLoadError(
        f"no checkpoint {str(name_or_path)!r}: not a folder with {CARD_NAME} and not a shipped "
        f"name (shipped: {', '.join(shipped_names()) or 'none'})"
    )


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def card_to_dict(card: ModelCard) -> dict[str, Any]:
    """JSON-ready dict of a model card."""
    return dataclasses.asdict(card)


def card_from_dict(data: dict[str, Any]) -> ModelCard:
    """Inverse of `card_to_dict`.

    Raises:
        ModelLoadError: a required field is missing.
    """
    try:
        cal = dict(data["calibration"])
        calibration = Calibration(
            threshold=float(cal["threshold"]),
            threshold_rule=str(cal["threshold_rule"]),
            pixel_thresholds=tuple(float(v) for v in cal["pixel_thresholds"]),
            pixel_threshold_rules=tuple(str(v) for v in cal["pixel_threshold_rules"]),
            map_scale=float(cal["map_scale"]),
            healthy_scores=tuple(float(v) for v in cal.get("healthy_scores", ())),
        )
        return ModelCard(
            model_id=str(data["model_id"]),
            name=str(data["name"]),
            version=str(data["version"]),
            modalities=tuple(data["modalities"]),
            body_parts=tuple(data.get("body_parts", ())),
            views=tuple(data.get("views", ())),
            image_size=(int(data["image_size"][0]), int(data["image_size"][1])),
            preprocessing=str(data["preprocessing"]),
            weights_sha256=str(data["weights_sha256"]),
            calibration=calibration,
            training=dict(data.get("training", {})),
            metrics=dict(data.get("metrics", {})),
            architecture=dict(data.get("architecture", {})),
            anatomy=_anatomy(data.get("anatomy", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"model card is missing or has a bad field: {exc}") from exc


def _anatomy(value: object) -> str:
    """The card's ``anatomy``, one of `ai_engine.anatomy.ANATOMIES`."""
    from ai_engine.anatomy import ANATOMIES

    if value not in ANATOMIES:
        raise ValueError(f"anatomy {value!r} is not one of {list(ANATOMIES)}")
    return str(value)


def read_card(name_or_path: str | Path) -> ModelCard:
    """The model card of a checkpoint (no weights loaded)."""
    folder = resolve(name_or_path)
    try:
        data = json.loads((folder / CARD_NAME).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {folder / CARD_NAME}: {exc}") from exc
    return card_from_dict(data)


def save(folder: Path, card: ModelCard, state_dict: dict[str, torch.Tensor]) -> ModelCard:
    """Write weights and card; the card's sha256 is set from the written weights.

    Returns:
        The card as written (with ``weights_sha256`` filled in).
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_NAME
    save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(weights))
    card = dataclasses.replace(card, weights_sha256=sha256_of(weights))
    (folder / CARD_NAME).write_text(json.dumps(card_to_dict(card), indent=2) + "\n")
    return card


def load(name_or_path: str | Path, device: str | torch.device | None = None) -> AnomalyModel:
    """Load a checkpoint as a ready-to-predict model (eval mode, on ``device``).

    Args:
        name_or_path: shipped name (``default-cxr``) or checkpoint folder.
        device: torch device; default CUDA when available, else CPU.

    Raises:
        ModelLoadError: missing files, sha256 mismatch, or weights not fitting the network.
        UnknownModelError: the card names a model id that is not registered.
    """
    from safetensors.torch import load_file

    from ai_engine import registry
    from ai_engine.models.base import default_device

    folder = resolve(name_or_path)
    card = read_card(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelLoadError(f"checkpoint {folder} has no {WEIGHTS_NAME}")
    actual = sha256_of(weights)
    if actual != card.weights_sha256:
        raise ModelLoadError(
            f"weights of {folder} do not match the model card: sha256 {actual} != "
            f"{card.weights_sha256}"
        )
    cls = registry.get(card.model_id)
    network = cls.build_network(**card.architecture)
    try:
        network.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:
        raise ModelLoadError(f"weights of {folder} do not fit {card.model_id}: {exc}") from exc
    model = cls(card, network)
    if device is None:
        device = default_device()
    logger.info("loaded checkpoint", extra={"model_id": card.model_id, "checkpoint": card.name})
    return model.to(device).eval()
