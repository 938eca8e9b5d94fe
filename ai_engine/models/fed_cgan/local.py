"""One site's local training of the conditional GAN, with optional differential privacy.

Differential privacy (Opacus): only the discriminator touches real images, so only its update
is privatised: Poisson-sampled batches, per-sample gradient clipping to ``max_grad_norm`` and
Gaussian noise of ``noise_multiplier * max_grad_norm`` on the summed clipped gradients
(DP-SGD). The generator never sees a real image; its loss goes through D (already private)
and its requested attributes are drawn from a public prior (`attributes.sample_prior`), so its
update is post-processing and costs no privacy. The privacy unit is one image; a patient with
k images is protected at group level k (weaker).

Each real image contributes exactly **one** clipped gradient row per step (`private_d_step`):
D's forward pass under the per-sample hooks sees the real batch alone. The fake half of D's
loss is computed with the hooks off, on a fixed number of generated images (``batch_size``,
not the Poisson batch's size, which depends on the data), and its gradient is added to the
privatised one before the optimiser step. That term depends on G and on D's current weights
only, both already private, so it is post-processing. (Before, D saw ``cat([real, fake])``
under the hooks with one fake per real image: adding one real image added two clipped rows,
a sensitivity of 2C against noise calibrated for C, so the reported epsilon was too small.)

Augmentation (``augment``, `components.augment.parse_spec` / `make_augment`) transforms each
real image of a batch on its own before D sees it: still one clipped row per real image, same
sensitivity.

``epsilon`` composes all DP-SGD steps a site has taken so far with the RDP accountant. The
proximal term (FedProx, ``proximal_mu`` > 0) is applied as a data-independent weight decay
towards the round's global weights after each optimiser step.

Training and synthesis run where the generator's weights are (a site's GPU when it put them
there). Batches, noise and the attribute prior are drawn on the CPU with the seeded generators
and then moved, so a CPU run gives the same weights whichever device code path it takes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ai_engine.models.base import module_device
from ai_engine.models.components.augment import make_augment, parse_spec
from ai_engine.models.fed_cgan.attributes import sample_prior
from ai_engine.models.fed_cgan.loss import DiscriminatorLoss, GeneratorLoss, cond_loss
from ai_engine.models.fed_cgan.torch_model import AuxDiscriminator, ConditionalUNetGenerator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalConfig:
    """Hyper-parameters of one local update (one federated round at one site)."""

    epochs: int = 1
    batch_size: int = 16
    optimizer: str = "sgd"  # "sgd" (with momentum, as the seed says) or "adam"
    lr_g: float = 0.02
    lr_d: float = 0.02
    momentum: float = 0.9
    lambda_cond: float = 1.0
    proximal_mu: float = 0.0
    dp: bool = True
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    augment: str = ""  # real images' augmentation (`augment.parse_spec`), e.g. "rotate10,zoom0.1"


@dataclass(frozen=True)
class LocalResult:
    """What one local update did (scalars only: this is what a site may report)."""

    n_images: int
    steps: int
    sample_rate: float
    d_loss: float
    g_loss: float
    cond_cos_fake: float


def _optimizer(params: Any, lr: float, config: LocalConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))
    raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: sgd, adam")


def _proximal_pull(
    module: nn.Module, anchor: dict[str, torch.Tensor], lr: float, mu: float
) -> None:
    """``w -= lr * mu * (w - w_global)``: the gradient step of the FedProx term."""
    if mu <= 0:
        return
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.sub_(lr * mu * (param - anchor[name]))


def _set_hooks(module: nn.Module, enabled: bool) -> None:
    """Turn Opacus' per-sample gradient hooks on/off (no-op on a plain module)."""
    toggle = getattr(module, "enable_hooks" if enabled else "disable_hooks", None)
    if callable(toggle):
        toggle()


