"""Train an anomaly model on normal images, calibrate it on healthy val, write a checkpoint.

Model selection and thresholds use the ``val`` split only; ``test`` is never read here.

Semi-supervised models (config ``unlabelled: val``): the trainer also receives the val images
(normal and abnormal, shuffled, labels withheld) through ``trainer.set_unlabelled(x)`` before
the first epoch. Selection must then be label-free: ``optim.select: last`` or ``aucp`` (the
pseudo-AUC of Brainomaly: AUROC of held-out *train/normal* patients, class 0, against the
unlabelled val mix, class 1; no label of a val image is read), and the image-score rule is the
first one configured (not chosen on val labels). ``val_auroc`` is refused.

``optim.also_select`` (a list of further `SELECTION_RULES`) writes, next to the checkpoint kept
by ``optim.select``, the one each further rule would have kept from the same run, to
``<out>/select-<rule>/`` (calibrated the same way; the main rule alone decides an early stop).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from ai_engine import checkpoints, registry
from ai_engine.metrics import auroc, best_dice_threshold
from ai_engine.models.base import AnomalyModel, default_device
from ai_engine.models.components.augment import make_augment
from ai_engine.postprocess import map_to_source
from ai_engine.transforms import describe
from ai_engine.types import AnomalyOutput, Calibration, ModelCard
from training.data import load_items, load_mask, load_regions, read_manifest
from training.log import TrainingLog

logger = logging.getLogger(__name__)

#: ``optim.select`` -> how the kept epoch is chosen (written in the card).
SELECTION_RULES: dict[str, str] = {
    "val_normal_loss": "lowest label-free loss on healthy val images (early stopping)",
    "val_auroc": "highest image AUROC on val (val labels; test never read)",
    "last": "last epoch of the fixed budget",
    "aucp": (
        "highest pseudo-AUC (held-out train/normal patients vs the unlabelled val mix; "
        "no val labels)"
    ),
}
REPO_ROOT = Path(__file__).resolve().parent.parent


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device to train on: ``None`` or ``"auto"`` is CUDA when there is one, else CPU.

    Raises:
        ValueError: CUDA was asked for and torch sees no CUDA device.
    """
    if device is None or str(device) == "auto":
        return default_device()  # the engine's own choice, so training and scoring agree
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: torch sees no CUDA device here")
    return resolved


