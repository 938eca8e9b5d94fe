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
    net: torch.nn.Module, fit_images: torch.Tensor, test: task.SiteData, percentile: float
) -> dict[str, Any]:
    threshold = float(np.percentile(ae_errors(net, fit_images), percentile))
    scores = ae_errors(net, test.images)
    labels = test.labels.numpy().astype(int)
    at = at_threshold(labels, scores, threshold)
    return {
        "auroc": auroc(labels, scores),
        "auprc": auprc(labels, scores),
        "threshold": threshold,
        "sensitivity": at["sensitivity"],
        "specificity": at["specificity"],
    }


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
) -> dict[str, Any]:
    rng = np.random.default_rng(s.seed + 1)
    prior = torch.from_numpy(sample_prior(n_synthetic, s.cond_dim, rng))
    fake = synthesize(g, prior, seed=s.seed + 2)  # type: ignore[arg-type]
    quality = task.fid_kid(real_train.images, fake[: max(len(real_train.images), 2)])
    ae = train_ae(fake, s.image_size, ae_epochs, s.seed)
    if save_to is not None:
        save_fad_checkpoint(ae, fake, s, privacy or {}, percentile, save_to)
    return {**quality, "fad": detector_metrics(ae, fake, test, percentile)}


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
) -> dict[str, Any]:
    """Run everything (see the module docstring); returns the summary dict."""
    t0 = time.monotonic()
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    fed_s = task.settings_from(s.to_flower(), task="cgan", out_dir=str(out / "fed_cgan"))
    t = time.monotonic()
    fed_card = simulate(fed_s)
    timings["fed_gan_s"] = time.monotonic() - t

    items = read_manifest(Path(s.manifest), "train")
    real_train = task.items_to_site([it for it in items if it.label == 0], fed_s)
    test = task.items_to_site(read_manifest(Path(s.manifest), "test"), fed_s)

    from safetensors.torch import load_file

    g_fed, _ = task.build_gan(fed_s)
    g_fed.load_state_dict(load_file(str(Path(fed_s.out_dir) / "generator.safetensors")))
    t = time.monotonic()
    fed = generator_block(
        g_fed,
        fed_s,
        real_train,
        test,
        n_synthetic,
        ae_epochs,
        percentile,
        save_to=out / "fad",
        privacy=fed_card["privacy"],
    )
    timings["fed_fad_s"] = time.monotonic() - t

    t = time.monotonic()
    central_s = task.settings_from(fed_s.to_flower(), dp=False)
    g_c, d_c = task.build_gan(central_s)
    local = central_s.local()
    for epoch in range(central_s.num_rounds):
        train_local(g_c, d_c, real_train.images, real_train.attributes, local, seed=epoch)
    timings["central_gan_s"] = time.monotonic() - t
    t = time.monotonic()
    central = generator_block(g_c, central_s, real_train, test, n_synthetic, ae_epochs, percentile)
    timings["central_fad_s"] = time.monotonic() - t

    t = time.monotonic()
    ae_real = train_ae(real_train.images, s.image_size, ae_epochs * 4, s.seed)
    real_ae = detector_metrics(ae_real, real_train.images, test, percentile)
    timings["real_ae_s"] = time.monotonic() - t

    cls_s = task.settings_from(
        fed_s.to_flower(),
        task="classifier",
        split="val",
        num_rounds=classifier_rounds,
        local_epochs=2,
        lr_d=0.01,
        dp=False,
        out_dir=str(out / "fedavg_classifier"),
    )
    t = time.monotonic()
    cls_card = simulate(cls_s)
    classifier = classifier_block(cls_card, cls_s, test)
    timings["fedavg_classifier_s"] = time.monotonic() - t

    summary = {
        "rounds": fed_s.num_rounds,
        "sites": fed_s.num_sites,
        "dp": fed_s.dp,
        "epsilon": fed_card["privacy"]["epsilon"],
        "delta": fed_card["privacy"]["delta"],
        "epsilon_at_delta_1e-5": fed_card["privacy"].get("epsilon_at_delta_1e-5"),
        "privacy_unit": fed_card["privacy"]["unit"],
        "fad_checkpoint": str(out / "fad"),
        "epsilon_per_round": [r.get("epsilon") for r in fed_card["rounds"]],
        "site_fid": [
            {"site": r.get("partition_id"), "fid": r.get("fid"), "kid": r.get("kid")}
            for r in fed_card["sites"]
        ],
        "fed_gan": fed,
        "central_gan": central,
        "real_ae": {"fad": real_ae},
        "fedavg_classifier": classifier,
        "n_synthetic": n_synthetic,
        "ae_epochs": ae_epochs,
        "percentile": percentile,
        "n_test_normal": int((test.labels == 0).sum()),
        "n_test_abnormal": int((test.labels == 1).sum()),
        "timings_s": timings,
        "wall_s": time.monotonic() - t0,
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    return summary


def table(summary: dict[str, Any]) -> str:
    """The report as a Markdown table."""

    def f(x: Any, nd: int = 3) -> str:
        return "-" if x is None else f"{x:.{nd}f}"

    rows = [
        "| method | FID (pooled) | KID | AUROC test | AUPRC test | sens / spec @ p95 |",
        "|---|---|---|---|---|---|",
    ]
    for name, key in (
        ("Fed-GAN -> F-AD (conv_ae on synthetic)", "fed_gan"),
        ("Centralised GAN -> conv_ae on synthetic", "central_gan"),
    ):
        b = summary[key]
        fad = b["fad"]
        rows.append(
            f"| {name} | {f(b['fid'], 1)} | {f(b['kid'], 1)} "
            f"| {f(fad['auroc'])} | {f(fad['auprc'])} "
            f"| {f(fad['sensitivity'], 2)} / {f(fad['specificity'], 2)} |"
        )
    fad = summary["real_ae"]["fad"]
    rows.append(
        f"| conv_ae on pooled real train | - | - | {f(fad['auroc'])} | {f(fad['auprc'])} "
        f"| {f(fad['sensitivity'], 2)} / {f(fad['specificity'], 2)} |"
    )
    c = summary["fedavg_classifier"]
    rows.append(
        "| FedAvg classifier (sites' shares of val, labels) | - | - "
        f"| {f(c['auroc'])} | {f(c['auprc'])} | - |"
    )
    eps = summary["epsilon"]
    sites = ", ".join(f"site {r['site']}: {f(r['fid'], 1)}" for r in summary["site_fid"])
    rows += [
        "",
        f"rounds {summary['rounds']}, sites {summary['sites']}, DP {summary['dp']}, "
        f"epsilon {f(eps, 2)} at delta {summary['delta']} "
        f"({f(summary.get('epsilon_at_delta_1e-5'), 2)} at delta 1e-5; unit: "
        f"{summary.get('privacy_unit')}), wall {summary['wall_s']:.0f} s",
        f"F-AD checkpoint: {summary.get('fad_checkpoint')} (python -m training evaluate "
        "--checkpoint PATH loads it)",
        f"per-site FID (at the sites, synthetic for the site's own attributes): {sites}",
        f"test: {summary['n_test_normal']} normal / {summary['n_test_abnormal']} abnormal",
    ]
    return "\n".join(rows)
