"""Fed-GAN differential privacy: one clipped row per real image, and epsilon checked independently.

The privacy argument of seed 000's pipeline rests on two facts a reader cannot see in a
training log: every real image contributes exactly one per-sample gradient row to a DP-SGD step
of the discriminator (so the sensitivity is the clipping norm C the noise is calibrated for),
and the reported epsilon is what the sampled Gaussian mechanism gives for those steps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("opacus")

from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from ai_engine.models.fed_cgan.local import LocalConfig, epsilon, private_d_step, train_local
from ai_engine.models.fed_cgan.loss import DiscriminatorLoss
from ai_engine.models.fed_cgan.torch_model import AuxDiscriminator, ConditionalUNetGenerator


def _private_d(n_images: int, batch_size: int, noise: float, clip: float):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    d = AuxDiscriminator(32, 2, channels=(4, 4, 4, 4))
    data = TensorDataset(torch.rand(n_images, 1, 32, 32), torch.randn(n_images, 2))
    loader = DataLoader(data, batch_size=batch_size)
    opt = torch.optim.SGD(d.parameters(), lr=0.1)
    engine = PrivacyEngine(accountant="rdp")
    module, opt, loader = engine.make_private(
        module=d,
        optimizer=opt,
        data_loader=loader,
        noise_multiplier=noise,
        max_grad_norm=clip,
        poisson_sampling=True,
    )
    return d, module, opt


def test_each_real_image_gives_exactly_one_clipped_row_whatever_the_number_of_fakes() -> None:
    _, module, opt = _private_d(n_images=40, batch_size=8, noise=1.0, clip=1.0)
    loss = DiscriminatorLoss(1.0)
    for n_real, n_fake in [(5, 16), (8, 8), (1, 32)]:
        opt.zero_grad()
        real, attr = torch.rand(n_real, 1, 32, 32), torch.randn(n_real, 2)
        private_d_step(module, opt, real, attr, torch.rand(n_fake, 1, 32, 32), loss)
        rows = {p.grad_sample.shape[0] for p in module.parameters() if p.requires_grad}
        assert rows == {n_real}, f"{n_real} real images gave per-sample rows {rows}"
    module._close()


def test_an_empty_poisson_batch_still_takes_a_noisy_step() -> None:
    d, module, opt = _private_d(n_images=40, batch_size=8, noise=1.0, clip=1.0)
    before = [p.detach().clone() for p in d.parameters()]
    opt.zero_grad()
    private_d_step(
        module,
        opt,
        torch.rand(0, 1, 32, 32),
        torch.randn(0, 2),
        torch.rand(8, 1, 32, 32),
        DiscriminatorLoss(1.0),
    )
    assert any(not torch.equal(a, p) for a, p in zip(before, d.parameters(), strict=True))
    module._close()


def test_without_noise_or_clipping_the_private_step_is_the_plain_gradient_step() -> None:
    """Noise 0 and a clip norm no row reaches: the update must equal the non-private one, so the
    fake half of the loss is neither lost nor counted twice."""
    n = 8
    d, module, opt = _private_d(n_images=n, batch_size=n, noise=0.0, clip=1e6)
    reference = AuxDiscriminator(32, 2, channels=(4, 4, 4, 4))
    reference.load_state_dict(d.state_dict())
    real, attr, fake = torch.rand(n, 1, 32, 32), torch.randn(n, 2), torch.rand(12, 1, 32, 32)
    loss = DiscriminatorLoss(1.0)
    opt.zero_grad()
    private_d_step(module, opt, real, attr, fake, loss)
    real_logits, real_pred = reference(real)
    fake_logits, _ = reference(fake)
    total = loss.real_term(real_logits, real_pred, attr) + loss.fake_term(fake_logits)
    grads = torch.autograd.grad(total, list(reference.parameters()))
    with torch.no_grad():
        for p_ref, g in zip(reference.parameters(), grads, strict=True):
            p_ref -= 0.1 * g
    for p, p_ref in zip(d.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, p_ref, rtol=1e-4, atol=1e-6)
    module._close()


def _log_add(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi if lo == -math.inf else hi + math.log1p(math.exp(lo - hi))


def _sgm_rdp(q: float, sigma: float, alpha: int) -> float:
    """RDP of one sampled-Gaussian step at integer order alpha (Mironov et al. 2019, eq. 3.3)."""
    log_a = -math.inf
    for k in range(alpha + 1):
        term = (
            math.log(math.comb(alpha, k))
            + k * math.log(q)
            + (alpha - k) * math.log1p(-q)
            + (k * k - k) / (2 * sigma**2)
        )
        log_a = _log_add(log_a, term)
    return log_a / (alpha - 1)


def _independent_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """Composed RDP at integer orders, converted with Balle et al. 2020 (Prop. 12)."""
    best = math.inf
    for alpha in range(2, 256):
        rdp = steps * _sgm_rdp(q, sigma, alpha)
        eps = rdp + math.log1p(-1 / alpha) - (math.log(delta) + math.log(alpha)) / (alpha - 1)
        best = min(best, eps)
    return best


@pytest.mark.parametrize(("sigma", "q"), [(1.0, 0.2), (1.5, 0.1), (0.8, 0.05)])
def test_the_accountants_rdp_equals_the_closed_form_at_integer_orders(
    sigma: float, q: float
) -> None:
    from opacus.accountants.analysis.rdp import compute_rdp

    orders = list(range(2, 64))
    theirs = compute_rdp(q=q, noise_multiplier=sigma, steps=7, orders=orders)
    ours = [7 * _sgm_rdp(q, sigma, a) for a in orders]
    np.testing.assert_allclose(theirs, ours, rtol=1e-9)


@pytest.mark.parametrize(
    ("sigma", "q", "steps", "delta"),
    [(1.0, 0.2, 30, 1e-3), (1.0, 0.2, 30, 1e-5), (1.5, 0.1, 180, 1e-5), (0.8, 0.05, 500, 1e-5)],
)
def test_reported_epsilon_matches_an_independent_rdp_computation(
    sigma: float, q: float, steps: int, delta: float
) -> None:
    ours = epsilon(sigma, q, steps, delta)
    independent = _independent_epsilon(sigma, q, steps, delta)
    # the accountant also searches fractional orders (1.1 ... 10.9), so it may be tighter than
    # the integer orders alone (by up to ~10 % where the best order lies between 2 and 3),
    # never looser
    assert ours <= independent * 1.0001
    assert ours >= independent * 0.88


def test_a_dp_local_update_steps_through_every_poisson_batch() -> None:
    torch.manual_seed(0)
    g = ConditionalUNetGenerator(32, 2, noise_dim=8, channels=(4, 8), seed_channels=2)
    d = AuxDiscriminator(32, 2, channels=(4, 4, 4, 4))
    images, attributes = torch.rand(24, 1, 32, 32), torch.randn(24, 2)
    config = LocalConfig(batch_size=4, epochs=2, dp=True)
    result = train_local(g, d, images, attributes, config, seed=0)
    assert result.steps == 2 * 24 // 4
    assert result.sample_rate == pytest.approx(4 / 24)
    assert np.isfinite(result.d_loss)


def test_the_fad_detector_is_saved_as_a_checkpoint_that_evaluate_scores_as_the_report_does(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    from pathlib import Path

    from ai_engine import checkpoints
    from training.evaluate import evaluate
    from training.federated import report, task

    mini = Path(__file__).resolve().parents[3] / "tests/data/mini/cxr_kermany_pediatric"
    manifest = mini / "manifest.csv"
    s = task.settings_from({"manifest": str(manifest), "image-size": 32, "seed": 3})
    synthetic = task.items_to_site(
        [it for it in report.read_manifest(manifest, "train") if it.label == 0], s
    ).images  # stands in for generated images: the test checks the saving, not the GAN
    net = report.train_ae(synthetic, s.image_size, epochs=1, seed=0)
    privacy = {"epsilon": 7.5, "delta": 1e-3, "epsilon_at_delta_1e-5": 11.2, "unit": "one image"}
    folder = report.save_fad_checkpoint(net, synthetic, s, privacy, 95.0, tmp_path / "fad")

    card = checkpoints.read_card(folder)
    assert card.model_id == "conv_ae"
    assert card.training["data"].startswith("synthetic only")
    assert card.training["privacy"] == privacy
    scores = report.ae_errors(net, synthetic)
    assert card.calibration.threshold == pytest.approx(float(np.percentile(scores, 95)), rel=1e-5)
    assert "synthetic images" in card.calibration.threshold_rule
    assert "synthetic only" in (folder / "README.md").read_text()

    test = task.items_to_site(report.read_manifest(manifest, "test"), s)
    expected = report.detector_metrics(net, synthetic, test, 95.0)
    got = evaluate(str(folder), manifest, "test", n_boot=10)
    assert got["auroc"] == pytest.approx(expected["auroc"], abs=1e-9)
    assert got["threshold"] == pytest.approx(expected["threshold"], rel=1e-5)
