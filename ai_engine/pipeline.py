"""THE inference pipeline: a folder of DICOM files in, DICOM results out.

``run(input_dir, output_dir, checkpoints)`` reads every DICOM file under ``input_dir``,
groups them by study, checks each image against each model's card (images a model was not
trained for are *not analysed*, with the reason), scores the rest in batches, and writes the
result objects per *output unit* (`_output_units`):

- a series of two or more slices with a Frame of Reference and plane positions (CT/MR) is
  one unit: one multi-frame binary SEG (nested threshold levels,
  `seg_volume_writer.write_binary_seg_volume`) and one Parametric Map over all its analysed
  slices, so a viewer shows the region on every slice of one overlay;
- any other analysed image (a radiograph, a lone slice) is its own unit: a binary SEG and a
  FRACTIONAL SEG of the map (a Parametric Map where it has a Frame of Reference).

All objects of a unit are saved or none (a unit whose objects cannot be built is not
analysed, with the reason). Per study and model a Comprehensive SR (TID 1500) holds the
per-image scores (per slice for a series).

Study score: the **maximum** of the analysed images' scores; the study is abnormal when any
analysed image is.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from pydicom import Dataset

from ai_engine import checkpoints as ckpt
from ai_engine.anatomy import REGION_MARGIN_PX, find_regions, region_tensor, restrict
from ai_engine.dicom_io import markers
from ai_engine.dicom_io._common import PreparedSource, prepare_source
from ai_engine.errors import AiEngineError, UnsupportedInputError
from ai_engine.models.base import AnomalyModel, default_device
from ai_engine.postprocess import fractional_map, map_to_source, region_levels
from ai_engine.suitability import reason_not_suitable
from ai_engine.transforms import model_input
from ai_engine.types import (
    AlgorithmInfo,
    AnomalyOutput,
    Calibration,
    FloatArray,
    ImageResult,
    StudyResult,
)

logger = logging.getLogger(__name__)

BATCH_SIZE = 16
_MODELS: dict[tuple[str, str], AnomalyModel] = {}


def get_model(checkpoint: str, device: torch.device | None = None) -> AnomalyModel:
    """Load a checkpoint once per process and device, then reuse it."""
    device = device or default_device()
    key = (str(ckpt.resolve(checkpoint)), str(device))
    if key not in _MODELS:
        _MODELS[key] = ckpt.load(checkpoint, device)
    return _MODELS[key]


def infer_batch(
    model: AnomalyModel,
    batch: torch.Tensor,
    amp: bool | None = None,
    region: torch.Tensor | None = None,
) -> AnomalyOutput:
    """``model.predict`` on one preprocessed (B, 1, H, W) batch, on the model's device.

    Args:
        model: the loaded model.
        batch: model input (`ai_engine.transforms.model_input` of each image), any device.
        amp: mixed precision (``torch.autocast``: float16 on CUDA, bfloat16 on CPU); default on
            CUDA only, as the node and ``training evaluate`` run.
        region: (B, 1, H, W) bool anatomy region (`ai_engine.anatomy.region_tensor`): the map
            is restricted to it and the score comes from inside it (`ai_engine.anatomy.restrict`,
            with the card's score rule); None for a card without an anatomy region.
    """
    use_amp = model.device.type == "cuda" if amp is None else amp
    x = batch.to(model.device)
    with torch.autocast(device_type=model.device.type, enabled=use_amp):
        out = model.predict(x)
    if region is None:
        return out
    scoring = model.card.training.get("scoring", {})
    return restrict(
        AnomalyOutput(
            out.score.float(),
            out.anomaly_map.float(),
            None if out.reconstruction is None else out.reconstruction.float(),
        ),
        x.float(),
        region,
        str(scoring.get("rule", "map_top")),
        float(scoring.get("top_fraction", 0.05)),
        int(scoring.get("region_margin", REGION_MARGIN_PX)),
    )


def predict_images(
    model: AnomalyModel,
    images: Sequence[FloatArray],
    seconds: dict[str, float] | None = None,
    regions: Sequence[npt.NDArray[np.bool_]] | None = None,
) -> AnomalyOutput:
    """Score greyscale images in [0, 1] of any size, in batches, with the model's preprocessing.

    This is the one place where pixels become model input, for the node and for
    ``python -m training evaluate`` alike.

    Args:
        model: the loaded model.
        images: (H, W) arrays in [0, 1].
        seconds: if given, wall seconds are added under ``preprocess`` and ``infer``.
        regions: per image, its anatomy region at the image's resolution
            (`ai_engine.anatomy.find_regions`): maps are restricted to it, scores come from it.

    Returns:
        AnomalyOutput with score (N,), anomaly_map (N, 1, H, W) at the model's input size.
    """
    size = model.card.image_size
    scores, maps, recons = [], [], []
    timed = seconds if seconds is not None else {}
    for start in range(0, len(images), BATCH_SIZE):
        t0 = time.perf_counter()
        batch = torch.stack([model_input(img, size) for img in images[start : start + BATCH_SIZE]])
        region = (
            None if regions is None else region_tensor(regions[start : start + BATCH_SIZE], size)
        )
        t1 = time.perf_counter()
        out = infer_batch(model, batch, region=region)
        scores.append(out.score.float().cpu())
        maps.append(out.anomaly_map.float().cpu())
        if out.reconstruction is not None:
            recons.append(out.reconstruction.float().cpu())
        timed["preprocess"] = timed.get("preprocess", 0.0) + (t1 - t0)
        timed["infer"] = timed.get("infer", 0.0) + (time.perf_counter() - t1)
    if not scores:
        empty = torch.empty(0, 1, *size)
        return AnomalyOutput(torch.empty(0), empty, None)
    return AnomalyOutput(
        score=torch.cat(scores),
        anomaly_map=torch.cat(maps),
        reconstruction=torch.cat(recons) if recons else None,
    )


@dataclass
class _Source:
    path: Path
    header: Dataset


def _collect(input_dir: Path) -> dict[str, list[_Source]]:
    """Headers of the DICOM files under input_dir grouped by StudyInstanceUID."""
    from ai_engine.dicom_io.reader import read_header

    studies: dict[str, list[_Source]] = defaultdict(list)
    problems = []
    files = sorted(p for p in input_dir.rglob("*") if p.is_file())
    for path in files:
        try:
            header = read_header(path)
        except UnsupportedInputError as exc:
            problems.append(str(exc))
            logger.warning("skipping unreadable file", extra={"file": path.name})
            continue
        if markers.is_own_output(
            header.get("Manufacturer"), header.get("SOPClassUID")
        ) or markers.is_derived_object(header.get("SOPClassUID")):
            continue
        studies[str(header.StudyInstanceUID)].append(_Source(path, header))
    if not studies:
        detail = "; ".join(problems[:3]) or "no files"
        raise UnsupportedInputError(f"no readable DICOM image under {input_dir}: {detail}")
    return studies


def run(
    input_dir: Path,
    output_dir: Path,
    checkpoints: Sequence[str] = ("default-cxr",),
    device: torch.device | None = None,
    overlay_sc: bool | str = False,
    prior_dir: Path | None = None,
) -> list[StudyResult]:
    """Analyse every study under ``input_dir`` with each checkpoint; write DICOM results.

    Args:
        input_dir: folder (searched recursively) of DICOM files of one or more studies.
        output_dir: where the SEG and SR files are written (created if missing).
        checkpoints: shipped checkpoint names or checkpoint folders.
        device: torch device; default: CUDA when available, else CPU.
        overlay_sc: which analysed images also get a colour Secondary Capture with the map
            and the region burned in, for viewers that show neither SEG nor Parametric Map
            (`OVERLAY_SC_MODES`): ``"off"`` (False), ``"projection"`` (images without a Frame
            of Reference, the radiographs no stock viewer shows a SEG on), ``"all"`` (True).
        prior_dir: the studies' earlier SRs (the node puts them there when more images of
            an analysed study arrive). A study's SR of the same model name and version is
            carried into its new SR (`sr_writer.prior_report`): the new SR covers the
            earlier images and these, its study score is over all of them, and it names the
            earlier SR as its predecessor. An SR of another model version is not carried.

    Returns:
        One StudyResult per (study, checkpoint), in input order.

    Raises:
        UnsupportedInputError: no file under ``input_dir`` is a readable DICOM image.
        ModelLoadError, UnknownModelError: a checkpoint cannot be loaded.
    """
    from pydicom.uid import generate_uid

    from ai_engine.dicom_io.reader import read_image
    from ai_engine.dicom_io.sr_writer import prior_report, write_sr

    overlay_mode = overlay_sc_mode(overlay_sc)
    output_dir.mkdir(parents=True, exist_ok=True)
    priors = _prior_reports(prior_dir) if prior_dir is not None else {}
    t_collect = time.perf_counter()
    studies = _collect(input_dir)
    collect_seconds = (time.perf_counter() - t_collect) / max(1, len(studies))
    results: list[StudyResult] = []
    # each study's source headers are prepared for the writers once (prepare_source copies
    # them), then shared by the SEGs, the map, the overlay SC and the SR of every checkpoint
    prepared_by_study: dict[str, list[PreparedSource]] = {}
    for checkpoint in checkpoints:
        model = get_model(checkpoint, device)
        card, algorithm = model.card, model.card.algorithm
        for study_uid, sources in studies.items():
            started = time.perf_counter()
            seconds: dict[str, float] = {"read": collect_seconds}
            image_results: list[ImageResult] = []
            to_score: list[tuple[int, Dataset, FloatArray]] = []
            for index, src in enumerate(sources):
                sop_uid = str(src.header.SOPInstanceUID)
                series_uid = str(src.header.get("SeriesInstanceUID", ""))
                reason = reason_not_suitable(src.header, card)
                if reason is None:
                    try:
                        image = read_image(src.path)
                    except AiEngineError as exc:
                        reason = f"unreadable: {exc}"
                    else:
                        to_score.append((index, image.dataset, image.pixels))
                        continue
                image_results.append(
                    ImageResult(sop_uid, series_uid, None, None, None, None, reason)
                )
            seconds["read"] += time.perf_counter() - started
            regions = None
            if card.anatomy == "brain":
                to_score, refused = _brain_series(to_score, sources, seconds)
                image_results.extend(refused)
            elif card.anatomy:
                to_score, refused, regions = _image_regions(
                    card.anatomy, to_score, model.device, seconds
                )
                image_results.extend(refused)
            output = predict_images(model, [pixels for _, _, pixels in to_score], seconds, regions)
            t_write = time.perf_counter()
            if study_uid not in prepared_by_study:
                prepared_by_study[study_uid] = [prepare_source(s.header) for s in sources]
            prepared = prepared_by_study[study_uid]
            files: list[str] = []
            # the result objects written for the study, in writing order (for the SR's refs)
            written: list[Dataset] = []
            series_uids = _OutputSeries(
                generate_uid(), generate_uid(), generate_uid() if overlay_mode != "off" else None
            )
            cal = card.calibration
            scored_results = [
                _scored_result(dataset, float(output.score[i]), cal)
                for i, (_, dataset, _) in enumerate(to_score)
            ]
            units = _output_units([dataset for _, dataset, _ in to_score])
            for instance_number, unit in enumerate(units, start=1):
                try:
                    objects = _build_unit_outputs(
                        [prepared[to_score[i][0]] for i in unit],  # shared with the SR
                        [to_score[i][2] for i in unit],
                        [map_to_source(output.anomaly_map[i], *to_score[i][2].shape) for i in unit],
                        cal,
                        algorithm,
                        series_uids,
                        instance_number,
                        [i + 1 for i in unit],
                        overlay_mode,
                    )
                    paths = _save_all(output_dir, card.name, objects)
                except Exception as exc:  # noqa: BLE001 - one unit's writers must not sink the study
                    # strict writing refused something of these sources: their images get a
                    # reason instead of a score, the study's other images keep their results
                    logger.warning(
                        "result objects of an image or series could not be written",
                        extra={"study_uid": study_uid, "error": type(exc).__name__},
                    )
                    what = "series" if len(unit) > 1 else "image"
                    image_results.extend(_not_written(scored_results[i], what, exc) for i in unit)
                else:
                    files.extend(paths)
                    written.extend(ds for _, ds in objects)
                    image_results.extend(scored_results[i] for i in unit)
            scored = [r for r in image_results if r.score is not None]
            scores = [r.score for r in scored if r.score is not None]
            prior_sr = priors.get((study_uid, card.name, algorithm.version))
            prior = None
            if prior_sr is not None:
                prior = prior_report(prior_sr, {r.sop_instance_uid for r in image_results})
                scores += prior.scores()
            study_score = max(scores, default=None)
            study = StudyResult(
                study_instance_uid=study_uid,
                algorithm=algorithm,
                images=tuple(image_results),
                study_score=study_score,
                is_abnormal=None if study_score is None else study_score >= cal.threshold,
            )
            sr = write_sr(prepared, study, derived=written, prior=prior)
            sr_path = output_dir / f"{card.name}_sr_{sr.SOPInstanceUID}.dcm"
            sr.save_as(sr_path, enforce_file_format=True)
            # the SR goes last: it is delivered after every object it sums up, so a consumer
            # that sees the SR finds the SEGs, maps and the KOS of the study already there
            files.extend(_write_flagged_kos(output_dir, algorithm, prepared, image_results, sr))
            files.append(str(sr_path))
            seconds["write"] = time.perf_counter() - t_write
            study = dataclasses.replace(
                study, files=tuple(files), seconds={k: round(v, 6) for k, v in seconds.items()}
            )
            logger.info(
                "study analysed",
                extra={
                    "study_uid": study_uid,
                    "model_id": card.model_id,
                    "n_scored": len(scored),
                    "seconds": round(time.perf_counter() - started, 3),
                },
            )
            results.append(study)
    return results


#: When `run` writes overlay Secondary Captures (see its ``overlay_sc``).
OVERLAY_SC_MODES = ("off", "projection", "all")


def overlay_sc_mode(value: bool | str) -> str:
    """``overlay_sc`` as one of `OVERLAY_SC_MODES` (True: ``"all"``, False: ``"off"``).

    Raises:
        ValueError: any other value.
    """
    if isinstance(value, bool):
        return "all" if value else "off"
    if value not in OVERLAY_SC_MODES:
        raise ValueError(f"overlay_sc must be one of {', '.join(OVERLAY_SC_MODES)}, got {value!r}")
    return value


@dataclass(frozen=True)
class _OutputSeries:
    """The study's output series (one per object kind, shared by all its units)."""

    seg: str
    map: str
    overlay_sc: str | None  # None: no overlay Secondary Captures


