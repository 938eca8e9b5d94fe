"""Val-only sweep of the lung restriction of a chest checkpoint, from one scoring pass.

    .venv/bin/python bench/lung_restriction.py [--checkpoint default-cxr] [--manifest CSV]

Scores the ``val`` split (never ``test``) once with the checkpoint's network, finds the lung
fields once (`ai_engine.anatomy.lungs`), then for every widening margin and image-score rule
restricts the maps (`ai_engine.anatomy.restrict`, as the node does) and prints the val AUROC
and the in-lung share: of the map pixels at or above the 99th percentile of the healthy val
pixels inside the widened field (the first pixel threshold ``training calibrate`` fits), the
share inside the lung field itself, at the model's resolution. The first row is the
checkpoint as it is (no restriction; threshold from all healthy val pixels). The last line is
one JSON object. Used to choose a lung-restricted candidate on val
(docs/results/chest_lungs.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ai_engine.anatomy import find_regions, region_tensor, restrict, widen
from ai_engine.metrics import auroc
from ai_engine.pipeline import get_model, predict_images
from training.data import load_image, read_manifest

ROOT = Path(__file__).resolve().parent.parent
KERMANY = ROOT.parent / "shared" / "data" / "cxr_kermany_pediatric" / "manifest.csv"
MARGINS = (0, 1, 2, 4)
RULES = (("map_top", 0.01), ("map_top", 0.02), ("map_top", 0.05), ("map_top", 0.1),
         ("map_top", 0.2), ("map_mean", 0.0))  # fmt: skip


def _share(
    maps: torch.Tensor, lungs: torch.Tensor, labels: np.ndarray, field: torch.Tensor
) -> float:
    healthy = maps[torch.from_numpy(labels == 0)]
    inside_healthy = field[torch.from_numpy(labels == 0)]
    threshold = float(np.percentile(healthy[inside_healthy].numpy(), 99))
    hot = maps >= threshold
    return float((hot & lungs).sum()) / max(1, int(hot.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="default-cxr")
    parser.add_argument("--manifest", type=Path, default=KERMANY)
    args = parser.parse_args()
    items = read_manifest(args.manifest, "val")
    labels = np.array([i.label for i in items])
    images = [load_image(i.path) for i in items]
    model = get_model(args.checkpoint)
    size = model.card.image_size
    out = predict_images(model, images)  # unrestricted: maps of the whole image
    fields = find_regions("lungs", images) or []
    lungs = region_tensor([f.mask for f in fields], size)
    x = torch.stack([torch.zeros(1, *size) for _ in images])  # unused by the map rules
    rows = [
        {
            "margin": None,
            "rule": "as shipped",
            "auroc": auroc(labels, out.score.numpy()),
            "in_lung_share": _share(out.anomaly_map, lungs, labels, torch.ones_like(lungs)),
        }
    ]
    for margin in MARGINS:
        field = widen(lungs, margin)
        for rule, fraction in RULES:
            restricted = restrict(out, x, lungs, rule, fraction, margin)
            rows.append(
                {
                    "margin": margin,
                    "rule": rule if rule == "map_mean" else f"{rule} {fraction:g}",
                    "auroc": auroc(labels, restricted.score.numpy()),
                    "in_lung_share": _share(restricted.anomaly_map, lungs, labels, field),
                }
            )
    print(f"{'margin':>6} {'rule':<14} {'val AUROC':>9} {'in-lung share':>13}")
    for r in rows:
        margin = "-" if r["margin"] is None else str(r["margin"])
        print(f"{margin:>6} {r['rule']:<14} {r['auroc']:>9.3f} {r['in_lung_share']:>13.3f}")
    eligible = [r for r in rows[1:] if r["in_lung_share"] >= 0.9]
    best = max(eligible, key=lambda r: r["auroc"]) if eligible else None
    print(json.dumps({"checkpoint": args.checkpoint, "split": "val", "rows": rows, "chosen": best}))


if __name__ == "__main__":
    main()