def private_d_step(
    d_module: nn.Module,
    opt_d: Any,
    real: torch.Tensor,
    attr: torch.Tensor,
    fake: torch.Tensor,
    loss_fn: DiscriminatorLoss,
) -> torch.Tensor:
    """One DP-SGD step of D: one clipped row per real image, the fake term added after noise.

    Args:
        d_module: D wrapped by Opacus (``GradSampleModule``), hooks enabled.
        opt_d: its ``DPOptimizer`` (gradients zeroed by the caller).
        real: (B, 1, H, W) the Poisson batch of real images (B may be 0: noise is still added).
        attr: (B, A) their attributes.
        fake: (B', 1, H, W) generated images, B' fixed (not data-dependent).
        loss_fn: D's loss.

    Returns:
        The step's loss (real term + fake term), detached. ``p.grad_sample`` of D's parameters
        keeps the per-sample rows of this step (one per real image) until the next zero_grad.
    """
    params = [p for p in d_module.parameters() if p.requires_grad]
    logits, attr_pred = d_module(real)
    if len(real):
        real_loss = loss_fn.real_term(logits, attr_pred, attr)
    else:  # an empty Poisson batch: zero per-sample rows, then noise as for any other step
        real_loss = logits.sum() * 0.0 + attr_pred.sum() * 0.0
    real_loss.backward()  # type: ignore[no-untyped-call]
    _set_hooks(d_module, enabled=False)
    try:
        fake_logits, _ = d_module(fake)
        fake_loss = loss_fn.fake_term(fake_logits)
        fake_grads = torch.autograd.grad(fake_loss, params, allow_unused=True)
    finally:
        _set_hooks(d_module, enabled=True)
    if opt_d.pre_step():  # clip the real rows, add noise, divide by the expected batch size
        for p, g in zip(params, fake_grads, strict=True):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
        opt_d.original_optimizer.step()
    return (real_loss + fake_loss).detach()


