"""SimSID: patch grid, space-aware memory, shapes, training on real mini images, predict contract,
card round trip, lung restriction; and fit's MONAI ``augment:`` section."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ai_engine import checkpoints, registry
from ai_engine.errors import ModelLoadError
from ai_engine.export import OnnxExportError, export_onnx
from ai_engine.models.components.augment import make_augment
from ai_engine.models.simsid.torch_model import (
    SimSIDNetwork,
    SpaceAwareMemory,
    from_patches,
    position_bits,
    to_patches,
)
from ai_engine.pipeline import infer_batch
from ai_engine.types import Calibration, ModelCard
from training.calibrate import recalibrate
from training.data import load_batch, read_manifest
from training.fit import fit, load_config

REPO = Path(__file__).resolve().parents[3]
SIZE = (64, 64)
ARCH = {"image_size": SIZE, "channels": (4, 8, 8, 8), "latent_dim": 8, "n_slots": 16,
        "disc_channels": (4, 8, 8, 8)}  # fmt: skip


def _images(manifest: Path, split: str, label: int | None = None) -> torch.Tensor:
    items = [i for i in read_manifest(manifest, split) if label is None or i.label == label]
    return load_batch([i.path for i in items], SIZE)


def _card(rule: str = "disc", anatomy: str = "") -> ModelCard:
    return ModelCard(
        "simsid", "t", "0", ("DX",), (), (), SIZE, "", "",
        Calibration(1.0, "", (0.1,), ("",), 0.2),
        training={"scoring": {"rule": rule, "map_sigma": 1.0}},
        architecture=ARCH,
        anatomy=anatomy,
    )  # fmt: skip


def test_patches_round_trip_in_row_major_cell_order():
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    patches = to_patches(x, 2)
    assert patches.shape == (8, 1, 4, 4)
    torch.testing.assert_close(patches[1], x[0, :, :4, 4:])  # image 0, top-right cell
    torch.testing.assert_close(patches[6], x[1, :, 4:, :4])  # image 1, bottom-left cell
    torch.testing.assert_close(from_patches(patches, 2), x)
    assert position_bits(4).tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]


def test_each_cell_reads_only_its_own_memory_and_only_top_k_items():
    torch.manual_seed(0)
    memory = SpaceAwareMemory(n_cells=4, n_slots=10, slot_dim=6, top_k=3)
    query = torch.randn(2, 4, 6)
    with torch.no_grad():
        read, weights = memory(query)
    assert read.shape == (2, 4, 6)
    assert weights.shape == (2, 4, 10)
    assert ((weights > 0).sum(-1) == 3).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4))
    # a read-out is a convex combination of that cell's items, not another cell's
    torch.testing.assert_close(read[:, 2], weights[:, 2] @ memory.items[2])
    with torch.no_grad():
        memory.items[3].zero_()
        read_after, _ = memory(query)
    torch.testing.assert_close(read_after[:, :3], read[:, :3])
    assert float(read_after[:, 3].abs().max()) == 0.0


@pytest.mark.parametrize(
    ("size", "channels", "grid", "inpaint"),
    [
        ((64, 64), (4, 8, 8, 8), 2, True),
        ((64, 64), (4, 8, 8), 4, True),
        ((32, 64), (4, 8), 2, False),
        ((64, 64), (4, 8, 8), 1, True),  # one cell: no neighbours, zero context
    ],
)
def test_forward_shapes(size, channels, grid, inpaint):
    torch.manual_seed(0)
    net = SimSIDNetwork(size, channels, latent_dim=4, grid=grid, n_slots=8, top_k=2,
                        inpaint=inpaint, heads=2, disc_channels=(4, 4, 4, 4)).eval()  # fmt: skip
    x = torch.rand(3, 1, *size)
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape
    assert 0.0 <= float(y.min()) <= float(y.max()) <= 1.0
    with torch.no_grad():
        out = net.outputs(x)
    assert out.reconstruction.shape == x.shape
    assert out.teacher_reconstruction.shape == x.shape
    assert out.distillation.shape == ()
    assert out.attention.shape == (3, grid * grid, 8)
    torch.testing.assert_close(out.reconstruction, y)
    assert net.critic(x).shape == (3,)


def test_bad_sizes_and_heads_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        SimSIDNetwork((60, 64), (4, 8, 8, 8))
    with pytest.raises(ValueError, match="heads"):
        SimSIDNetwork((64, 64), (4, 8, 8, 8), latent_dim=3, heads=5)  # item length 3 * 16


def test_training_lowers_the_reconstruction_error_of_real_chest_images(mini_cxr_manifest):
    x = _images(mini_cxr_manifest, "train")
    torch.manual_seed(0)
    cls = registry.get("simsid")
    net = cls.build_network(**ARCH)
    trainer = cls.make_trainer(net, {"lr": 3e-3, "n_critic": 1, "epochs": 1})

    def batch_stat_mse() -> float:  # on all images, batch-norm on their own statistics
        net.train()
        with torch.no_grad():
            return float(torch.mean((net(x) - x) ** 2))

    before = batch_stat_mse()
    for k in range(12):
        step = trainer.step(x[(4 * k) % len(x) :][:4])
        assert {"d_loss", "g_loss", "recon_mse", "teacher_mse", "distillation"} <= set(step)
        assert all(np.isfinite(v) for v in step.values())
    after = batch_stat_mse()
    assert after < 0.5 * before, (before, after)
    assert np.isfinite(trainer.validation_loss(x))
    trainer.end_epoch(after)


def test_generator_steps_come_every_n_critic_steps_and_leave_the_critic_trainable():
    torch.manual_seed(0)
    cls = registry.get("simsid")
    net = cls.build_network(**ARCH)
    trainer = cls.make_trainer(net, {"n_critic": 2})
    x = torch.rand(2, 1, *SIZE)
    assert "g_loss" in trainer.step(x)
    assert "g_loss" not in trainer.step(x)
    assert "g_loss" in trainer.step(x)
    assert all(p.requires_grad for p in net.discriminator.parameters())
    assert not {id(p) for p in net.generator_parameters()} & {
        id(p) for p in net.discriminator.parameters()
    }


def test_predict_contract_disc_score_and_card_round_trip(mini_cxr_manifest, tmp_path):
    torch.manual_seed(0)
    cls = registry.get("simsid")
    net = cls.build_network(**ARCH)
    x = _images(mini_cxr_manifest, "val")
    out = cls(_card("disc"), net).eval().predict(x)
    assert out.score.shape == (len(x),)
    assert out.anomaly_map.shape == (len(x), 1, *SIZE)
    assert out.reconstruction is not None
    assert out.reconstruction.shape == x.shape
    assert float(out.anomaly_map.min()) >= 0.0
    with torch.no_grad():
        torch.testing.assert_close(out.score, -net.critic(net(x)))
    by_map = cls(_card("map_top"), net).eval().predict(x)
    torch.testing.assert_close(by_map.anomaly_map, out.anomaly_map)
    assert not torch.allclose(by_map.score, out.score)

    checkpoints.save(tmp_path / "ckpt", _card("disc"), net.state_dict())
    loaded = checkpoints.load(tmp_path / "ckpt", device="cpu")
    assert type(loaded) is cls
    assert loaded.card.architecture["channels"] == [4, 8, 8, 8]  # JSON: tuples become lists
    assert loaded.card.architecture["n_slots"] == 16
    torch.testing.assert_close(loaded.predict(x).score, out.score)
    torch.testing.assert_close(loaded.predict(x).anomaly_map, out.anomaly_map)
    with pytest.raises(OnnxExportError, match="cannot export"):
        export_onnx(tmp_path / "ckpt", tmp_path / "m.onnx")


def test_a_lung_card_refuses_the_whole_image_disc_score_and_maps_stay_in_the_region():
    net = registry.get("simsid").build_network(**ARCH)
    with pytest.raises(ModelLoadError, match="cannot be restricted"):
        registry.get("simsid")(_card("disc", anatomy="lungs"), net)
    model = registry.get("simsid")(_card("map_top", anatomy="lungs"), net).eval()
    x = torch.rand(2, 1, *SIZE)
    region = torch.zeros(2, 1, *SIZE, dtype=torch.bool)
    region[:, :, 16:48, 8:28] = True
    out = infer_batch(model, x, amp=False, region=region)
    margin = 8  # beyond any widening of the region
    assert float(out.anomaly_map[:, :, :, 28 + margin :].abs().max()) == 0.0
    assert float(out.anomaly_map[:, :, 16:48, 8:28].min()) > 0.0


@pytest.fixture(scope="module")
def tiny_simsid(tmp_path_factory, mini_cxr_manifest) -> tuple[Path, ModelCard]:
    """``training fit`` of the tiny config (with its augment section) on the mini CXR set."""
    config = load_config(REPO / "training" / "configs" / "simsid.yaml")
    config.update(manifest=str(mini_cxr_manifest), name="simsid-test")
    out = tmp_path_factory.mktemp("ckpt") / "simsid"
    card = fit(config, out, epochs=2)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    return out, card


def test_fit_trains_calibrates_and_records_the_augmentation(tiny_simsid):
    folder, card = tiny_simsid
    assert card.model_id == "simsid"
    assert card.training["augment"]["rotate_deg"] == 5
    assert card.training["scoring"]["rule"] in ("disc", "map_top", "map_mean", "mse")
    assert set(card.metrics["val_auroc_by_score_rule"]) == {"disc", "map_top", "map_mean", "mse"}
    assert card.training["epochs_run"] == 2
    loaded = checkpoints.load(folder, device="cpu")
    assert loaded.card.weights_sha256 == card.weights_sha256


def test_lung_recalibration_of_a_simsid_checkpoint(tiny_simsid, mini_cxr_manifest, tmp_path):
    folder, _ = tiny_simsid
    card = recalibrate(
        str(folder), tmp_path / "lungs", mini_cxr_manifest, anatomy="lungs",
        score_rules=["map_top", "map_mean", "mse"],
    )  # fmt: skip
    assert card.anatomy == "lungs"
    assert card.training["scoring"]["rule"] in ("map_top", "map_mean", "mse")
    assert checkpoints.load(tmp_path / "lungs", device="cpu").card.anatomy == "lungs"


def test_augment_is_seeded_bounded_and_only_what_the_config_asks():
    assert make_augment(None, 0) is None
    assert make_augment({}, 0) is None
    assert make_augment({"prob": 0.5}, 0) is None  # nothing to do
    with pytest.raises(ValueError, match="unknown keys"):
        make_augment({"rotate": 5}, 0)
    with pytest.raises(ValueError, match="gamma"):
        make_augment({"gamma": [1.5, 1.0]}, 0)
    spec = {"prob": 1.0, "rotate_deg": 10, "scale": 0.1, "translate_px": 3, "gamma": [0.7, 1.4]}
    torch.manual_seed(0)
    x = torch.rand(4, 1, 32, 32)
    a, b = make_augment(spec, 3), make_augment(spec, 3)
    assert a is not None
    assert b is not None
    ya, yb = a(x), b(x)
    assert ya.shape == x.shape
    assert type(ya) is torch.Tensor  # not a MONAI MetaTensor
    torch.testing.assert_close(ya, yb)
    assert 0.0 <= float(ya.min()) <= float(ya.max()) <= 1.0
    assert float((ya - x).abs().mean()) > 0.01
    other = make_augment(spec, 4)
    assert other is not None
    assert not torch.allclose(other(x), ya)
    never = make_augment({**spec, "prob": 0.0}, 3)
    assert never is not None
    torch.testing.assert_close(never(x), x)


def test_fit_without_augment_writes_no_augment_entry(tiny_simsid, mini_cxr_manifest, tmp_path):
    _, card = tiny_simsid
    config = load_config(REPO / "training" / "configs" / "simsid.yaml")
    config.pop("augment")
    config.update(manifest=str(mini_cxr_manifest), name="simsid-plain")
    plain = fit(config, tmp_path / "plain", epochs=1, limit=4)
    assert "augment" not in plain.training
    assert dataclasses.asdict(card)["training"]["augment"]
