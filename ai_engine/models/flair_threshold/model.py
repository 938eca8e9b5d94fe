"""`AnomalyModel` adapter of the FLAIR threshold baseline (the row every brain model must beat).

Map: `torch_model.IntensityMap` (median-filtered normalised intensity inside the eroded
brain). Image score rules, chosen on val AUROC like every model's: ``map_top`` (mean of the
highest 0.5 % of the slice's pixels), ``map_max`` (its maximum), ``area`` (share of the slice's
pixels above 0.5, i.e. a robust z-score of 2 in the volume's brain). Pixel thresholds come from
calibration; for this model the first one is chosen on val Dice (`training.fit`), as a
threshold baseline is (Meissen et al. 2021). Nothing is trained: ``training fit`` builds the
checkpoint and calibrates it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ai_engine.models.base import AnomalyModel
from ai_engine.models.flair_threshold.torch_model import IntensityMap
from ai_engine.types import AnomalyOutput, ModelCard

SCORE_RULES = ("map_top", "map_max", "area")
#: ``area`` counts pixels above this normalised intensity (robust z = 2: 0.25 + 2 / 8).
AREA_LEVEL = 0.5


class FlairThresholdModel(AnomalyModel):
    """No learning: a brain slice is as anomalous as its brightest FLAIR signal."""

    model_id: ClassVar[str] = "flair_threshold"
    map_description: ClassVar[str] = (
        "FLAIR intensity as a robust z-score per volume inside the brain (0.25 + z/8), 5x5 "
        "median filter, brain mask eroded by 3 px"
    )
    trainable: ClassVar[bool] = False

    def __init__(self, card: ModelCard, network: nn.Module) -> None:
        super().__init__(card, network)
        scoring = card.training.get("scoring", {})
        self.score_rule = str(scoring.get("rule", SCORE_RULES[0]))
        self.top_fraction = float(scoring.get("top_fraction", 0.005))

    @classmethod
    def build_network(cls, **init_args: Any) -> nn.Module:
        """See `IntensityMap` for the arguments."""
        return IntensityMap(**init_args)

    @classmethod
    def score_rules(cls) -> tuple[str, ...]:
        """``map_top``, ``map_max``, ``area`` (see the module docstring)."""
        return SCORE_RULES

    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        """Map and score of normalised brain slices (no reconstruction)."""
        anomaly_map = self.network(x.to(self.device))
        flat = anomaly_map.flatten(1)
        if self.score_rule == "map_max":
            score = flat.max(dim=1).values
        elif self.score_rule == "area":
            score = (flat > AREA_LEVEL).float().mean(dim=1)
        elif self.score_rule == "map_top":
            k = max(1, round(flat.shape[1] * self.top_fraction))
            score = flat.topk(k, dim=1).values.mean(dim=1)
        else:
            raise ValueError(f"unknown score rule {self.score_rule!r}; valid: {SCORE_RULES}")
        return AnomalyOutput(score=score, anomaly_map=anomaly_map, reconstruction=None)