def _scored_result(dataset: Dataset, score: float, cal: Calibration) -> ImageResult:
    return ImageResult(
        sop_instance_uid=str(dataset.SOPInstanceUID),
        series_instance_uid=str(dataset.get("SeriesInstanceUID", "")),
        score=score,
        threshold=cal.threshold,
        is_abnormal=score >= cal.threshold,
        healthy_percentile=cal.healthy_percentile(score),
    )


def _not_written(result: ImageResult, what: str, exc: BaseException) -> ImageResult:
    return dataclasses.replace(
        result,
        score=None,
        threshold=None,
        is_abnormal=None,
        healthy_percentile=None,
        not_analysed_reason=(
            f"the result objects for this {what} could not be written ({type(exc).__name__})"
        ),
    )


def _output_units(datasets: Sequence[Dataset]) -> list[tuple[int, ...]]:
    """Group analysed images into output units (indices into ``datasets``), in input order.

    The images of one series form one unit when there are at least two and they are one
    volume: single-frame slices with a Frame of Reference and plane positions, one size,
    one orientation, no two at the same position (`volume.plane_order`). Every other image
    is a unit of its own.
    """
    from ai_engine.dicom_io.volume import plane_order

    by_series: dict[str, list[int]] = {}
    for k, ds in enumerate(datasets):
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(k)
    units: list[tuple[int, ...]] = []
    for members in by_series.values():
        volume = [datasets[k] for k in members]
        if len(members) > 1 and plane_order(volume) is not None:
            units.append(tuple(members))
        else:
            units.extend((k,) for k in members)
    return sorted(units)


