"""SAGAN and its chapter-3 variants: training steps on real mini images, round trip, determinism."""

import numpy as np
import pytest
import torch

from ai_engine import checkpoints, registry
from ai_engine.models.sagan.loss import synthesise_anomalies
from ai_engine.models.sagan.positions import BottleneckAttention, binary_patch_codes
from ai_engine.models.sagan.torch_model import SaganGenerator
from ai_engine.types import Calibration, ModelCard
from training.data import load_batch, read_manifest

SIZE = (64, 64)
BASE = {"image_size": SIZE, "channels": (4, 4, 8, 8), "latent_dim": 8, "attention_heads": 2}
VARIANTS = [
    {"position_encoding": pe}
    for pe in ("acm", "sinusoidal", "learned", "rope", "alibi", "relative")
] + [
    {"position_encoding": "none", "backbone": "swin", "swin_feature_size": 12},
    {"position_encoding": "acm", "output": "image"},
]
OPTIM = {"lr": 2e-4, "critic_channels": (8, 8, 16)}


@pytest.fixture(scope="module")
def images(mini_brain_manifest):
    def load(split):
        return load_batch([i.path for i in read_manifest(mini_brain_manifest, split)], SIZE)

    return load("train"), load("val"), load("test")


def _train(arch, x_normal, x_mix, seed=0, steps=2):
    torch.manual_seed(seed)
    cls = registry.get("sagan")
    net = cls.build_network(**arch)
    trainer = cls.make_trainer(net, OPTIM)
    trainer.set_unlabelled(x_mix)
    losses = [trainer.step(x_normal[k * 4 : k * 4 + 4]) for k in range(steps)]
    return net, trainer, losses


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=lambda v: v.get("backbone", v.get("output", v["position_encoding"]))
)
def test_variant_trains_predicts_and_round_trips(variant, images, tmp_path):
    x_normal, x_mix, x_test = images
    arch = {**BASE, **variant}
    net, trainer, losses = _train(arch, x_normal, x_mix)
    for step in losses:
        assert {"d_wasserstein", "d_gp", "g_adv", "g_identity", "g_rec"} <= set(step)
        assert all(np.isfinite(v) for v in step.values())
    assert np.isfinite(trainer.validation_loss(x_mix[:2]))
    card = ModelCard(
        "sagan", "t", "0", ("MR",), (), (), SIZE, "", "",
        Calibration(1.0, "", (0.1,), ("",), 0.2),
        training={"scoring": {"rule": "map_mean", "map_sigma": 1.0}}, architecture=arch,
    )  # fmt: skip
    out = registry.get("sagan")(card, net).eval().predict(x_test)
    assert out.score.shape == (len(x_test),)
    assert out.anomaly_map.shape == (len(x_test), 1, *SIZE)
    assert torch.isfinite(out.anomaly_map).all()
    checkpoints.save(tmp_path / "ckpt", card, net.state_dict())
    loaded = checkpoints.load(tmp_path / "ckpt", device="cpu")
    torch.testing.assert_close(loaded.predict(x_test).score, out.score)


@pytest.mark.parametrize("encoding", ["acm", "rope"])
def test_training_is_deterministic_given_a_seed(encoding, images):
    x_normal, x_mix, _ = images
    arch = {**BASE, "position_encoding": encoding}
    net_a, _, losses_a = _train(arch, x_normal, x_mix, seed=5)
    net_b, _, losses_b = _train(arch, x_normal, x_mix, seed=5)
    assert losses_a == losses_b
    assert torch.equal(net_a.eval()(x_mix[:2]), net_b.eval()(x_mix[:2]))


@pytest.mark.parametrize("backbone", ["unet", "swin"])
def test_untrained_residual_generator_is_the_identity(backbone, images):
    _, _, x_test = images
    torch.manual_seed(0)
    arch = {**BASE, "position_encoding": "none" if backbone == "swin" else "acm"}
    net = SaganGenerator(**arch, backbone=backbone).eval()
    torch.testing.assert_close(net(x_test), x_test)


def test_binary_patch_codes_are_the_papers():
    codes = binary_patch_codes(4, 4, grid=2)  # ceil(log2(4) + 1) = 3 bits
    assert codes.shape == (3, 4, 4)
    assert codes[:, 0, 0].tolist() == [0, 0, 0]  # top-left patch: index 0
    assert codes[:, 3, 3].tolist() == [1, 1, 0]  # bottom-right: index 3, least significant first


def test_alibi_penalises_distance_and_relative_bias_is_learned():
    alibi = BottleneckAttention(8, 2, "alibi", (3, 3))
    bias = alibi._bias(alibi._coords(3, 3, torch.device("cpu")))
    assert bias.shape == (2, 9, 9)
    assert float(bias[0, 0, 0]) == 0.0
    assert float(bias[0, 0, 8]) < float(bias[0, 0, 1]) < 0.0  # farther -> more negative
    relative = BottleneckAttention(8, 2, "relative", (3, 3))
    assert relative.bias_table is not None
    assert relative.bias_table.requires_grad


def test_swin_refuses_a_relative_encoding_and_unknown_names_are_listed():
    with pytest.raises(ValueError, match="own windowed relative bias"):
        SaganGenerator(SIZE, position_encoding="rope", backbone="swin")
    with pytest.raises(ValueError, match="acm, sinusoidal"):
        SaganGenerator(SIZE, position_encoding="fourier")


def test_pseudo_anomalies_change_the_image_locally(images):
    x_normal, _, _ = images
    torch.manual_seed(0)
    x_pseudo = synthesise_anomalies(x_normal[:4])
    changed = (x_pseudo - x_normal[:4]).abs() > 1e-6
    assert changed.flatten(1).any(1).all()  # every image has a pseudo-anomaly
    assert changed.float().mean() < 0.5  # but it is local
    assert float(x_pseudo.min()) >= 0.0
    assert float(x_pseudo.max()) <= 1.0


def test_a_trained_network_exports_to_onnx_with_the_same_scores(images, tmp_path):
    from ai_engine import pipeline
    from ai_engine.export import export_onnx, onnx_model

    x_normal, x_mix, x_test = images
    arch = {**BASE, "position_encoding": "acm"}
    net, _, _ = _train(arch, x_normal, x_mix, seed=1)  # trained: not the identity any more
    card = ModelCard(
        "sagan", "t", "0", ("MR",), (), (), SIZE, "", "",
        Calibration(1.0, "", (0.1,), ("",), 0.2),
        training={"scoring": {"rule": "map_mean", "map_sigma": 1.0}}, architecture=arch,
    )  # fmt: skip
    checkpoints.save(tmp_path / "ckpt", card, net.state_dict())
    onnx_path = export_onnx(tmp_path / "ckpt", tmp_path / "m.onnx")
    sources = [x[0].numpy() for x in x_test[:3]]
    expected = pipeline.predict_images(checkpoints.load(tmp_path / "ckpt", "cpu"), sources).score
    got = pipeline.predict_images(onnx_model(onnx_path, tmp_path / "ckpt"), sources).score
    assert float(expected.abs().min()) > 0
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-3, atol=1e-6)
