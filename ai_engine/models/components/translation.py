"""The image-to-image translation GANs' shared parts (Brainomaly, HealthyGAN).

Both generators are a MONAI UNet with instance norm (four stride-2 levels) followed by 1x1
heads that start at zero, so that an untrained generator returns its input (a normal image
needs no change), which matters for short CPU budgets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from monai.networks.nets import UNet
from torch import nn

from ai_engine.models.base import Trainer
from ai_engine.models.components.reconstruction import ReconstructionModel
from ai_engine.models.components.wgan_gp import PatchDiscriminator, SemiSupervisedGanTrainer


def unet_body(
    image_size: Sequence[int], channels: Sequence[int], latent_dim: int, num_res_units: int
) -> UNet:
    """UNet (B, 1, H, W) -> (B, channels[0], H, W).

    Args:
        image_size: (H, W); both divisible by 16 (four stride-2 levels).
        channels: channels of the four encoder levels.
        latent_dim: channels of the bottleneck level.
        num_res_units: residual units per level.

    Raises:
        ValueError: ``channels`` does not have 4 entries or a side is not divisible by 16.
    """
    if len(channels) != 4:
        raise ValueError(f"channels must have 4 entries, got {list(channels)}")
    if int(image_size[0]) % 16 or int(image_size[1]) % 16:
        raise ValueError(f"image_size must be divisible by 16, got {list(image_size)}")
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=int(channels[0]),
        channels=(*[int(c) for c in channels], int(latent_dim)),
        strides=(2, 2, 2, 2),
        num_res_units=num_res_units,
        norm="INSTANCE",
    )


def zero_head(width: int, bias: float = 0.0) -> nn.Conv2d:
    """A 1x1 convolution to one channel with zero weights and the given bias."""
    head = nn.Conv2d(width, 1, kernel_size=1)
    nn.init.zeros_(head.weight)
    if head.bias is not None:
        nn.init.constant_(head.bias, bias)
    return head


class UNetTranslator(nn.Module):
    """Base of the U-Net image-to-image networks (DAE, Brainomaly, HealthyGAN).

    It owns the ``body`` (`unet_body`, ``channels[0]`` output channels at full resolution);
    a subclass adds its heads in `build_heads`, under its own attribute names (they are the
    checkpoint keys), and says what ``forward`` returns.

    Args:
        image_size: (H, W), both divisible by 16; the subclass's ``default_image_size`` if None.
        channels: channels of the four encoder levels.
        latent_dim: channels of the bottleneck level.
        num_res_units: residual units per level.
    """

    default_image_size: ClassVar[tuple[int, int]] = (64, 64)

    def __init__(
        self,
        image_size: Sequence[int] | None = None,
        channels: Sequence[int] = (16, 32, 64, 128),
        latent_dim: int = 128,
        num_res_units: int = 1,
    ) -> None:
        super().__init__()
        size = self.default_image_size if image_size is None else image_size
        self.body = unet_body(size, channels, latent_dim, num_res_units)
        self.build_heads(int(channels[0]))

    def build_heads(self, width: int) -> None:
        """Add the output layers on the body's ``width`` channels."""
        raise NotImplementedError


class TranslationGanModel(ReconstructionModel):
    """`AnomalyModel` adapter shared by Brainomaly and HealthyGAN.

    The "reconstruction" is the generator's healthy version of the input, so the map is
    |x - healthy(x)| and scoring is the shared reconstruction scoring; the trainer is WGAN-GP
    with a PatchGAN critic (``optim.critic_channels``, default (32, 64, 128)). A subclass names
    its ``generator_class`` and ``trainer_class``.
    """

    generator_class: ClassVar[type[nn.Module]]
    trainer_class: ClassVar[type[SemiSupervisedGanTrainer]]
    map_description: ClassVar[str] = "absolute difference between the image and its healthy version"

    @classmethod
    def build_network(cls, **init_args: Any) -> nn.Module:
        """The generator, built from the card's ``init_args``."""
        return cls.generator_class(**init_args)

    @classmethod
    def make_trainer(cls, network: nn.Module, optim: dict[str, Any]) -> Trainer:
        """The subclass's trainer with a PatchGAN critic."""
        if not isinstance(network, cls.generator_class):
            raise TypeError(
                f"expected {cls.generator_class.__name__}, got {type(network).__name__}"
            )
        critic = PatchDiscriminator(1, tuple(optim.get("critic_channels", (32, 64, 128))))
        return cls.trainer_class(network, critic, optim)

    @classmethod
    def score_rules(cls) -> tuple[str, ...]:
        """``map_mean`` (the papers' score) first, ``map_top`` as an alternative."""
        return ("map_mean", "map_top")
