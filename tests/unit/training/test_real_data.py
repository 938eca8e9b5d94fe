"""The engine on the real shared sets (../shared/data): marked `data`, always run in CI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ai_engine import checkpoints

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data"
pytestmark = pytest.mark.data


def evaluate(manifest: Path, split: str, checkpoint: str = "default-cxr") -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "evaluate",
            "--checkpoint",
            checkpoint,
            "--manifest",
            str(manifest),
            "--split",
            split,
            "--bootstrap",
            "100",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_default_cxr_reproduces_its_model_card_on_the_real_validation_split():
    """The val AUROC and the 95 % healthy specificity in the card come back from evaluate."""
    card = checkpoints.read_card("default-cxr")
    result = evaluate(SHARED / "cxr_kermany_pediatric" / "manifest.csv", "val")
    assert (result["n_normal"], result["n_abnormal"]) == (130, 130)
    assert result["auroc"] == pytest.approx(card.metrics["val_auroc"], abs=1e-6)
    # threshold = 95th percentile of the healthy val scores -> about 95 % specificity there
    assert result["specificity"] == pytest.approx(0.95, abs=0.01)


def test_pixel_metrics_on_the_real_brain_flair_masks():
    result = evaluate(SHARED / "brain_lgg_flair" / "manifest.csv", "val")
    assert result["n_masks"] == result["n_abnormal"] == 146
    assert 0.0 <= result["dice"] <= 1.0
    assert 0.0 <= result["pixel_auroc"] <= 1.0


def test_subgroups_by_sex_and_age_band_on_nih_pneumonia():
    result = evaluate(SHARED / "cxr_nih14_pneumonia" / "manifest.csv", "val")
    groups = result["subgroups"]
    assert {"sex=M", "sex=F"} <= set(groups)
    assert any(k.startswith("age=") for k in groups)
    assert sum(groups[k]["n_normal"] + groups[k]["n_abnormal"] for k in ("sex=M", "sex=F")) == 103
    # localisation: the 3 boxed val images, every image's lung field
    assert result["n_boxed"] == 3
    assert result["pointing_game"] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert result["fppi"] >= 0.0
    assert 0.0 <= result["lesion_sensitivity"] <= 1.0
    assert result["two_lung_share"] > 0.9
    assert 0.0 < result["in_lung_share"] < 1.0


def test_lung_field_segmenter_reproduces_its_card_on_the_montgomery_test_split():
    from ai_engine.anatomy.lungs import lung_fields, read_card
    from training.data import load_image, load_mask, read_manifest

    items = read_manifest(SHARED / "cxr_lung_masks" / "manifest.csv", "test")
    regions = lung_fields([load_image(i.path) for i in items])
    dice = []
    for item, region in zip(items, regions, strict=True):
        assert item.mask_path is not None
        truth = load_mask(item.mask_path)
        dice.append(2 * (region.mask & truth).sum() / (region.mask.sum() + truth.sum()))
    # the card's Dice is at 128 x 128 before the hull filling; at 256 x 256 after it, close
    assert len(dice) == read_card()["n_test"] == 21
    assert sum(dice) / len(dice) == pytest.approx(read_card()["metrics"]["test_dice"], abs=0.03)
