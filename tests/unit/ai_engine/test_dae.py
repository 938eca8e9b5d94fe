"""Denoising AE (Kascenas et al. 2022): coarse noise, training on mini slices, brain-only map."""

import numpy as np
import pytest
import torch

from ai_engine import registry
from ai_engine.models.dae.model import noisy
from ai_engine.models.dae.torch_model import coarse_noise
from ai_engine.types import Calibration, ModelCard
from training.data import load_batch, read_manifest

SIZE = (64, 64)
ARCH = {"image_size": SIZE, "channels": (4, 8, 8, 8), "latent_dim": 8}


def _images(manifest, split):
    return load_batch([i.path for i in read_manifest(manifest, split)], SIZE)


def _card(rule="map_top"):
    return ModelCard(
        "dae", "t", "0", ("MR",), (), (), SIZE, "", "",
        Calibration(1.0, "", (0.1,), ("",), 0.2),
        training={"scoring": {"rule": rule, "median_size": 3, "erosion_px": 2,
                              "top_fraction": 0.05}},
        architecture=ARCH,
    )  # fmt: skip


def test_coarse_noise_is_smooth_and_has_the_asked_scale():
    torch.manual_seed(0)
    x = torch.zeros(8, 1, 128, 128)
    noise = coarse_noise(x, resolution=16, std=0.2)
    assert noise.shape == x.shape
    # drawn on a 16x16 grid: neighbouring pixels nearly equal (white noise would not be)
    step = (noise[..., 1:] - noise[..., :-1]).abs().mean()
    assert float(step) < 0.3 * float(noise.abs().mean())  # white noise: about 1.1
    assert 0.1 < float(noise.std()) < 0.25  # bilinear upsampling shrinks the std a little
    with pytest.raises(ValueError, match="resolution"):
        coarse_noise(x, resolution=0)


def test_noise_stays_inside_the_brain():
    x = torch.zeros(2, 1, 32, 32)
    x[:, :, 8:24, 8:24] = 0.3
    y = noisy(x, 4, 0.2, in_brain=True)
    assert torch.equal(y[x == 0], x[x == 0])
    assert float((y - x)[x > 0].abs().mean()) > 0.01


def test_trains_on_mini_slices_lowers_its_loss_and_round_trips(
    mini_brain_manifest, tmp_path, predicts_and_round_trips
):
    x = _images(mini_brain_manifest, "train")
    torch.manual_seed(0)
    cls = registry.get("dae")
    net = cls.build_network(**ARCH)
    trainer = cls.make_trainer(net, {"lr": 3e-3, "noise_std": 0.1, "noise_in_brain": False})
    before = trainer.validation_loss(x)
    for _ in range(15):
        step = trainer.step(x[:8])
        assert np.isfinite(step["loss"])
    after = trainer.validation_loss(x)
    assert after < before  # it learns to denoise (fixed val noise, same every call)
    assert trainer.validation_loss(x) == after  # label-free val loss is deterministic
    x_test = _images(mini_brain_manifest, "test")
    predicts_and_round_trips(cls(_card(), net).eval(), x_test, tmp_path / "ckpt")


def test_the_map_is_zero_outside_the_eroded_brain():
    torch.manual_seed(0)
    cls = registry.get("dae")
    net = cls.build_network(**ARCH).eval()
    x = torch.zeros(1, 1, *SIZE)
    x[:, :, 16:48, 16:48] = 0.25 + 0.5 * torch.rand(1, 1, 32, 32)
    amap = cls(_card(), net).predict(x).anomaly_map[0, 0]
    assert float(amap[:18].abs().max()) == 0.0  # outside, and the 2 px rim
    assert float(amap[:, 46:].abs().max()) == 0.0
    assert float(amap[20:44, 20:44].max()) > 0.0  # an untrained network leaves residuals
