"""Evaluation metrics, one module: image-level, pixel-level, with bootstrap intervals.

Image level: AUROC, AUPRC, and sensitivity, specificity, F1, accuracy at a given threshold
(score >= threshold is "abnormal"). Pixel level: pixel-AUROC, Dice and IoU of a thresholded
map against ground-truth masks. Every headline figure can get a percentile-bootstrap 95%
confidence interval (images resampled with replacement, fixed seed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import average_precision_score, roc_auc_score

ArrayLike = npt.ArrayLike


def _binary(
    labels: ArrayLike, scores: ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (abnormal)")
    return y, s


def auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (needs both classes)."""
    y, s = _binary(labels, scores)
    return float(roc_auc_score(y, s))


def auprc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Average precision (area under the precision-recall curve), abnormal = positive."""
    y, s = _binary(labels, scores)
    return float(average_precision_score(y, s))


def at_threshold(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, precision, F1 and accuracy of ``score >= threshold``."""
    y, s = _binary(labels, scores)
    pred = s >= threshold
    tp = float(np.sum(pred & (y == 1)))
    tn = float(np.sum(~pred & (y == 0)))
    fp = float(np.sum(pred & (y == 0)))
    fn = float(np.sum(~pred & (y == 1)))
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    prec = tp / (tp + fp) if tp + fp else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return {
        "sensitivity": sens,
        "specificity": spec,
        "precision": prec,
        "f1": f1,
        "accuracy": (tp + tn) / len(y) if len(y) else float("nan"),
    }