def _prior_reports(prior_dir: Path) -> dict[tuple[str, str, str], Dataset]:
    """The latest own SR per (study, model name, model version) under ``prior_dir``."""
    from ai_engine.dicom_io.sr_writer import read_own_sr

    latest: dict[tuple[str, str, str], tuple[str, Dataset]] = {}
    for path in sorted(prior_dir.glob("*.dcm")):
        ds = read_own_sr(path)
        if ds is None:
            logger.warning("an earlier result is not an SR of the node; ignored")
            continue
        key = (
            str(ds.StudyInstanceUID),
            str(ds.get("ManufacturerModelName", "")),
            str(ds.get("SoftwareVersions", "")),
        )
        when = f"{ds.get('ContentDate', '')}{ds.get('ContentTime', '')}"
        if key not in latest or when > latest[key][0]:
            latest[key] = (when, ds)
    return {key: ds for key, (_, ds) in latest.items()}


def _build_unit_outputs(
    sources: Sequence[PreparedSource],
    pixels: Sequence[FloatArray],
    source_maps: Sequence[FloatArray],
    cal: Calibration,
    algorithm: AlgorithmInfo,
    series: _OutputSeries,
    instance_number: int,
    image_numbers: Sequence[int],
    overlay_mode: str = "off",
) -> list[tuple[str, Dataset]]:
    """Build the result objects of one output unit: ``(kind, dataset)`` pairs.

    ``instance_number`` numbers the unit's SEG and map in their series, ``image_numbers``
    (one per source) the overlay SCs in theirs.

    One source: its binary SEG and continuous map (Parametric Map where the source has a
    frame of reference, FRACTIONAL SEG on projection radiographs: a PM is not valid there).
    Several sources (the slices of one volume series, see `_output_units`): one multi-frame
    binary SEG and one Parametric Map over all of them. Overlay SCs are per image either way,
    written as ``overlay_mode`` says (`overlay_sc_mode`).
    """
    from ai_engine.dicom_io.pmap_writer import write_parametric_map
    from ai_engine.dicom_io.sc_writer import write_overlay_sc
    from ai_engine.dicom_io.seg_volume_writer import write_binary_seg_volume
    from ai_engine.dicom_io.seg_writer import write_binary_seg, write_fractional_seg

    scaled = [fractional_map(m, cal) for m in source_maps]
    binary: Dataset
    continuous: Dataset
    if len(sources) == 1:
        [source], [source_map] = sources, source_maps
        binary = write_binary_seg(
            source,
            region_levels(source_map, cal),
            algorithm,
            series_instance_uid=series.seg,
            instance_number=instance_number,
        )
        continuous = (
            write_parametric_map([source], scaled[0], algorithm, series_instance_uid=series.map,
                                 instance_number=instance_number)
            if source.get("FrameOfReferenceUID")
            else write_fractional_seg(source, scaled[0], algorithm,
                                      series_instance_uid=series.map,
                                      instance_number=instance_number)
        )  # fmt: skip
    else:
        per_slice = [region_levels(m, cal) for m in source_maps]
        levels = [
            (label, np.stack([slice_levels[j][1] for slice_levels in per_slice]))
            for j, (label, _) in enumerate(per_slice[0])
        ]
        binary = write_binary_seg_volume(
            sources,
            levels,
            algorithm,
            series_instance_uid=series.seg,
            instance_number=instance_number,
        )
        continuous = write_parametric_map(
            sources,
            np.stack(scaled),
            algorithm,
            series_instance_uid=series.map,
            instance_number=instance_number,
        )
    outputs: list[tuple[str, Dataset]] = [("seg", binary), ("map", continuous)]
    with_overlay = overlay_mode == "all" or (
        overlay_mode == "projection" and not sources[0].get("FrameOfReferenceUID")
    )
    if series.overlay_sc is not None and with_overlay:
        for source, image, values, number in zip(
            sources, pixels, scaled, image_numbers, strict=True
        ):
            sc = write_overlay_sc(
                source,
                image,
                values,
                algorithm,
                series_instance_uid=series.overlay_sc,
                instance_number=number,
            )
            outputs.append(("sc", sc))
    return outputs


