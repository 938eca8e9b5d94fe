"""Brainomaly: a few training steps on the committed real mini images, round trip, determinism."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ai_engine import checkpoints, registry
from ai_engine.types import Calibration, ModelCard
from training.data import load_batch, read_manifest

SIZE = (64, 64)
ARCH = {"image_size": SIZE, "channels": (4, 8, 8, 16), "latent_dim": 16}
OPTIM = {"lr": 2e-4, "critic_channels": (8, 16, 16)}


def _images(manifest, split):
    return load_batch([i.path for i in read_manifest(manifest, split)], SIZE)


def _train(seed, x_normal, x_mix, steps=3):
    torch.manual_seed(seed)
    cls = registry.get("brainomaly")
    net = cls.build_network(**ARCH)
    trainer = cls.make_trainer(net, OPTIM)
    trainer.set_unlabelled(x_mix)
    losses = [trainer.step(x_normal[k * 4 : k * 4 + 4]) for k in range(steps)]
    return net, trainer, losses


def _card(rule="map_mean"):
    return ModelCard(
        "brainomaly", "t", "0", ("MR",), (), (), SIZE, "", "",
        Calibration(1.0, "", (0.1,), ("",), 0.2),
        training={"scoring": {"rule": rule, "map_sigma": 0.0}},
        architecture=ARCH,
    )  # fmt: skip


def test_trains_on_real_normal_and_unlabelled_images(mini_brain_manifest, tmp_path):
    x_normal = _images(mini_brain_manifest, "train")
    x_mix = _images(mini_brain_manifest, "val")  # labels withheld: only the pixels are used
    net, trainer, losses = _train(0, x_normal, x_mix, steps=2)
    for step in losses:
        assert {"d_wasserstein", "d_gp", "g_adv", "g_identity"} <= set(step)
        assert all(np.isfinite(v) for v in step.values())
    assert np.isfinite(trainer.validation_loss(x_mix[:4]))

    cls = registry.get("brainomaly")
    x_test = _images(mini_brain_manifest, "test")
    out = cls(_card(), net).eval().predict(x_test)
    assert out.score.shape == (len(x_test),)
    assert out.anomaly_map.shape == (len(x_test), 1, *SIZE)
    assert out.reconstruction is not None
    assert float(out.reconstruction.min()) >= 0.0
    assert float(out.reconstruction.max()) <= 1.0
    # the paper's score: the mean of the absolute difference map
    diff = (x_test - out.reconstruction).abs().flatten(1).mean(1)
    torch.testing.assert_close(out.score, diff)

    card = checkpoints.save(tmp_path / "ckpt", _card(), net.state_dict())
    loaded = checkpoints.load(tmp_path / "ckpt", device="cpu")
    assert loaded.card.weights_sha256 == card.weights_sha256
    torch.testing.assert_close(loaded.predict(x_test).score, out.score)


def test_training_is_deterministic_given_a_seed(mini_brain_manifest):
    x_normal = _images(mini_brain_manifest, "train")
    x_mix = _images(mini_brain_manifest, "val")
    net_a, _, losses_a = _train(3, x_normal, x_mix, steps=2)
    net_b, _, losses_b = _train(3, x_normal, x_mix, steps=2)
    assert losses_a == losses_b
    x = x_mix[:2]
    assert torch.equal(net_a.eval()(x), net_b.eval()(x))


def test_fit_with_unlabelled_val_selects_without_val_labels(mini_cxr_manifest, tmp_path):
    from training.fit import fit, load_config

    config = load_config(Path(__file__).resolve().parents[3] / "training" / "configs"
                         / "brainomaly.yaml")  # fmt: skip
    config.update(
        manifest=str(mini_cxr_manifest), name="tiny-brainomaly", image_size=list(SIZE),
        init_args={**ARCH, "image_size": list(SIZE)},
        optim={**config["optim"], **OPTIM, "batch_size": 8, "aucp_holdout": 0.25},
    )  # fmt: skip
    card = fit(config, tmp_path / "ckpt", epochs=1)
    assert card.training["unlabelled"].endswith("labels withheld")
    assert card.training["n_aucp_holdout"] > 0
    assert "pseudo-AUC" in card.training["selection"]
    assert card.training["scoring"]["rule"] == "map_mean"
    readme = (tmp_path / "ckpt" / "README.md").read_text()
    assert "not chosen on labels" in readme
    assert "transductive" in readme


def test_val_auroc_selection_is_refused_with_unlabelled_val(mini_cxr_manifest, tmp_path):
    from training.fit import fit

    config = {"model_id": "brainomaly", "name": "x", "version": "0", "seed": 0,
              "manifest": str(mini_cxr_manifest), "image_size": list(SIZE),
              "unlabelled": "val", "init_args": ARCH,
              "optim": {"batch_size": 4, "epochs": 1, "select": "val_auroc"}}  # fmt: skip
    with pytest.raises(ValueError, match="label-free"):
        fit(config, tmp_path / "c")


def test_a_trained_network_exports_to_onnx_with_the_same_scores(
    mini_brain_manifest, tmp_path, exports_with_the_same_scores
):
    x_normal = _images(mini_brain_manifest, "train")
    x_mix = _images(mini_brain_manifest, "val")
    net, _, _ = _train(1, x_normal, x_mix, steps=2)  # trained: not the identity any more
    card = ModelCard(
        "brainomaly", "t", "0", ("MR",), (), (), SIZE, "", "",
        Calibration(1.0, "", (0.1,), ("",), 0.2),
        training={"scoring": {"rule": "map_mean", "map_sigma": 0.0}}, architecture=ARCH,
    )  # fmt: skip
    images = [x[0].numpy() for x in _images(mini_brain_manifest, "test")[:3]]
    exports_with_the_same_scores(card, net, images, tmp_path)
