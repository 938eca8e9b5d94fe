"""Classification loss of the supervised baseline: binary cross-entropy on the abnormal logit."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassifierLoss(nn.Module):
    """Mean BCE of logits (B,) against labels (B,) in {0, 1} (1 = abnormal)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: logits (B,), labels (B,). Returns: scalar."""
        return F.binary_cross_entropy_with_logits(logits, labels.float())
