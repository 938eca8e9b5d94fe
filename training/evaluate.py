"""``python -m training evaluate``: score one split of a manifest with a checkpoint.

The last line printed is one JSON object (a contract other tools rely on): auroc, auprc,
sensitivity, specificity, f1, accuracy (at the checkpoint's calibrated threshold, named in
``threshold_rule``), threshold, n_normal, n_abnormal, ci95 (bootstrap), subgroups by sex and
age band where the manifest has them, and pixel_auroc / dice / iou when it has masks.

Preprocessing is the node's: a card with ``anatomy: brain`` gets each patient's volume
rebuilt, brain-extracted and normalised (`training.brain_volumes`), and its pixel metrics are
computed **inside the brain** only: ``pixel_auroc``, ``pixel_auprc``, ``dice`` / ``iou`` at the
calibrated pixel threshold (``pixel_threshold``), ``dice_per_patient`` (mean of each
patient's Dice), and ``dice_best_threshold`` / ``best_pixel_threshold``: the Dice at the
threshold best *on this split*, an upper bound that only val may use to choose.
``auroc`` is then the slice AUROC.

Chest cards (body part CHEST) get the lung fields found as the node finds them
(`ai_engine.anatomy.lungs`): a card with ``anatomy: lungs`` is scored inside them (images
without a plausible lung field are not analysed, count in ``n_not_analysed`` and score 0, as
the node does not flag them), and every chest card's map is measured against them and against
the manifest's boxes: ``in_lung_share``, ``two_lung_share``, ``pointing_game``, ``fppi``,
``lesion_sensitivity`` (`_lung_report`).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai_engine import checkpoints
from ai_engine.anatomy import RegionMask, find_regions
from ai_engine.metrics import (
    auroc,
    best_dice_threshold,
    dice_iou,
    fppi,
    image_report,
    map_boxes,
    mean_dice_by_group,
    pixel_auprc,
    pixel_auroc,
    pointing_game,
    share_inside,
)
from ai_engine.pipeline import get_model, predict_images
from ai_engine.postprocess import map_to_source
from training.data import Item, ManifestError, load_image, load_mask, read_manifest

AGE_BANDS = ((0, 18, "0-17"), (18, 40, "18-39"), (40, 65, "40-64"), (65, 200, "65+"))


def _age_band(age: str) -> str | None:
    try:
        years = float(age.rstrip("Yy"))
    except ValueError:
        return None
    return next((name for lo, hi, name in AGE_BANDS if lo <= years < hi), None)


def _subgroups(items: list[Item], labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    groups: dict[str, list[int]] = {}
    for idx, item in enumerate(items):
        if item.sex:
            groups.setdefault(f"sex={item.sex}", []).append(idx)
        band = _age_band(item.age) if item.age else None
        if band:
            groups.setdefault(f"age={band}", []).append(idx)
    out: dict[str, Any] = {}
    for name, idxs in sorted(groups.items()):
        y = labels[idxs]
        entry: dict[str, Any] = {"n_normal": int((y == 0).sum()), "n_abnormal": int((y == 1).sum())}
        if entry["n_normal"] and entry["n_abnormal"]:
            entry["auroc"] = auroc(y, scores[idxs])
        out[name] = entry
    return out


def _lung_report(
    items: list[Item], maps: torch.Tensor, lungs: list[RegionMask], pixel_threshold: float
) -> dict[str, Any]:
    """Where a chest model's map points (the map at each image's resolution).

    - ``in_lung_share``: of all map pixels at or above the first pixel threshold, the share
      inside the (undilated) lung fields, over the images where a lung field was found;
    - ``two_lung_share``: images where the segmenter kept two lungs;
    - on images with boxes (manifest ``bbox``): ``pointing_game`` (the map's maximum inside a
      box) and, over those images and the split's normal images, ``fppi`` /
      ``lesion_sensitivity`` of the thresholded map's connected components
      (`ai_engine.metrics.fppi`, IoU >= 0.1).
    """
    source_maps, fields, truth, predicted, pointed, pointed_boxes = [], [], [], [], [], []
    for item, amap, lung in zip(items, maps, lungs, strict=True):
        shape = lung.mask.shape
        full = map_to_source(amap, *shape)
        if lung.reason is None:
            source_maps.append(full)
            fields.append(lung.mask)
        if item.boxes or item.label == 0:
            truth.append([list(b) for b in item.boxes])
            predicted.append(map_boxes(full, pixel_threshold))
        if item.boxes:
            pointed.append(full)
            pointed_boxes.append([list(b) for b in item.boxes])
    out: dict[str, Any] = {
        "in_lung_share": share_inside(source_maps, fields, pixel_threshold),
        "two_lung_share": float(np.mean([r.parts == 2 for r in lungs])),
    }
    if pointed:
        out["pointing_game"] = pointing_game(pointed, pointed_boxes)
        out["n_boxed"] = len(pointed)
        out.update(fppi(truth, predicted))
    return out


def evaluate(
    checkpoint: str, manifest: Path, split: str, n_boot: int = 1000, scores_csv: Path | None = None
) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on ``split`` of ``manifest`` (see module docstring).

    Raises:
        ManifestError: bad manifest, or the split lacks a class.
        AiEngineError: the checkpoint cannot be loaded.
    """
    card = checkpoints.read_card(checkpoint)
    items = read_manifest(manifest, split)
    labels = np.array([i.label for i in items], dtype=np.int64)
    n_normal, n_abnormal = int((labels == 0).sum()), int((labels == 1).sum())
    if n_normal == 0 or n_abnormal == 0:
        raise ManifestError(
            f"split {split!r} of {manifest} has {n_normal} normal and {n_abnormal} abnormal "
            "images; AUROC needs both classes"
        )
    model = get_model(checkpoint)
    regions: list[np.ndarray] | None = None
    lungs: list[RegionMask] | None = None
    if card.anatomy == "brain":
        from training.brain_volumes import prepare

        prepared = prepare(items)
        images = [prepared[i.path].pixels for i in items]
        regions = [prepared[i.path].region.mask for i in items]
    else:
        images = [load_image(i.path) for i in items]
        if card.anatomy == "lungs" or "CHEST" in card.body_parts:
            # the lung fields, as the node finds them: a lung model is restricted to them;
            # any chest model's map is measured against them (in_lung_share)
            lungs = find_regions("lungs", images, model.device)
            if card.anatomy == "lungs":
                regions = [r.mask for r in lungs or []]
    output = predict_images(model, images, regions=regions if card.anatomy == "lungs" else None)
    scores = output.score.numpy().astype(np.float64)
    threshold = card.calibration.threshold
    result: dict[str, Any] = {
        "checkpoint": card.name,
        "model_id": card.model_id,
        "version": card.version,
        "manifest": str(manifest),
        "split": split,
        **image_report(labels, scores, threshold, n_boot=n_boot),
        "threshold_rule": card.calibration.threshold_rule,
    }
    if lungs is not None:
        result.update(
            _lung_report(items, output.anomaly_map, lungs, card.calibration.pixel_thresholds[0])
        )
        if card.anatomy == "lungs":
            result["n_not_analysed"] = sum(r.reason is not None for r in lungs)
    subgroups = _subgroups(items, labels, scores)
    if subgroups:
        result["subgroups"] = subgroups
    with_mask = [
        k for k, i in enumerate(items) if i.mask_path is not None and i.mask_path.is_file()
    ]
    if with_mask:
        masks, maps, groups = [], [], []
        for k in range(len(items)):
            item = items[k]
            if item.mask_path is not None and item.mask_path.is_file():
                mask = load_mask(item.mask_path)
            elif item.label == 0:
                mask = np.zeros(images[k].shape, dtype=bool)  # healthy: no anomalous pixel
            else:
                continue
            amap = map_to_source(output.anomaly_map[k], *mask.shape)
            if regions is not None:  # pixel metrics inside the anatomy only
                inside = regions[k]
                mask, amap = mask[inside], amap[inside]
            masks.append(mask)
            maps.append(amap)
            groups.append(item.patient_id or str(item.path))
        result["pixel_auroc"] = pixel_auroc(masks, maps)
        result["pixel_auprc"] = pixel_auprc(masks, maps)
        pix_thr = card.calibration.pixel_thresholds[0]
        result.update(dice_iou(masks, maps, pix_thr))
        result["pixel_threshold"] = pix_thr
        result["dice_per_patient"] = mean_dice_by_group(masks, maps, groups, pix_thr)
        best_thr, best_dice = best_dice_threshold(masks, maps)
        result["dice_best_threshold"] = best_dice
        result["best_pixel_threshold"] = best_thr
        result["pixel_metrics_region"] = card.anatomy or "whole image"
        result["n_masks"] = len(with_mask)
    if scores_csv is not None:
        with scores_csv.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label", "score", "flag"])
            for item, score in zip(items, scores, strict=True):
                writer.writerow([item.path, item.label, f"{score:.6g}", int(score >= threshold)])
    return result
