"""HealthyGAN: training steps on real mini images (normal + unlabelled), round trip, determinism."""

import numpy as np
import torch

from ai_engine import checkpoints, registry
from ai_engine.models.healthygan.loss import focus_loss
from ai_engine.types import Calibration, ModelCard
from training.data import load_batch, read_manifest

SIZE = (64, 64)
ARCH = {"image_size": SIZE, "channels": (4, 8, 8, 16), "latent_dim": 16}
OPTIM = {"lr": 2e-4, "critic_channels": (8, 16, 16)}


def _images(manifest, split):
    return load_batch([i.path for i in read_manifest(manifest, split)], SIZE)


def _train(seed, x_normal, x_mix, steps=2):
    torch.manual_seed(seed)
    cls = registry.get("healthygan")
    net = cls.build_network(**ARCH)
    trainer = cls.make_trainer(net, OPTIM)
    trainer.set_unlabelled(x_mix)
    losses = [trainer.step(x_normal[k * 4 : k * 4 + 4]) for k in range(steps)]
    return net, trainer, losses


def test_trains_predicts_and_round_trips(mini_brain_manifest, tmp_path):
    x_normal = _images(mini_brain_manifest, "train")
    x_mix = _images(mini_brain_manifest, "val")  # labels withheld: only the pixels are used
    net, trainer, losses = _train(0, x_normal, x_mix)
    for step in losses:
        assert {"d_wasserstein", "d_gp", "g_adv", "g_identity", "g_rec", "g_focus"} <= set(step)
        assert all(np.isfinite(v) for v in step.values())
    assert np.isfinite(trainer.validation_loss(x_mix[:4]))
    card = ModelCard(
        "healthygan", "t", "0", ("MR",), (), (), SIZE, "", "",
        Calibration(1.0, "", (0.1,), ("",), 0.2),
        training={"scoring": {"rule": "map_mean", "map_sigma": 0.0}}, architecture=ARCH,
    )  # fmt: skip
    x_test = _images(mini_brain_manifest, "test")
    out = registry.get("healthygan")(card, net).eval().predict(x_test)
    assert out.score.shape == (len(x_test),)
    assert out.anomaly_map.shape == (len(x_test), 1, *SIZE)
    b_int, mask = net.parts(x_test)
    torch.testing.assert_close(out.reconstruction, b_int * mask + x_test * (1 - mask))
    checkpoints.save(tmp_path / "ckpt", card, net.state_dict())
    loaded = checkpoints.load(tmp_path / "ckpt", device="cpu")
    torch.testing.assert_close(loaded.predict(x_test).score, out.score)


def test_untrained_generator_nearly_returns_its_input(mini_brain_manifest):
    torch.manual_seed(0)
    net = registry.get("healthygan").build_network(**ARCH).eval()
    x = _images(mini_brain_manifest, "test")
    with torch.no_grad():
        b_int, mask = net.parts(x)
    assert float(mask.max()) < 0.1  # mask logits start at -3
    torch.testing.assert_close(b_int, x)  # zero-initialised residual head


def test_training_is_deterministic_given_a_seed(mini_brain_manifest):
    x_normal = _images(mini_brain_manifest, "train")
    x_mix = _images(mini_brain_manifest, "val")
    net_a, _, losses_a = _train(2, x_normal, x_mix)
    net_b, _, losses_b = _train(2, x_normal, x_mix)
    assert losses_a == losses_b
    assert torch.equal(net_a.eval()(x_mix[:2]), net_b.eval()(x_mix[:2]))


def test_focus_loss_prefers_small_binary_masks():
    half = torch.full((1, 1, 8, 8), 0.5)
    empty = torch.zeros(1, 1, 8, 8)
    full = torch.ones(1, 1, 8, 8)
    assert float(focus_loss(empty, 1.0, 0.1)) == 0.0
    assert float(focus_loss(half, 1.0, 0.1)) > float(focus_loss(empty, 1.0, 0.1))
    assert float(focus_loss(full, 1.0, 0.1)) > float(focus_loss(empty, 1.0, 0.1))


def test_a_trained_network_exports_to_onnx_with_the_same_scores(
    mini_brain_manifest, tmp_path, exports_with_the_same_scores
):
    x_normal = _images(mini_brain_manifest, "train")
    x_mix = _images(mini_brain_manifest, "val")
    net, _, _ = _train(1, x_normal, x_mix, steps=2)  # trained: not the identity any more
    card = ModelCard(
        "healthygan", "t", "0", ("MR",), (), (), SIZE, "", "",
        Calibration(1.0, "", (0.1,), ("",), 0.2),
        training={"scoring": {"rule": "map_mean", "map_sigma": 0.0}}, architecture=ARCH,
    )  # fmt: skip
    images = [x[0].numpy() for x in _images(mini_brain_manifest, "test")[:3]]
    exports_with_the_same_scores(card, net, images, tmp_path)
