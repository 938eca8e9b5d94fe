"""Is an image one the model was trained for? If not, it is reported as *not analysed*.

Checks the header only: Modality, BodyPartExamined (when present), ViewPosition (when
present; a lateral view is refused by a frontal-view model), and greyscale pixels.
"""

from __future__ import annotations

from pydicom import Dataset

from ai_engine.types import ModelCard

LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"})


def reason_not_suitable(header: Dataset, card: ModelCard) -> str | None:
    """None when ``card``'s model may analyse the image, else the reason in words."""
    modality = str(header.get("Modality", "") or "").upper()
    if card.modalities and modality not in card.modalities:
        return f"Modality {modality or '(missing)'} is not one of {', '.join(card.modalities)}"
    body_part = str(header.get("BodyPartExamined", "") or "").strip().upper()
    if card.body_parts and body_part and body_part not in card.body_parts:
        return f"BodyPartExamined {body_part} is not one of {', '.join(card.body_parts)}"
    view = str(header.get("ViewPosition", "") or "").strip().upper()
    if view in LATERAL_VIEWS and (not card.views or view not in card.views):
        return f"ViewPosition {view} is a lateral view; the model is for frontal views"
    if card.views and view and view not in card.views:
        return f"ViewPosition {view} is not one of {', '.join(card.views)}"
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    photometric = str(header.get("PhotometricInterpretation", "") or "")
    if samples != 1 or (photometric and not photometric.startswith("MONOCHROME")):
        return f"colour image ({photometric or samples} samples per pixel); the model is greyscale"
    return None
