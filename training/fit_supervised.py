"""Train a supervised classifier (``cnn_supervised``) on a labelled split, write a checkpoint.

The shared sets' ``train`` splits hold normal images only, so the classifier is trained on the
``val`` split (normal and abnormal) and evaluated, like every other model, on ``test``:

1. k-fold cross-validation inside ``val``, folds grouped by patient and stratified by label:
   one network per fold trains for ``optim.epochs`` epochs and scores its held-out fold after
   every epoch (out-of-fold predictions).
2. Selection: the epoch with the highest mean per-fold AUROC (ties: the earliest).
3. Refit: a fresh network on all of ``val`` for that many epochs (same seed and recipe).
4. Calibration: threshold = the configured percentile (95) of the *out-of-fold* P(abnormal) of
   the healthy val images at the selected epoch (95 % specificity on healthy val, the same
   operating point as the unsupervised models); pixel thresholds = percentiles of the refit
   model's Grad-CAM maps on healthy val images (in-sample: the refit model saw them).

``test`` is never read here.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai_engine import checkpoints, registry
from ai_engine.metrics import auroc
from ai_engine.models.cnn_supervised.model import CnnSupervisedModel, SupervisedTrainer
from ai_engine.types import Calibration, ModelCard
from training.data import Item, load_batch, read_manifest
from training.fit import (
    REPO_ROOT,
    _predict,
    card_from_config,
    device_name,
    resolve_device,
    seed_everything,
    write_card_table,
)
from training.log import TrainingLog

logger = logging.getLogger(__name__)


def patient_folds(items: list[Item], k: int, seed: int) -> np.ndarray:
    """Fold index (N,) per item: patient-grouped, label-stratified, seeded.

    Patients are shuffled, sorted by their (majority) label and dealt round-robin, so each fold
    gets about the same number of normal and abnormal patients and no patient is in two folds.
    """
    if k < 2:
        raise ValueError(f"cv_folds must be at least 2, got {k}")
    by_patient: dict[str, list[int]] = {}
    for idx, item in enumerate(items):
        by_patient.setdefault(item.patient_id or str(item.path), []).append(idx)
    patients = sorted(by_patient)
    rng = np.random.default_rng(seed)
    order = [patients[i] for i in rng.permutation(len(patients))]
    label = {p: round(float(np.mean([items[i].label for i in by_patient[p]]))) for p in order}
    order.sort(key=lambda p: label[p])  # stable: random within each label
    folds = np.empty(len(items), dtype=np.int64)
    for rank, patient in enumerate(order):
        folds[by_patient[patient]] = rank % k
    return folds


def _train_epoch(
    trainer: SupervisedTrainer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
) -> float:
    """One epoch of shuffled mini-batches with fit.py's light augmentation; mean loss.

    Shuffling and augmentation run on the CPU (seeded); each batch then goes to ``device``.
    """
    order = torch.randperm(len(x), generator=generator)
    total = 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = x[idx]
        shift = int(torch.randint(-4, 5, (1,), generator=generator))
        batch = torch.roll(batch, shifts=shift, dims=3)
        gain = 1.0 + 0.1 * (torch.rand(len(batch), 1, 1, 1, generator=generator) - 0.5)
        batch = (batch * gain).clamp(0, 1)
        total += trainer.step(batch.to(device), y[idx].to(device))["loss"] * len(idx)
    return total / max(1, len(x))


def fit_supervised(
    config: dict[str, Any],
    out: Path,
    epochs: int | None = None,
    limit: int | None = None,
    device: str | torch.device | None = None,
) -> ModelCard:
    """Cross-validate, refit, calibrate and save (see the module docstring).

    Args:
        config: the YAML config as a dict (``training/configs/cnn_supervised.yaml``).
        out: checkpoint folder to write.
        epochs: override ``optim.epochs`` (smoke tests).
        limit: at most this many images per class (smoke tests).
        device: where the network trains (`training.fit.resolve_device`; default: CUDA when
            there is one).

    Returns:
        The written model card.
    """
    started = time.time()
    target = resolve_device(device)
    seed = int(config.get("seed", 0))
    image_size = (int(config["image_size"][0]), int(config["image_size"][1]))
    manifest = Path(config["manifest"])
    if not manifest.is_absolute():
        manifest = (REPO_ROOT / manifest).resolve()
    optim_cfg = dict(config["optim"])
    n_epochs = int(epochs if epochs is not None else optim_cfg["epochs"])
    batch_size = int(optim_cfg.get("batch_size", 32))
    k = int(optim_cfg.get("cv_folds", 5))
    split = str(config.get("train_split", "val"))
    if split == "test":
        raise ValueError("fit-supervised never trains on the test split")

    cls = registry.get(config["model_id"])
    if not (cls.requires_labels and issubclass(cls, CnnSupervisedModel)):
        raise ValueError(f"{config['model_id']!r} is not a supervised model; use `training fit`")

    rows = read_manifest(manifest, split)
    items = [i for i in rows if i.label == 0][:limit] + [i for i in rows if i.label == 1][:limit]
    logger.info("loading %d %s images", len(items), split)
    x = load_batch([i.path for i in items], image_size)
    y = torch.tensor([i.label for i in items], dtype=torch.float32)
    labels = y.numpy().astype(np.int64)
    folds = patient_folds(items, k, seed)

    # --- 1. k-fold cross-validation inside the labelled split ---
    oof = np.full((n_epochs, len(items)), np.nan)
    fold_auroc = np.full((k, n_epochs), np.nan)
    train_loss = np.zeros((k, n_epochs))
    for fold in range(k):
        seed_everything(seed + 1 + fold)
        generator = torch.Generator().manual_seed(seed + 1 + fold)
        network = cls.build_network(**config["init_args"]).to(target)
        trainer = cls.make_supervised_trainer(network, optim_cfg)
        held = torch.from_numpy(folds == fold)
        for epoch in range(n_epochs):
            train_loss[fold, epoch] = _train_epoch(
                trainer, x[~held], y[~held], batch_size, generator, target
            )
            probs = trainer.probabilities(x[held]).numpy()
            oof[epoch, held.numpy()] = probs
            held_labels = labels[held.numpy()]
            if 0 < held_labels.sum() < len(held_labels):
                fold_auroc[fold, epoch] = auroc(held_labels, probs)
        logger.info("fold %d/%d: held-out AUROC by epoch %s", fold + 1, k, fold_auroc[fold])

    # --- 2. selection: mean per-fold AUROC ---
    mean_auroc = np.nanmean(fold_auroc, axis=0)
    pooled_auroc = np.array([auroc(labels, oof[e]) for e in range(n_epochs)])
    best_epoch = int(np.nanargmax(mean_auroc))
    history = [
        {
            "epoch": e,
            "cv_train_loss": float(train_loss[:, e].mean()),
            "cv_fold_mean_auroc": float(mean_auroc[e]),
            "cv_pooled_oof_auroc": float(pooled_auroc[e]),
        }
        for e in range(n_epochs)
    ]

    # --- 3. refit on the whole labelled split for best_epoch + 1 epochs ---
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    network = cls.build_network(**config["init_args"]).to(target)
    trainer = cls.make_supervised_trainer(network, optim_cfg)
    refit_loss = [
        _train_epoch(trainer, x, y, batch_size, generator, target) for _ in range(best_epoch + 1)
    ]
    for e, loss in enumerate(refit_loss):
        history[e]["refit_train_loss"] = loss
    network.eval()
    with TrainingLog(out / "logs") as log:
        for entry in history:
            log.epoch(int(entry["epoch"]), {k_: v for k_, v in entry.items() if k_ != "epoch"})

    # --- 4. calibration ---
    cal_cfg = config.get("calibration", {})
    pct = float(cal_cfg.get("percentile", 95))
    pixel_pcts = [float(p) for p in cal_cfg.get("pixel_percentiles", [99.0, 99.9])]
    healthy_oof = oof[best_epoch, labels == 0]
    probe = card_from_config(config, image_size, Calibration(0.0, "", (0.0,), ("",), 1.0))
    maps = _predict(cls(probe, network), x[torch.from_numpy(labels == 0)]).anomaly_map
    pixel_thresholds = tuple(float(np.percentile(maps.flatten().numpy(), p)) for p in pixel_pcts)
    calibration = Calibration(
        threshold=float(np.percentile(healthy_oof, pct)),
        threshold_rule=(
            f"{pct:g}th percentile of the out-of-fold P(abnormal) of {len(healthy_oof)} healthy "
            f"{split} images ({k}-fold patient-grouped CV inside {split}, epoch {best_epoch + 1}; "
            f"operating point: {pct:g}% specificity)"
        ),
        pixel_thresholds=pixel_thresholds,
        pixel_threshold_rules=tuple(
            f"{p:g}th percentile of the refit model's maps on healthy {split} pixels (in-sample)"
            for p in pixel_pcts
        ),
        map_scale=2.0 * pixel_thresholds[0],
        healthy_scores=tuple(float(v) for v in np.sort(healthy_oof)),
    )
    training = {
        "data": config.get("data_name", str(manifest)),
        "manifest": str(Path(config["manifest"])),
        "train_split": split,
        "n_train": len(items),
        "n_train_normal": int((labels == 0).sum()),
        "n_train_abnormal": int((labels == 1).sum()),
        "cv_folds": k,
        "epochs_budget": n_epochs,
        "epochs_run": best_epoch + 1,
        "best_epoch": best_epoch,
        "selection": (
            f"epoch with the highest mean held-out AUROC over {k} patient-grouped folds of "
            f"{split}; then refit on all of {split} (test never read)"
        ),
        "optim": optim_cfg,
        "seed": seed,
        "scoring": {"rule": "p_abnormal"},
        "wall_seconds": round(time.time() - started, 1),
        "torch": torch.__version__,
        "device": device_name(target),
    }
    metrics = {
        "cv_fold_mean_auroc": float(mean_auroc[best_epoch]),
        "cv_pooled_oof_auroc": float(pooled_auroc[best_epoch]),
        "val_auroc": float(pooled_auroc[best_epoch]),
    }
    card = checkpoints.save(
        out,
        card_from_config(config, image_size, calibration, training=training, metrics=metrics),
        network.state_dict(),
    )
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    write_supervised_readme(out, card)
    return card


def write_supervised_readme(folder: Path, card: ModelCard) -> None:
    """The checkpoint's model card README (research use only)."""
    cal, t, m = card.calibration, card.training, card.metrics
    optim = t.get("optim", {})
    pixel = ", ".join(
        f"{v:.4g} ({r})"
        for v, r in zip(cal.pixel_thresholds, cal.pixel_threshold_rules, strict=True)
    )
    rows = [
        ("model", f"`{card.model_id}` (see ai_engine/models/{card.model_id}/README.md)"),
        ("architecture", f"`{json.dumps(card.architecture)}`"),
        ("data", str(t.get("data"))),
        (
            "training images",
            f"{t.get('n_train_normal')} normal + {t.get('n_train_abnormal')} abnormal "
            f"({t.get('train_split')} split, labels used)",
        ),
        ("selection", f"{t.get('selection')}: {t.get('epochs_run')} epochs"),
        ("preprocessing", card.preprocessing),
        ("image score", "P(abnormal) = sigmoid of the classifier's logit"),
        (
            "anomaly map",
            f"{registry.get(card.model_id).map_description}, at "
            f"{card.image_size[0]}x{card.image_size[1]}, resized back to the source image",
        ),
        ("threshold", f"{cal.threshold:.6g}: {cal.threshold_rule}"),
        ("pixel thresholds (binary SEG segments)", pixel),
        ("fractional SEG scale", f"map / {cal.map_scale:.4g}, clipped to [0, 1]"),
        (
            "cross-validated AUROC",
            f"{m.get('cv_fold_mean_auroc', float('nan')):.3f} mean over folds, "
            f"{m.get('cv_pooled_oof_auroc', float('nan')):.3f} pooled out-of-fold "
            "(the epoch was chosen on it, so it is optimistic)",
        ),
        (
            "training",
            f"Adam lr {optim.get('lr')}, batch {optim.get('batch_size')}, seed {t.get('seed')}, "
            f"{t.get('wall_seconds')} s on CPU (CV + refit), torch {t.get('torch')}",
        ),
        ("weights sha256", f"`{card.weights_sha256}`"),
    ]
    write_card_table(folder, card, rows, f"{folder} --manifest <manifest.csv> --split test`.")
