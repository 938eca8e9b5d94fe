"""Reversed autoencoder: training steps on real mini images, map, round trip, determinism, CLAHE."""

import numpy as np
import pytest
import torch

from ai_engine import registry
from ai_engine.export import OnnxExportError, export_onnx
from ai_engine.models.reversed_ae.loss import clahe
from ai_engine.types import Calibration, ModelCard
from training.data import load_batch, read_manifest

SIZE = (64, 64)
ARCH = {"image_size": SIZE, "channels": (4, 8, 8, 8), "latent_dim": 8}


def _images(manifest, split):
    return load_batch([i.path for i in read_manifest(manifest, split)], SIZE)


def _train(x, seed=0, steps=2):
    torch.manual_seed(seed)
    cls = registry.get("reversed_ae")
    net = cls.build_network(**ARCH)
    trainer = cls.make_trainer(net, {"lr": 1e-3})
    losses = [trainer.step(x[k * 4 : k * 4 + 4]) for k in range(steps)]
    return net, trainer, losses


def _card(rule="map_mean"):
    return ModelCard(
        "reversed_ae", "t", "0", ("MR",), (), (), SIZE, "", "",
        Calibration(1.0, "", (0.1,), ("",), 0.2),
        training={"scoring": {"rule": rule, "map_sigma": 1.0, "clahe_tiles": 4}},
        architecture=ARCH,
    )  # fmt: skip


def test_trains_predicts_and_round_trips(mini_brain_manifest, tmp_path, predicts_and_round_trips):
    x_train = _images(mini_brain_manifest, "train")
    net, trainer, losses = _train(x_train)
    for step in losses:
        assert {"encoder", "decoder", "kl_real", "kl_fake", "reversed"} <= set(step)
        assert all(np.isfinite(v) for v in step.values())
    assert np.isfinite(trainer.validation_loss(x_train[:4]))
    x_test = _images(mini_brain_manifest, "test")
    predicts_and_round_trips(
        registry.get("reversed_ae")(_card(), net).eval(), x_test, tmp_path / "ckpt"
    )
    # its own map and scoring are not the shared reconstruction path: export says so
    with pytest.raises(OnnxExportError, match="cannot export"):
        export_onnx(tmp_path / "ckpt", tmp_path / "m.onnx")


def test_training_is_deterministic_given_a_seed(mini_brain_manifest):
    x_train = _images(mini_brain_manifest, "train")
    net_a, _, losses_a = _train(x_train, seed=4)
    net_b, _, losses_b = _train(x_train, seed=4)
    assert losses_a == losses_b
    assert torch.equal(net_a.eval()(x_train[:2]), net_b.eval()(x_train[:2]))


def test_clahe_equalises_a_low_contrast_image_and_keeps_order():
    torch.manual_seed(0)
    x = 0.4 + 0.1 * torch.rand(1, 1, 64, 64)  # values in [0.4, 0.5]
    y = clahe(x, tiles=4, clip_limit=4.0)
    assert y.shape == x.shape
    assert float(y.max() - y.min()) > 0.3  # a range of 0.1 stretched (clip-limited)
    assert 0.0 <= float(y.min()) <= float(y.max()) <= 1.0
    # near a tile centre the mapping is monotone in the input value (up to interpolation)
    block = slice(6, 10)
    xs, ys = x[0, 0, block, block].flatten(), y[0, 0, block, block].flatten()
    order = xs.argsort()
    assert bool((ys[order].diff() >= -5e-3).all())
    with pytest.raises(ValueError, match="divisible"):
        clahe(torch.rand(1, 1, 30, 30), tiles=4)
