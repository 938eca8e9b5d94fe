"""Every model trains and scores wherever its network is: no tensor is left behind on the CPU.

CI has no GPU, so the device path is exercised on PyTorch's ``meta`` device: tensors there have
shapes but no data, and any operation that mixes them with a CPU tensor fails exactly as it
does with a CUDA tensor ("Tensor on device cpu is not on the expected device meta"). A meta
tensor has no value to read, so ``.item()`` and ``float()`` of one return 0.0 here
(``readable_meta``, conftest.py); every other step is the code `training fit` and the pipeline
run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ai_engine import registry
from training.fit import _provisional_card, load_config, resolve_device

CONFIGS = Path(__file__).resolve().parents[3] / "training" / "configs"
META = torch.device("meta")


def _config(model_id: str) -> dict[str, Any]:
    return load_config(CONFIGS / f"{model_id}.yaml")


def _batch(config: dict[str, Any], n: int = 4) -> torch.Tensor:
    h, w = (int(v) for v in config["image_size"])
    return torch.rand(n, 1, h, w)


# models trained by `training fit` (a no-learning baseline has no training step to place)
UNSUPERVISED = [
    m
    for m in registry.list_ids()
    if not registry.get(m).requires_labels and registry.get(m).trainable
]


@pytest.mark.parametrize("model_id", UNSUPERVISED)
def test_a_training_step_validation_and_scoring_stay_on_the_network_device(
    model_id: str, readable_meta: None
) -> None:
    config = _config(model_id)
    cls = registry.get(model_id)
    torch.manual_seed(0)
    network = cls.build_network(**config["init_args"]).to(META)
    trainer = cls.make_trainer(network, config["optim"])
    x = _batch(config)
    if config.get("unlabelled"):
        # fit keeps the unlabelled mix on the CPU; the trainer moves what it draws
        trainer.set_unlabelled(_batch(config, 6))
    for _ in range(2):  # e.g. f-AnoGAN's generator step comes every n_critic steps
        losses = trainer.step(x.to(META))
        assert losses
        assert all(isinstance(v, float) for v in losses.values())
    trainer.end_epoch(trainer.validation_loss(x.to(META)))
    # scoring as fit's calibration does it: a model around the trained network, CPU input
    rules = config.get("scoring", {}).get("rules") or list(cls.score_rules())
    scoring = {**config.get("scoring", {}), "rule": rules[0]}
    model = cls(_provisional_card(config, tuple(config["image_size"]), scoring), network)
    assert model.device == META
    out = model.eval().predict(x)
    assert out.score.device == META
    assert out.score.shape == (len(x),)
    assert out.anomaly_map.shape == x.shape


def test_the_supervised_baseline_trains_and_scores_on_the_network_device(
    readable_meta: None,
) -> None:
    config = _config("cnn_supervised")
    cls = registry.get("cnn_supervised")
    network = cls.build_network(**config["init_args"]).to(META)
    trainer = cls.make_supervised_trainer(network, config["optim"])
    x = _batch(config)
    trainer.step(x.to(META), torch.tensor([0.0, 1.0, 0.0, 1.0]).to(META))
    model = cls(_provisional_card(config, tuple(config["image_size"]), {}), network)
    out = model.eval().predict(x)
    assert out.score.device == META
    assert out.anomaly_map.shape == x.shape


def test_a_fresh_model_scores_on_the_cpu() -> None:
    config = _config("conv_ae")
    cls = registry.get("conv_ae")
    model = cls(_provisional_card(config, (128, 128), {}), cls.build_network(**config["init_args"]))
    assert model.device == torch.device("cpu")


def test_auto_is_the_cpu_without_a_gpu_and_cuda_is_refused_clearly() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: auto means CUDA here")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")
