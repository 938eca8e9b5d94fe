"""The seed's experiment end to end: Fed-GAN, F-AD and the baselines, one table, one JSON line.

1. Fed-GAN: `simulation.simulate` (Flower simulation, N sites from the ``train`` split, DP on
   each site's discriminator update), per-site FID/KID computed at the sites.
2. Centralised GAN: the same networks and local trainer on the pooled ``train`` images, no
   federation and no DP, for the same number of passes over the data (rounds x local epochs).
3. For each generator: ``n_synthetic`` images with attributes from the public prior; pooled
   FID/KID against all real ``train`` images; F-AD = the registered ``conv_ae`` trained on
   the synthetic images only, threshold = ``percentile`` of its reconstruction errors on the
   synthetic images, evaluated on the real ``test`` split.
   The F-AD autoencoder is saved as a checkpoint (`save_fad_checkpoint`, ``<out>/fad``) that
   ``python -m training evaluate`` and the node load by path like any other.
4. Real-trained AE: the same ``conv_ae`` on the pooled real ``train`` images.
5. FedAvg classifier: `simulation.simulate` with ``task=classifier`` on the labelled ``val``
   split, each site getting its patient share of ``val``; scored on ``test``.

FID/KID use the project's extractor (encoder of ``ae-cxr``, the conv AE shipped as
``default-cxr`` 0.1.0 until 2026-11-23): not comparable with published Inception FIDs.
``test`` is only scored, never used for a choice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai_engine import checkpoints, registry
from ai_engine.metrics import at_threshold, auprc, auroc
from ai_engine.models.fed_cgan.attributes import sample_prior
from ai_engine.models.fed_cgan.local import synthesize, train_local
from ai_engine.transforms import describe
from ai_engine.types import ModelCard
from training.data import read_manifest
from training.federated import task
from training.federated.attribute_regressor import (
    conditioning,
    known_rows,
    real_error,
    train_regressor,
)
from training.federated.simulation import simulate

logger = logging.getLogger(__name__)


def train_ae(images: torch.Tensor, image_size: int, epochs: int, seed: int) -> torch.nn.Module:
    """The registered ``conv_ae`` (64-px variant) trained with its own trainer (Adam, MSE)."""
    cls = registry.get("conv_ae")
    torch.manual_seed(seed)
    net = cls.build_network(
        image_size=[image_size, image_size], channels=[16, 32, 64, 64], latent_dim=64
    )
    trainer = cls.make_trainer(net, {"lr": 1e-3})
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        for start in range(0, len(images), 32):
            trainer.step(images[order[start : start + 32]])
    net.eval()
    return net


@torch.no_grad()
def ae_errors(net: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """Mean squared reconstruction error per image (N,)."""
    out = [
        ((net(images[i : i + 64]) - images[i : i + 64]) ** 2).flatten(1).mean(1)
        for i in range(0, len(images), 64)
    ]
    return torch.cat(out).numpy()


def detector_metrics(
    net: torch.nn.Module,
    fit_images: torch.Tensor,
    test: task.SiteData,
    percentile: float,
    val: task.SiteData | None = None,
) -> dict[str, Any]:
    """AUROC/AUPRC on ``test`` (and ``val_auroc``/``val_auprc`` on ``val``, for selection)."""
    threshold = float(np.percentile(ae_errors(net, fit_images), percentile))
    scores = ae_errors(net, test.images)
    labels = test.labels.numpy().astype(int)
    at = at_threshold(labels, scores, threshold)
    out = {
        "auroc": auroc(labels, scores),
        "auprc": auprc(labels, scores),
        "threshold": threshold,
        "sensitivity": at["sensitivity"],
        "specificity": at["specificity"],
    }
    if val is not None:
        v_scores = ae_errors(net, val.images)
        v_labels = val.labels.numpy().astype(int)
        out["val_auroc"] = auroc(v_labels, v_scores)
        out["val_auprc"] = auprc(v_labels, v_scores)
    return out


def generator_block(
    g: torch.nn.Module,
    s: task.FedSettings,
    real_train: task.SiteData,
    test: task.SiteData,
    n_synthetic: int,
    ae_epochs: int,
    percentile: float,
    save_to: Path | None = None,
    privacy: dict[str, Any] | None = None,
    val: task.SiteData | None = None,
    regressor: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """FID/KID (pooled), F-AD metrics on test and val, and the conditioning if a regressor."""
    rng = np.random.default_rng(s.seed + 1)
    prior = torch.from_numpy(sample_prior(n_synthetic, s.cond_dim, rng))
    fake = synthesize(g, prior, seed=s.seed + 2)  # type: ignore[arg-type]
    quality = task.fid_kid(real_train.images, fake[: max(len(real_train.images), 2)])
    ae = train_ae(fake, s.image_size, ae_epochs, s.seed)
    if save_to is not None:
        save_fad_checkpoint(ae, fake, s, privacy or {}, percentile, save_to)
    out = {**quality, "fad": detector_metrics(ae, fake, test, percentile, val)}
    if regressor is not None:
        out["conditioning"] = conditioning(regressor, g, n=500, seed=s.seed + 3)
    return out


def save_fad_checkpoint(
    net: torch.nn.Module,
    synthetic: torch.Tensor,
    s: task.FedSettings,
    privacy: dict[str, Any],
    percentile: float,
    folder: Path,
) -> Path:
    """Write the F-AD autoencoder as a checkpoint folder with its model card.

    The card says what the detector learnt from: synthetic images only (``len(synthetic)``
    images of the federated generator); its threshold is the ``percentile`` of its scores on
    those synthetic images (no real image calibrates it); the federation's settings and the
    privacy spent (epsilon at the run's delta and at 1e-5, the privacy unit) are kept in
    ``training``. The image score is the mean squared reconstruction error, as in the report.
    """
    from training.fit import calibrate, write_model_card_readme

    cls = registry.get("conv_ae")
    size = (s.image_size, s.image_size)
    config = {
        "model_id": "conv_ae",
        "name": f"fad-{Path(s.manifest).parent.name or 'federated'}",
        "version": "0.1.0",
        "init_args": {"image_size": list(size), "channels": [16, 32, 64, 64], "latent_dim": 64},
        "calibration": {"percentile": percentile},
    }
    scoring = {"rules": ["mse"], "map_sigma": 2.0}
    _, _, calibration = calibrate(
        cls, net, config, size, scoring, synthetic, synthetic[:0], fixed_rule=True
    )
    calibration = dataclasses.replace(
        calibration,
        threshold_rule=(
            f"{percentile:g}th percentile of the scores of {len(synthetic)} synthetic images "
            "of the federated generator (no real image calibrates it)"
        ),
    )
    card = ModelCard(
        model_id="conv_ae",
        name=config["name"],
        version="0.1.0",
        modalities=("CR", "DX"),
        body_parts=("CHEST",),
        views=(),
        image_size=size,
        preprocessing=describe(size),
        weights_sha256="",
        calibration=calibration,
        training={
            "data": f"synthetic only: {len(synthetic)} images of the Fed-GAN (seed 000)",
            "n_train": len(synthetic),
            "n_val_normal": len(synthetic),
            "n_val_abnormal": 0,
            "unlabelled": "none: calibrated on synthetic images, no labels",
            "federation": s.to_flower(),
            "privacy": privacy,
            "scoring": {"rule": "mse", "map_sigma": 2.0},
            "seed": s.seed,
            "torch": torch.__version__,
        },
        metrics={},
        architecture=dict(config["init_args"]),
    )
    written = checkpoints.save(folder, card, net.state_dict())
    write_model_card_readme(folder, written)
    return folder


def classifier_block(
    card: dict[str, Any], s: task.FedSettings, test: task.SiteData
) -> dict[str, Any]:
    from safetensors.torch import load_file

    model = task.build_classifier(s)
    model.load_state_dict(load_file(str(Path(s.out_dir) / "classifier.safetensors")))
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(test.images[i : i + 64]) for i in range(0, len(test.images), 64)])
    labels = test.labels.numpy().astype(int)
    return {
        "auroc": auroc(labels, scores.numpy()),
        "auprc": auprc(labels, scores.numpy()),
        "val_images": int(card["rounds"][-1]["num_examples"]) if card["rounds"] else 0,
    }


def run_report(
    s: task.FedSettings,
    out: Path,
    n_synthetic: int = 1000,
    ae_epochs: int = 20,
    percentile: float = 95.0,
    classifier_rounds: int = 10,
    baselines: bool = True,
    ablation_lambda0: bool = False,
) -> dict[str, Any]:
    """Run everything (see the module docstring); returns the summary dict.

    ``baselines=False`` runs only the Fed-GAN and its F-AD (the val figures of a selection
    run); ``ablation_lambda0`` adds the same federation with ``lambda-cond=0`` (unconditional).
    """
    t0 = time.monotonic()
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    fed_s = task.settings_from(s.to_flower(), task="cgan", out_dir=str(out / "fed_cgan"))
    t = time.monotonic()
    fed_card = simulate(fed_s)
    timings["fed_gan_s"] = time.monotonic() - t

    manifest = Path(s.manifest)
    items = read_manifest(manifest, "train")
    real_train = task.items_to_site([it for it in items if it.label == 0], fed_s)
    val = task.items_to_site(read_manifest(manifest, "val"), fed_s)
    test = task.items_to_site(read_manifest(manifest, "test"), fed_s)

    regressor = None
    regressor_info: dict[str, Any] = {"trained": False, "why": "no recorded age/sex in train"}
    if bool(known_rows(real_train.attributes).any()):
        t = time.monotonic()
        regressor = train_regressor(real_train.images, real_train.attributes, seed=s.seed)
        regressor_info = {
            "trained": True,
            "train_images": int(known_rows(real_train.attributes).sum()),
            "val_real": real_error(regressor, val.images, val.attributes),
        }
        timings["attribute_regressor_s"] = time.monotonic() - t

    from safetensors.torch import load_file

    def fed_generator(settings: task.FedSettings) -> torch.nn.Module:
        g, _ = task.build_gan(settings)
        g.load_state_dict(load_file(str(Path(settings.out_dir) / "generator.safetensors")))
        return g

    t = time.monotonic()
    fed = generator_block(
        fed_generator(fed_s),
        fed_s,
        real_train,
        test,
        n_synthetic,
        ae_epochs,
        percentile,
        save_to=out / "fad",
        privacy=fed_card["privacy"],
        val=val,
        regressor=regressor,
    )
    timings["fed_fad_s"] = time.monotonic() - t

    ablation = None
    if ablation_lambda0:
        abl_s = task.settings_from(
            fed_s.to_flower(), lambda_cond=0.0, out_dir=str(out / "fed_cgan_lambda0")
        )
        t = time.monotonic()
        abl_card = simulate(abl_s)
        ablation = generator_block(
            fed_generator(abl_s),
            abl_s,
            real_train,
            test,
            n_synthetic,
            ae_epochs,
            percentile,
            val=val,
            regressor=regressor,
        )
        ablation["epsilon_at_delta_1e-5"] = abl_card["privacy"].get("epsilon_at_delta_1e-5")
        timings["ablation_lambda0_s"] = time.monotonic() - t

    central = real_ae = classifier = None
    if baselines:
        t = time.monotonic()
        central_s = task.settings_from(fed_s.to_flower(), dp=False)
        g_c, d_c = task.build_gan(central_s)
        local = central_s.local()
        for epoch in range(central_s.num_rounds):
            train_local(g_c, d_c, real_train.images, real_train.attributes, local, seed=epoch)
        timings["central_gan_s"] = time.monotonic() - t
        t = time.monotonic()
        central = generator_block(
            g_c,
            central_s,
            real_train,
            test,
            n_synthetic,
            ae_epochs,
            percentile,
            val=val,
            regressor=regressor,
        )
        timings["central_fad_s"] = time.monotonic() - t

        t = time.monotonic()
        ae_real = train_ae(real_train.images, s.image_size, ae_epochs * 4, s.seed)
        real_ae = {"fad": detector_metrics(ae_real, real_train.images, test, percentile, val)}
        timings["real_ae_s"] = time.monotonic() - t

        cls_s = task.settings_from(
            fed_s.to_flower(),
            task="classifier",
            split="val",
            num_rounds=classifier_rounds,
            local_epochs=2,
            lr_d=0.01,
            optimizer="sgd",
            augment="",
            dp=False,
            out_dir=str(out / "fedavg_classifier"),
        )
        t = time.monotonic()
        cls_card = simulate(cls_s)
        classifier = classifier_block(cls_card, cls_s, test)
        timings["fedavg_classifier_s"] = time.monotonic() - t

    summary = {
        "manifest": str(manifest),
        "settings": fed_s.to_flower(),
        "rounds": fed_s.num_rounds,
        "sites": fed_s.num_sites,
        "site_images": fed_card["rounds"][-1].get("num_examples") if fed_card["rounds"] else 0,
        "dp": fed_s.dp,
        "epsilon": fed_card["privacy"]["epsilon"],
        "delta": fed_card["privacy"]["delta"],
        "epsilon_at_delta_1e-5": fed_card["privacy"].get("epsilon_at_delta_1e-5"),
        "privacy_unit": fed_card["privacy"]["unit"],
        "fad_checkpoint": str(out / "fad"),
        "epsilon_per_round": [r.get("epsilon") for r in fed_card["rounds"]],
        "epsilon_1e-5_per_round": [r.get("epsilon_1e_5") for r in fed_card["rounds"]],
        "dp_steps": fed_card["rounds"][-1].get("dp_steps") if fed_card["rounds"] else 0,
        "last_round": fed_card["rounds"][-1] if fed_card["rounds"] else {},
        "site_fid": [
            {"site": r.get("partition_id"), "fid": r.get("fid"), "kid": r.get("kid")}
            for r in fed_card["sites"]
        ],
        "fid_extractor": "encoder of the project's ae-cxr conv autoencoder (not Inception)",
        "attribute_regressor": regressor_info,
        "fed_gan": fed,
        "fed_gan_lambda0": ablation,
        "central_gan": central,
        "real_ae": real_ae,
        "fedavg_classifier": classifier,
        "n_synthetic": n_synthetic,
        "ae_epochs": ae_epochs,
        "percentile": percentile,
        "n_val_normal": int((val.labels == 0).sum()),
        "n_val_abnormal": int((val.labels == 1).sum()),
        "n_test_normal": int((test.labels == 0).sum()),
        "n_test_abnormal": int((test.labels == 1).sum()),
        "timings_s": timings,
        "wall_s": time.monotonic() - t0,
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    return summary


def table(summary: dict[str, Any]) -> str:
    """The report as Markdown: detectors, conditioning, privacy per round."""

    def f(x: Any, nd: int = 3) -> str:
        return "-" if x is None else f"{x:.{nd}f}"

    rows = [
        "| method | FID (pooled) | KID | AUROC val | AUPRC val | AUROC test | AUPRC test "
        "| sens / spec @ p95 (test) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, key in (
        ("Fed-GAN (DP) -> F-AD (conv_ae on synthetic)", "fed_gan"),
        ("Fed-GAN (DP), lambda = 0 -> F-AD", "fed_gan_lambda0"),
        ("Centralised GAN (no DP) -> conv_ae on synthetic", "central_gan"),
        ("conv_ae on pooled real train", "real_ae"),
    ):
        b = summary.get(key)
        if not b:
            continue
        fad = b["fad"]
        rows.append(
            f"| {name} | {f(b.get('fid'), 1)} | {f(b.get('kid'), 1)} "
            f"| {f(fad.get('val_auroc'))} | {f(fad.get('val_auprc'))} "
            f"| {f(fad['auroc'])} | {f(fad['auprc'])} "
            f"| {f(fad['sensitivity'], 2)} / {f(fad['specificity'], 2)} |"
        )
    c = summary.get("fedavg_classifier")
    if c:
        rows.append(
            "| FedAvg classifier (sites' shares of val, labels) | - | - | (trained on val) | - "
            f"| {f(c['auroc'])} | {f(c['auprc'])} | - |"
        )
    reg = summary.get("attribute_regressor") or {}
    if reg.get("trained"):
        rows += [
            "",
            "| attribute regressor (real NIH train only) reads ... | age MAE (years) | age corr "
            "| sex accuracy | same vs shuffled requests: age MAE / corr / sex acc |",
            "|---|---|---|---|---|",
        ]
        v = reg["val_real"]
        rows.append(
            f"| real val images (its own error; n {v['n']}) | {f(v['age_mae_years'], 1)} "
            f"| {f(v['age_corr'], 2)} | {f(v['sex_accuracy'], 2)} | - |"
        )
        for name, key in (
            ("Fed-GAN (DP), lambda 1", "fed_gan"),
            ("Fed-GAN (DP), lambda 0", "fed_gan_lambda0"),
            ("Centralised GAN", "central_gan"),
        ):
            b = summary.get(key)
            if not b or "conditioning" not in b:
                continue
            cd = b["conditioning"]
            rows.append(
                f"| {name}: G(requested age, sex, z), n {cd['n']} | {f(cd['age_mae_years'], 1)} "
                f"| {f(cd['age_corr'], 2)} | {f(cd['sex_accuracy'], 2)} "
                f"| {f(cd['age_mae_years_shuffled'], 1)} / {f(cd['age_corr_shuffled'], 2)} "
                f"/ {f(cd['sex_accuracy_shuffled'], 2)} |"
            )
    eps = summary["epsilon"]
    per_round = summary.get("epsilon_1e-5_per_round") or []
    sites = ", ".join(f"site {r['site']}: {f(r['fid'], 1)}" for r in summary["site_fid"])
    rows += [
        "",
        f"manifest {summary.get('manifest')}, rounds {summary['rounds']}, sites "
        f"{summary['sites']} ({summary.get('site_images')} images), DP {summary['dp']}, "
        f"{summary.get('dp_steps')} DP-SGD steps at the busiest site, "
        f"epsilon {f(eps, 2)} at delta {summary['delta']} "
        f"(**{f(summary.get('epsilon_at_delta_1e-5'), 2)} at delta 1e-5**; unit: "
        f"{summary.get('privacy_unit')}), wall {summary['wall_s']:.0f} s",
        "epsilon at delta 1e-5 after each round: "
        + ", ".join(f(e, 2) for e in per_round if e is not None),
        f"F-AD checkpoint: {summary.get('fad_checkpoint')} (python -m training evaluate "
        "--checkpoint PATH loads it)",
        f"FID/KID extractor: {summary.get('fid_extractor')}",
        f"per-site FID (at the sites, synthetic for the site's own attributes): {sites}",
        f"val: {summary.get('n_val_normal')} normal / {summary.get('n_val_abnormal')} abnormal; "
        f"test: {summary['n_test_normal']} normal / {summary['n_test_abnormal']} abnormal",
    ]
    return "\n".join(rows)
