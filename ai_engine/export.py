"""ONNX export of a checkpoint's network and scoring with ONNX Runtime.

What is exported is the model's *reconstruction* ``(B, 1, H, W) -> (B, 1, H, W)`` (the
``nn.Module``, batch size dynamic, H and W fixed to the card's ``image_size``). The anomaly map
and the image score are not in the graph: MONAI's ``GaussianFilter`` builds its kernel inside
``forward`` and does not export, and computing map and score with the very code of
`ai_engine.models.components.reconstruction` keeps one definition of them. `onnx_model`
therefore wraps an ONNX Runtime session in the same `ReconstructionModel` adapter the torch
path uses, so `ai_engine.pipeline.predict_images` gives ONNX scores with the same preprocessing
(`ai_engine.transforms.model_input`), batching and post-processing.

Exportable: models whose scoring is `ReconstructionModel.predict` (``conv_ae``, ``vae``).
Others raise `OnnxExportError` saying why.

The ONNX file carries the checkpoint's model id, name, version and weights sha256 as model
metadata; scoring refuses a file whose sha256 does not match the checkpoint's card.

Optional dependencies: ``onnx``, ``onnxscript`` (the ``torch.export``-based exporter) and
``onnxruntime``; they are imported only here, inside the functions that need them.

Example:
    >>> from ai_engine.export import export_onnx, onnx_scores  # doctest: +SKIP
    >>> path = export_onnx("default-cxr", Path("default-cxr.onnx"))  # doctest: +SKIP
    >>> onnx_scores(path, "default-cxr", images)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ai_engine import checkpoints as ckpt
from ai_engine.errors import AiEngineError
from ai_engine.models.base import AnomalyModel
from ai_engine.models.components.reconstruction import ReconstructionModel
from ai_engine.types import FloatArray, ModelCard

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "reconstruction"
#: Lowest opset the ``torch.export``-based exporter writes natively (lower ones are converted).
DEFAULT_OPSET = 18
#: Keys of the ONNX model metadata written by `export_onnx`.
META_PREFIX = "ai_anomaly_node."
_INSTALL_HINT = "pip install onnx onnxscript onnxruntime"


class OnnxExportError(AiEngineError):
    """A model cannot be exported to ONNX, or an ONNX file does not fit its checkpoint."""


def exportability(model: AnomalyModel) -> str | None:
    """Why ``model`` cannot be exported, or None when it can.

    Args:
        model: a loaded model.

    Returns:
        None, or a sentence saying what prevents the export.
    """
    cls = type(model)
    if not isinstance(model, ReconstructionModel):
        return (
            f"model {model.card.model_id!r} ({cls.__name__}) is not a reconstruction model; "
            "only the reconstruction network is exported and its scoring is not that of "
            "ai_engine.models.components.reconstruction"
        )
    if cls.predict is not ReconstructionModel.predict:
        return (
            f"model {model.card.model_id!r} ({cls.__name__}) overrides predict(); its "
            "post-processing would not be the shared one applied after ONNX Runtime"
        )
    return None


class _Reconstruction(nn.Module):
    """The part of a `ReconstructionModel` that goes into the ONNX graph."""

    def __init__(self, model: ReconstructionModel) -> None:
        super().__init__()
        self.network = model.network  # registered, so parameters become initialisers
        self._model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> reconstruction (B, 1, H, W), float32."""
        return self._model.reconstruct(x).float()


def _metadata(card: ModelCard) -> dict[str, str]:
    values = {
        "model_id": card.model_id,
        "name": card.name,
        "version": card.version,
        "weights_sha256": card.weights_sha256,
        "image_size": json.dumps(list(card.image_size)),
        "scoring": json.dumps(card.training.get("scoring", {}), sort_keys=True),
    }
    return {META_PREFIX + key: value for key, value in values.items()}


