"""Val-only AUROC of every image-score rule of an adversarial checkpoint from one scoring pass.

    .venv/bin/python bench/val_score_rules.py CHECKPOINT MANIFEST [--search-steps N]

``training fit`` scores val once per rule in the config; for AnoGAN that means one latent search
per rule. This script runs the model once on the ``val`` split (never ``test``) and prints the
AUROC of each of the model's rules and of the reconstruction rules (``mse``, ``map_mean``,
``map_top``) on its reconstruction. ``--search-steps`` overrides AnoGAN's ``scoring.search_steps``
(to see what a longer search would change, on val only).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from ai_engine import checkpoints
from ai_engine.metrics import auroc
from ai_engine.models.components.reconstruction import image_scores, smoothed_error
from training.data import load_batch, read_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--search-steps", type=int, default=None)
    args = parser.parse_args()
    model = checkpoints.load(args.checkpoint, device="cpu")
    items = read_manifest(args.manifest, "val")
    x = load_batch([i.path for i in items], model.card.image_size)
    labels = np.array([i.label for i in items])
    started = time.time()
    batches = list(torch.split(x, 64))
    scores: dict[str, torch.Tensor] = {}
    if model.card.model_id == "anogan":
        if args.search_steps is not None:
            model.search_steps = args.search_steps  # type: ignore[attr-defined]
        outs = [model.search(b) for b in batches]  # type: ignore[attr-defined]
        rec = torch.cat([o[0] for o in outs])
        residual, discrimination = torch.cat([o[1] for o in outs]), torch.cat([o[2] for o in outs])
        lam = model.loss.lam  # type: ignore[attr-defined]
        scores = {
            "anomaly_score": (1 - lam) * residual + lam * discrimination,
            "residual": residual,
            "discrimination": discrimination,
        }
    else:
        cls = type(model)
        for rule in cls.score_rules():
            scoring = {**model.card.training.get("scoring", {}), "rule": rule}
            card = dataclasses.replace(model.card, training={"scoring": scoring})
            ruled = cls(card, model.network).eval()
            with torch.no_grad():
                scores[rule] = torch.cat([ruled.predict(b).score for b in batches])
        with torch.no_grad():
            rec = torch.cat([model.network(b) for b in batches])
    anomaly_map = smoothed_error(x, rec, 2.0)
    for rule in ("mse", "map_mean", "map_top"):
        scores.setdefault(rule, image_scores(x, rec, anomaly_map, rule))
    print(f"{len(x)} val images, {time.time() - started:.1f} s, search_steps {args.search_steps}")
    for rule, values in scores.items():
        print(f"val AUROC {rule}: {auroc(labels, values.numpy()):.3f}")


if __name__ == "__main__":
    main()
