"""bench/seed_selections.py: per model and selection rule, mean ± std over seeds of the
`training evaluate` figures of the checkpoints `fit --seed k` wrote with ``also_select``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.conftest import tiny_conv_ae_config
from training.fit import fit

REPO = Path(__file__).resolve().parents[3]


def test_a_row_per_model_and_rule_with_the_figures_of_each_seed(mini_cxr_manifest, tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        config = tiny_conv_ae_config(mini_cxr_manifest, "tiny-seeds")
        config["seed"] = seed
        config["optim"] = {**config["optim"], "select": "last", "also_select": ["val_auroc"]}
        fit(config, runs / "conv_ae" / f"seed{seed}", epochs=2)
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "seed_selections.py"), "--runs", str(runs),
         "--split", "test", "--manifest", str(mini_cxr_manifest), "--evaluate",
         "--bootstrap", "20"],
        capture_output=True, text=True, timeout=300, check=False, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| model | selection | seeds |" in proc.stdout
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = {r["rule"]: r for r in report["rows"]}
    assert sorted(rows) == ["main", "val_auroc"]
    for row in rows.values():
        assert row["model"] == "conv_ae"
        assert row["seeds"] == [0, 1]
        assert all(0.0 <= a <= 1.0 for a in row["auroc"])
    assert rows["main"]["epochs"] == [1, 1]  # "last" of 2 epochs
    assert "val labels" in rows["val_auroc"]["selection"]
    # each figure is the one `training evaluate` wrote for that checkpoint
    written = json.loads((runs / "conv_ae" / "seed1" / "eval_test.json").read_text())
    assert rows["main"]["auroc"][1] == pytest.approx(written["auroc"])
    # a second call only reads
    again = subprocess.run(
        [sys.executable, str(REPO / "bench" / "seed_selections.py"), "--runs", str(runs),
         "--split", "test"],
        capture_output=True, text=True, timeout=300, check=False, cwd=REPO,
    )  # fmt: skip
    assert json.loads(again.stdout.strip().splitlines()[-1])["rows"] == report["rows"]