def export_onnx(checkpoint: str | Path, out: Path, *, opset: int = DEFAULT_OPSET) -> Path:
    """Export a checkpoint's reconstruction network to an ONNX file.

    Input ``image`` (B, 1, H, W) float32 in [0, 1] (after `ai_engine.transforms.model_input`),
    output ``reconstruction`` (B, 1, H, W); B is dynamic, (H, W) is the card's ``image_size``.

    Args:
        checkpoint: shipped checkpoint name (``default-cxr``) or checkpoint folder.
        out: the ``.onnx`` file to write (parent folders are created; written atomically).
        opset: ONNX opset. The exporter writes 18 natively; lower values are converted.

    Returns:
        ``out``.

    Raises:
        OnnxExportError: the model cannot be exported (the message says why), the exporter
            failed, or the optional packages are missing.
        ModelLoadError, UnknownModelError: the checkpoint cannot be loaded.
    """
    try:
        import onnx
        import onnxscript  # noqa: F401 - the exporter needs it; fail early with a hint
    except ImportError as exc:
        raise OnnxExportError(f"ONNX export needs optional packages: {_INSTALL_HINT}") from exc

    model = ckpt.load(checkpoint, device="cpu")
    reason = exportability(model)
    if reason is not None:
        raise OnnxExportError(f"cannot export {checkpoint}: {reason}")
    if not isinstance(model, ReconstructionModel):  # narrowed for mypy; exportability checked
        raise OnnxExportError(f"cannot export {checkpoint}: not a reconstruction model")
    graph = _Reconstruction(model).eval()
    example = torch.rand(2, 1, *model.card.image_size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"x": {0: batch}},
            verbose=False,
        )
    except torch.onnx.errors.OnnxExporterError as exc:
        raise OnnxExportError(
            f"torch could not export {model.card.model_id!r} to ONNX: {exc}"
        ) from exc
    if program is None:  # only the legacy exporter returns None
        raise OnnxExportError("the ONNX exporter returned no program")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        program.save(tmp, external_data=False)
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, _metadata(model.card))
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info(
        "exported to ONNX",
        extra={"model_id": model.card.model_id, "checkpoint": model.card.name, "opset": opset},
    )
    return out


