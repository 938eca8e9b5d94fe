"""bench/model_speed.py: every registered model's inference (fp32 and mixed precision) and
training images/s, as a table and one JSON line; tiny sizes here, the real run is 256²."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ai_engine import registry

REPO = Path(__file__).resolve().parents[3]


def _run(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "model_speed.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| model | config | params_m | batch |" in proc.stdout
    report: dict = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def test_every_model_infers_with_and_without_mixed_precision_and_trains():
    report = _run("--size", "64", "--batch", "2", "--configs", "cpu", "--seconds", "0",
                  "--device", "cpu")  # fmt: skip
    assert report["device"] == "cpu"
    assert report["amp_dtype"] == "bfloat16"
    assert [r["model"] for r in report["rows"]] == registry.list_ids()
    for row in report["rows"]:
        for cell in ("infer_fp32_img_s", "infer_amp_img_s", "train_img_s"):
            # a failing cell would be an "error: ..." string
            assert isinstance(row[cell], float), (row["model"], cell, row[cell])
            assert row[cell] > 0
        assert row["config"] == f"{row['model']}.yaml"
        assert row["params_m"] > 0


def test_full_configs_are_used_where_they_exist_and_training_can_be_left_out():
    report = _run("--models", "conv_ae,alocc", "--size", "64", "--batch", "2", "--seconds", "0",
                  "--no-train", "--device", "cpu")  # fmt: skip
    rows = {r["model"]: r for r in report["rows"]}
    assert rows["alocc"]["config"] == "alocc_full.yaml"  # the GPU budget
    assert rows["conv_ae"]["config"] == "conv_ae.yaml"  # no _full config: the CPU one
    assert rows["alocc"]["params_m"] > 10  # the full ALOCC is wide (channels 64..512)
    assert all("train_img_s" not in r for r in report["rows"])
