"""Data crossing the engine's boundaries: images, model outputs, model cards, results."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # torch is not imported at run time: the node's router reads cards without it
    import torch

FloatArray = npt.NDArray[np.float32]


class AnomalyOutput(NamedTuple):
    """What every model's ``predict`` returns.

    Attributes:
        score: image-level anomaly score, shape (B,). Higher means more anomalous.
        anomaly_map: pixel-level anomaly map, shape (B, 1, H, W), same grid as the input.
        reconstruction: the model's reconstruction (B, 1, H, W), or None for models without one.
    """

    score: torch.Tensor
    anomaly_map: torch.Tensor
    reconstruction: torch.Tensor | None


@dataclass(frozen=True)
class Calibration:
    """Thresholds fitted on healthy validation images only; stored with the weights.

    Attributes:
        threshold: image-level score threshold (score >= threshold is flagged abnormal).
        threshold_rule: how it was chosen, e.g. "95th percentile of healthy val scores".
        pixel_thresholds: pixel-level thresholds of the anomaly map, ascending, for nested
            binary SEG levels; each is a percentile of healthy validation pixels.
        pixel_threshold_rules: one description per pixel threshold.
        map_scale: value of the anomaly map that is shown as 1.0 in the fractional SEG.
        healthy_scores: sorted healthy validation scores, to report an image's percentile.
    """

    threshold: float
    threshold_rule: str
    pixel_thresholds: tuple[float, ...]
    pixel_threshold_rules: tuple[str, ...]
    map_scale: float
    healthy_scores: tuple[float, ...] = ()

    def healthy_percentile(self, score: float) -> float:
        """Share (0..100) of healthy validation images that scored below ``score``."""
        if not self.healthy_scores:
            return float("nan")
        below = np.searchsorted(np.asarray(self.healthy_scores), score, side="left")
        return float(100.0 * below / len(self.healthy_scores))


@dataclass(frozen=True)
class ModelCard:
    """What a model is, what it was trained on and how its input must be prepared.

    Attributes:
        model_id: registry id (folder name under ai_engine/models).
        name: checkpoint name, e.g. "default-cxr".
        version: semantic version of these weights.
        modalities: DICOM Modality values the model accepts, e.g. ("CR", "DX").
        body_parts: accepted BodyPartExamined values (upper case); empty = any.
        views: accepted ViewPosition values (upper case); empty = any. Lateral views are
            refused by frontal-view models.
        image_size: (H, W) the model sees.
        preprocessing: the exact preprocessing, in words, for the model card.
        weights_sha256: sha256 of the weights file.
        calibration: thresholds fitted on healthy validation images.
        training: free-form facts about training (data, split, epochs, seed, ...).
        metrics: validation metrics.
        architecture: constructor arguments of the network (``init_args``).
        anatomy: the region its findings belong to (see `ai_engine.anatomy`): "" for none,
            "lungs" or "brain"; preprocessing then restricts map and score to it.
    """

    model_id: str
    name: str
    version: str
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    views: tuple[str, ...]
    image_size: tuple[int, int]
    preprocessing: str
    weights_sha256: str
    calibration: Calibration
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    architecture: dict[str, Any] = field(default_factory=dict)
    anatomy: str = ""

    @property
    def algorithm(self) -> AlgorithmInfo:
        """Provenance of these weights for the DICOM outputs."""
        return AlgorithmInfo(
            model_id=self.model_id,
            name=self.name,
            version=self.version,
            weights_sha256=self.weights_sha256,
        )


@dataclass(frozen=True)
class AlgorithmInfo:
    """Provenance written into every DICOM output."""

    model_id: str
    name: str
    version: str
    weights_sha256: str


@dataclass(frozen=True)
class ImageResult:
    """The engine's verdict on one source image.

    Exactly one of (``score``) or (``not_analysed_reason``) is set.

    Attributes:
        sop_instance_uid: the source image.
        series_instance_uid: its series.
        score: image-level anomaly score, or None when not analysed.
        threshold: the calibrated threshold the score was compared with.
        is_abnormal: score >= threshold.
        healthy_percentile: share of healthy validation images scoring lower (0..100).
        not_analysed_reason: why the image got no score (e.g. "Modality MR not in (CR, DX)").
    """

    sop_instance_uid: str
    series_instance_uid: str
    score: float | None
    threshold: float | None
    is_abnormal: bool | None
    healthy_percentile: float | None = None
    not_analysed_reason: str | None = None


@dataclass(frozen=True)
class StudyResult:
    """The engine's result for one study and one model.

    Attributes:
        study_instance_uid: the study.
        algorithm: the model that produced it.
        images: one entry per source image, analysed or not.
        study_score: maximum of the analysed images' scores (None if none was analysed).
        is_abnormal: any analysed image flagged.
        files: the DICOM files written (SEGs, SR).
        seconds: wall seconds per engine stage for this study and model: ``read`` (headers
            and pixels), ``preprocess`` (model input transforms), ``infer`` (network, map,
            score) and ``write`` (DICOM writers and files). Empty when not measured.
    """

    study_instance_uid: str
    algorithm: AlgorithmInfo
    images: tuple[ImageResult, ...]
    study_score: float | None
    is_abnormal: bool | None
    files: tuple[str, ...] = ()
    seconds: Mapping[str, float] = field(default_factory=dict)
