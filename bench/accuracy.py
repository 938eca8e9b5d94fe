"""Accuracy table: train (or load) every registered model and evaluate it on the test splits.

    .venv/bin/python bench/accuracy.py [--models all] [--datasets kermany,nih,brain]
        [--seeds 0,1,2] [--epochs N] [--image-size N] [--limit N] [--runs runs/bench] [--reuse]
        [--configs cpu|full] [--device auto|cpu|cuda] [--manifest NAME=CSV ...]

For each model id of `ai_engine.registry` (or ``--models``), each data set and each seed, the
model's CPU configuration (``training/configs/<model_id>.yaml``; ``<model_id>_brain.yaml``
for the brain set when there is one) is trained with the data set's manifest and that seed
(`training.fit.fit`; the supervised baseline with `training.fit_supervised.fit_supervised`),
with the configuration's fixed budget (or ``--epochs``) and image size (or ``--image-size``
N: N x N, for the model and its input), on ``--device`` (default: CUDA when there is one), into
``<runs>/<model_id>/<dataset>/seed<k>/``; ``--reuse`` loads a checkpoint already there
instead of training it again. Every checkpoint is then evaluated on the data set's ``test``
split with `training.evaluate.evaluate` (the same code as ``python -m training evaluate``).
Model selection and thresholds use ``val`` only (inside `fit`); ``test`` is read here only.
``--configs full`` trains the GPU budgets instead (``<model_id>_full.yaml`` where there is one:
wider networks, 128² and more epochs; the CPU configuration for the others).

Tables (mean ± std over seeds): normal-only models; semi-supervised models (their
configuration has ``unlabelled: val``: they also saw the val images, without labels); the
supervised baseline (labels of val), the reference. Columns: image AUROC, AUPRC,
sensitivity and specificity at the calibrated threshold, pixel-AUROC and Dice where the test
split has masks (brain), the val AUROC written in the checkpoint's card, and the training
wall time.

Selection (the rule the shipped defaults follow, stated before the runs it judges): per data
set, among the normal-only models, the model with the highest **mean val AUROC over the
seeds run**; of that model, the seed with the highest val AUROC is the checkpoint to ship.
Test figures play no part in it. The last line is one JSON object (rows and selection).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ai_engine import checkpoints, registry  # noqa: E402
from ai_engine.memory import keep_freed_memory  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.fit import fit, load_config  # noqa: E402

DATA = REPO.parent / "shared" / "data"
DATASETS: dict[str, Path] = {
    "kermany": DATA / "cxr_kermany_pediatric" / "manifest.csv",
    "nih": DATA / "cxr_nih14_pneumonia" / "manifest.csv",
    "brain": DATA / "brain_lgg_flair" / "manifest.csv",
}
SUPERVISED = {"cnn_supervised"}
# What a run on each data set accepts and was trained on, written into its card whatever the
# base configuration was written for (a model whose base config is for brain, run on CXR,
# must not ship a card that says MR).
DATASET_CARD: dict[str, dict[str, Any]] = {
    "kermany": {
        "modalities": ["CR", "DX"], "body_parts": ["CHEST"], "views": ["AP", "PA"],
        "data_name": "Kermany pediatric chest X-ray (Guangzhou), CC BY 4.0",
    },
    "nih": {
        "modalities": ["CR", "DX"], "body_parts": ["CHEST"], "views": ["AP", "PA"],
        "data_name": "NIH ChestX-ray14, pneumonia subset (NIH Clinical Center; attribution)",
    },
    "brain": {
        "modalities": ["MR"], "body_parts": ["BRAIN", "HEAD"], "views": [],
        "data_name": "TCGA-LGG FLAIR slices (Buda et al. 2019), CC BY-NC-SA 4.0 (non-commercial)",
    },
}  # fmt: skip
METRICS = ("auroc", "auprc", "sensitivity", "specificity", "pixel_auroc", "dice")
COLUMNS = (*METRICS, "val_auroc")


def config_for(model_id: str, dataset: str, budget: str = "cpu") -> dict[str, Any]:
    """The model's configuration for a data set: its CPU budget, or with ``budget="full"`` its
    GPU budget (``<model_id>_full.yaml``) when it has one.

    CPU budget: the ``_brain`` variant for brain, the ``_cxr`` variant for the chest sets, when
    there is one, else ``<model_id>.yaml``. The card fields that say what the run accepts and
    was trained on come from `DATASET_CARD`, not from the file.
    """
    folder = REPO / "training" / "configs"
    path = folder / f"{model_id}.yaml"
    variant = folder / f"{model_id}_{'brain' if dataset == 'brain' else 'cxr'}.yaml"
    full = folder / f"{model_id}_full.yaml"
    if budget == "full" and full.is_file():
        path = full
    elif variant.is_file():
        path = variant
    if not path.is_file():
        raise SystemExit(f"no training config {path.relative_to(REPO)} for {model_id}")
    config = load_config(path)
    card = DATASET_CARD.get(dataset)
    if card is not None:
        what = "train normal + val unlabelled" if config.get("unlabelled") else "normal images"
        config.update(card, data_name=f"{card['data_name']}; train split, {what}")
    return config


def kind_of(model_id: str, config: dict[str, Any]) -> str:
    """``baseline`` (nothing learnt), ``supervised``, ``semi-supervised`` or ``normal-only``."""
    if not registry.get(model_id).trainable:
        return "baseline"  # the row every model of its data set must beat
    if model_id in SUPERVISED:
        return "supervised"
    return "semi-supervised" if config.get("unlabelled") else "normal-only"


def train_or_load(
    model_id: str, dataset: str, manifest: Path, seed: int, args: argparse.Namespace
) -> tuple[Path, float]:
    """The checkpoint folder of one run and its training wall seconds."""
    out = args.runs / model_id / dataset / f"seed{seed}"
    if args.reuse and (out / checkpoints.CARD_NAME).is_file():
        card = checkpoints.read_card(out)
        return out, float(card.training.get("wall_seconds", float("nan")))
    config = config_for(model_id, dataset, args.configs)
    config.update(manifest=str(manifest), seed=seed, name=f"bench-{model_id}-{dataset}-s{seed}")
    if args.image_size:
        size = [args.image_size, args.image_size]
        init_args = {**config.get("init_args", {}), "image_size": size}
        config.update(image_size=size, init_args=init_args)
    started = time.monotonic()
    if model_id in SUPERVISED:
        from training.fit_supervised import fit_supervised

        fit_supervised(config, out, epochs=args.epochs, limit=args.limit, device=args.device)
    else:
        fit(config, out, epochs=args.epochs, limit=args.limit, device=args.device)
    return out, time.monotonic() - started


def mean_std(values: list[float]) -> str:
    """``mean ± std`` of the values (NaN dropped; one value as it is; none: "n/a")."""
    values = [v for v in values if v == v]  # drop NaN
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def select(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per data set: the normal-only model with the best mean val AUROC, and its best seed."""
    chosen: dict[str, dict[str, Any]] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        by_model: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if (
                r["dataset"] == dataset
                and r["kind"] == "normal-only"
                and r["val_auroc"] is not None
            ):
                by_model.setdefault(r["model"], []).append(r)
        if not by_model:
            continue
        means = {m: statistics.fmean(r["val_auroc"] for r in rs) for m, rs in by_model.items()}
        model_id, *others = sorted(means, key=lambda m: -means[m])
        best = max(by_model[model_id], key=lambda r: r["val_auroc"])
        chosen[dataset] = {
            "model": model_id,
            "seeds": len(by_model[model_id]),
            "mean_val_auroc": round(means[model_id], 4),
            "seed": best["seed"],
            "val_auroc": round(best["val_auroc"], 4),
            "checkpoint": best["checkpoint"],
            "runner_up": others[:1],
        }
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="all", help="comma-separated model ids, or all")
    parser.add_argument("--datasets", default="kermany,nih,brain")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=None, help="override every budget")
    parser.add_argument("--image-size", type=int, default=None, help="N: train at N x N")
    parser.add_argument("--limit", type=int, default=None, help="at most N images per set")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bench")
    parser.add_argument("--reuse", action="store_true", help="load checkpoints already there")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--configs", choices=("cpu", "full"), default="cpu", help="budgets")
    parser.add_argument("--device", default="auto", help="auto (CUDA if any), cpu, cuda[:N]")
    parser.add_argument(
        "--manifest", action="append", default=[], help="NAME=CSV: use CSV for data set NAME"
    )
    args = parser.parse_args(argv)
    keep_freed_memory()  # as `python -m training` does (ai_engine/memory.py)
    logging.basicConfig(level=logging.WARNING)
    datasets = dict(DATASETS)
    for spec in args.manifest:
        name, _, path = spec.partition("=")
        datasets[name] = Path(path)
    models = registry.list_ids() if args.models == "all" else args.models.split(",")
    names = [d for d in args.datasets.split(",") if d]
    seeds = [int(s) for s in args.seeds.split(",")]
    skip = {"fed_cgan"}  # a generator trained by `training federated`, not an anomaly scorer
    rows: list[dict[str, Any]] = []
    for model_id in models:
        if model_id in skip:
            continue
        for dataset in names:
            manifest = datasets[dataset]
            if not manifest.is_file():
                raise SystemExit(f"no manifest for {dataset}: {manifest}")
            if model_id == "flair_threshold" and dataset != "brain":
                continue  # the brain FLAIR baseline (brain extraction): only for brain
            kind = kind_of(model_id, config_for(model_id, dataset, args.configs))
            for seed in seeds:
                folder, seconds = train_or_load(model_id, dataset, manifest, seed, args)
                result = evaluate(str(folder), manifest, "test", n_boot=args.bootstrap)
                val = checkpoints.read_card(folder).metrics.get("val_auroc")
                row = {"model": model_id, "dataset": dataset, "seed": seed, "kind": kind,
                       "train_seconds": round(seconds, 1), "checkpoint": str(folder),
                       **{m: result.get(m) for m in METRICS},
                       "val_auroc": None if val is None else float(val)}  # fmt: skip
                rows.append(row)
                print(
                    f"  {model_id:<16} {dataset:<8} seed {seed}: AUROC {row['auroc']:.3f}",
                    file=sys.stderr,
                )
    for kind in ("baseline", "normal-only", "semi-supervised", "supervised"):
        group = [r for r in rows if r["kind"] == kind]
        if not group:
            continue
        print(f"\n### {kind}\n")
        print(
            "| model | data | AUROC | AUPRC | sens | spec | pixel-AUROC | Dice "
            "| val AUROC | train s |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for model_id in dict.fromkeys(r["model"] for r in group):
            for dataset in names:
                cell = [r for r in group if r["model"] == model_id and r["dataset"] == dataset]
                if not cell:
                    continue
                vals = {
                    m: mean_std([float(r[m]) for r in cell if r[m] is not None]) for m in COLUMNS
                }
                train = statistics.fmean(r["train_seconds"] for r in cell)
                print(f"| {model_id} | {dataset} | {vals['auroc']} | {vals['auprc']} "
                      f"| {vals['sensitivity']} | {vals['specificity']} "
                      f"| {vals['pixel_auroc']} | {vals['dice']} | {vals['val_auroc']} "
                      f"| {train:.0f} |")  # fmt: skip
    chosen = select(rows)
    if chosen:
        print("\n### selection (normal-only, best mean val AUROC; test not used)\n")
        print("| data | model | seeds | mean val AUROC | ship seed | its val AUROC | runner-up |")
        print("|---|---|---:|---:|---:|---:|---|")
        for dataset, c in chosen.items():
            runner_up = ", ".join(c["runner_up"])
            print(f"| {dataset} | {c['model']} | {c['seeds']} | {c['mean_val_auroc']:.4f} "
                  f"| {c['seed']} | {c['val_auroc']:.4f} | {runner_up} |")  # fmt: skip
    print(
        json.dumps(
            {
                "bench": "accuracy",
                "seeds": seeds,
                "epochs_override": args.epochs,
                "image_size_override": args.image_size,
                "limit": args.limit,
                "cpus": os.cpu_count(),
                "machine": platform.platform(),
                "rows": rows,
                "selection": chosen,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
