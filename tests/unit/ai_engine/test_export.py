"""ONNX export of every registered model: ONNX Runtime scores equal the torch path's.

Needs the optional packages onnx, onnxscript and onnxruntime (never skipped).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ai_engine import checkpoints as ckpt
from ai_engine import pipeline, registry
from ai_engine.dicom_io.reader import read_image
from ai_engine.export import (
    META_PREFIX,
    OnnxExportError,
    export_onnx,
    exportability,
    onnx_model,
    onnx_scores,
    parity_images,
)
from ai_engine.models.base import AnomalyModel
from ai_engine.types import AnomalyOutput, Calibration, ModelCard

DATA = Path(__file__).resolve().parents[2] / "data" / "dicom"
SIZE = (64, 64)
# torch.export's own deprecation inside torch 2.13 (nothing this project can change).
pytestmark = pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)`:FutureWarning")
ARCH = {"image_size": SIZE, "channels": (4, 8, 8, 8), "latent_dim": 8}
#: Tiny init_args per model id (a model with other constructor arguments adds its own here).
TINY_ARCH: dict[str, dict] = {
    "conv_ae": ARCH,
    "vae": ARCH,
    "cnn_supervised": {"image_size": SIZE, "channels": (4, 8, 8, 8)},
}
#: Score rules per model id where the reconstruction rules (mse, map_top) do not apply.
RULES: dict[str, tuple[str, ...]] = {"ganomaly": ("latent", "map_top"), "alocc": ("d_rx", "d_x")}


def tiny_checkpoint(folder: Path, model_id: str, rule: str = "mse", seed: int = 0) -> Path:
    """An untrained tiny network of ``model_id`` saved as a checkpoint folder."""
    torch.manual_seed(seed)
    cls = registry.get(model_id)
    arch = TINY_ARCH.get(model_id, ARCH)
    net = cls.build_network(**arch)
    # Non-trivial BatchNorm statistics, so eval-mode export is really tested.
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    card = ModelCard(
        model_id,
        f"tiny-{model_id}",
        "0.0.1",
        ("DX",),
        (),
        (),
        SIZE,
        "",
        "",
        Calibration(1.0, "", (0.1,), ("",), 0.2),
        training={"scoring": {"rule": rule, "top_fraction": 0.05, "map_sigma": 2.0}},
        architecture=arch,
    )
    ckpt.save(folder, card, net.state_dict())
    return folder


@pytest.fixture(scope="module")
def sample_images() -> list[np.ndarray]:
    """Two real radiographs (source size, as the node reads them) and three synthetic images."""
    real = [
        read_image(next((DATA / name).glob("*.dcm"))).pixels
        for name in ("kermany_normal_mono2", "nih_pneumonia_1")
    ]
    return [*real, *parity_images(3, size=(200, 240), seed=1)]


@pytest.mark.parametrize(
    ("model_id", "rule"),
    [
        (m, r)
        for m in registry.list_ids()
        if registry.get(m).trainable  # a filter-only baseline has no network to export
        for r in RULES.get(m, ("mse", "map_top"))
    ],
)
def test_onnx_runtime_scores_equal_torch_scores(model_id, rule, tmp_path, sample_images):
    folder = tiny_checkpoint(tmp_path / "ckpt", model_id, rule)
    reason = exportability(ckpt.load(folder, device="cpu"))
    if reason is not None:  # a model whose ops do not allow it must say so clearly
        with pytest.raises(OnnxExportError, match="cannot export"):
            export_onnx(folder, tmp_path / "model.onnx")
        return
    onnx_path = export_onnx(folder, tmp_path / "model.onnx")
    assert onnx_path.is_file()

    expected = pipeline.predict_images(ckpt.load(folder, device="cpu"), sample_images)
    got = pipeline.predict_images(onnx_model(onnx_path, folder), sample_images)
    np.testing.assert_allclose(got.score.numpy(), expected.score.numpy(), rtol=1e-4)
    np.testing.assert_allclose(
        got.anomaly_map.numpy(), expected.anomaly_map.numpy(), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        onnx_scores(onnx_path, folder, sample_images), expected.score.numpy(), rtol=1e-4
    )


def test_exported_graph_has_a_dynamic_batch_and_the_checkpoint_metadata(tmp_path):
    import onnx

    folder = tiny_checkpoint(tmp_path / "ckpt", "conv_ae")
    onnx_path = export_onnx(folder, tmp_path / "sub" / "model.onnx")
    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto)
    [graph_input] = proto.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == "image"
    assert dims[0].dim_param  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [1, *SIZE]
    meta = {p.key: p.value for p in proto.metadata_props}
    card = ckpt.read_card(folder)
    assert meta[META_PREFIX + "weights_sha256"] == card.weights_sha256
    assert meta[META_PREFIX + "model_id"] == "conv_ae"
    assert json.loads(meta[META_PREFIX + "image_size"]) == list(SIZE)
    # Batch sizes other than the example's (2) run.
    model = onnx_model(onnx_path, folder)
    for n in (1, 3):
        assert model.predict(torch.rand(n, 1, *SIZE)).score.shape == (n,)
    assert not list(onnx_path.parent.glob(".*.tmp"))


def test_an_onnx_file_from_other_weights_is_refused(tmp_path):
    folder = tiny_checkpoint(tmp_path / "a", "conv_ae", seed=0)
    onnx_path = export_onnx(folder, tmp_path / "a.onnx")
    other = tiny_checkpoint(tmp_path / "b", "conv_ae", seed=1)
    with pytest.raises(OnnxExportError, match="not exported from checkpoint"):
        onnx_scores(onnx_path, other, parity_images(1))


def test_a_missing_onnx_file_says_so(tmp_path):
    folder = tiny_checkpoint(tmp_path / "a", "vae")
    with pytest.raises(OnnxExportError, match="no ONNX file"):
        onnx_model(tmp_path / "missing.onnx", folder)


class _NotReconstruction(AnomalyModel):
    model_id = "not_reconstruction"

    @classmethod
    def build_network(cls, **init_args: object) -> torch.nn.Module:
        return torch.nn.Identity()

    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        return AnomalyOutput(x.flatten(1).mean(1), x, None)


def test_a_model_that_is_not_a_reconstruction_model_is_not_exportable():
    card = ModelCard(
        "not_reconstruction",
        "t",
        "0",
        ("DX",),
        (),
        (),
        SIZE,
        "",
        "",
        Calibration(1.0, "", (0.1,), ("",), 0.2),
    )
    reason = exportability(_NotReconstruction(card, torch.nn.Identity()))
    assert reason is not None
    assert "not a reconstruction model" in reason


@pytest.mark.parametrize("model_id", ["conv_ae", "vae"])
def test_the_reconstruction_baselines_are_exportable(model_id, tmp_path):
    model = ckpt.load(tiny_checkpoint(tmp_path / "c", model_id), device="cpu")
    assert exportability(model) is None


def test_cli_export_prints_one_json_line_with_the_score_difference(tmp_path, capsys):
    from training.__main__ import main

    folder = tiny_checkpoint(tmp_path / "ckpt", "vae")
    out = tmp_path / "vae.onnx"
    assert main(["export", "--checkpoint", str(folder), "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["onnx"] == str(out)
    assert out.is_file()
    assert result["max_rel_diff"] < 1e-4
