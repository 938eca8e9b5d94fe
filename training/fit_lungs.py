"""``python -m training fit-lungs``: train the lung-field segmenter (`ai_engine.anatomy.lungs`).

Data: a manifest with ``mask_path`` (the Montgomery set, ../shared/data/cxr_lung_masks):
train on ``train``, keep the epoch with the best mean Dice on ``val`` (the selection rule,
stated in the config before the run), then measure Dice once on ``test``. Images and masks go
through the node's preprocessing (`ai_engine.transforms.model_input`, squashed to 128x128).

Augmentation (MONAI, on every training batch): a random affine (rotation, independent zoom
per axis, so aspect changes too, translation), horizontal flip, gamma and intensity scaling,
Gaussian noise and blur: the Montgomery images are adult PA films squashed to a square, the
node also sees children, AP films and other fields of view.

Writes ``weights.safetensors``, ``card.json`` (architecture, data, rule, metrics, sha256) and
``README.md`` into ``--out`` (the shipped one: ai_engine/anatomy/lung_field).
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ai_engine.anatomy.lungs import INPUT_SIZE, build_network, clean_mask
from ai_engine.checkpoints import sha256_of
from ai_engine.transforms import model_input
from training.data import ManifestError, load_image, load_mask, read_manifest
from training.fit import REPO_ROOT

logger = logging.getLogger(__name__)


def _pairs(manifest: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    items = [i for i in read_manifest(manifest, split) if i.mask_path is not None]
    if not items:
        raise ManifestError(f"split {split!r} of {manifest} has no image with a mask_path")
    images = torch.stack([model_input(load_image(i.path), INPUT_SIZE) for i in items])
    masks = torch.stack(
        [
            model_input(load_mask(i.mask_path).astype(np.float32), INPUT_SIZE)
            for i in items
            if i.mask_path
        ]
    )
    return images, (masks > 0.5).float()


def _augment(seed: int) -> Any:
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
    )

    chain = Compose(
        [
            RandAffined(
                keys=("image", "mask"),
                prob=0.9,
                rotate_range=0.2,
                scale_range=(0.25, 0.25),
                translate_range=(14, 14),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandFlipd(keys=("image", "mask"), prob=0.5, spatial_axis=1),
            RandAdjustContrastd(keys="image", prob=0.5, gamma=(0.6, 1.7)),
            RandScaleIntensityd(keys="image", prob=0.3, factors=0.2),
            RandGaussianNoised(keys="image", prob=0.3, std=0.03),
            RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=(0.3, 1.2), sigma_y=(0.3, 1.2)),
        ]
    )
    chain.set_random_state(seed)
    return chain


def dice_scores(logits: torch.Tensor, masks: torch.Tensor, clean: bool = False) -> np.ndarray:
    """Dice per image of thresholded logits (``clean``: after `clean_mask`) against masks."""
    prob = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
    truth = masks[:, 0].cpu().numpy() > 0.5
    out = []
    for p, t in zip(prob, truth, strict=True):
        pred = clean_mask(p)[0] if clean else p > 0.5
        denom = pred.sum() + t.sum()
        out.append(1.0 if denom == 0 else 2.0 * float((pred & t).sum()) / float(denom))
    return np.array(out)


def write_readme(out: Path, card: dict[str, Any]) -> None:
    """The segmenter's model card in words (``README.md``), from ``card.json``."""
    m, arch = card["metrics"], card["architecture"]
    rows = [
        ("network", f"MONAI 2-D U-Net, channels {arch['channels']}, strides {arch['strides']}, "
                    f"{arch['num_res_units']} residual unit(s)"),
        ("input", card["input"]),
        ("output", f"lung probability; > {card['threshold']} is lung; clean-up: holes filled, "
                   "the two largest components kept (`clean_mask`)"),
        ("data", card["data"]),
        ("images", f"train {card['n_train']}, val {card['n_val']}, test {card['n_test']} "
                   "(one per patient)"),
        ("training", f"{card['epochs']} epochs, seed {card['seed']}, with augmentation "
                     "(training/fit_lungs.py)"),
        ("selection", f"{card['selection']}; best epoch {card['best_epoch']}"),
        ("val Dice", f"{m['val_dice']} (after clean-up {m['val_dice_cleaned']})"),
        ("**test Dice**", f"**{m['test_dice']}** (after clean-up {m['test_dice_cleaned']}; "
                          f"worst image {m['test_dice_min']})"),
        ("weights sha256", f"`{card['weights_sha256']}`"),
        ("torch", f"{card['torch']}; {card['wall_seconds']} s on the CPU"),
    ]  # fmt: skip
    lines = [
        f"# Lung-field segmenter `{card['name']}` {card['version']}",
        "",
        "Finds both lung fields of a chest radiograph (one mask, left and right lung) so that",
        "chest anomaly maps and scores are restricted to the lungs (`ai_engine/anatomy/lungs.py`).",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
        "Limits: trained on 96 adult PA films from one US programme, squashed to a square. On",
        "children, AP films and other scanners check `bench/lung_fields.py` (share of images",
        "where two lungs are found, and a picture of the outlines). Re-run:",
        "",
        "    .venv/bin/python -m training fit-lungs --config training/configs/lung_field.yaml \\",
        "        --out ai_engine/anatomy/lung_field",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


def fit_lungs(config_path: Path, out: Path, epochs: int | None = None) -> dict[str, Any]:
    """Train, select on val, test once, write the checkpoint; return the card."""
    from monai.losses import DiceCELoss
    from safetensors.torch import save_file

    config = yaml.safe_load(config_path.read_text())
    manifest = Path(config["manifest"])
    if not manifest.is_absolute():
        manifest = (REPO_ROOT / manifest).resolve()
    seed = int(config.get("seed", 0))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    n_epochs = int(epochs or config["epochs"])
    batch_size = int(config.get("batch_size", 16))
    arch = dict(config.get("architecture", {}))
    t0 = time.perf_counter()
    x_train, y_train = _pairs(manifest, "train")
    x_val, y_val = _pairs(manifest, "val")
    net = build_network(**arch)
    optimiser = torch.optim.AdamW(
        net.parameters(), lr=float(config.get("lr", 2e-3)), weight_decay=1e-4
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=n_epochs)
    loss_fn = DiceCELoss(sigmoid=True)
    augment = _augment(seed)
    best: tuple[float, int, dict[str, torch.Tensor]] = (-1.0, -1, {})
    history = []
    for epoch in range(n_epochs):
        net.train()
        order = torch.randperm(len(x_train))
        losses = []
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            pairs = [augment({"image": x_train[k], "mask": y_train[k]}) for k in idx.tolist()]
            xb = torch.stack([torch.as_tensor(p["image"]).clamp(0, 1) for p in pairs])
            yb = torch.stack([(torch.as_tensor(p["mask"]) > 0.5).float() for p in pairs])
            optimiser.zero_grad()
            loss = loss_fn(net(xb), yb)
            loss.backward()
            optimiser.step()
            losses.append(float(loss))
        schedule.step()
        net.eval()
        with torch.no_grad():
            val_dice = float(dice_scores(net(x_val), y_val).mean())
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_dice": val_dice})
        logger.info("epoch %d loss %.4f val Dice %.4f", epoch, np.mean(losses), val_dice)
        if val_dice > best[0]:
            best = (val_dice, epoch, {k: v.detach().clone() for k, v in net.state_dict().items()})
    net.load_state_dict(best[2])
    net.eval()
    x_test, y_test = _pairs(manifest, "test")
    with torch.no_grad():
        val_clean = dice_scores(net(x_val), y_val, clean=True)
        test_raw = dice_scores(net(x_test), y_test)
        test_clean = dice_scores(net(x_test), y_test, clean=True)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in best[2].items()}, str(weights))
    card: dict[str, Any] = {
        "name": "lung-field",
        "version": str(config.get("version", "0.1.0")),
        "task": "lung-field segmentation of chest radiographs (both lungs, one mask)",
        "architecture": {
            **{"channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1},
            **arch,
        },
        "input": (
            f"greyscale in [0, 1] squashed to {INPUT_SIZE[0]}x{INPUT_SIZE[1]} "
            "(the anomaly models' preprocessing)"
        ),
        "data": config.get("data_name", ""),
        "manifest": str(Path(config["manifest"])),
        "n_train": len(x_train),
        "n_val": len(x_val),
        "n_test": len(x_test),
        "epochs": n_epochs,
        "selection": config.get("selection", "epoch with the best mean val Dice"),
        "best_epoch": best[1],
        "seed": seed,
        "metrics": {
            "val_dice": round(best[0], 4),
            "val_dice_cleaned": round(float(val_clean.mean()), 4),
            "test_dice": round(float(test_raw.mean()), 4),
            "test_dice_cleaned": round(float(test_clean.mean()), 4),
            "test_dice_min": round(float(test_clean.min()), 4),
        },
        "threshold": 0.5,
        "weights_sha256": sha256_of(weights),
        "torch": torch.__version__,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "history.json").write_text(json.dumps(history) + "\n")
    write_readme(out, card)
    logger.info("lung-field segmenter written to %s: %s", out, card["metrics"])
    return card
