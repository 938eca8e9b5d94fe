"""`AnomalyModel` adapter of the supervised CNN: score P(abnormal), map = Grad-CAM.

Trained with labels by ``python -m training fit-supervised`` (training/fit_supervised.py), not
by ``training fit`` (the train splits hold normal images only).

Grad-CAM (Selvaraju et al. 2017), own implementation with a forward hook on the last ResNet
stage: A = its activations (B, C, h, w); weights w_c = spatial mean of d logit / d A_c;
cam = ReLU(sum_c w_c A_c), bilinearly upsampled to (H, W). Normalisation, per image (never over
the batch): ``map = P(abnormal) * cam / max(cam)``, so maps lie in [0, 1] and a confidently
normal image has a faint map, which keeps pixel thresholds fitted on healthy images meaningful.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from ai_engine.models.base import AnomalyModel, Trainer, module_device
from ai_engine.models.cnn_supervised.loss import ClassifierLoss
from ai_engine.models.cnn_supervised.torch_model import CnnClassifier
from ai_engine.types import AnomalyOutput


def _as_classifier(network: nn.Module) -> CnnClassifier:
    if not isinstance(network, CnnClassifier):
        raise TypeError(f"expected CnnClassifier, got {type(network).__name__}")
    return network


def grad_cam(network: CnnClassifier, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B,) and raw Grad-CAM maps (B, 1, H, W) (ReLU'd, not normalised).

    The network must be in eval mode (BatchNorm then treats images independently).
    """
    captured: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        captured.append(output)

    handle: RemovableHandle = network.last_block.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            logits = network(x)
            activations = captured[-1]
            (grads,) = torch.autograd.grad(logits.sum(), activations)
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits.detach(), cam.detach()


class CnnSupervisedModel(AnomalyModel):
    """ResNet classifier; score = P(abnormal), map = Grad-CAM of the last stage."""

    model_id: ClassVar[str] = "cnn_supervised"
    map_description: ClassVar[str] = (
        "Grad-CAM of the last ResNet stage for the abnormal logit, divided by its per-image "
        "maximum and multiplied by P(abnormal)"
    )
    requires_labels: ClassVar[bool] = True

    @classmethod
    def build_network(cls, **init_args: Any) -> nn.Module:
        """See `CnnClassifier` for the arguments."""
        return CnnClassifier(**init_args)

    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        """Score a (B, 1, H, W) batch in [0, 1] (needs autograd for Grad-CAM)."""
        network = _as_classifier(self.network)
        logits, cam = grad_cam(network, x.to(self.device).float())
        score = torch.sigmoid(logits.float())
        peak = cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]
        anomaly_map = score[:, None, None, None] * cam.float() / peak
        return AnomalyOutput(score=score, anomaly_map=anomaly_map, reconstruction=None)

    @classmethod
    def make_trainer(cls, network: nn.Module, optim: dict[str, Any]) -> Trainer:
        """Not trainable on normal images alone.

        Raises:
            NotImplementedError: always; use ``python -m training fit-supervised``.
        """
        raise NotImplementedError(
            "cnn_supervised needs labels: train it with `python -m training fit-supervised`"
        )

    @classmethod
    def make_supervised_trainer(
        cls, network: nn.Module, optim: dict[str, Any]
    ) -> SupervisedTrainer:
        """Adam + BCE on labelled batches; see `SupervisedTrainer`."""
        return SupervisedTrainer(_as_classifier(network), optim)


class SupervisedTrainer:
    """Adam (``lr``, ``weight_decay``) on the BCE of labelled (B, 1, H, W) batches."""

    def __init__(self, network: CnnClassifier, optim: dict[str, Any]) -> None:
        self.network = network
        self.optimizer = torch.optim.Adam(
            network.parameters(),
            lr=float(optim.get("lr", 1e-3)),
            weight_decay=float(optim.get("weight_decay", 0.0)),
        )
        self.loss = ClassifierLoss()

    def step(self, batch: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One Adam step; labels (B,) in {0, 1}."""
        self.network.train()
        loss = self.loss(self.network(batch), labels)
        self.optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """P(abnormal) (N,) of (N, 1, H, W) images, eval mode."""
        self.network.eval()
        if not len(x):
            return torch.empty(0)
        device = module_device(self.network)
        return torch.cat(
            [
                torch.sigmoid(self.network(x[i : i + 64].to(device))).cpu()
                for i in range(0, len(x), 64)
            ]
        )
