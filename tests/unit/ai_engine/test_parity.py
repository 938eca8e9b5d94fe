"""Parity: `python -m training evaluate` on a PNG gives the score the node's engine gives the
DICOM made from that PNG, with the shipped default-cxr checkpoint."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from ai_engine import pipeline
from ai_engine.dicom_io.sr_writer import read_sr_scores

DATA = Path(__file__).resolve().parents[2] / "data"
PAIRS = {"kermany_normal_mono2": 0, "kermany_pneumonia_mono2": 1}


def test_evaluate_on_png_equals_engine_on_dicom(tmp_path):
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "split", "label"])
        for name, label in PAIRS.items():
            shutil.copy(DATA / "png" / f"{name}.png", tmp_path / f"{name}.png")
            w.writerow([f"{name}.png", "test", label])
    scores_csv = tmp_path / "scores.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "evaluate",
            "--checkpoint",
            "default-cxr",
            "--manifest",
            str(manifest),
            "--split",
            "test",
            "--bootstrap",
            "10",
            "--scores-csv",
            str(scores_csv),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    png_scores = {
        Path(r["path"]).stem: float(r["score"]) for r in csv.DictReader(scores_csv.open())
    }

    for name in PAIRS:
        d = tmp_path / f"in_{name}"
        shutil.copytree(DATA / "dicom" / name, d)
        [result] = pipeline.run(d, tmp_path / f"out_{name}", ["default-cxr"])
        sr = pydicom.dcmread(next(f for f in result.files if "_sr_" in f))
        sr_score = read_sr_scores(sr)["study"]["score"]
        assert sr_score == pytest.approx(result.study_score, rel=1e-6)
        assert result.study_score == pytest.approx(png_scores[name], rel=1e-5)
