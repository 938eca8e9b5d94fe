"""The supervised classifiers (seed 001) with one output logit (abnormal), from MONAI, from scratch.

``backbone``:

* ``resnet`` (default): a small 2D ResNet (``monai.networks.nets.ResNet``, basic blocks, the
  card's ``channels`` and ``layers``);
* ``resnet50``: ResNet-50 (bottleneck blocks 3-4-6-3, 64-128-256-512 planes), as seed 001;
* ``efficientnet-b0``: ``monai.networks.nets.EfficientNetBN`` B0, as seed 001.

No pretrained weights (nothing is downloaded; ``pretrained=False``): all are trained here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import EfficientNetBN, ResNet
from torch import nn

#: The backbones `CnnClassifier` builds.
BACKBONES = ("resnet", "resnet50", "efficientnet-b0")


class CnnClassifier(nn.Module):
    """(B, 1, H, W) -> logit (B,) of "abnormal"; ``last_block`` is the Grad-CAM layer.

    Args:
        image_size: (H, W) the network is trained at (recorded in the card; any size runs).
        channels: ``block_inplanes`` of the 4 ResNet stages (``resnet`` only).
        layers: basic blocks per stage (``resnet`` only; ResNet-18 is (2, 2, 2, 2)).
        backbone: one of `BACKBONES`.

    Raises:
        ValueError: an unknown backbone, or ``channels``/``layers`` without 4 entries.
    """

    def __init__(
        self,
        image_size: Sequence[int] = (64, 64),
        channels: Sequence[int] = (16, 32, 64, 128),
        layers: Sequence[int] = (1, 1, 1, 1),
        backbone: str = "resnet",
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
        if len(channels) != 4 or len(layers) != 4:
            raise ValueError(f"channels and layers need 4 entries, got {channels}, {layers}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.backbone = backbone
        if backbone == "efficientnet-b0":
            self.efficientnet = EfficientNetBN(
                "efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=1, num_classes=1
            )
            return
        bottleneck = backbone == "resnet50"
        self.resnet = ResNet(
            block="bottleneck" if bottleneck else "basic",
            layers=[3, 4, 6, 3] if bottleneck else [int(n) for n in layers],
            block_inplanes=[64, 128, 256, 512] if bottleneck else [int(c) for c in channels],
            spatial_dims=2,
            n_input_channels=1,
            conv1_t_size=7,
            conv1_t_stride=2,
            num_classes=1,
        )

    @property
    def last_block(self) -> nn.Module:
        """The last convolutional stage, whose output Grad-CAM weighs.

        ResNet: ``layer4``; EfficientNet: its head convolution.
        """
        if self.backbone == "efficientnet-b0":
            head: nn.Module = self.efficientnet._conv_head
            return head
        block: nn.Module = self.resnet.layer4
        return block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> logit (B,)."""
        net = self.efficientnet if self.backbone == "efficientnet-b0" else self.resnet
        out: torch.Tensor = net(x)
        return out.flatten()
