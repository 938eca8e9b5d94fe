"""Shared pieces of the Flower apps: settings, site data, networks, weights <-> records.

Settings travel as one flat mapping with Flower's hyphenated keys (``num-rounds``, ``lr-d``,
...): the Flower app's ``[tool.flwr.app.config]`` (deployment) or the CLI (simulation) sets
them at the server, which sends them to the sites in every round's ``ConfigRecord``. Which data
a site trains on is the site's own business: its node config (``partition-id``,
``num-partitions``, optionally ``manifest`` and ``device``) says so, and the images never
leave it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ai_engine.models.base import module_device
from ai_engine.models.fed_cgan import attributes as attrs
from ai_engine.models.fed_cgan.local import LocalConfig
from ai_engine.models.fed_cgan.torch_model import AuxDiscriminator, ConditionalUNetGenerator
from training.data import Item, load_batch, read_manifest

logger = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MANIFEST = REPO_ROOT.parent / "shared" / "data" / "cxr_nih14_pneumonia" / "manifest.csv"


@dataclass(frozen=True)
class FedSettings:
    """Every knob of a federated run (hyphenated in Flower configs: ``lr_d`` -> ``lr-d``)."""

    task: str = "cgan"  # "cgan" (the seed) or "classifier" (FedAvg baseline)
    num_rounds: int = 20
    num_sites: int = 3
    manifest: str = str(DEFAULT_MANIFEST)
    split: str = "train"  # cgan: train (normal only); classifier: val (labels)
    non_iid: str = ""  # "" (patients shuffled), "age" or "sex" (sorted, contiguous blocks)
    image_size: int = 64
    noise_dim: int = 64
    g_channels: str = "16,32,64"
    d_channels: str = "16,32,64,64"
    clinical: str = ""  # comma-separated clinical entries of the attribute vector ("view")
    local_epochs: int = 1
    batch_size: int = 16
    optimizer: str = "sgd"
    lr_g: float = 0.02
    lr_d: float = 0.02
    momentum: float = 0.9
    lambda_cond: float = 1.0
    proximal_mu: float = 0.0
    dp: bool = True
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    augment: str = ""  # MONAI augmentation of real images at the sites ("rotate10,flip,zoom0.1")
    delta: float = 1e-3
    site_fid: bool = True
    fid_samples: int = 200
    seed: int = 0
    out_dir: str = "runs/federated/fed_cgan"

    @property
    def clinical_names(self) -> tuple[str, ...]:
        return tuple(c for c in self.clinical.split(",") if c)

    @property
    def cond_dim(self) -> int:
        return len(attrs.attribute_names(self.clinical_names))

    def local(self) -> LocalConfig:
        return LocalConfig(
            epochs=self.local_epochs,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            lr_g=self.lr_g,
            lr_d=self.lr_d,
            momentum=self.momentum,
            lambda_cond=self.lambda_cond,
            proximal_mu=self.proximal_mu,
            dp=self.dp,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            augment=self.augment,
        )

    def to_flower(self) -> dict[str, Any]:
        """Hyphenated flat mapping (values: str, int, float, bool) for a ConfigRecord."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}


def settings_from(mapping: Mapping[str, Any], **overrides: Any) -> FedSettings:
    """`FedSettings` from a Flower config (hyphenated keys; unknown keys ignored).

    Raises:
        ValueError: a value that cannot be converted to the field's type.
    """
    values: dict[str, Any] = {}
    for field in dataclasses.fields(FedSettings):
        key = field.name.replace("_", "-")
        if key in mapping:
            values[field.name] = mapping[key]
        elif field.name in mapping:
            values[field.name] = mapping[field.name]
    values.update(overrides)
    typed: dict[str, Any] = {}
    for field in dataclasses.fields(FedSettings):
        if field.name not in values:
            continue
        raw = values[field.name]
        kind = type(getattr(FedSettings(), field.name))
        if kind is bool and isinstance(raw, str):
            typed[field.name] = raw.strip().lower() in ("1", "true", "yes")
        else:
            typed[field.name] = kind(raw)
    return FedSettings(**typed)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(c) for c in text.split(",") if c)