def bootstrap_ci(
    metric: Callable[[npt.NDArray[Any], npt.NDArray[Any]], float],
    labels: ArrayLike,
    scores: ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of ``metric(labels, scores)``.

    Resamples are stratified by class so each keeps both classes.
    """
    y, s = _binary(labels, scores)
    rng = np.random.default_rng(seed)
    idx_pos = np.flatnonzero(y == 1)
    idx_neg = np.flatnonzero(y == 0)
    values = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(idx_pos, idx_pos.size), rng.choice(idx_neg, idx_neg.size)])
        values.append(metric(y[idx], s[idx]))
    lo, hi = np.nanpercentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def pixel_auroc(masks: Sequence[npt.NDArray[Any]], maps: Sequence[npt.NDArray[Any]]) -> float:
    """AUROC over all pixels of all images (mask > 0 = anomalous pixel)."""
    y = np.concatenate([np.asarray(m).ravel() > 0 for m in masks]).astype(np.int64)
    s = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in maps])
    return auroc(y, s)


def dice_iou(
    masks: Sequence[npt.NDArray[Any]], maps: Sequence[npt.NDArray[Any]], threshold: float
) -> dict[str, float]:
    """Dice and IoU of ``map >= threshold`` against masks, pooled over all pixels."""
    inter = union = total = 0.0
    for mask, amap in zip(masks, maps, strict=True):
        truth = np.asarray(mask) > 0
        pred = np.asarray(amap) >= threshold
        inter += float(np.sum(truth & pred))
        union += float(np.sum(truth | pred))
        total += float(truth.sum() + pred.sum())
    return {
        "dice": 2 * inter / total if total else float("nan"),
        "iou": inter / union if union else float("nan"),
    }


def pixel_auprc(masks: Sequence[npt.NDArray[Any]], maps: Sequence[npt.NDArray[Any]]) -> float:
    """Average precision over all pixels of all images (mask > 0 = anomalous pixel)."""
    y = np.concatenate([np.asarray(m).ravel() > 0 for m in masks]).astype(np.int64)
    s = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in maps])
    return auprc(y, s)


def best_dice_threshold(
    masks: Sequence[npt.NDArray[Any]], maps: Sequence[npt.NDArray[Any]], n_candidates: int = 200
) -> tuple[float, float]:
    """The map threshold with the highest pooled Dice, and that Dice.

    Candidates: ``n_candidates`` values evenly spaced between the lowest and the highest map
    value (pooled over all images). Only use it on the split that may choose (val).
    """
    values = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in maps])
    if values.size == 0:
        return float("nan"), float("nan")
    lo, hi = float(values.min()), float(values.max())
    best = (float("nan"), -1.0)
    for t in np.linspace(lo, hi, n_candidates)[1:]:
        d = dice_iou(masks, maps, float(t))["dice"]
        if np.isfinite(d) and d > best[1]:
            best = (float(t), d)
    return best


def mean_dice_by_group(
    masks: Sequence[npt.NDArray[Any]],
    maps: Sequence[npt.NDArray[Any]],
    groups: Sequence[str],
    threshold: float,
) -> float:
    """Mean over groups (e.g. patients) of each group's pooled Dice.

    Groups without any anomalous pixel are left out.
    """
    by_group: dict[str, tuple[list[Any], list[Any]]] = {}
    for mask, amap, group in zip(masks, maps, groups, strict=True):
        m, a = by_group.setdefault(group, ([], []))
        m.append(mask)
        a.append(amap)
    values = [
        dice_iou(m, a, threshold)["dice"]
        for m, a in by_group.values()
        if any(np.asarray(x).any() for x in m)
    ]
    return float(np.mean(values)) if values else float("nan")


def image_report(
    labels: ArrayLike, scores: ArrayLike, threshold: float, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The headline image-level figures with 95% bootstrap intervals.

    Returns:
        auroc, auprc, sensitivity, specificity, precision, f1, accuracy, threshold,
        n_normal, n_abnormal, and ``ci95`` {metric: [lo, hi]}.
    """
    y, s = _binary(labels, scores)
    report: dict[str, Any] = {
        "auroc": auroc(y, s),
        "auprc": auprc(y, s),
        **at_threshold(y, s, threshold),
        "threshold": float(threshold),
        "n_normal": int(np.sum(y == 0)),
        "n_abnormal": int(np.sum(y == 1)),
    }
    ci: dict[str, list[float]] = {
        "auroc": list(bootstrap_ci(auroc, y, s, n_boot, seed)),
        "auprc": list(bootstrap_ci(auprc, y, s, n_boot, seed)),
    }
    for key in ("sensitivity", "specificity", "f1", "accuracy"):

        def metric(yy: npt.NDArray[Any], ss: npt.NDArray[Any], key: str = key) -> float:
            return at_threshold(yy, ss, threshold)[key]

        ci[key] = list(bootstrap_ci(metric, y, s, n_boot, seed))
    report["ci95"] = ci
    return report


def fppi(
    boxes_true: Sequence[Sequence[Sequence[float]]],
    boxes_pred: Sequence[Sequence[Sequence[float]]],
    iou_threshold: float = 0.1,
) -> dict[str, float]:
    """False positives per image and lesion sensitivity for boxes ``[x0, y0, x1, y1]``.

    A predicted box is a true positive when its IoU with a not-yet-matched true box reaches
    ``iou_threshold`` (greedy, in the given order); every other predicted box is a false positive.

    Args:
        boxes_true: per image, the ground-truth boxes.
        boxes_pred: per image, the predicted boxes (e.g. connected components of the
            thresholded map).
        iou_threshold: match criterion.

    Returns:
        ``fppi`` (false positives / images) and ``lesion_sensitivity`` (matched / true boxes).
    """
    false_pos = matched = n_true = 0
    for truth, pred in zip(boxes_true, boxes_pred, strict=True):
        n_true += len(truth)
        used: set[int] = set()
        for box in pred:
            best = max(
                ((_box_iou(box, t), k) for k, t in enumerate(truth) if k not in used),
                default=(0.0, -1),
            )
            if best[0] >= iou_threshold:
                used.add(best[1])
                matched += 1
            else:
                false_pos += 1
    n_images = len(boxes_true)
    return {
        "fppi": false_pos / n_images if n_images else float("nan"),
        "lesion_sensitivity": matched / n_true if n_true else float("nan"),
    }


def map_boxes(anomaly_map: npt.NDArray[Any], threshold: float) -> list[list[float]]:
    """Boxes ``[x0, y0, x1, y1]`` (pixel edges) of the connected components of ``map >= threshold``.

    Components are 8-connected; the boxes are what `fppi` matches against the true boxes.
    """
    from scipy import ndimage

    labels, n = ndimage.label(np.asarray(anomaly_map) >= threshold, structure=np.ones((3, 3)))
    boxes = []
    for rows, cols in ndimage.find_objects(labels)[:n]:
        boxes.append([float(cols.start), float(rows.start), float(cols.stop), float(rows.stop)])
    return boxes


def pointing_game(
    maps: Sequence[npt.NDArray[Any]], boxes: Sequence[Sequence[Sequence[float]]]
) -> float:
    """Share of images whose map maximum falls inside one of their boxes ``[x0, y0, x1, y1]``.

    Images without a box are left out; NaN when none has one. Ties: the first maximum in
    row-major order.
    """
    hits = n = 0
    for amap, truth in zip(maps, boxes, strict=True):
        if not len(truth):
            continue
        n += 1
        row, col = np.unravel_index(int(np.argmax(amap)), np.shape(amap))
        x, y = col + 0.5, row + 0.5  # the pixel's centre
        hits += any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in truth)
    return hits / n if n else float("nan")


def share_inside(
    maps: Sequence[npt.NDArray[Any]], regions: Sequence[npt.NDArray[Any]], threshold: float
) -> float:
    """Share of all above-threshold map pixels (``map >= threshold``) that lie inside ``regions``.

    Pooled over the images; NaN when no pixel reaches the threshold.
    """
    above = inside = 0
    for amap, region in zip(maps, regions, strict=True):
        hot = np.asarray(amap) >= threshold
        above += int(hot.sum())
        inside += int((hot & np.asarray(region, dtype=bool)).sum())
    return inside / above if above else float("nan")


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def fid(features_a: npt.NDArray[Any], features_b: npt.NDArray[Any]) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D).

    With the project's own feature extractor (see `ai_engine.features`) the value is *not*
    comparable with published Inception FIDs; compare only numbers made with the same extractor.
    """
    from scipy import linalg

    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    covmean = np.real(covmean)
    value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * covmean))
    return max(value, 0.0)


def kid(
    features_a: npt.NDArray[Any],
    features_b: npt.NDArray[Any],
    n_subsets: int = 50,
    subset_size: int = 100,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (unbiased MMD², cubic polynomial kernel): mean and std.

    Subsets are drawn without replacement, of ``min(subset_size, len(a), len(b))`` samples.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    dim = a.shape[1]
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / dim + 1) ** 3
        kyy = (y @ y.T / dim + 1) ** 3
        kxy = (x @ y.T / dim + 1) ** 3
        mmd = (
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean()
        )
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))
