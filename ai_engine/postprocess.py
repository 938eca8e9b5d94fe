"""From a model's anomaly map to what the DICOM writers need, using the calibration.

The map comes out at the model's input size (the source squashed to it); it is resized back
to the source image's rows x columns, so the overlay lands on the right pixels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ai_engine.types import Calibration, FloatArray


def map_to_source(anomaly_map: torch.Tensor, rows: int, columns: int) -> FloatArray:
    """Resize one map (1, H, W) or (H, W) to (rows, columns), bilinear, float32."""
    amap = anomaly_map.detach().float().cpu()
    while amap.dim() < 4:
        amap = amap.unsqueeze(0)
    resized = F.interpolate(amap, size=(rows, columns), mode="bilinear", align_corners=False)
    out: FloatArray = np.ascontiguousarray(resized[0, 0].numpy(), dtype=np.float32)
    return out


def region_levels(source_map: FloatArray, calibration: Calibration) -> list[tuple[str, np.ndarray]]:
    """Nested binary regions, one per pixel threshold (ascending, so each contains the next).

    Returns:
        (label, mask (rows, columns) bool) pairs; the label says which threshold: the healthy
        percentile ("Anomaly > p99 healthy") or, for a threshold chosen on val Dice,
        "Anomaly > best val Dice".
    """
    levels = []
    for value, rule in zip(
        calibration.pixel_thresholds, calibration.pixel_threshold_rules, strict=True
    ):
        if "percentile" in rule:
            short = rule.split(" of ")[0].replace("th percentile", "")
            label = f"Anomaly > p{short} healthy"
        elif "Dice" in rule:
            label = "Anomaly > best val Dice"
        else:
            label = f"Anomaly > {value:.4g}"
        levels.append((label[:64], source_map >= value))
    return levels


def fractional_map(source_map: FloatArray, calibration: Calibration) -> FloatArray:
    """Map scaled to [0, 1] by the calibrated ``map_scale`` (0.5 = first pixel threshold)."""
    scale = calibration.map_scale if calibration.map_scale > 0 else 1.0
    out: FloatArray = np.clip(source_map / scale, 0.0, 1.0).astype(np.float32)
    return out