def _save_all(output_dir: Path, name: str, outputs: Sequence[tuple[str, Dataset]]) -> list[str]:
    """Save one unit's objects; nothing is left unless all of them were saved."""
    paths: list[Path] = []
    try:
        for kind, ds in outputs:
            path = output_dir / f"{name}_{kind}_{ds.SOPInstanceUID}.dcm"
            paths.append(path)
            ds.save_as(path, enforce_file_format=True)
    except BaseException:
        for path in paths:  # no half of a unit's result set is left to be delivered
            path.unlink(missing_ok=True)
        raise
    return [str(p) for p in paths]


def _image_regions(
    anatomy: str,
    to_score: list[tuple[int, Dataset, FloatArray]],
    device: torch.device,
    seconds: dict[str, float],
) -> tuple[list[tuple[int, Dataset, FloatArray]], list[ImageResult], list[npt.NDArray[np.bool_]]]:
    """For a model with a per-image anatomy (lungs): each image's region, found before scoring.

    Returns the images to score, the images where no plausible region was found (not
    analysed, with the reason) and the regions of the images to score, in their order.
    """
    t0 = time.perf_counter()
    found = find_regions(anatomy, [pixels for _, _, pixels in to_score], device) or []
    kept, refused, masks = [], [], []
    for entry, region in zip(to_score, found, strict=True):
        if region.reason is None:
            kept.append(entry)
            masks.append(region.mask)
            continue
        ds = entry[1]
        refused.append(
            ImageResult(
                str(ds.SOPInstanceUID),
                str(ds.get("SeriesInstanceUID", "")),
                None, None, None, None,
                region.reason,
            )
        )  # fmt: skip
    seconds[anatomy] = seconds.get(anatomy, 0.0) + time.perf_counter() - t0
    return kept, refused, masks


