"""bench/score_vs_area.py: per split, the AUROC of the score, of the body's area alone, and
their correlation, as a table and one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from ai_engine.metrics import auroc
from training.data import load_batch, read_manifest

REPO = Path(__file__).resolve().parents[3]


def test_reports_score_and_area_auroc_per_split(tiny_checkpoint, mini_brain_manifest):
    script = REPO / "bench" / "score_vs_area.py"
    args = [str(tiny_checkpoint), str(mini_brain_manifest), "--level", "0.1"]
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert "| split | normal / abnormal |" in proc.stdout
    report = json.loads(lines[-1])
    assert [r["split"] for r in report["rows"]] == ["val", "test"]
    for row in report["rows"]:
        items = read_manifest(mini_brain_manifest, row["split"])
        labels = np.array([i.label for i in items])
        assert (row["n_normal"], row["n_abnormal"]) == ((labels == 0).sum(), (labels == 1).sum())
        x = load_batch([i.path for i in items], (64, 64)).numpy().reshape(len(items), -1)
        assert row["auroc_area"] == auroc(labels, (x > 0.1).mean(1))
        assert 0.0 <= row["auroc_score"] <= 1.0
        assert -1.0 <= row["corr_score_area"] <= 1.0
