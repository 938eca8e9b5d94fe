"""The accuracy benchmark's tiny version: it trains, evaluates and reports as documented.

One epoch of the conv AE on the committed mini CXR and brain sets, two seeds: the command must
print the normal-only table and, as its last line, one JSON object with a row per (model,
data set, seed) whose metrics come from the same evaluation as ``python -m training
evaluate`` (brain: with pixel metrics, its test split has masks), and per data set the
selection the defaults follow: the seed of the best normal-only model with the highest val
AUROC from its card, never a test figure.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
MINI = REPO / "tests" / "data" / "mini"


def test_accuracy_bench_tiny_run_reports_every_run(tmp_path: Path) -> None:
    args = [
        sys.executable,
        str(REPO / "bench" / "accuracy.py"),
        "--models", "conv_ae",
        "--datasets", "kermany,brain",
        "--manifest", f"kermany={MINI / 'cxr_kermany_pediatric' / 'manifest.csv'}",
        "--manifest", f"brain={MINI / 'brain_lgg_flair' / 'manifest.csv'}",
        "--epochs", "1",
        "--image-size", "32",
        "--seeds", "0,1",
        "--bootstrap", "20",
        "--runs", str(tmp_path / "runs"),
    ]  # fmt: skip
    proc = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    runs = {(r["model"], r["dataset"], r["seed"]) for r in report["rows"]}
    assert runs == {("conv_ae", d, s) for d in ("kermany", "brain") for s in (0, 1)}
    for row in report["rows"]:
        assert 0.0 <= row["auroc"] <= 1.0
        card = json.loads(Path(row["checkpoint"], "card.json").read_text())
        # the card says what the run was trained on, so a chest run never accepts MR
        assert card["modalities"] == (["MR"] if row["dataset"] == "brain" else ["CR", "DX"])
        assert (row["pixel_auroc"] is not None) == (row["dataset"] == "brain")
        # --image-size trains and evaluates at that size, the network included
        assert card["image_size"] == [32, 32] == card["architecture"]["image_size"]
    assert "### normal-only" in proc.stdout
    assert "| conv_ae | kermany |" in proc.stdout
    assert " ± " in proc.stdout  # two seeds: mean ± std
    assert "### selection" in proc.stdout
    for dataset in ("kermany", "brain"):
        chosen = report["selection"][dataset]
        runs_of = [r for r in report["rows"] if r["dataset"] == dataset]
        cards = {
            r["seed"]: json.loads(Path(r["checkpoint"], "card.json").read_text())["metrics"]
            for r in runs_of
        }
        best_seed = max(cards, key=lambda k: cards[k]["val_auroc"])
        assert (chosen["model"], chosen["seed"]) == ("conv_ae", best_seed)
        assert chosen["mean_val_auroc"] == pytest.approx(
            sum(c["val_auroc"] for c in cards.values()) / 2, abs=1e-4
        )


def test_each_run_is_configured_for_its_data_set() -> None:
    """A model whose base config was written for another data set gets this one's card."""
    spec = importlib.util.spec_from_file_location("accuracy_bench", REPO / "bench" / "accuracy.py")
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # reversed_ae.yaml is the brain config; vae has a single (chest) config
    for model_id, dataset, modalities, source in [
        ("reversed_ae", "kermany", ["CR", "DX"], "Kermany"),
        ("vae", "brain", ["MR"], "TCGA-LGG"),
        ("brainomaly", "nih", ["CR", "DX"], "ChestX-ray14"),
    ]:
        config = bench.config_for(model_id, dataset)
        assert config["modalities"] == modalities
        assert source in config["data_name"]
    assert "val unlabelled" in bench.config_for("brainomaly", "nih")["data_name"]


def test_full_budgets_are_the_gpu_configs_where_a_model_has_one():
    spec = importlib.util.spec_from_file_location("accuracy_bench", REPO / "bench" / "accuracy.py")
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    full = bench.config_for("reversed_ae", "kermany", "full")
    assert full["name"] == "reversed_ae-brain-full"  # the file: reversed_ae_full.yaml
    assert full["init_args"]["channels"] == [32, 64, 128, 256]  # wider than the CPU budget
    assert full["modalities"] == ["CR", "DX"]  # the data set's card fields, not the file's
    # no _full config: the CPU budget
    assert bench.config_for("vae", "kermany", "full") == bench.config_for("vae", "kermany")
