"""Re-calibrate a trained checkpoint on a val split, optionally with other scoring settings.

    python -m training calibrate --checkpoint NAME_OR_PATH --out DIR
        [--manifest CSV] [--set scoring.residual=positive ...] [--name NAME] [--version V]

The weights are copied unchanged; the score rule is chosen again on the val split's AUROC and
the thresholds are fitted again on its healthy images, exactly as ``training fit`` does after
training (`training.fit.calibrate`). Uses: a hospital calibrating a shipped model on its own
healthy studies (a manifest built with ``python -m training manifest``), or trying a scoring
setting (e.g. ``scoring.residual=positive`` for hyperintense lesions on FLAIR) without
training again. ``test`` is never read.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ai_engine import checkpoints, registry
from ai_engine.anatomy import ANATOMIES
from ai_engine.transforms import describe
from ai_engine.types import ModelCard
from training.data import load_items, load_mask, load_regions, read_manifest
from training.fit import REPO_ROOT, calibrate, write_model_card_readme

logger = logging.getLogger(__name__)


def _apply(settings: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """``a.b=value`` assignments (values parsed as YAML) applied to a nested dict copy."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in settings.items()}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {assignment!r}: expected KEY=VALUE, e.g. scoring.rules=[mse]")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def _settings(scoring: dict[str, Any]) -> dict[str, Any]:
    """Scoring settings without the rule choice (``rule``, ``rules``)."""
    return {k: v for k, v in scoring.items() if k not in ("rule", "rules")}


