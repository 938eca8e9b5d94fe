"""How much of a checkpoint's image score is the size of the body in the image.

    .venv/bin/python bench/score_vs_area.py CHECKPOINT MANIFEST [--splits val,test] [--level 0.05]

On slice data (LGG FLAIR) the "normal" slices include the top and bottom of the head, where the
cross-section is small, while tumour slices sit mid-brain, where it is large: the share of the
image above ``--level`` (the body's area; no model involved) then tells the classes apart by
itself, and a score that grows with the area looks better than it is. Per split this prints the
AUROC of the checkpoint's score, the AUROC of the area alone, and their Pearson correlation; the
last line is one JSON object. An analysis of a trained checkpoint: it chooses nothing, so
reading ``test`` here selects no model or threshold.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ai_engine import checkpoints
from ai_engine.metrics import auroc
from training.data import load_batch, read_manifest
from training.fit import _predict


def body_area(x: torch.Tensor, level: float) -> np.ndarray:
    """Share of each (B, 1, H, W) image's pixels above ``level`` (B,)."""
    return (x.flatten(1) > level).float().mean(1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--splits", default="val,test")
    parser.add_argument("--level", type=float, default=0.05, help="body = pixels above this")
    args = parser.parse_args()
    model = checkpoints.load(args.checkpoint, device="cpu")
    rows = []
    for split in args.splits.split(","):
        items = read_manifest(args.manifest, split)
        x = load_batch([i.path for i in items], model.card.image_size)
        labels = np.array([i.label for i in items])
        score = _predict(model, x).score.numpy()  # in batches, as fit scores val
        area = body_area(x, args.level)
        rows.append(
            {
                "split": split,
                "n_normal": int((labels == 0).sum()),
                "n_abnormal": int((labels == 1).sum()),
                "patients": len({i.patient_id for i in items}),
                "auroc_score": auroc(labels, score),
                "auroc_area": auroc(labels, area),
                "corr_score_area": float(np.corrcoef(score, area)[0, 1]),
            }
        )
    card = model.card
    print(f"checkpoint {args.checkpoint} ({card.model_id} {card.version}), body > {args.level}")
    print("| split | normal / abnormal | patients | AUROC score | AUROC area | corr(score, area) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['split']} | {r['n_normal']} / {r['n_abnormal']} | {r['patients']} "
            f"| {r['auroc_score']:.3f} | {r['auroc_area']:.3f} | {r['corr_score_area']:.2f} |"
        )
    report = {"bench": "score_vs_area", "checkpoint": args.checkpoint, "level": args.level}
    print(json.dumps({**report, "rows": rows}))


if __name__ == "__main__":
    main()
