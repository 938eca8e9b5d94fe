"""Supervised CNN baseline: CV + refit on the mini val images, Grad-CAM, round trip, pipeline."""

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from ai_engine import checkpoints as ckpt
from ai_engine import pipeline, registry
from ai_engine.models.cnn_supervised.model import CnnSupervisedModel, grad_cam
from ai_engine.models.cnn_supervised.torch_model import CnnClassifier
from training.data import load_batch, read_manifest
from training.fit import REPO_ROOT, load_config
from training.fit_supervised import fit_supervised, patient_folds

TINY = {"image_size": [64, 64], "channels": [4, 8, 8, 8], "layers": [1, 1, 1, 1]}
DICOM = Path(__file__).resolve().parents[2] / "data" / "dicom"


def _config(manifest, name="tiny-cnn"):
    config = load_config(REPO_ROOT / "training" / "configs" / "cnn_supervised.yaml")
    config.update(manifest=str(manifest), name=name, image_size=[64, 64], init_args=TINY)
    config["optim"] = {**config["optim"], "cv_folds": 3, "batch_size": 4}
    return config


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, mini_cxr_manifest):
    out = tmp_path_factory.mktemp("cnn") / "tiny"
    fit_supervised(_config(mini_cxr_manifest), out, epochs=2)
    return out


def _images(manifest, split="test"):
    items = read_manifest(manifest, split)
    return load_batch([i.path for i in items], (64, 64)), [i.label for i in items]


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_classifier_gives_one_logit_per_image(size):
    net = CnnClassifier(image_size=size, channels=(4, 8, 8, 8)).eval()
    with torch.no_grad():
        assert net(torch.rand(3, 1, *size)).shape == (3,)


@pytest.mark.parametrize("backbone", ["resnet50", "efficientnet-b0"])
def test_seed_001_backbones_give_a_logit_and_a_grad_cam_map(backbone, mini_cxr_manifest):
    """ResNet-50 and EfficientNet-B0 (from scratch) behind the same model: a logit per image,
    a non-negative Grad-CAM map of the image's size, no hook left behind."""
    torch.manual_seed(0)
    net = CnnClassifier(image_size=(64, 64), backbone=backbone).eval()
    x, _ = _images(mini_cxr_manifest)
    logits, cam = grad_cam(net, x[:2])
    assert logits.shape == (2,)
    assert cam.shape == (2, 1, 64, 64)
    assert (cam >= 0).all()
    assert float(cam.sum()) > 0  # the head's activations carry gradient
    assert not net.last_block._forward_hooks
    with pytest.raises(ValueError, match="backbone must be one of"):
        CnnClassifier(backbone="vgg")


def test_it_is_a_labelled_model_that_training_fit_refuses():
    cls = registry.get("cnn_supervised")
    assert cls.requires_labels
    with pytest.raises(NotImplementedError, match="fit-supervised"):
        cls.make_trainer(cls.build_network(**TINY), {})


def test_folds_are_patient_grouped_and_stratified(mini_cxr_manifest):
    items = read_manifest(mini_cxr_manifest, "val")
    folds = patient_folds(items, 3, seed=0)
    by_patient: dict[str, set[int]] = {}
    for item, fold in zip(items, folds, strict=True):
        by_patient.setdefault(item.patient_id, set()).add(int(fold))
    assert all(len(f) == 1 for f in by_patient.values())
    labels = np.array([i.label for i in items])
    for fold in range(3):
        assert 0 < labels[folds == fold].sum() < (folds == fold).sum()
    with pytest.raises(ValueError, match="at least 2"):
        patient_folds(items, 1, seed=0)


def test_grad_cam_maps_are_normalised_per_image_and_leave_no_hook(mini_cxr_manifest):
    torch.manual_seed(0)
    net = CnnClassifier(**TINY).eval()
    x, _ = _images(mini_cxr_manifest)
    logits, cam = grad_cam(net, x)
    assert cam.shape == (len(x), 1, 64, 64)
    assert (cam >= 0).all()
    assert not net.last_block._forward_hooks
    with torch.no_grad():  # as training and evaluation call it
        torch.testing.assert_close(logits, net(x))


def test_fit_supervised_writes_a_checkpoint_with_out_of_fold_calibration(tiny_checkpoint):
    card = ckpt.read_card(tiny_checkpoint)
    assert card.model_id == "cnn_supervised"
    assert card.training["train_split"] == "val"
    assert card.training["cv_folds"] == 3
    assert card.training["epochs_run"] in (1, 2)
    assert "out-of-fold" in card.calibration.threshold_rule
    assert len(card.calibration.healthy_scores) == 6
    history = json.loads((tiny_checkpoint / "history.json").read_text())
    assert len(history) == 2
    assert all(np.isfinite(h["cv_train_loss"]) for h in history)
    assert (tiny_checkpoint / "logs" / "metrics.csv").is_file()


def test_reload_scores_the_same_and_maps_peak_at_the_score(tiny_checkpoint, mini_cxr_manifest):
    x, _ = _images(mini_cxr_manifest)
    model = ckpt.load(tiny_checkpoint, device="cpu")
    assert isinstance(model, CnnSupervisedModel)
    with torch.no_grad():
        out = model.predict(x)
    assert out.score.shape == (len(x),)
    assert out.anomaly_map.shape == (len(x), 1, 64, 64)
    assert out.reconstruction is None
    assert ((out.score > 0) & (out.score < 1)).all()
    torch.testing.assert_close(out.anomaly_map.flatten(1).amax(1), out.score)
    again = ckpt.load(tiny_checkpoint, device="cpu").predict(x)
    assert torch.equal(out.score, again.score)
    assert torch.equal(out.anomaly_map, again.anomaly_map)


def test_training_is_deterministic_given_a_seed(tiny_checkpoint, mini_cxr_manifest, tmp_path):
    card = fit_supervised(_config(mini_cxr_manifest), tmp_path / "again", epochs=2)
    assert card.weights_sha256 == ckpt.read_card(tiny_checkpoint).weights_sha256


def test_test_split_is_refused_for_training(mini_cxr_manifest, tmp_path):
    config = {**_config(mini_cxr_manifest), "train_split": "test"}
    with pytest.raises(ValueError, match="test"):
        fit_supervised(config, tmp_path / "x", epochs=1)


def test_evaluate_and_the_dicom_pipeline_use_the_checkpoint(
    tiny_checkpoint, mini_cxr_manifest, tmp_path
):
    from training.evaluate import evaluate

    result = evaluate(str(tiny_checkpoint), mini_cxr_manifest, "test", n_boot=10)
    assert result["model_id"] == "cnn_supervised"
    assert result["n_normal"] == 6
    assert 0.0 <= result["auroc"] <= 1.0

    study = tmp_path / "in"
    study.mkdir()
    for f in (DICOM / "kermany_pneumonia_mono2").glob("*.dcm"):
        shutil.copy(f, study / f.name)
    [res] = pipeline.run(study, tmp_path / "out", [str(tiny_checkpoint)])
    [image] = res.images
    assert image.score is not None
    assert 0.0 < image.score < 1.0
    kinds = sorted(
        (ds.Modality, str(ds.get("SegmentationType", "")))
        for ds in (pydicom.dcmread(f) for f in res.files)
    )
    assert kinds == [("SEG", "BINARY"), ("SEG", "FRACTIONAL"), ("SR", "")]