def recalibrate(
    checkpoint: str,
    out: Path,
    manifest: Path | None = None,
    assignments: list[str] | None = None,
    name: str | None = None,
    version: str | None = None,
    anatomy: str | None = None,
    *,
    score_rules: list[str] | None = None,
    provenance: dict[str, Any] | None = None,
) -> ModelCard:
    """Write ``out``: the checkpoint's weights with a calibration fitted on val again.

    Args:
        checkpoint: shipped name or checkpoint folder.
        out: the new checkpoint folder (must not be the source).
        manifest: val data (default: the manifest the checkpoint was trained with).
        assignments: ``scoring.X=...`` / ``calibration.X=...`` overrides.
        name: the new checkpoint's name (default: the old one).
        version: the new version (default: the old one + ``-recal``).
        anatomy: the new card's anatomy (`ai_engine.anatomy.ANATOMIES`; default: the old
            one's), e.g. ``lungs`` to restrict a chest model's maps and scores to the lungs.
        score_rules: the score rules to choose among on the val AUROC (default: the card's
            rule, or ``--set scoring.rules=[...]``). Without abnormal val images the first
            is kept, not chosen.
        provenance: where the val data came from, recorded in the card
            (``training.recalibrated``), e.g. the readers' judgements of a node.

    Returns:
        The written card.

    Raises:
        ValueError: ``out`` is the source folder, or a bad assignment.
        ManifestError: the manifest has no val images of a class.
    """
    started = time.time()
    source = checkpoints.resolve(checkpoint)
    if out.resolve() == source.resolve():
        raise ValueError("--out must be a new folder, not the checkpoint itself")
    card = checkpoints.read_card(source)
    if anatomy is not None:
        if anatomy not in ANATOMIES:
            raise ValueError(f"anatomy {anatomy!r}: valid are {', '.join(map(repr, ANATOMIES))}")
        card = dataclasses.replace(
            card, anatomy=anatomy, preprocessing=describe(card.image_size, anatomy)
        )
    model = checkpoints.load(source, device="cpu")
    network = model.network.eval()
    settings = _apply(
        {
            "scoring": {**card.training.get("scoring", {})},
            "calibration": dict(card.training.get("calibration", {})),
        },
        assignments or [],
    )
    scoring = settings["scoring"]
    if score_rules:
        scoring["rules"] = list(score_rules)
    if "rules" not in scoring:
        scoring["rules"] = [scoring.get("rule")] if scoring.get("rule") else []
    manifest = manifest or Path(card.training.get("manifest", ""))
    if not manifest.is_absolute():
        manifest = (REPO_ROOT / manifest).resolve()
    val = read_manifest(manifest, "val")
    size = card.image_size
    val_normal = [i for i in val if i.label == 0]
    val_abnormal = [i for i in val if i.label == 1]
    x_val_n = load_items(val_normal, size, card.anatomy, volumes=val)
    x_val_a = load_items(val_abnormal, size, card.anatomy, volumes=val)
    val_masks = [load_mask(i.mask_path) if i.mask_path else None for i in val_abnormal]
    regions = (
        load_regions(val_normal, size, card.anatomy),
        load_regions(val_abnormal, size, card.anatomy),
    )
    config = {
        "model_id": card.model_id,
        "name": name or card.name,
        "version": version or f"{card.version}-recal",
        "init_args": dict(card.architecture),
        "calibration": settings["calibration"],
    }
    cls = registry.get(card.model_id)
    with torch.no_grad():
        rule, rule_auroc, calibration = calibrate(
            cls,
            network,
            config,
            size,
            scoring,
            x_val_n,
            x_val_a,
            fixed_rule=not val_abnormal,  # no labels to choose on: keep the first rule
            val_masks=val_masks,
            regions=regions,
        )
    new_scoring = {k: v for k, v in {**scoring, "rule": rule}.items() if k != "rules"}
    # the val AUROC of the rules ``fit`` compared still hold when the scoring settings and the
    # val data are the ones they were measured with: keep them, so the card says what the
    # rule was chosen among (re-choosing among the kept rule alone would lose that), unless
    # the kept rule is not their best (``--set scoring.rules=[...]`` forced another one)
    same_settings = (
        _settings(new_scoring) == _settings(card.training.get("scoring", {}))
        and card.anatomy == checkpoints.read_card(source).anatomy
    )
    trained_on = Path(str(card.training.get("manifest", "")))
    if not trained_on.is_absolute():
        trained_on = (REPO_ROOT / trained_on).resolve()
    rule_chosen = bool(val_abnormal)
    if not rule_chosen:  # the card's val figures still say what the kept rule was chosen on
        rule_auroc = dict(card.metrics.get("val_auroc_by_score_rule", {})) or rule_auroc
    elif same_settings and manifest.resolve() == trained_on:
        merged = {**card.metrics.get("val_auroc_by_score_rule", {}), **rule_auroc}
        if max(merged, key=merged.__getitem__) == rule:
            rule_auroc = merged
    new_card = dataclasses.replace(
        card,
        name=config["name"],
        version=config["version"],
        calibration=calibration,
        training={
            **card.training,
            "scoring": new_scoring,
            "recalibrated": {
                "from": f"{card.name} {card.version} (sha256 {card.weights_sha256[:12]})",
                "manifest": str(manifest),
                "n_val_normal": len(x_val_n),
                "n_val_abnormal": len(x_val_a),
                "assignments": list(assignments or []),
                "anatomy": card.anatomy,
                "score_rule": (
                    f"chosen on the val AUROC among {list(scoring['rules'])}"
                    if rule_chosen
                    else f"kept ({rule}): no abnormal val images to choose on"
                ),
                **(provenance or {}),
                "wall_seconds": round(time.time() - started, 1),
            },
        },
        metrics={
            **card.metrics,
            "val_auroc_by_score_rule": rule_auroc,
            "val_auroc": rule_auroc.get(rule, card.metrics.get("val_auroc")),
        },
    )
    out.mkdir(parents=True, exist_ok=True)
    for extra in ("history.json",):
        if (source / extra).is_file():
            shutil.copy(source / extra, out / extra)
    written = checkpoints.save(out, new_card, network.state_dict())
    write_model_card_readme(out, written)
    logger.info("recalibrated: rule %s, val AUROC %.3f", rule, rule_auroc[rule])
    return written
