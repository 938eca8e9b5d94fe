"""ALOCC: tiny training on the committed mini CXR images, both score rules, round trip."""

import json

import numpy as np
import pytest
import torch

from ai_engine import checkpoints as ckpt
from ai_engine.models.alocc.loss import GeneratorLoss
from ai_engine.models.alocc.model import AloccModel
from ai_engine.models.alocc.torch_model import Alocc
from ai_engine.types import Calibration, ModelCard
from training.data import load_batch, read_manifest
from training.fit import REPO_ROOT, fit, load_config

TINY = {"image_size": [64, 64], "channels": [4, 8, 8, 8], "latent_dim": 8}


def _images(manifest, split="train", n=8):
    items = read_manifest(manifest, split)[:n]
    return load_batch([i.path for i in items], (64, 64))


def _train(seed, x, steps=3):
    torch.manual_seed(seed)
    net = AloccModel.build_network(**TINY)
    trainer = AloccModel.make_trainer(net, {"lr": 2e-4, "noise_sigma": 0.05})
    losses = [trainer.step(x) for _ in range(steps)]
    return net, trainer, losses


def _card(rule):
    return ModelCard(
        "alocc",
        "t",
        "0",
        ("DX",),
        (),
        (),
        (64, 64),
        "",
        "",
        Calibration(1.0, "", (0.1,), ("",), 0.2),
        training={"scoring": {"rule": rule, "map_sigma": 1.0}},
        architecture=TINY,
    )


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, mini_cxr_manifest):
    config = load_config(REPO_ROOT / "training" / "configs" / "alocc.yaml")
    config.update(
        manifest=str(mini_cxr_manifest), name="tiny-alocc", image_size=[64, 64], init_args=TINY
    )
    out = tmp_path_factory.mktemp("alocc") / "tiny"
    fit(config, out, epochs=2)
    return out


@pytest.mark.parametrize(
    ("size", "channels"), [((64, 64), (4, 8, 8, 8)), ((32, 64), (4, 8, 8)), ((128, 128), (4,) * 5)]
)
def test_reconstructor_and_discriminator_shapes(size, channels):
    net = Alocc(image_size=size, channels=channels, latent_dim=5).eval()
    x = torch.rand(3, 1, *size)
    with torch.no_grad():
        rec, logit = net(x), net.discriminate(x)
    assert rec.shape == x.shape
    assert 0.0 <= float(rec.min()) <= float(rec.max()) <= 1.0
    assert logit.shape == (3,)


def test_reconstruction_term_has_weight_lambda():
    x, rec = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)
    logit = torch.tensor([0.0])
    total, terms = GeneratorLoss(lam=0.4)(x, rec, logit)
    assert terms["r_rec"] == pytest.approx(0.25)
    assert terms["r_adv"] == pytest.approx(np.log(2.0))
    assert float(total) == pytest.approx(np.log(2.0) + 0.4 * 0.25)


def test_a_few_steps_on_real_images_give_finite_losses(mini_cxr_manifest):
    x = _images(mini_cxr_manifest)
    _, trainer, losses = _train(0, x)
    for step in losses:
        assert set(step) == {"r_loss", "r_adv", "r_rec", "d_loss"}
        assert all(np.isfinite(v) for v in step.values())
    assert np.isfinite(trainer.validation_loss(x))


def test_training_is_deterministic_given_a_seed(mini_cxr_manifest):
    x = _images(mini_cxr_manifest, n=4)
    a, _, la = _train(5, x, steps=2)
    b, _, lb = _train(5, x, steps=2)
    assert la == lb
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize("rule", ["d_rx", "d_x"])
def test_score_rules_are_one_minus_d(rule, mini_cxr_manifest, tmp_path):
    x = _images(mini_cxr_manifest, n=6)
    net, _, _ = _train(1, x)
    model = AloccModel(_card(rule), net).eval()
    out = model.predict(x)
    with torch.no_grad():
        judged = net(x) if rule == "d_rx" else x
        expected = 1.0 - torch.sigmoid(net.discriminate(judged))
    torch.testing.assert_close(out.score, expected, rtol=1e-5, atol=1e-6)
    assert out.anomaly_map.shape == (6, 1, 64, 64)
    ckpt.save(tmp_path, _card(rule), net.state_dict())
    again = ckpt.load(tmp_path, device="cpu").predict(x)
    assert torch.equal(out.score, again.score)
    assert torch.equal(out.anomaly_map, again.anomaly_map)


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="d_rx"):
        AloccModel(_card("mse"), Alocc(**TINY))


def test_fit_writes_a_checkpoint_that_scores_the_test_images(tiny_checkpoint, mini_cxr_manifest):
    history = json.loads((tiny_checkpoint / "history.json").read_text())
    assert len(history) == 2
    assert all(np.isfinite(h["r_loss"]) and np.isfinite(h["d_loss"]) for h in history)
    card = ckpt.read_card(tiny_checkpoint)
    assert card.training["scoring"]["rule"] in ("d_rx", "d_x")
    assert set(card.metrics["val_auroc_by_score_rule"]) == {"d_rx", "d_x"}
    x = _images(mini_cxr_manifest, "test", n=12)
    out = ckpt.load(tiny_checkpoint, device="cpu").predict(x)
    assert out.score.shape == (12,)
    assert out.anomaly_map.shape == (12, 1, 64, 64)
    assert ((out.score >= 0) & (out.score <= 1)).all()
