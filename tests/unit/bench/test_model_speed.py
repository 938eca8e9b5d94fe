"""bench/model_speed.py: every registered model's inference (fp32 and mixed precision) and
training images/s, as a table and one JSON line; tiny sizes here, the real run is 256²."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ai_engine import registry

REPO = Path(__file__).resolve().parents[3]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "model_speed.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_every_model_infers_with_and_without_mixed_precision_and_trains():
    # all models in one process (what each per-model child process runs), to keep CI short
    proc = _run("--size", "64", "--batch", "2", "--configs", "cpu", "--seconds", "0",
                "--device", "cpu", "--in-process")  # fmt: skip
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["model"] for r in rows] == registry.list_ids()
    for row in rows:
        trainable = registry.get(row["model"]).trainable
        cells = ("infer_fp32_img_s", "infer_amp_img_s", "train_img_s")
        for cell in cells if trainable else cells[:2]:
            # a failing cell would be an "error: ..." string
            assert isinstance(row[cell], float), (row["model"], cell, row[cell])
            assert row[cell] > 0
        assert row["config"] == f"{row['model']}.yaml"
        if trainable:
            assert row["params_m"] > 0
        else:  # a no-learning baseline: nothing to train, no parameter
            assert row["train_img_s"] == "-"


def test_a_table_and_json_of_models_measured_one_process_each_with_full_configs():
    proc = _run("--models", "conv_ae,alocc", "--size", "64", "--batch", "2", "--seconds", "0",
                "--no-train", "--device", "cpu")  # fmt: skip
    assert "| model | config | params_m | batch |" in proc.stdout
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["device"] == "cpu"
    assert report["amp_dtype"] == "bfloat16"
    rows = {r["model"]: r for r in report["rows"]}
    assert list(rows) == ["conv_ae", "alocc"]  # in the order asked for
    assert rows["alocc"]["config"] == "alocc_full.yaml"  # the GPU budget
    assert rows["conv_ae"]["config"] == "conv_ae.yaml"  # no _full config: the CPU one
    assert rows["alocc"]["params_m"] > 10  # the full ALOCC is wide (channels 64..512)
    assert all("train_img_s" not in r for r in report["rows"])
