"""ALAD: a tiny configuration trains through ``training fit`` on the committed real mini
images (finite losses), scores with both rules and the right shapes, keeps its spectral
normalisation through a save/load round trip, and is deterministic given its seed."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils import parametrize

from ai_engine import checkpoints, registry
from ai_engine.types import Calibration, ModelCard
from training.data import load_batch, read_manifest
from training.fit import fit, load_config

REPO = Path(__file__).resolve().parents[3]
SIZE = (64, 64)
TINY = {"image_size": list(SIZE), "channels": [4, 8, 8, 8], "latent_dim": 8, "hidden": 16}


def _images(manifest: Path, split: str) -> torch.Tensor:
    return load_batch([i.path for i in read_manifest(manifest, split)], SIZE)


def test_tiny_fit_on_real_images_is_finite_shaped_and_deterministic(tmp_path, mini_cxr_manifest):
    config = load_config(REPO / "training" / "configs" / "alad.yaml")
    config.update(manifest=str(mini_cxr_manifest), name="tiny-alad", image_size=list(SIZE))
    config["init_args"] = dict(TINY)
    config["optim"] = {**config["optim"], "batch_size": 8}
    card = fit(config, tmp_path / "a", epochs=2)
    history = json.loads((tmp_path / "a" / "history.json").read_text())
    assert len(history) == 2
    keys = ("d_loss", "d_xz", "d_xx", "d_zz", "ge_loss", "ge_adversarial", "ge_cycle")
    assert all(math.isfinite(e[k]) for e in history for k in (*keys, "val_normal_loss"))
    assert set(card.metrics["val_auroc_by_score_rule"]) == {"features", "l1"}

    x = _images(mini_cxr_manifest, "test")
    model = checkpoints.load(tmp_path / "a", device="cpu")
    out = model.predict(x)
    assert out.score.shape == (len(x),)
    assert out.anomaly_map.shape == (len(x), 1, *SIZE)
    assert torch.isfinite(out.score).all()

    again = fit(config, tmp_path / "b", epochs=2)
    assert again.weights_sha256 == card.weights_sha256


def test_spectral_norm_and_round_trip(tmp_path, mini_cxr_manifest):
    torch.manual_seed(0)
    cls = registry.get("alad")
    net = cls.build_network(**TINY)
    for disc in net.discriminators():
        weighted = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
        assert weighted
        assert all(parametrize.is_parametrized(m, "weight") for m in weighted)
    trainer = cls.make_trainer(net, {"lr": 2e-4})
    x_train = _images(mini_cxr_manifest, "train")
    for _ in range(3):
        assert all(math.isfinite(v) for v in trainer.step(x_train[:8]).values())
    card = ModelCard(
        "alad", "rt", "0", ("DX",), (), (), SIZE, "", "",
        Calibration(1.0, "", (0.1,), ("",), 0.2),
        training={"scoring": {"rule": "features"}}, architecture=TINY,
    )  # fmt: skip
    x = _images(mini_cxr_manifest, "val")
    before = cls(card, net).eval().predict(x)
    checkpoints.save(tmp_path / "rt", card, net.state_dict())
    loaded = checkpoints.load(tmp_path / "rt", device="cpu")
    after = loaded.predict(x)
    np.testing.assert_allclose(after.score.numpy(), before.score.numpy(), rtol=1e-6)
    np.testing.assert_allclose(after.anomaly_map.numpy(), before.anomaly_map.numpy(), atol=1e-7)
    l1 = cls(replace(card, training={"scoring": {"rule": "l1"}}), net).predict(x)
    expected = (x - l1.reconstruction).abs().flatten(1).mean(1)
    np.testing.assert_allclose(l1.score.numpy(), expected.numpy(), rtol=1e-5)