def train_local(
    generator: ConditionalUNetGenerator,
    discriminator: AuxDiscriminator,
    images: torch.Tensor,
    attributes: torch.Tensor,
    config: LocalConfig,
    seed: int = 0,
) -> LocalResult:
    """Train G and D in place on one site's images.

    Args:
        generator: G, with the round's global weights loaded, on the device to train on.
        discriminator: D, with the round's global weights loaded, on G's device.
        images: (N, 1, H, W) real normal images of this site, in [0, 1] (on the CPU).
        attributes: (N, A) their attribute vectors (on the CPU).
        config: hyper-parameters.
        seed: seeds noise, sampling and the prior.

    Returns:
        Counts and mean losses; ``steps``/``sample_rate`` feed the privacy accountant.

    Raises:
        ValueError: no images, or images and attributes of different lengths.
    """
    if len(images) == 0 or len(images) != len(attributes):
        raise ValueError(
            f"need N > 0 images with N attributes, got {len(images)}/{len(attributes)}"
        )
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = module_device(generator)
    d_loss_fn = DiscriminatorLoss(config.lambda_cond)
    g_loss_fn = GeneratorLoss(config.lambda_cond)
    anchor_g = {k: v.detach().clone() for k, v in generator.named_parameters()}
    anchor_d = {k: v.detach().clone() for k, v in discriminator.named_parameters()}
    generator.train()
    discriminator.train()
    opt_g = _optimizer(generator.parameters(), config.lr_g, config)
    opt_d = _optimizer(discriminator.parameters(), config.lr_d, config)
    loader: DataLoader[Any] = DataLoader(
        TensorDataset(images, attributes), batch_size=config.batch_size, shuffle=True
    )
    d_module: nn.Module = discriminator
    if config.dp:
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant="rdp")
        d_module, opt_d, loader = engine.make_private(
            module=discriminator,
            optimizer=opt_d,
            data_loader=loader,
            noise_multiplier=config.noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            poisson_sampling=True,
        )
    augmenter = make_augment(parse_spec(config.augment), seed)
    steps = 0
    d_losses: list[float] = []
    g_losses: list[float] = []
    cosines: list[float] = []
    try:
        for _ in range(config.epochs):
            for real, attr in loader:
                steps += 1
                b = len(real)
                if b == 0 and not config.dp:
                    continue
                if augmenter is not None:
                    real = augmenter(real)
                real, attr = real.to(device), attr.to(device)
                n_fake = config.batch_size
                z = torch.randn(n_fake, generator.noise_dim).to(device)
                prior = torch.from_numpy(sample_prior(n_fake, generator.cond_dim, rng)).to(device)
                with torch.no_grad():
                    fake = generator(z, prior)
                opt_d.zero_grad()
                if config.dp:
                    d_loss = private_d_step(d_module, opt_d, real, attr, fake, d_loss_fn)
                else:
                    logits, attr_pred = d_module(torch.cat([real, fake]))
                    d_loss = d_loss_fn(logits[:b], logits[b:], attr_pred[:b], attr)
                    d_loss.backward()  # type: ignore[no-untyped-call]
                    opt_d.step()
                _proximal_pull(discriminator, anchor_d, config.lr_d, config.proximal_mu)

                # generator step: D frozen, Opacus hooks off (G's update is post-processing)
                _set_hooks(d_module, enabled=False)
                for p in discriminator.parameters():
                    p.requires_grad_(False)
                requested = torch.from_numpy(sample_prior(n_fake, generator.cond_dim, rng))
                requested = requested.to(device)
                fake = generator(torch.randn(n_fake, generator.noise_dim).to(device), requested)
                fake_logits, fake_pred = discriminator(fake)
                g_loss = g_loss_fn(fake_logits, fake_pred, requested)
                opt_g.zero_grad()
                g_loss.backward()  # type: ignore[no-untyped-call]
                opt_g.step()
                _proximal_pull(generator, anchor_g, config.lr_g, config.proximal_mu)
                for p in discriminator.parameters():
                    p.requires_grad_(True)
                _set_hooks(d_module, enabled=True)
                opt_d.zero_grad()
                d_losses.append(float(d_loss.detach()))
                g_losses.append(float(g_loss.detach()))
                cosines.append(1.0 - float(cond_loss(fake_pred.detach(), requested)))
    finally:
        close = getattr(d_module, "_close", None)
        if config.dp and close is not None:
            close()  # removes Opacus hooks and per-sample gradient buffers
    sample_rate = 1.0 / max(1, steps // max(1, config.epochs))
    return LocalResult(
        n_images=len(images),
        steps=steps,
        sample_rate=sample_rate if config.dp else min(1.0, config.batch_size / len(images)),
        d_loss=float(np.mean(d_losses)) if d_losses else float("nan"),
        g_loss=float(np.mean(g_losses)) if g_losses else float("nan"),
        cond_cos_fake=float(np.mean(cosines)) if cosines else float("nan"),
    )


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """(epsilon, delta)-DP of ``steps`` DP-SGD steps (RDP accountant); inf without noise.

    Raises:
        ValueError: delta not in (0, 1).
    """
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if steps == 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(accountant.get_epsilon(delta=delta))


@torch.no_grad()
def synthesize(
    generator: ConditionalUNetGenerator,
    attributes: torch.Tensor,
    seed: int = 0,
    batch_size: int = 64,
) -> torch.Tensor:
    """Images (N, 1, H, W) in [0, 1] on the CPU for attribute vectors (N, A), seeded noise.

    The generator runs where its weights are; the noise is drawn on the CPU, so a seed gives
    the same images on every device (up to the device's arithmetic).
    """
    generator.eval()
    device = module_device(generator)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(attributes), batch_size):
        cond = attributes[start : start + batch_size].to(device)
        z = torch.randn(len(cond), generator.noise_dim, generator=gen).to(device)
        out.append(generator(z, cond).cpu())
    if not out:
        return torch.empty(0, 1, generator.image_size, generator.image_size)
    return torch.cat(out)
