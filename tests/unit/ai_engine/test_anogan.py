"""AnoGAN: a tiny configuration trains on the committed real mini images through
``training fit`` (finite losses, calibration), scores with the right shapes, survives a
save/load round trip and is deterministic given its seed."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ai_engine import checkpoints, registry
from ai_engine.export import exportability
from training.data import load_batch, read_manifest
from training.fit import fit, load_config

REPO = Path(__file__).resolve().parents[3]
SIZE = (64, 64)
TINY = {"image_size": list(SIZE), "channels": [4, 8, 8, 8], "latent_dim": 8}


def _config(manifest: Path) -> dict:
    config = load_config(REPO / "training" / "configs" / "anogan.yaml")
    config.update(manifest=str(manifest), name="tiny-anogan", image_size=list(SIZE))
    config["init_args"] = dict(TINY)
    config["optim"] = {**config["optim"], "batch_size": 8}
    config["scoring"] = {**config["scoring"], "search_steps": 3, "init_candidates": 4}
    return config


def _images(manifest: Path, split: str) -> torch.Tensor:
    return load_batch([i.path for i in read_manifest(manifest, split)], SIZE)


def test_tiny_fit_on_real_images_is_finite_shaped_and_deterministic(tmp_path, mini_cxr_manifest):
    config = _config(mini_cxr_manifest)
    card = fit(config, tmp_path / "a", epochs=2)
    history = json.loads((tmp_path / "a" / "history.json").read_text())
    assert len(history) == 2
    for entry in history:
        assert math.isfinite(entry["d_loss"])
        assert math.isfinite(entry["g_loss"])
        assert math.isfinite(entry["val_normal_loss"])
    assert card.training["scoring"]["rule"] == "anomaly_score"
    assert card.training["scoring"]["search_steps"] == 3

    x = _images(mini_cxr_manifest, "test")
    model = checkpoints.load(tmp_path / "a", device="cpu")
    out = model.predict(x)
    assert out.score.shape == (len(x),)
    assert out.anomaly_map.shape == (len(x), 1, *SIZE)
    assert out.reconstruction is not None
    assert out.reconstruction.shape == (len(x), 1, *SIZE)
    assert torch.isfinite(out.score).all()
    assert torch.isfinite(out.anomaly_map).all()
    # The seeded latent search does not depend on the batch an image is in.
    np.testing.assert_allclose(model.predict(x[:3]).score, out.score[:3], rtol=1e-4)
    assert exportability(model) is not None  # the iterative search is not an ONNX graph

    again = fit(config, tmp_path / "b", epochs=2)
    assert again.weights_sha256 == card.weights_sha256
    np.testing.assert_array_equal(
        checkpoints.load(tmp_path / "b", device="cpu").predict(x).score.numpy(),
        out.score.numpy(),
    )


def test_save_load_round_trip_gives_the_same_scores(tmp_path, mini_cxr_manifest):
    from ai_engine.types import Calibration, ModelCard

    torch.manual_seed(0)
    cls = registry.get("anogan")
    net = cls.build_network(**TINY)
    trainer = cls.make_trainer(net, {"lr": 2e-4})
    x_train = _images(mini_cxr_manifest, "train")
    for _ in range(3):
        assert all(math.isfinite(v) for v in trainer.step(x_train[:8]).values())
    scoring = {"rule": "anomaly_score", "search_steps": 4, "init_candidates": 4}
    card = ModelCard(
        "anogan", "rt", "0", ("DX",), (), (), SIZE, "", "",
        Calibration(1.0, "", (0.1,), ("",), 0.2), training={"scoring": scoring}, architecture=TINY,
    )  # fmt: skip
    x = _images(mini_cxr_manifest, "val")
    before = cls(card, net).eval().predict(x)
    checkpoints.save(tmp_path / "rt", card, net.state_dict())
    after = checkpoints.load(tmp_path / "rt", device="cpu").predict(x)
    np.testing.assert_allclose(after.score.numpy(), before.score.numpy(), rtol=1e-5)
    np.testing.assert_allclose(after.anomaly_map.numpy(), before.anomaly_map.numpy(), atol=1e-6)
    # The two terms are score rules of their own, and the paper's score combines them.
    terms = {
        rule: cls(replace(card, training={"scoring": {**scoring, "rule": rule}}), net)
        .predict(x)
        .score
        for rule in ("residual", "discrimination")
    }
    np.testing.assert_allclose(
        (0.9 * terms["residual"] + 0.1 * terms["discrimination"]).numpy(),
        before.score.numpy(),
        rtol=1e-4,
    )