def build_gan(s: FedSettings) -> tuple[ConditionalUNetGenerator, AuxDiscriminator]:
    """Fresh G and D for the settings, seeded (every party builds identical ones)."""
    torch.manual_seed(s.seed)
    g = ConditionalUNetGenerator(
        image_size=s.image_size,
        cond_dim=s.cond_dim,
        noise_dim=s.noise_dim,
        channels=_ints(s.g_channels),
    )
    d = AuxDiscriminator(image_size=s.image_size, cond_dim=s.cond_dim, channels=_ints(s.d_channels))
    return g, d


class SmallClassifier(nn.Module):
    """Baseline: 4 strided conv layers + linear, (B, 1, H, W) -> abnormality logit (B,)."""

    def __init__(self, channels: tuple[int, ...] = (8, 16, 32, 32)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(4, c), nn.ReLU()]
            c_in = c
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x)).squeeze(1)
        return out


def build_classifier(s: FedSettings) -> SmallClassifier:
    torch.manual_seed(s.seed)
    return SmallClassifier()


def state_dict_of(modules: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
    """One flat state dict ``<name>.<key>`` of several modules (parameters and buffers)."""
    return {
        f"{name}.{key}": value.detach().cpu().clone()
        for name, module in modules.items()
        for key, value in module.state_dict().items()
    }


def load_state_dict_into(
    state: Mapping[str, torch.Tensor], modules: Mapping[str, nn.Module]
) -> None:
    """Inverse of `state_dict_of`.

    Raises:
        KeyError: a key of ``state`` names no module, or a module misses keys.
    """
    for name, module in modules.items():
        prefix = f"{name}."
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(sub, strict=True)
    known = {f"{name}." for name in modules}
    stray = [k for k in state if not any(k.startswith(p) for p in known)]
    if stray:
        raise KeyError(f"unexpected weights {stray[:3]}")


def _patient_key(seed: int, patient_id: str) -> str:
    return hashlib.sha256(f"{seed}:{patient_id}".encode()).hexdigest()


def partition(
    items: list[Item], num_partitions: int, non_iid: str = "", seed: int = 0
) -> list[list[Item]]:
    """Split rows into ``num_partitions`` patient-disjoint sites.

    ``non_iid=""``: patients in a seeded pseudo-random order, dealt round-robin (IID-ish).
    ``"age"`` / ``"sex"``: patients sorted by mean age / by sex, then cut into contiguous
    blocks of about equal image count, so sites differ in their demographics.

    Raises:
        ValueError: bad ``num_partitions`` or ``non_iid``, or fewer patients than sites.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    by_patient: dict[str, list[Item]] = {}
    for item in items:
        by_patient.setdefault(item.patient_id or str(item.path), []).append(item)
    if len(by_patient) < num_partitions:
        raise ValueError(f"{len(by_patient)} patients cannot fill {num_partitions} sites")
    patients = sorted(by_patient, key=lambda p: _patient_key(seed, p))
    sites: list[list[Item]] = [[] for _ in range(num_partitions)]
    if not non_iid:
        for i, pid in enumerate(patients):
            sites[i % num_partitions].extend(by_patient[pid])
        return sites
    if non_iid == "age":

        def key(pid: str) -> float:
            ages = [attrs.encode(it.age, "")[0] for it in by_patient[pid]]
            return float(np.mean(ages))

    elif non_iid == "sex":

        def key(pid: str) -> float:
            return attrs.encode("", by_patient[pid][0].sex)[1]

    else:
        raise ValueError(f"non_iid must be '', 'age' or 'sex', got {non_iid!r}")
    patients.sort(key=key)
    total = sum(len(v) for v in by_patient.values())
    site, count = 0, 0
    for pid in patients:
        if count >= (site + 1) * total / num_partitions and site < num_partitions - 1:
            site += 1
        sites[site].extend(by_patient[pid])
        count += len(by_patient[pid])
    return sites


@dataclass(frozen=True)
class SiteData:
    """One site's tensors (they stay in the site's process)."""

    images: torch.Tensor  # (N, 1, H, W)
    attributes: torch.Tensor  # (N, A)
    labels: torch.Tensor  # (N,)
    n_patients: int


def items_to_site(items: list[Item], s: FedSettings) -> SiteData:
    size = (s.image_size, s.image_size)
    images = load_batch([it.path for it in items], size)
    vectors = [attrs.encode(it.age, it.sex, it.view, s.clinical_names) for it in items]
    return SiteData(
        images=images,
        attributes=torch.tensor(vectors, dtype=torch.float32).reshape(len(items), s.cond_dim),
        labels=torch.tensor([it.label for it in items], dtype=torch.float32),
        n_patients=len({it.patient_id for it in items}),
    )


@functools.lru_cache(maxsize=4)
def load_site(manifest: str, partition_id: int, num_partitions: int, s: FedSettings) -> SiteData:
    """The images of one site: ``split`` of ``manifest``, this site's patient partition.

    For the GAN only normal images (label 0) are used.

    Raises:
        ValueError: bad partition, or the site has no images.
    """
    items = read_manifest(Path(manifest), s.split)
    if s.task == "cgan":
        items = [it for it in items if it.label == 0]
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} not in [0, {num_partitions})")
    site_items = partition(items, num_partitions, s.non_iid, s.seed)[partition_id]
    if not site_items:
        raise ValueError(f"site {partition_id} has no images")
    return items_to_site(site_items, s)


def site_from_node_config(node_config: Mapping[str, Any], s: FedSettings) -> tuple[int, SiteData]:
    """(partition id, data) of the site a SuperNode's ``--node-config`` describes.

    Keys: ``partition-id`` and ``num-partitions`` (default 0 / 1: the whole manifest) and
    optionally ``manifest`` (the site's own manifest; else the run's).
    """
    pid = int(node_config.get("partition-id", 0))
    n = int(node_config.get("num-partitions", 1))
    manifest = str(node_config.get("manifest", "") or s.manifest)
    return pid, load_site(manifest, pid, n, s)


def site_device(node_config: Mapping[str, Any]) -> torch.device:
    """Where a site trains: its node config's ``device`` (``auto``: CUDA when it has one).

    Raises:
        ValueError: the site asked for CUDA and torch sees none there.
    """
    from training.fit import resolve_device

    return resolve_device(str(node_config.get("device", "auto") or "auto"))


@functools.lru_cache(maxsize=1)
def _extractor(checkpoint: str) -> Any:
    from ai_engine.features import encoder_features

    return encoder_features(checkpoint)


def fid_kid(
    real: torch.Tensor, synthetic: torch.Tensor, checkpoint: str = "ae-cxr"
) -> dict[str, float]:
    """FID and KID (mean, std) of two image sets (N, 1, H, W) with the project's extractor.

    The extractor is the encoder of the shipped ``ae-cxr`` autoencoder, so the values are
    not comparable with published Inception FIDs.
    """
    from ai_engine.metrics import fid, kid

    extract = _extractor(checkpoint)
    fa = extract([im[0].numpy() for im in real])
    fb = extract([im[0].numpy() for im in synthetic])
    kid_mean, kid_std = kid(fa, fb)
    return {"fid": fid(fa, fb), "kid": kid_mean, "kid_std": kid_std}


def train_classifier_local(
    model: SmallClassifier, site: SiteData, s: FedSettings
) -> tuple[int, float]:
    """Local SGD-with-momentum epochs of the baseline classifier; (steps, mean BCE loss).

    Trains where the model's weights are; the site's images stay on the CPU and each batch
    moves.
    """
    torch.manual_seed(s.seed)
    device = module_device(model)
    opt = torch.optim.SGD(model.parameters(), lr=s.lr_d, momentum=s.momentum)
    anchor = {k: v.detach().clone() for k, v in model.named_parameters()}
    model.train()
    losses: list[float] = []
    steps = 0
    n = len(site.images)
    for _ in range(s.local_epochs):
        order = torch.randperm(n)
        for start in range(0, n, s.batch_size):
            idx = order[start : start + s.batch_size]
            x, y = site.images[idx].to(device), site.labels[idx].to(device)
            loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
            if s.proximal_mu > 0:
                loss = loss + s.proximal_mu / 2 * sum(
                    ((p - anchor[k]) ** 2).sum() for k, p in model.named_parameters()
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            steps += 1
    return steps, float(np.mean(losses)) if losses else float("nan")
