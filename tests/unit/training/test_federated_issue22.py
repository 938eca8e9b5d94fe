"""Issue 22: augmentation of the sites' images, the attribute regressor, the Kermany sites."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("opacus")

from ai_engine.models.components.augment import make_augment, parse_spec
from ai_engine.models.fed_cgan.local import LocalConfig, train_local
from ai_engine.models.fed_cgan.torch_model import AuxDiscriminator, ConditionalUNetGenerator

REPO = Path(__file__).resolve().parents[3]
KERMANY = REPO.parent / "shared" / "data" / "cxr_kermany_pediatric" / "manifest.csv"


def test_augment_spec_parses_and_rejects() -> None:
    assert parse_spec("") == {}
    assert parse_spec("rotate,flip,zoom0.2") == {
        "prob": 1.0,
        "rotate_deg": 10.0,
        "flip": 0.5,
        "scale": 0.2,
    }
    assert parse_spec("rotate15") == {"prob": 1.0, "rotate_deg": 15.0}
    assert make_augment(parse_spec(""), 0) is None
    with pytest.raises(ValueError, match="unknown augmentation"):
        parse_spec("shear")
    with pytest.raises(ValueError, match="zoom"):
        parse_spec("zoom1.5")


def _augmenter(text: str, seed: int = 0):  # type: ignore[no-untyped-def]
    fn = make_augment(parse_spec(text), seed)
    assert fn is not None
    return fn


def test_augmenter_changes_images_keeps_shape_range_and_is_seeded() -> None:
    torch.manual_seed(0)
    batch = torch.rand(6, 1, 32, 32)
    a = _augmenter("rotate20,zoom0.2", seed=3)
    b = _augmenter("rotate20,zoom0.2", seed=3)
    out_a, out_b = a(batch), b(batch)
    assert out_a.shape == batch.shape
    assert type(out_a) is torch.Tensor
    assert float(out_a.min()) >= 0.0
    assert float(out_a.max()) <= 1.0
    assert torch.equal(out_a, out_b)  # seeded
    # every image is transformed on its own (a rotation/zoom of random pixels changes them)
    assert all(not torch.allclose(out_a[i], batch[i]) for i in range(len(batch)))
    assert not torch.equal(a(batch), out_a)  # successive calls draw new parameters
    assert len(a(batch[:0])) == 0


def test_flip_is_left_right_per_image() -> None:
    img = torch.zeros(1, 1, 8, 8)
    img[..., :, :2] = 1.0  # bright left edge
    flip = _augmenter("flip", seed=0)
    out = flip(img.repeat(40, 1, 1, 1))
    flipped = out[..., :, -2:].mean(dim=(1, 2, 3)) == 1.0
    same = out[..., :, :2].mean(dim=(1, 2, 3)) == 1.0
    assert bool((flipped ^ same).all())  # each image is either flipped or untouched
    assert 5 < int(flipped.sum()) < 35  # about half


def _tiny_gan() -> tuple[ConditionalUNetGenerator, AuxDiscriminator]:
    torch.manual_seed(0)
    g = ConditionalUNetGenerator(32, 2, noise_dim=8, channels=(4, 8), seed_channels=2)
    d = AuxDiscriminator(32, 2, channels=(4, 4, 4, 4))
    return g, d


def test_local_training_uses_the_augmentation(monkeypatch: pytest.MonkeyPatch) -> None:
    images, attributes = torch.rand(8, 1, 32, 32), torch.randn(8, 2)
    seen: list[int] = []
    import ai_engine.models.fed_cgan.local as local_mod

    real_make = local_mod.make_augment

    def spy(spec, seed):  # type: ignore[no-untyped-def]
        fn = real_make(spec, seed)
        if fn is None:
            return None

        def wrapped(batch: torch.Tensor) -> torch.Tensor:
            seen.append(len(batch))
            return fn(batch)

        return wrapped

    monkeypatch.setattr(local_mod, "make_augment", spy)
    results = {}
    for spec in ("", "rotate20,zoom0.2"):
        g, d = _tiny_gan()
        config = LocalConfig(batch_size=4, dp=True, augment=spec)
        train_local(g, d, images, attributes, config, seed=0)
        results[spec] = d.state_dict()
    assert seen, "the augmenter was never called on a real batch"
    assert any(not torch.equal(results[""][k], results["rotate20,zoom0.2"][k]) for k in results[""])


def test_the_flower_app_declares_every_setting() -> None:
    # `flwr run` refuses a run config key the app's pyproject.toml does not declare
    import tomllib

    from training.federated.task import FedSettings

    app = REPO / "training" / "federated" / "pyproject.toml"
    declared = tomllib.loads(app.read_text())["tool"]["flwr"]["app"]["config"]
    assert set(declared) == set(FedSettings().to_flower())
    assert declared["augment"] == ""


def test_augment_setting_reaches_the_local_config() -> None:
    from training.federated.task import settings_from

    s = settings_from({"augment": "rotate10,flip"})
    assert s.local().augment == "rotate10,flip"
    assert settings_from({}).local().augment == ""


def test_attribute_agreement_and_regressor_learns_a_visible_attribute() -> None:
    from training.federated.attribute_regressor import (
        agreement,
        conditioning,
        real_error,
        train_regressor,
    )

    pred = torch.tensor([[0.0, 1.0], [1.0, -1.0]])
    target = torch.tensor([[0.5, 1.0], [1.0, 1.0]])
    a = agreement(pred, target)
    assert a["age_mae_years"] == pytest.approx(0.25 * 30)
    assert a["sex_accuracy"] == pytest.approx(0.5)

    # images whose brightness encodes sex and whose top half encodes age: learnable
    gen = torch.Generator().manual_seed(0)

    def images_for(attr: torch.Tensor) -> torch.Tensor:
        n = len(attr)
        x = 0.3 + 0.05 * torch.rand(n, 1, 32, 32, generator=gen)
        x = x + 0.3 * (attr[:, 1] > 0).float()[:, None, None, None]
        x[:, :, :16] += 0.15 * attr[:, 0][:, None, None, None]
        return x.clamp(0, 1)

    def attrs(n: int) -> torch.Tensor:
        age = torch.rand(n, generator=gen) * 2 - 1
        sex = torch.where(torch.rand(n, generator=gen) > 0.5, 1.0, -1.0)
        return torch.stack([age, sex], dim=1)

    train_a = attrs(160)
    net = train_regressor(images_for(train_a), train_a, epochs=30, augment="")
    val_a = attrs(60)
    err = real_error(net, images_for(val_a), val_a)
    assert err["sex_accuracy"] > 0.9
    assert err["age_corr"] > 0.8

    class Follows(torch.nn.Module):
        cond_dim, noise_dim, image_size = 2, 4, 32

        def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            return images_for(cond)

    class Ignores(Follows):
        def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            return images_for(attrs(len(cond)))

    good = conditioning(net, Follows(), n=200, seed=1)
    bad = conditioning(net, Ignores(), n=200, seed=1)
    assert good["sex_accuracy"] > 0.9
    assert good["age_corr"] > 0.8
    assert 0.3 < good["sex_accuracy_shuffled"] < 0.7
    assert 0.3 < bad["sex_accuracy"] < 0.7
    assert abs(bad["age_corr"]) < 0.3
    assert good["age_mae_years"] < good["age_mae_years_shuffled"]

    with pytest.raises(ValueError, match="no image with recorded"):
        train_regressor(torch.rand(4, 1, 32, 32), torch.zeros(4, 2))


def _patient_disjoint_and_complete(items, sites) -> None:  # type: ignore[no-untyped-def]
    patients = [{it.patient_id for it in site} for site in sites]
    for i in range(len(sites)):
        for j in range(i + 1, len(sites)):
            assert not (patients[i] & patients[j])
    assert Counter(str(it.path) for s in sites for it in s) == Counter(str(it.path) for it in items)


def test_partition_keeps_every_patient_at_one_site() -> None:
    from training.data import Item
    from training.federated.task import partition

    items = [
        Item(Path(f"/x/{p}-{k}.png"), "train", 0, None, f"P{p}", "", "", "")
        for p in range(30)
        for k in range(1 + p % 4)  # 1 to 4 images per patient
    ]
    sites = partition(items, 3)
    _patient_disjoint_and_complete(items, sites)
    sizes = [len(s) for s in sites]
    assert min(sizes) > 0.5 * max(sizes)


@pytest.mark.skipif(not KERMANY.is_file(), reason="Kermany manifest not in ../shared/data")
def test_kermany_federation_sites_by_patient() -> None:
    """The Kermany federation: its normal train images, 3 patient-disjoint sites, no attributes."""
    from training.data import read_manifest
    from training.federated.task import FedSettings, partition

    s = FedSettings(manifest=str(KERMANY))
    items = [it for it in read_manifest(KERMANY, "train") if it.label == 0]
    with KERMANY.open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "train" and r["label"] == "0"]
    assert len(items) == len(rows)
    by_patient = Counter(it.patient_id for it in items)
    assert max(by_patient.values()) > 1  # some patients have several images
    sites = partition(items, s.num_sites, "", s.seed)
    _patient_disjoint_and_complete(items, sites)
    sizes = np.array([len(site) for site in sites])
    assert sizes.min() > 0.9 * sizes.mean()
    # no age/sex recorded: every attribute vector is "unknown" (an unconditional federation)
    from ai_engine.models.fed_cgan import attributes as attrs

    assert all(attrs.encode(it.age, it.sex) == [0.0, 0.0] for it in items)