#: Fewer slices than this are not a volume HD-BET can extract a brain from.
MIN_BRAIN_SLICES = 8


def _brain_series(
    to_score: list[tuple[int, Dataset, FloatArray]],
    sources: Sequence[_Source],
    seconds: dict[str, float],
) -> tuple[list[tuple[int, Dataset, FloatArray]], list[ImageResult]]:
    """For a brain model: each series as one volume, brain-extracted and normalised.

    The slices of a series are sorted in space (`volume.read_series`, its spacing from the
    headers), HD-BET finds the brain (`ai_engine.anatomy.brain`) and the volume is normalised
    inside it; each slice is then scored on its own. A series that is not a volume (fewer than
    `MIN_BRAIN_SLICES` slices, slices that cannot be ordered, no spacing) and a slice without
    brain are not analysed, with the reason.
    """
    from ai_engine.anatomy.brain import brain_masks, normalise_in_brain
    from ai_engine.dicom_io.volume import read_series

    t0 = time.perf_counter()
    by_series: dict[str, list[tuple[int, Dataset, FloatArray]]] = {}
    for entry in to_score:
        by_series.setdefault(str(entry[1].get("SeriesInstanceUID", "")), []).append(entry)
    kept: list[tuple[int, Dataset, FloatArray]] = []
    refused: list[ImageResult] = []

    def refuse(entries: Sequence[tuple[int, Dataset, FloatArray]], reason: str) -> None:
        for _, ds, _ in entries:
            refused.append(
                ImageResult(
                    str(ds.SOPInstanceUID),
                    str(ds.get("SeriesInstanceUID", "")),
                    None,
                    None,
                    None,
                    None,
                    reason,
                )
            )

    for series_uid, entries in by_series.items():
        if len(entries) < MIN_BRAIN_SLICES:
            refuse(
                entries,
                f"brain extraction needs a series of at least {MIN_BRAIN_SLICES} slices; "
                f"this one has {len(entries)}",
            )
            continue
        try:
            volume = read_series([sources[index].path for index, _, _ in entries])
        except AiEngineError:
            refuse(
                entries,
                "the series is not one volume (its slices differ in size or orientation, "
                "share a position or cannot be ordered)",
            )
            continue
        if not all(math.isfinite(v) and v > 0 for v in volume.spacing):
            refuse(entries, "the series has no usable voxel spacing for brain extraction")
            continue
        masks = brain_masks(volume.pixels, volume.spacing)
        if not any(m.reason is None for m in masks):
            refuse(entries, "no brain found in this series")
            continue
        normalised = normalise_in_brain(volume.pixels, masks)
        by_uid = {str(ds.SOPInstanceUID): k for k, ds in enumerate(volume.datasets)}
        for index, ds, _ in entries:
            k = by_uid[str(ds.SOPInstanceUID)]
            if masks[k].reason is not None:
                refuse([(index, ds, normalised[k])], masks[k].reason or "no brain")
            else:
                kept.append((index, ds, normalised[k]))
        logger.info(
            "brain series prepared", extra={"series_uid": series_uid, "slices": len(entries)}
        )
    seconds["brain"] = seconds.get("brain", 0.0) + time.perf_counter() - t0
    return kept, refused


def _write_flagged_kos(
    output_dir: Path,
    algorithm: AlgorithmInfo,
    prepared: Sequence[Dataset],
    image_results: Sequence[ImageResult],
    sr: Dataset,
) -> list[str]:
    """Write the study's Key Object Selection of flagged images when it has any (worklists)."""
    from ai_engine.dicom_io.kos_writer import write_flagged_kos

    flagged_uids = {r.sop_instance_uid for r in image_results if r.is_abnormal}
    flagged = [p for p in prepared if str(p.SOPInstanceUID) in flagged_uids]
    if not flagged:
        return []
    kos = write_flagged_kos(flagged, sr, algorithm)
    path = output_dir / f"{algorithm.name}_kos_{kos.SOPInstanceUID}.dcm"
    kos.save_as(path, enforce_file_format=True)
    return [str(path)]


def score_arrays(checkpoint: str, images: Sequence[FloatArray]) -> np.ndarray:
    """Image scores (N,) for greyscale arrays in [0, 1]: the research entry point."""
    return predict_images(get_model(checkpoint), images).score.numpy()
