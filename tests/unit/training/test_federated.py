"""Fed-GAN (seed 000): networks, conditional loss, attributes, sites, one local DP step, epsilon."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("opacus")

import itertools

from ai_engine.models.fed_cgan import attributes as attrs
from ai_engine.models.fed_cgan.local import LocalConfig, epsilon, synthesize, train_local
from ai_engine.models.fed_cgan.loss import DiscriminatorLoss, GeneratorLoss, cond_loss
from ai_engine.models.fed_cgan.torch_model import AuxDiscriminator, ConditionalUNetGenerator

REPO = Path(__file__).resolve().parents[3]
MINI = REPO / "tests" / "data" / "mini" / "cxr_kermany_pediatric"


def tiny_manifest(tmp_path: Path) -> Path:
    """The committed mini CXR set with made-up ages/sexes (the Kermany set has none)."""
    rows = list(csv.DictReader((MINI / "manifest.csv").open()))
    out = tmp_path / "manifest.csv"
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for i, row in enumerate(rows):
            row["path"] = str((MINI / row["path"]).resolve())
            row["age"] = str(20 + 5 * i)
            row["sex"] = "MF"[i % 2]
            row["view"] = "AP" if i % 3 else "PA"
            writer.writerow(row)
    return out


@pytest.mark.parametrize(("size", "cond_dim"), [(32, 2), (64, 3)])
def test_forward_shapes(size: int, cond_dim: int) -> None:
    g = ConditionalUNetGenerator(size, cond_dim, noise_dim=8, channels=(4, 8), seed_channels=2)
    d = AuxDiscriminator(size, cond_dim, channels=(4, 4, 4, 4))
    z, c = torch.randn(3, 8), torch.randn(3, cond_dim)
    img = g(z, c)
    assert img.shape == (3, 1, size, size)
    assert float(img.min()) >= 0.0
    assert float(img.max()) <= 1.0
    logits, pred = d(img)
    assert logits.shape == (3,)
    assert pred.shape == (3, cond_dim)


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ConditionalUNetGenerator(36)
    with pytest.raises(ValueError, match="divisible"):
        AuxDiscriminator(24)


def test_cond_loss_is_one_minus_cosine_over_known_rows() -> None:
    target = torch.tensor([[1.0, -1.0], [0.5, 1.0], [0.0, 0.0]])
    assert float(cond_loss(target * 3.0, target)) == pytest.approx(0.0, abs=1e-6)  # scale-free
    assert float(cond_loss(-target, target)) == pytest.approx(2.0, abs=1e-6)
    ortho = torch.tensor([[1.0, 1.0], [-1.0, 0.5], [5.0, 5.0]])  # row 3 unknown: ignored
    assert float(cond_loss(ortho, target)) == pytest.approx(1.0, abs=1e-6)
    assert float(cond_loss(torch.ones(2, 2), torch.zeros(2, 2))) == 0.0


def test_gan_losses_add_lambda_times_cond() -> None:
    torch.manual_seed(0)
    logits, pred, target = torch.randn(4), torch.randn(4, 2), torch.randn(4, 2)
    g0, g1 = GeneratorLoss(0.0), GeneratorLoss(2.0)
    assert float(g1(logits, pred, target) - g0(logits, pred, target)) == pytest.approx(
        2.0 * float(cond_loss(pred, target)), rel=1e-5
    )
    d = DiscriminatorLoss(1.0)(logits, torch.randn(4), pred, target)
    assert torch.isfinite(d)


def test_attributes_from_manifest_and_dicom() -> None:
    assert attrs.encode("80", "M", "AP", ("view",)) == [1.0, 1.0, 1.0]
    assert attrs.encode("20", "F") == [-1.0, -1.0]
    assert attrs.encode("", "") == [0.0, 0.0]
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.Dataset()
    ds.PatientAge, ds.PatientSex, ds.ViewPosition = "065Y", "F", "PA"
    assert attrs.from_dicom(ds, ("view",)) == [0.5, -1.0, -1.0]
    prior = attrs.sample_prior(100, 3, np.random.default_rng(0))
    assert prior.shape == (100, 3)
    assert set(np.unique(prior[:, 1])) == {-1.0, 1.0}
    with pytest.raises(ValueError, match="clinical"):
        attrs.attribute_names(("lab",))


def test_sites_are_patient_disjoint_and_non_iid_by_age(tmp_path: Path) -> None:
    from training.data import read_manifest
    from training.federated.task import partition

    items = read_manifest(tiny_manifest(tmp_path), "train")
    for non_iid in ("", "age", "sex"):
        sites = partition(items, 3, non_iid)
        patients = [{it.patient_id for it in site} for site in sites]
        assert sum(len(s) for s in sites) == len(items)
        assert not (patients[0] & patients[1])
        assert not (patients[0] & patients[2])
        assert not (patients[1] & patients[2])
    by_age = partition(items, 3, "age")
    means = [np.mean([float(it.age) for it in site]) for site in by_age]
    assert means == sorted(means)
    with pytest.raises(ValueError, match="non_iid"):
        partition(items, 3, "height")


def test_one_local_dp_step_changes_d_and_leaves_no_hooks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    g = ConditionalUNetGenerator(32, 2, noise_dim=8, channels=(4, 8), seed_channels=2)
    d = AuxDiscriminator(32, 2, channels=(4, 4, 4, 4))
    before = {k: v.clone() for k, v in d.state_dict().items()}
    images, attributes = torch.rand(8, 1, 32, 32), torch.randn(8, 2)
    config = LocalConfig(batch_size=8, dp=True, noise_multiplier=1.0, max_grad_norm=1.0)
    result = train_local(g, d, images, attributes, config, seed=0)
    assert result.steps == 1
    assert result.sample_rate == pytest.approx(1.0)
    assert np.isfinite(result.d_loss)
    assert np.isfinite(result.g_loss)
    assert any(not torch.equal(before[k], v) for k, v in d.state_dict().items())
    assert all(getattr(p, "grad_sample", None) is None for p in d.parameters())
    assert not hasattr(d, "autograd_grad_sample_hooks")
    # a second round on the same modules works (hooks were removed, not stacked)
    train_local(g, d, images, attributes, config, seed=1)
    assert synthesize(g, torch.randn(5, 2)).shape == (5, 1, 32, 32)


def test_epsilon_grows_with_steps() -> None:
    values = [epsilon(1.0, 0.2, steps, 1e-3) for steps in (0, 5, 10, 50, 100)]
    assert values[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(values))
    assert epsilon(2.0, 0.2, 50, 1e-3) < epsilon(1.0, 0.2, 50, 1e-3)
    assert epsilon(0.0, 0.2, 5, 1e-3) == float("inf")
    with pytest.raises(ValueError, match="delta"):
        epsilon(1.0, 0.2, 5, 0.0)
