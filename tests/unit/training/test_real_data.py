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
