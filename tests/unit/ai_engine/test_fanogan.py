"""f-AnoGAN: a tiny configuration runs both phases (WGAN-GP, then izi_f encoder) through
``training fit`` on the committed real mini images; finite losses, right shapes, the frozen
GAN does not move in the encoder phase, save/load round trip, determinism."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ai_engine import checkpoints, registry
from ai_engine.types import Calibration, ModelCard
from training.data import load_batch, read_manifest
from training.fit import fit, load_config

REPO = Path(__file__).resolve().parents[3]
SIZE = (64, 64)
TINY = {"image_size": list(SIZE), "channels": [4, 8, 8, 8], "latent_dim": 8}


def _images(manifest: Path, split: str) -> torch.Tensor:
    return load_batch([i.path for i in read_manifest(manifest, split)], SIZE)


def test_tiny_fit_runs_both_phases_and_is_deterministic(tmp_path, mini_cxr_manifest):
    config = load_config(REPO / "training" / "configs" / "fanogan.yaml")
    config.update(manifest=str(mini_cxr_manifest), name="tiny-fanogan", image_size=list(SIZE))
    config["init_args"] = dict(TINY)
    config["optim"] = {**config["optim"], "batch_size": 8, "gan_epochs": 1, "n_critic": 1}
    card = fit(config, tmp_path / "a", epochs=2)
    history = json.loads((tmp_path / "a" / "history.json").read_text())
    assert len(history) == 2
    assert all(math.isfinite(v) for e in history for v in e.values())
    assert history[0]["critic_loss"] != 0.0
    assert history[0]["encoder_loss"] == 0.0  # GAN phase
    assert history[1]["encoder_loss"] > 0.0  # encoder phase
    assert history[1]["critic_loss"] == 0.0
    assert card.training["scoring"]["rule"] in ("izi_f", "image_residual", "feature_residual")

    x = _images(mini_cxr_manifest, "test")
    model = checkpoints.load(tmp_path / "a", device="cpu")
    out = model.predict(x)
    assert out.score.shape == (len(x),)
    assert out.anomaly_map.shape == (len(x), 1, *SIZE)
    assert out.reconstruction is not None
    assert torch.isfinite(out.score).all()

    again = fit(config, tmp_path / "b", epochs=2)
    assert again.weights_sha256 == card.weights_sha256


def test_encoder_phase_moves_only_the_encoder_and_round_trips(tmp_path, mini_cxr_manifest):
    torch.manual_seed(0)
    cls = registry.get("fanogan")
    net = cls.build_network(**TINY)
    trainer = cls.make_trainer(net, {"gan_epochs": 1, "n_critic": 1})
    x_train = _images(mini_cxr_manifest, "train")
    for _ in range(2):
        assert all(math.isfinite(v) for v in trainer.step(x_train[:8]).values())
    trainer.end_epoch(trainer.validation_loss(x_train))
    frozen = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("encoder.")}
    encoder = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("encoder.")}
    for _ in range(2):
        assert trainer.step(x_train[:8])["encoder_loss"] > 0
    state = net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert any(not torch.equal(state[k], v) for k, v in encoder.items())

    card = ModelCard(
        "fanogan", "rt", "0", ("DX",), (), (), SIZE, "", "",
        Calibration(1.0, "", (0.1,), ("",), 0.2),
        training={"scoring": {"rule": "izi_f"}}, architecture=TINY,
    )  # fmt: skip
    x = _images(mini_cxr_manifest, "val")
    before = cls(card, net).eval().predict(x)
    checkpoints.save(tmp_path / "rt", card, net.state_dict())
    after = checkpoints.load(tmp_path / "rt", device="cpu").predict(x)
    np.testing.assert_allclose(after.score.numpy(), before.score.numpy(), rtol=1e-6)
    np.testing.assert_allclose(after.anomaly_map.numpy(), before.anomaly_map.numpy(), atol=1e-7)
    # izi_f = image residual + kappa * feature residual (kappa 1)
    parts = [
        cls(replace(card, training={"scoring": {"rule": r}}), net).predict(x).score
        for r in ("image_residual", "feature_residual")
    ]
    np.testing.assert_allclose((parts[0] + parts[1]).numpy(), before.score.numpy(), rtol=1e-5)