class OnnxReconstructionModel(ReconstructionModel):
    """A checkpoint's card and scoring with an ONNX Runtime session as its network.

    `predict` is `ReconstructionModel.predict`: only ``reconstruct`` runs in ONNX Runtime;
    the map and the score are computed by the same torch code as for the torch model.

    Args:
        card: the checkpoint's model card (scoring rule, calibration, image size).
        session: an ``onnxruntime.InferenceSession`` of a file written by `export_onnx`.
    """

    model_id: ClassVar[str] = "onnxruntime"

    def __init__(self, card: ModelCard, session: Any) -> None:
        super().__init__(card, nn.Identity())
        self.session = session

    @classmethod
    def build_network(cls, **init_args: object) -> nn.Module:
        """Not available: the network is the ONNX file."""
        raise NotImplementedError("an ONNX Runtime model is built by ai_engine.export.onnx_model")

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> reconstruction (B, 1, H, W) from ONNX Runtime (on CPU memory)."""
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)


def onnx_model(
    onnx_path: Path | str,
    checkpoint: str | Path,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    intra_op_threads: int = 0,
    allow_spinning: bool = False,
) -> OnnxReconstructionModel:
    """An ONNX Runtime model that scores like ``ai_engine.checkpoints.load(checkpoint)``.

    Args:
        onnx_path: a file written by `export_onnx` from this checkpoint.
        checkpoint: shipped checkpoint name or folder (its card gives scoring and calibration).
        providers: ONNX Runtime execution providers, in order of preference.
        intra_op_threads: ONNX Runtime intra-op threads; 0 lets it choose.
        allow_spinning: let ONNX Runtime's idle threads busy-wait for the next run. Off by
            default: the pre- and post-processing run in torch in the same process, and
            spinning threads take the cores from it (measured on 2 cores: see bench/).

    Returns:
        The model (use it with `ai_engine.pipeline.predict_images`).

    Raises:
        OnnxExportError: onnxruntime is missing, the file cannot be read, or it was exported
            from other weights (sha256 differs from the checkpoint's card).
        ModelLoadError: the checkpoint cannot be read.
    """
    try:
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
    except ImportError as exc:
        raise OnnxExportError(f"ONNX scoring needs optional packages: {_INSTALL_HINT}") from exc
    card = ckpt.read_card(checkpoint)
    if not Path(onnx_path).is_file():
        raise OnnxExportError(f"no ONNX file {onnx_path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
    )
    load_errors = (
        ort_state.Fail,
        ort_state.InvalidArgument,
        ort_state.InvalidProtobuf,
        ort_state.NoSuchFile,
        ort_state.RuntimeException,
    )
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=list(providers))
    except load_errors as exc:
        raise OnnxExportError(f"ONNX Runtime cannot load {onnx_path}: {exc}") from exc
    meta = session.get_modelmeta().custom_metadata_map
    exported_sha = meta.get(META_PREFIX + "weights_sha256")
    if exported_sha != card.weights_sha256:
        raise OnnxExportError(
            f"{onnx_path} was not exported from checkpoint {checkpoint}: weights sha256 "
            f"{exported_sha} != {card.weights_sha256}"
        )
    return OnnxReconstructionModel(card, session)


def onnx_scores(
    onnx_path: Path | str, checkpoint: str | Path, images: Sequence[FloatArray]
) -> np.ndarray:
    """Image scores (N,) from ONNX Runtime, with the torch path's pre- and post-processing.

    Args:
        onnx_path: a file written by `export_onnx` from ``checkpoint``.
        checkpoint: shipped checkpoint name or folder.
        images: greyscale (H0, W0) arrays in [0, 1], any size.

    Returns:
        float32 scores (N,), comparable with `ai_engine.pipeline.score_arrays`.

    Raises:
        OnnxExportError: see `onnx_model`.
    """
    from ai_engine.pipeline import predict_images

    return predict_images(onnx_model(onnx_path, checkpoint), images).score.numpy()


def parity_images(
    n: int = 4, size: tuple[int, int] = (256, 256), seed: int = 0
) -> list[FloatArray]:
    """Deterministic test images in [0, 1]: smooth gradients with blobs and a little noise.

    Args:
        n: how many.
        size: (H, W) of each.
        seed: random seed.

    Returns:
        ``n`` float32 arrays.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float32)
    images: list[FloatArray] = []
    for _ in range(n):
        base = 0.3 + 0.4 * (yy / size[0]) * rng.uniform(0.5, 1.0)
        cy, cx = rng.uniform(0.2, 0.8, 2) * np.array(size)
        radius = rng.uniform(0.05, 0.2) * min(size)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
        noise = rng.normal(0.0, 0.03, size)
        images.append(np.clip(base + 0.4 * blob + noise, 0.0, 1.0).astype(np.float32))
    return images


def score_difference(
    onnx_path: Path | str, checkpoint: str | Path, images: Sequence[FloatArray]
) -> dict[str, float]:
    """Compare torch (CPU) and ONNX Runtime scores of the same images.

    Args:
        onnx_path: a file written by `export_onnx` from ``checkpoint``.
        checkpoint: shipped checkpoint name or folder.
        images: greyscale arrays in [0, 1].

    Returns:
        ``max_abs_diff`` and ``max_rel_diff`` (relative to the largest torch score magnitude).
    """
    from ai_engine.pipeline import predict_images

    torch_scores = predict_images(ckpt.load(checkpoint, device="cpu"), images).score.numpy()
    ort_scores = onnx_scores(onnx_path, checkpoint, images)
    abs_diff = float(np.max(np.abs(torch_scores - ort_scores))) if len(images) else 0.0
    scale = float(np.max(np.abs(torch_scores))) if len(images) else 0.0
    return {"max_abs_diff": abs_diff, "max_rel_diff": abs_diff / scale if scale > 0 else abs_diff}
