"""The one interface every anomaly model implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from ai_engine.types import AnomalyOutput, ModelCard


def default_device() -> torch.device:
    """Where the engine runs a model by default: CUDA when torch sees a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def module_device(module: nn.Module) -> torch.device:
    """Where a module's weights are, so its inputs go there (the CPU when it has none)."""
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


class Trainer(Protocol):
    """One model's training procedure on batches of normal images (used by ``training fit``).

    ``validation_loss`` must use healthy validation images only (no labels): it drives early
    stopping and learning-rate schedules; lower is better.
    """

    def step(self, batch: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a (B, 1, H, W) batch; returns named losses."""
        ...

    def validation_loss(self, x_val_normal: torch.Tensor) -> float:
        """Label-free criterion on healthy validation images (N, 1, H, W)."""
        ...

    def end_epoch(self, val_loss: float) -> None:
        """Called after each epoch (learning-rate schedules)."""
        ...


class AnomalyModel(ABC):
    """An anomaly model with its model card and calibration.

    Subclasses wrap a pure ``nn.Module`` and say how to score with it. Models see tensors
    only: reading DICOM and writing results is the pipeline's job.
    """

    #: Registry id; equal to the model's folder name under ai_engine/models.
    model_id: ClassVar[str]
    #: What the anomaly map is, in words (for the model card).
    map_description: ClassVar[str] = "model-specific anomaly map"
    #: True for classifiers trained with labels (``training fit-supervised``), not ``fit``.
    requires_labels: ClassVar[bool] = False
    #: False for baselines with nothing to learn: ``training fit`` only builds and calibrates.
    trainable: ClassVar[bool] = True

    def __init__(self, card: ModelCard, network: nn.Module) -> None:
        self.card = card
        self.network = network
        self.device = module_device(network)  # the CPU for a freshly built network

    @classmethod
    @abstractmethod
    def build_network(cls, **init_args: object) -> nn.Module:
        """Construct the untrained network from its ``init_args`` (the card's architecture)."""

    @abstractmethod
    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        """Score a batch.

        Args:
            x: (B, 1, H, W) images, preprocessed by `ai_engine.transforms.model_input`.

        Returns:
            score (B,), anomaly_map (B, 1, H, W), reconstruction (B, 1, H, W) or None.
        """

    @classmethod
    def training_loss(cls, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Loss of one training batch of normal images (B, 1, H, W)."""
        raise NotImplementedError(f"{cls.__name__} has no single-network training loss")

    @classmethod
    def make_trainer(cls, network: nn.Module, optim: dict[str, Any]) -> Trainer:
        """The training procedure of this model for ``network`` with the config's ``optim``.

        Raises:
            NotImplementedError: the model is not trainable by ``training fit``.
        """
        raise NotImplementedError(f"{cls.__name__} cannot be trained by `training fit`")

    @classmethod
    def score_rules(cls) -> tuple[str, ...]:
        """Image-score rules among which ``training fit`` chooses on val (default: one)."""
        return ("default",)

    def to(self, device: torch.device | str) -> AnomalyModel:
        """Move the network to ``device`` and remember it."""
        self.device = torch.device(device)
        self.network.to(self.device)
        return self

    def eval(self) -> AnomalyModel:
        """Put the network in inference mode."""
        self.network.eval()
        return self

    @classmethod
    def weights_file(cls, checkpoint_dir: Path) -> Path:
        """Where the weights of a checkpoint folder are."""
        return checkpoint_dir / "weights.safetensors"
