"""An attribute regressor trained on real images only, to measure the generator's conditioning.

Issue 22: how far does G(PD, CD, z) follow the requested age and sex? D's auxiliary head cannot
answer that (G is trained against it). This regressor is independent of D: its own small CNN
(the baseline classifier's feature extractor, two outputs: age on the encoded scale
``(years - 50) / 30`` and a sex logit), trained with Adam on the *real* ``train`` images that
have a recorded age and sex (NIH; Kermany records neither). Its own error is measured on the
real ``val`` images (the reference: how well it reads age and sex from a real image), then it
reads the generator's images made for requested attributes from the public prior:

- ``age_mae_years``: mean |predicted - requested| age in years;
- ``age_corr``: Pearson correlation of predicted with requested age;
- ``sex_accuracy``: share of images whose predicted sex is the requested one;
- ``*_shuffled``: the same against a random permutation of the requested attributes, i.e. what
  a generator that ignores its condition would score (only the gap to it means anything).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ai_engine.models.components.augment import make_augment, parse_spec
from ai_engine.models.fed_cgan.attributes import AGE_SCALE, sample_prior
from ai_engine.models.fed_cgan.local import synthesize
from training.federated.task import SmallClassifier


class AttributeRegressor(nn.Module):
    """(B, 1, H, W) -> (B, 2): encoded age, sex logit (> 0: male)."""

    def __init__(self) -> None:
        super().__init__()
        base = SmallClassifier(channels=(16, 32, 64, 64))
        self.features = base.features
        self.head = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


def known_rows(attributes: torch.Tensor) -> torch.Tensor:
    """Boolean (N,): rows with both a recorded sex (non-zero) and a recorded age."""
    return attributes[:, 1] != 0


def train_regressor(
    images: torch.Tensor,
    attributes: torch.Tensor,
    epochs: int = 40,
    seed: int = 0,
    augment: str = "rotate10,zoom0.1",
    batch_size: int = 32,
) -> AttributeRegressor:
    """Fit on real images with known attributes: MSE on age + BCE on sex (Adam, lr 1e-3).

    Raises:
        ValueError: no image has a recorded sex.
    """
    keep = known_rows(attributes)
    if not bool(keep.any()):
        raise ValueError("no image with recorded attributes to train the attribute regressor")
    x, a = images[keep], attributes[keep]
    torch.manual_seed(seed)
    net = AttributeRegressor()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    aug = make_augment(parse_spec(augment), seed)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            xb = x[idx] if aug is None else aug(x[idx])
            out = net(xb)
            loss = nn.functional.mse_loss(out[:, 0], a[idx, 0])
            loss = loss + nn.functional.binary_cross_entropy_with_logits(
                out[:, 1], (a[idx, 1] > 0).float()
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    return net


@torch.no_grad()
def predict(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, 2): encoded age, sex sign (+1 / -1)."""
    out = torch.cat([net(images[i : i + 64]) for i in range(0, len(images), 64)])
    return torch.stack([out[:, 0], torch.where(out[:, 1] > 0, 1.0, -1.0)], dim=1)


def agreement(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Age MAE (years), age correlation and sex accuracy of predictions against targets."""
    p_age, t_age = predicted[:, 0].numpy(), target[:, 0].numpy()
    corr = float(np.corrcoef(p_age, t_age)[0, 1]) if len(p_age) > 1 and t_age.std() > 0 else 0.0
    return {
        "age_mae_years": float(np.abs(p_age - t_age).mean() * AGE_SCALE),
        "age_corr": corr,
        "sex_accuracy": float((predicted[:, 1] == torch.sign(target[:, 1])).float().mean()),
        "n": len(target),
    }


def real_error(net: nn.Module, images: torch.Tensor, attributes: torch.Tensor) -> dict[str, float]:
    """The regressor's own error on real images with recorded attributes (e.g. ``val``)."""
    keep = known_rows(attributes)
    return agreement(predict(net, images[keep]), attributes[keep])


def conditioning(net: nn.Module, generator: Any, n: int = 500, seed: int = 0) -> dict[str, float]:
    """How far the generator follows requested attributes, read by the regressor.

    ``n`` requests from the public prior (age uniform 20-80, sex +-1); returns `agreement`
    against the requests and, suffixed ``_shuffled``, against a permutation of them.
    """
    rng = np.random.default_rng(seed)
    requested = torch.from_numpy(sample_prior(n, generator.cond_dim, rng))
    images = synthesize(generator, requested, seed=seed + 1)
    pred = predict(net, images)
    out = agreement(pred, requested[:, :2])
    perm = torch.from_numpy(rng.permutation(n))
    shuffled = agreement(pred, requested[perm, :2])
    out.update({f"{k}_shuffled": v for k, v in shuffled.items() if k != "n"})
    return out
