"""GANomaly: tiny training on the committed mini CXR images, shapes, round trip, determinism."""

import json

import numpy as np
import pytest
import torch

from ai_engine import checkpoints as ckpt
from ai_engine.models.ganomaly.loss import DiscriminatorLoss, GeneratorLoss
from ai_engine.models.ganomaly.model import GanomalyModel
from ai_engine.models.ganomaly.torch_model import Ganomaly
from training.data import load_batch, read_manifest
from training.fit import REPO_ROOT, fit, load_config

TINY = {"image_size": [64, 64], "channels": [4, 8, 8, 8], "latent_dim": 8}


def _images(manifest, split="train", n=8):
    items = read_manifest(manifest, split)[:n]
    return load_batch([i.path for i in items], (64, 64))


def _train(seed, x, steps=3):
    torch.manual_seed(seed)
    net = GanomalyModel.build_network(**TINY)
    trainer = GanomalyModel.make_trainer(net, {"lr": 2e-4})
    losses = [trainer.step(x) for _ in range(steps)]
    return net, trainer, losses


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, mini_cxr_manifest):
    config = load_config(REPO_ROOT / "training" / "configs" / "ganomaly.yaml")
    config.update(
        manifest=str(mini_cxr_manifest), name="tiny-ganomaly", image_size=[64, 64], init_args=TINY
    )
    out = tmp_path_factory.mktemp("ganomaly") / "tiny"
    fit(config, out, epochs=2)
    return out


@pytest.mark.parametrize(
    ("size", "channels"), [((64, 64), (4, 8, 8, 8)), ((32, 64), (4, 8, 8)), ((128, 128), (4,) * 5)]
)
def test_generator_shapes(size, channels):
    net = Ganomaly(image_size=size, channels=channels, latent_dim=6).eval()
    x = torch.rand(2, 1, *size)
    with torch.no_grad():
        out = net(x)
    assert out.latent.shape == (2, 6)
    assert out.latent_hat.shape == (2, 6)
    assert out.reconstruction.shape == x.shape
    assert 0.0 <= float(out.reconstruction.min()) <= float(out.reconstruction.max()) <= 1.0
    with torch.no_grad():
        logit, features = net.discriminate(x)
    assert logit.shape == (2,)
    assert features.shape[:2] == (2, channels[-1])


def test_sizes_that_do_not_divide_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        Ganomaly(image_size=(60, 64), channels=(4, 8, 8, 8))


def test_generator_loss_uses_the_paper_weights():
    x, rec = torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.5)
    z, z_hat = torch.zeros(1, 3), torch.ones(1, 3)
    f_real, f_fake = torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2, 2), 2.0)
    total, terms = GeneratorLoss()(x, rec, z, z_hat, f_real, f_fake)
    assert terms == {"g_adv": 4.0, "g_con": 0.5, "g_enc": 1.0}
    assert float(total) == pytest.approx(1 * 4.0 + 50 * 0.5 + 1 * 1.0)
    d = DiscriminatorLoss()(torch.tensor([20.0]), torch.tensor([-20.0]))
    assert float(d) < 1e-6


def test_a_few_steps_on_real_images_give_finite_losses_and_scores(mini_cxr_manifest):
    x = _images(mini_cxr_manifest)
    _, trainer, losses = _train(0, x)
    for step in losses:
        assert set(step) == {"g_loss", "g_adv", "g_con", "g_enc", "d_loss"}
        assert all(np.isfinite(v) for v in step.values())
    assert np.isfinite(trainer.validation_loss(x))


def test_training_is_deterministic_given_a_seed(mini_cxr_manifest):
    x = _images(mini_cxr_manifest, n=4)
    a, _, la = _train(3, x, steps=2)
    b, _, lb = _train(3, x, steps=2)
    assert la == lb
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_fit_writes_a_checkpoint_whose_reload_scores_the_same(tiny_checkpoint, mini_cxr_manifest):
    history = json.loads((tiny_checkpoint / "history.json").read_text())
    assert len(history) == 2
    assert all(np.isfinite(h["g_loss"]) and np.isfinite(h["d_loss"]) for h in history)
    card = ckpt.read_card(tiny_checkpoint)
    assert card.training["scoring"]["rule"] == "latent"
    x = _images(mini_cxr_manifest, "test", n=12)
    model = ckpt.load(tiny_checkpoint, device="cpu")
    out = model.predict(x)
    assert out.score.shape == (12,)
    assert out.anomaly_map.shape == (12, 1, 64, 64)
    assert out.reconstruction is not None
    assert out.reconstruction.shape == (12, 1, 64, 64)
    assert torch.isfinite(out.score).all()
    assert (out.score >= 0).all()
    again = ckpt.load(tiny_checkpoint, device="cpu").predict(x)
    assert torch.equal(out.score, again.score)
    assert torch.equal(out.anomaly_map, again.anomaly_map)
    # the latent rule is ||z - z_hat||
    net_out = model.network(x)
    expected = torch.linalg.vector_norm(net_out.latent - net_out.latent_hat, dim=1)
    torch.testing.assert_close(out.score, expected)


def test_round_trip_of_an_in_memory_model(tmp_path, mini_cxr_manifest):
    x = _images(mini_cxr_manifest, n=6)
    net, _, _ = _train(1, x)
    card = _card()
    before = GanomalyModel(card, net).eval().predict(x)
    ckpt.save(tmp_path, card, net.state_dict())
    after = ckpt.load(tmp_path, device="cpu").predict(x)
    torch.testing.assert_close(before.score, after.score, rtol=0, atol=0)


def _card():
    from ai_engine.types import Calibration, ModelCard

    return ModelCard(
        "ganomaly",
        "t",
        "0",
        ("DX",),
        (),
        (),
        (64, 64),
        "",
        "",
        Calibration(1.0, "", (0.1,), ("",), 0.2),
        training={"scoring": {"rule": "latent", "map_sigma": 1.0}},
        architecture=TINY,
    )
