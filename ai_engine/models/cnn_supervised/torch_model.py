"""A small 2D ResNet (``monai.networks.nets.ResNet``) with one output logit (abnormal)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import ResNet
from torch import nn


class ResNetClassifier(nn.Module):
    """(B, 1, H, W) -> logit (B,) of "abnormal"; ``last_block`` is the Grad-CAM layer.

    Args:
        image_size: (H, W) the network is trained at (recorded in the card; any size runs).
        channels: ``block_inplanes`` of the 4 ResNet stages.
        layers: basic blocks per stage (ResNet-18 is (2, 2, 2, 2)).
    """

    def __init__(
        self,
        image_size: Sequence[int] = (64, 64),
        channels: Sequence[int] = (16, 32, 64, 128),
        layers: Sequence[int] = (1, 1, 1, 1),
    ) -> None:
        super().__init__()
        if len(channels) != 4 or len(layers) != 4:
            raise ValueError(f"channels and layers need 4 entries, got {channels}, {layers}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.resnet = ResNet(
            block="basic",
            layers=[int(n) for n in layers],
            block_inplanes=[int(c) for c in channels],
            spatial_dims=2,
            n_input_channels=1,
            conv1_t_size=7,
            conv1_t_stride=2,
            num_classes=1,
        )

    @property
    def last_block(self) -> nn.Module:
        """The last convolutional stage (``layer4``), whose output Grad-CAM weighs."""
        block: nn.Module = self.resnet.layer4
        return block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> logit (B,)."""
        out: torch.Tensor = self.resnet(x)
        return out.flatten()
