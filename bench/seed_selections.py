"""Mean ± std over seeds of `training evaluate` figures, per model and per selection rule.

    .venv/bin/python bench/seed_selections.py [--runs runs/finalists] [--split val|test]
        [--evaluate] [--manifest CSV] [--bootstrap 200]

Reads ``<runs>/<model>/seed<k>/`` checkpoints written by ``python -m training fit --seed k``
with ``optim.also_select`` (the main checkpoint, kept by ``optim.select``, and each
``select-<rule>/`` beside it: what another selection rule kept from the same run). With
``--evaluate`` it first runs `training.evaluate.evaluate` (the code of ``python -m training
evaluate``) for each checkpoint that has no ``eval_<split>.json`` yet and writes that file;
otherwise it only reads them. Prints one table row per (model, selection): AUROC, AUPRC,
sensitivity and specificity at the calibrated threshold, and the in-lung share where the
checkpoint's card restricts to the lungs; the last line is one JSON object (rows, per-seed
values). Used for the lung-field finalists (docs/results/chest_lungs.md): run it on ``val`` to
decide, and on ``test`` only after the decision.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ai_engine import checkpoints  # noqa: E402
from bench.accuracy import mean_std  # noqa: E402
from training.evaluate import evaluate  # noqa: E402

KERMANY = REPO.parent / "shared" / "data" / "cxr_kermany_pediatric" / "manifest.csv"
FIGURES = ("auroc", "auprc", "sensitivity", "specificity", "in_lung_share")


def checkpoints_of(run: Path) -> dict[str, Path]:
    """Selection rule (as its card names it: ``training.selection``) -> checkpoint folder."""
    found = {"main": run} if (run / "card.json").exists() else {}
    for sub in sorted(run.glob("select-*")):
        if (sub / "card.json").exists():
            found[sub.name.removeprefix("select-")] = sub
    return found


def summarise(
    runs: Path, split: str, manifest: Path, run_evaluate: bool, bootstrap: int
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for model_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
        per_rule: dict[str, list[dict[str, Any]]] = {}
        for run in sorted(model_dir.glob("seed*")):
            for rule, folder in checkpoints_of(run).items():
                path = folder / f"eval_{split}.json"
                if not path.exists():
                    if not run_evaluate:
                        continue
                    result = evaluate(str(folder), manifest, split, n_boot=bootstrap)
                    path.write_text(json.dumps(result) + "\n")
                result = json.loads(path.read_text())
                card = checkpoints.read_card(folder)
                result["seed"] = card.training.get("seed")
                result["best_epoch"] = card.training.get("best_epoch")
                result["selection"] = card.training.get("selection")
                per_rule.setdefault(rule, []).append(result)
        for rule, results in per_rule.items():
            rows.append(
                {
                    "model": model_dir.name,
                    "rule": rule,
                    "selection": results[0]["selection"],
                    "seeds": [r["seed"] for r in results],
                    "epochs": [r["best_epoch"] for r in results],
                    **{f: [float(r.get(f, float("nan"))) for r in results] for f in FIGURES},
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "finalists")
    parser.add_argument("--split", default="val")
    parser.add_argument("--manifest", type=Path, default=KERMANY)
    parser.add_argument("--evaluate", action="store_true", help="evaluate what is missing")
    parser.add_argument("--bootstrap", type=int, default=200)
    args = parser.parse_args(argv)
    rows = summarise(args.runs, args.split, args.manifest, args.evaluate, args.bootstrap)
    print(f"| model | selection | seeds | kept epochs | {' | '.join(FIGURES)} ({args.split}) |")
    print("|---|---|---|---|" + "---|" * len(FIGURES))
    for row in rows:
        figures = " | ".join(mean_std(row[f]) for f in FIGURES)
        seeds = ",".join(map(str, row["seeds"]))
        epochs = ",".join(map(str, row["epochs"]))
        print(f"| {row['model']} | {row['rule']} | {seeds} | {epochs} | {figures} |")
    print(json.dumps({"split": args.split, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
