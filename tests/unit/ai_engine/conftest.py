"""Checks that every model's tests share (as fixtures: tests import no test module)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ai_engine import checkpoints
from ai_engine.models.base import AnomalyModel
from ai_engine.types import ModelCard


def _predicts_and_round_trips(model: AnomalyModel, x_test: torch.Tensor, folder: Path) -> None:
    """The predict contract (score per image, a non-negative map and a reconstruction of the
    input's shape) holds, and a saved checkpoint loads back with the same scores."""
    out = model.predict(x_test)
    assert out.score.shape == (len(x_test),)
    assert out.anomaly_map.shape == (len(x_test), 1, *x_test.shape[-2:])
    assert out.reconstruction is not None
    assert out.reconstruction.shape == x_test.shape
    assert float(out.anomaly_map.min()) >= 0.0
    checkpoints.save(folder, model.card, model.network.state_dict())
    loaded = checkpoints.load(folder, device="cpu")
    torch.testing.assert_close(loaded.predict(x_test).score, out.score)


@pytest.fixture
def predicts_and_round_trips() -> Callable[[AnomalyModel, torch.Tensor, Path], None]:
    """`_predicts_and_round_trips` (model, test images, checkpoint folder)."""
    return _predicts_and_round_trips


def _exports_with_the_same_scores(
    card: ModelCard, network: nn.Module, images: list[np.ndarray], folder: Path
) -> None:
    """A trained network exports to ONNX and scores ``images`` as torch does."""
    from ai_engine import pipeline
    from ai_engine.export import export_onnx, onnx_model

    checkpoints.save(folder / "ckpt", card, network.state_dict())
    onnx_path = export_onnx(folder / "ckpt", folder / "m.onnx")
    expected = pipeline.predict_images(checkpoints.load(folder / "ckpt", "cpu"), images).score
    got = pipeline.predict_images(onnx_model(onnx_path, folder / "ckpt"), images).score
    assert float(expected.abs().min()) > 0  # a real difference map, not the identity's zeros
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-3, atol=1e-6)


@pytest.fixture
def exports_with_the_same_scores() -> Callable[
    [ModelCard, nn.Module, list[np.ndarray], Path], None
]:
    """`_exports_with_the_same_scores` (card, trained network, images, folder)."""
    return _exports_with_the_same_scores