def device_name(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``: what a card records as the device."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def load_config(path: Path) -> dict[str, Any]:
    with path.open() as fh:
        config: dict[str, Any] = yaml.safe_load(fh)
    return config


@torch.no_grad()
def _predict(
    model: AnomalyModel,
    x: torch.Tensor,
    batch_size: int = 64,
    region: torch.Tensor | None = None,
) -> AnomalyOutput:
    """Outputs for a preprocessed batch, as the node computes them (`pipeline.infer_batch`)."""
    from ai_engine.pipeline import infer_batch

    model.eval()
    outs = [
        infer_batch(
            model,
            x[i : i + batch_size],
            amp=False,
            region=None if region is None else region[i : i + batch_size],
        )
        for i in range(0, len(x), batch_size)
    ]
    if not outs:
        return AnomalyOutput(torch.empty(0), torch.empty(0, *x.shape[1:]), None)
    return AnomalyOutput(
        score=torch.cat([o.score.cpu() for o in outs]),
        anomaly_map=torch.cat([o.anomaly_map.cpu() for o in outs]),
        reconstruction=None,
    )


def _separation_auroc(
    cls: type[AnomalyModel],
    network: torch.nn.Module,
    config: dict[str, Any],
    image_size: tuple[int, int],
    scoring: dict[str, Any],
    x_negative: torch.Tensor,
    x_positive: torch.Tensor,
    regions: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
) -> float:
    """AUROC of the model's scores, ``x_negative`` as class 0 and ``x_positive`` as class 1.

    Val AUROC: healthy vs abnormal val images. AUCp (label-free): held-out known-normal
    train images vs the unlabelled val mix. NaN if either set is empty.
    """
    if not len(x_negative) or not len(x_positive):
        return float("nan")
    model = cls(_provisional_card(config, image_size, scoring), network)
    s_n = _predict(model, x_negative, region=regions[0]).score.numpy()
    s_p = _predict(model, x_positive, region=regions[1]).score.numpy()
    return auroc(np.r_[np.zeros(len(s_n)), np.ones(len(s_p))], np.r_[s_n, s_p])


def _provisional_card(
    config: dict[str, Any], image_size: tuple[int, int], scoring: dict[str, Any]
) -> ModelCard:
    """A card for scoring during calibration (no thresholds yet)."""
    return card_from_config(
        config, image_size, Calibration(0.0, "", (0.0,), ("",), 1.0), training={"scoring": scoring}
    )


def _holdout_patients(items: list[Any], fraction: float, seed: int) -> set[str]:
    """A seeded ``fraction`` of the train patients (at least one) held out for AUCp."""
    patients = sorted({i.patient_id or str(i.path) for i in items})
    rng = np.random.default_rng(seed)
    n = max(1, round(len(patients) * fraction))
    return {patients[k] for k in rng.permutation(len(patients))[:n]}


def card_from_config(
    config: dict[str, Any],
    image_size: tuple[int, int],
    calibration: Calibration,
    *,
    anatomy: str = "",
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> ModelCard:
    """The model card of a training config (weights_sha256 is filled in by `checkpoints.save`)."""
    return ModelCard(
        model_id=config["model_id"],
        name=config["name"],
        version=str(config["version"]),
        modalities=tuple(config.get("modalities", ())),
        body_parts=tuple(config.get("body_parts", ())),
        views=tuple(config.get("views", ())),
        image_size=image_size,
        preprocessing=describe(image_size, anatomy),
        weights_sha256="",
        calibration=calibration,
        training=training or {},
        metrics=metrics or {},
        architecture=dict(config["init_args"]),
        anatomy=anatomy,
    )


def fit(
    config: dict[str, Any],
    out: Path,
    epochs: int | None = None,
    limit: int | None = None,
    device: str | torch.device | None = None,
) -> ModelCard:
    """Train, calibrate and save. Returns the written model card.

    Args:
        config: the YAML config as a dict.
        out: checkpoint folder to write.
        epochs: override the config's epochs (smoke tests).
        limit: use at most this many images per split/class (smoke tests).
        device: where the network trains and scores (`resolve_device`; default: CUDA when
            there is one). Images are loaded, shuffled and augmented on the CPU with the
            seeded generator either way and moved to the device a batch at a time, so a CPU
            run re-makes the same weights; a CUDA run is not bit-identical to it.
    """
    started = time.time()
    target = resolve_device(device)
    seed = int(config.get("seed", 0))
    seed_everything(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    image_size = (int(config["image_size"][0]), int(config["image_size"][1]))
    manifest = Path(config["manifest"])
    if not manifest.is_absolute():
        manifest = (REPO_ROOT / manifest).resolve()
    optim_cfg = config["optim"]
    n_epochs = int(epochs if epochs is not None else optim_cfg["epochs"])

    train_items = [i for i in read_manifest(manifest, "train") if i.label == 0][:limit]
    val_items = read_manifest(manifest, "val")
    val_normal = [i for i in val_items if i.label == 0][:limit]
    val_abnormal = [i for i in val_items if i.label == 1][:limit]
    logger.info(
        "loading %d train, %d+%d val images", len(train_items), len(val_normal), len(val_abnormal)
    )
    anatomy = str(config.get("anatomy", ""))
    cls = registry.get(config["model_id"])
    if not cls.trainable:  # a baseline with nothing to learn: build and calibrate only
        train_items, n_epochs = [], 0
    x_train = load_items(train_items, image_size, anatomy)
    x_val_n = load_items(val_normal, image_size, anatomy, volumes=val_items)
    x_val_a = load_items(val_abnormal, image_size, anatomy, volumes=val_items)
    val_masks = [load_mask(i.mask_path) if i.mask_path else None for i in val_abnormal]
    val_regions = (
        load_regions(val_normal, image_size, anatomy),
        load_regions(val_abnormal, image_size, anatomy),
    )

    select = str(optim_cfg.get("select", "val_normal_loss"))
    # further selections, each written as its own checkpoint <out>/select-<rule> (what another
    # rule would have kept from the same run; they never change the main one's early stop)
    also = [str(r) for r in optim_cfg.get("also_select", []) if str(r) != select]
    rules = (select, *dict.fromkeys(also))  # the main rule first, no rule twice
    for rule_name in rules:
        if rule_name not in SELECTION_RULES:
            raise ValueError(f"optim.select {rule_name!r}: valid are {', '.join(SELECTION_RULES)}")
    unlabelled = config.get("unlabelled")
    if unlabelled not in (None, "val"):
        raise ValueError(f"unlabelled {unlabelled!r}: the only supported value is 'val'")
    if unlabelled and "val_auroc" in rules:
        raise ValueError("unlabelled: val trains on the val images; select must be label-free")
    if "aucp" in rules and not unlabelled:
        raise ValueError("optim.select aucp needs `unlabelled: val` (the mix it scores)")
    x_holdout = torch.empty(0, 1, *image_size)
    if "aucp" in rules:
        held = _holdout_patients(train_items, float(optim_cfg.get("aucp_holdout", 0.1)), seed)
        is_held = torch.tensor([(i.patient_id or str(i.path)) in held for i in train_items])
        if bool(is_held.all()):
            raise ValueError("aucp_holdout would hold out every train patient; lower it")
        x_holdout, x_train = x_train[is_held], x_train[~is_held]
    x_unlabelled = torch.empty(0, 1, *image_size)
    if unlabelled:
        # all val images, shuffled with the seed, labels dropped
        mix = torch.cat([x_val_n, x_val_a])
        x_unlabelled = mix[torch.randperm(len(mix), generator=torch.Generator().manual_seed(seed))]

    network = cls.build_network(**config["init_args"]).to(target)
    trainer = cls.make_trainer(network, optim_cfg) if cls.trainable else None
    x_val_n_on = x_val_n.to(target)  # what validation_loss feeds the network directly
    if unlabelled:
        set_unlabelled = getattr(trainer, "set_unlabelled", None)
        if set_unlabelled is None:
            raise ValueError(f"{config['model_id']}'s trainer takes no unlabelled images")
        set_unlabelled(x_unlabelled)
    batch_size = int(optim_cfg["batch_size"])
    patience = int(optim_cfg.get("patience", 10))
    default_monitor = not unlabelled  # val images seen in training: their AUROC is transductive
    monitor = bool(optim_cfg.get("monitor_auroc", default_monitor)) or "val_auroc" in rules
    scoring = dict(config.get("scoring", {}))
    monitor_rule = (list(scoring.get("rules", [])) or list(cls.score_rules()))[0]
    generator = torch.Generator().manual_seed(seed)
    augment = make_augment(config.get("augment"), seed)  # training batches only
    history: list[dict[str, Any]] = []
    # rule -> (its value, epoch, weights) of the best epoch so far by that rule (lower = better)
    kept: dict[str, tuple[float, int, dict[str, torch.Tensor]]] = {}
    with TrainingLog(out / "logs") as log:
        for epoch in range(n_epochs):
            if trainer is None:  # n_epochs is 0 for a model without a trainer
                break
            order = torch.randperm(len(x_train), generator=generator)
            sums: dict[str, float] = {}
            starts = range(0, len(order), batch_size)
            bar = tqdm(starts, desc=f"epoch {epoch + 1}/{n_epochs}", unit="batch", disable=None)
            for start in bar:
                batch = x_train[order[start : start + batch_size]]
                # light augmentation: random horizontal shift of up to 4 px and intensity jitter
                shift = int(torch.randint(-4, 5, (1,), generator=generator))
                batch = torch.roll(batch, shifts=shift, dims=3)
                gain = 1.0 + 0.1 * (torch.rand(len(batch), 1, 1, 1, generator=generator) - 0.5)
                batch = (batch * gain).clamp(0, 1)
                if augment is not None:
                    batch = augment(batch)
                step = trainer.step(batch.to(target))
                for name, value in step.items():
                    sums[name] = sums.get(name, 0.0) + value * len(batch)
                bar.set_postfix({k: f"{v:.4g}" for k, v in step.items()})
            val_loss = trainer.validation_loss(x_val_n_on)
            trainer.end_epoch(val_loss)
            losses = {k: v / len(order) for k, v in sums.items()}
            entry: dict[str, float] = {**losses, "val_normal_loss": val_loss}
            if monitor:
                entry["val_auroc"] = _separation_auroc(
                    cls, network, config, image_size, {**scoring, "rule": monitor_rule},
                    x_val_n, x_val_a, val_regions,
                )  # fmt: skip
            if "aucp" in rules:
                entry["aucp"] = _separation_auroc(
                    cls, network, config, image_size, {**scoring, "rule": monitor_rule},
                    x_holdout, x_unlabelled,
                )  # fmt: skip
            history.append({"epoch": epoch, **entry})
            log.epoch(epoch, entry)
            logger.info("epoch %d %s", epoch, " ".join(f"{k} {v:.5g}" for k, v in entry.items()))
            values = {
                "val_normal_loss": val_loss,
                "val_auroc": -entry.get("val_auroc", float("nan")),
                "last": -float(epoch),
                "aucp": -entry.get("aucp", float("nan")),
            }
            snapshot: dict[str, torch.Tensor] | None = None  # one copy for every rule it improves
            for rule_name in rules:
                best = kept.get(rule_name)
                if best is None or values[rule_name] < best[0]:
                    if snapshot is None:
                        snapshot = copy.deepcopy(network.state_dict())
                    kept[rule_name] = (values[rule_name], epoch, snapshot)
            best_epoch = kept[select][1]
            if select != "last" and epoch - best_epoch >= patience:
                logger.info("early stop at epoch %d (best %d)", epoch, best_epoch)
                break

    def write(
        folder: Path, state: dict[str, torch.Tensor] | None, rule_name: str, kept_epoch: int
    ) -> ModelCard:
        if state is not None:
            network.load_state_dict(state)
        network.eval()

        # --- calibration on val: the score rule on val AUROC, thresholds on healthy val only ---
        rule, rule_auroc, calibration = calibrate(
            cls,
            network,
            config,
            image_size,
            scoring,
            x_val_n,
            x_val_a,
            fixed_rule=bool(unlabelled),
            val_masks=val_masks,
            regions=val_regions,
        )
        card = card_from_config(
            config,
            image_size,
            calibration,
            anatomy=anatomy,
            training={
                "data": config.get("data_name", str(manifest)),
                "manifest": str(Path(config["manifest"])),
                "n_train": len(x_train),
                "n_val_normal": len(x_val_n),
                "n_val_abnormal": len(x_val_a),
                "epochs_run": len(history),
                "best_epoch": kept_epoch,
                "selection": SELECTION_RULES[rule_name],
                **(
                    {
                        "unlabelled": f"{len(x_unlabelled)} val images, labels withheld",
                        "n_aucp_holdout": len(x_holdout),
                    }
                    if unlabelled
                    else {}
                ),
                "optim": optim_cfg,
                **({"augment": config["augment"]} if config.get("augment") else {}),
                "seed": seed,
                "scoring": {k: v for k, v in {**scoring, "rule": rule}.items() if k != "rules"},
                "wall_seconds": round(time.time() - started, 1),
                "torch": torch.__version__,
                "device": device_name(target),
            },
            metrics={"val_auroc_by_score_rule": rule_auroc, "val_auroc": rule_auroc[rule]},
        )
        saved = checkpoints.save(folder, card, network.state_dict())
        (folder / "history.json").write_text(json.dumps(history, indent=1) + "\n")
        write_model_card_readme(folder, saved)
        return saved

    _, best_epoch, best_state = kept.get(select, (0.0, -1, None))
    card = write(out, best_state, select, best_epoch)
    for rule_name in rules[1:]:
        if rule_name in kept:  # a model without training keeps no epoch
            _, kept_epoch, state = kept[rule_name]
            write(out / f"select-{rule_name}", state, rule_name, kept_epoch)
    return card


def calibrate(
    cls: type[AnomalyModel],
    network: torch.nn.Module,
    config: dict[str, Any],
    image_size: tuple[int, int],
    scoring: dict[str, Any],
    x_val_n: torch.Tensor,
    x_val_a: torch.Tensor,
    fixed_rule: bool = False,
    val_masks: list[np.ndarray | None] | None = None,
    regions: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
) -> tuple[str, dict[str, float], Calibration]:
    """Choose the score rule on val AUROC and fit the thresholds on healthy val images only.

    With ``calibration.pixel_rule: val_dice`` in the config (and ``val_masks``, one per
    abnormal val image), the first pixel threshold is instead the one with the best pooled
    Dice on val (normal val images count with empty masks), as a threshold baseline is
    calibrated; the further levels stay healthy-pixel percentiles above it.

    Args:
        cls: the model class.
        network: the trained network (eval mode).
        config: the training config (``scoring.rules``, ``calibration``).
        image_size: model input size.
        scoring: the scoring settings (``rules``, ``map_sigma``, ...).
        x_val_n: healthy val images.
        x_val_a: abnormal val images (only for the rule's AUROC).
        fixed_rule: take the first configured rule instead of choosing on val labels.
        val_masks: masks of the abnormal val images (for ``pixel_rule: val_dice``).
        regions: anatomy regions of the healthy and abnormal val images
            (`training.data.load_regions`), for a card with a per-image anatomy.

    Returns:
        The rule, the val AUROC of each rule, and the calibration.
    """
    rules = [r for r in scoring.get("rules", cls.score_rules()) if r in cls.score_rules()]
    rule_auroc: dict[str, float] = {}
    outputs = {}
    for rule in rules or list(cls.score_rules()[:1]):
        probe = _provisional_card(config, image_size, {**scoring, "rule": rule})
        model = cls(probe, network)
        out_n = _predict(model, x_val_n, region=regions[0])
        out_a = _predict(model, x_val_a, region=regions[1])
        outputs[rule] = (out_n, out_a)
        s_n, s_a = out_n.score.numpy(), out_a.score.numpy()
        labels = np.r_[np.zeros(len(s_n)), np.ones(len(s_a))]
        rule_auroc[rule] = auroc(labels, np.r_[s_n, s_a]) if len(s_a) and len(s_n) else float("nan")
    # with unlabelled val images no choice is made on val labels: the first configured rule
    rule = next(iter(rule_auroc)) if fixed_rule else max(rule_auroc, key=lambda r: rule_auroc[r])
    out_n = outputs[rule][0]
    healthy = out_n.score.numpy()
    map_n = out_n.anomaly_map
    cal_cfg = config.get("calibration", {})
    pct = float(cal_cfg.get("percentile", 95))
    pixel_pcts = [float(p) for p in cal_cfg.get("pixel_percentiles", [99.0, 99.9])]
    inside = regions[0]  # pixel thresholds from healthy pixels inside the region only
    pixel_values = (map_n.flatten() if inside is None else map_n[inside.bool()]).numpy()
    pixel_thresholds = tuple(float(np.percentile(pixel_values, p)) for p in pixel_pcts)
    pixel_rules = tuple(f"{p:g}th percentile of healthy validation pixels" for p in pixel_pcts)
    if cal_cfg.get("pixel_rule") == "val_dice" and val_masks:
        out_a = outputs[rule][1]
        masks, maps = [], []
        for k, mask in enumerate(val_masks):
            if mask is not None:
                masks.append(mask)
                maps.append(map_to_source(out_a.anomaly_map[k], *mask.shape))
        for k in range(len(map_n)):
            shape = masks[0].shape if masks else tuple(map_n.shape[-2:])
            masks.append(np.zeros(shape, dtype=bool))
            maps.append(map_to_source(map_n[k], *shape))
        best, best_dice = best_dice_threshold(masks, maps)
        kept = [(t, r) for t, r in zip(pixel_thresholds, pixel_rules, strict=True) if t > best]
        pixel_thresholds = (best, *(t for t, _ in kept))
        pixel_rules = (
            f"best pooled Dice on val ({best_dice:.3f}; {len(val_masks)} abnormal and "
            f"{len(map_n)} normal images)",
            *(r for _, r in kept),
        )
    calibration = Calibration(
        threshold=float(np.percentile(healthy, pct)),
        threshold_rule=(
            f"{pct:g}th percentile of the scores of {len(healthy)} healthy validation images "
            f"(operating point: {pct:g}% specificity on healthy val)"
        ),
        pixel_thresholds=pixel_thresholds,
        pixel_threshold_rules=pixel_rules,
        map_scale=2.0 * pixel_thresholds[0],
        healthy_scores=tuple(float(v) for v in np.sort(healthy)),
    )
    return rule, rule_auroc, calibration


def write_model_card_readme(folder: Path, card: ModelCard) -> None:
    cal = card.calibration
    t = card.training
    optim = t.get("optim", {})
    scoring = t.get("scoring", {})
    pixel = ", ".join(
        f"{v:.4g} ({r})"
        for v, r in zip(cal.pixel_thresholds, cal.pixel_threshold_rules, strict=True)
    )
    rows = [
        ("model", f"`{card.model_id}` (see ai_engine/models/{card.model_id}/README.md)"),
        ("architecture", f"`{json.dumps(card.architecture)}`"),
        ("data", str(t.get("data"))),
        ("training images", f"{t.get('n_train')} normal (train split)"),
        (
            "validation images",
            f"{t.get('n_val_normal')} normal + {t.get('n_val_abnormal')} abnormal (val split)",
        ),
        (
            "accepted input",
            f"Modality in {list(card.modalities)}; BodyPartExamined (if present) in "
            f"{list(card.body_parts)}; ViewPosition (if present) in {list(card.views)}",
        ),
        ("preprocessing", card.preprocessing),
        (
            "image score",
            f"`{scoring.get('rule')}` (fixed: the first configured rule, not chosen on labels)"
            if t.get("unlabelled")
            else f"`{scoring.get('rule')}` (chosen on val AUROC among "
            f"{list(card.metrics.get('val_auroc_by_score_rule', {}))})",
        ),
        *(
            [("unlabelled training images", f"{t['unlabelled']} (semi-supervised)")]
            if t.get("unlabelled")
            else []
        ),
        (
            "anomaly map",
            f"{registry.get(card.model_id).map_description} "
            f"(sigma {scoring.get('map_sigma')} px), at "
            f"{card.image_size[0]}x{card.image_size[1]}, resized back to the source image",
        ),
        ("threshold", f"{cal.threshold:.6g}: {cal.threshold_rule}"),
        *(
            [("calibration source", _recalibration_text(t["recalibrated"]))]
            if isinstance(t.get("recalibrated"), dict)
            else []
        ),
        ("pixel thresholds (binary SEG segments)", pixel),
        (
            "fractional SEG scale",
            f"map / {cal.map_scale:.4g}, clipped to [0, 1] (0.5 = first pixel threshold)",
        ),
        (
            "validation AUROC",
            f"{card.metrics.get('val_auroc', float('nan')):.3f} "
            + (
                "(val split; transductive: the val images were trained on without labels)"
                if t.get("unlabelled")
                else "(val split; it chose the score rule, so it is optimistic)"
            ),
        ),
        (
            "training",
            f"Adam lr {optim.get('lr')}, batch {optim.get('batch_size')}, "
            f"{t.get('epochs_run')} epochs (best {t.get('best_epoch')}), seed {t.get('seed')}, "
            f"{t.get('wall_seconds')} s on CPU, torch {t.get('torch')}",
        ),
        ("weights sha256", f"`{card.weights_sha256}`"),
    ]
    write_card_table(folder, card, rows, f"{card.name} --manifest <manifest.csv> --split test"
                     "` (see the project README).")  # fmt: skip


def _recalibration_text(r: dict[str, Any]) -> str:
    """One line on where a re-calibrated card's calibration came from."""
    what = (
        f"re-calibrated from {r.get('from')} on {r.get('n_val_normal')} normal + "
        f"{r.get('n_val_abnormal')} abnormal images"
    )
    if r.get("source") == "reader feedback":
        what += (
            f", from reader feedback: the studies readers judged on the node {r.get('node')} "
            "between "
            f"{r.get('judgements_from')} and {r.get('judgements_until')} (reader-confirmed "
            f"normals and abnormals; images pulled from {r.get('pacs')} by DICOMweb; list: "
            f"`{r.get('studies_file')}`)"
        )
    else:
        what += f" of `{r.get('manifest')}` (val split)"
    return f"{what}; score rule {r.get('score_rule', 'chosen on val')}"


def write_card_table(
    folder: Path, card: ModelCard, rows: list[tuple[str, str]], evaluate_args: str
) -> None:
    """Write ``folder/README.md``: the research-use notice and a field/value table of ``rows``.

    Args:
        folder: the checkpoint folder.
        card: its card (title line).
        rows: (field, value) pairs.
        evaluate_args: what follows ``--checkpoint`` in the evaluate command shown (closing
            the inline code).
    """
    lines = [
        f"# Model card: `{card.name}` ({card.model_id} {card.version})",
        "",
        "**Research use only. Not a medical device; not for clinical decisions.**",
        "",
        "| field | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
        f"Test-split figures: `python -m training evaluate --checkpoint {evaluate_args}",
        "",
    ]
    (folder / "README.md").write_text("\n".join(lines))


def card_with(card: ModelCard, **changes: Any) -> ModelCard:
    return dataclasses.replace(card, **changes)
