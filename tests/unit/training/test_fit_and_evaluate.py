import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from ai_engine import checkpoints
from ai_engine.errors import ModelLoadError
from ai_engine.pipeline import predict_images
from training.data import load_image, read_manifest

REPO = Path(__file__).resolve().parents[3]


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )


def test_fit_writes_a_calibrated_checkpoint_with_a_model_card(tiny_checkpoint):
    card = checkpoints.read_card(tiny_checkpoint)
    assert card.weights_sha256 == checkpoints.sha256_of(tiny_checkpoint / "weights.safetensors")
    cal = card.calibration
    # the threshold is the 95th percentile of the healthy val scores, which are stored with it
    assert cal.threshold == pytest.approx(np.percentile(cal.healthy_scores, 95))
    assert len(cal.healthy_scores) == 6  # the 6 healthy val images of the mini set
    assert list(cal.pixel_thresholds) == sorted(cal.pixel_thresholds)
    readme = (tiny_checkpoint / "README.md").read_text()
    assert card.weights_sha256 in readme
    assert "Research use only" in readme


def test_fit_logs_every_epoch_to_csv_and_tensorboard(tiny_checkpoint):
    card = checkpoints.read_card(tiny_checkpoint)
    lines = (tiny_checkpoint / "logs" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[0] == "epoch"
    assert {"loss", "val_normal_loss", "val_auroc"} <= set(header)
    rows = [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]
    assert [r["epoch"] for r in rows] == ["0", "1"]  # 2 epochs, none dropped
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert 0.0 <= float(rows[-1]["val_auroc"]) <= 1.0
    assert list((tiny_checkpoint / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    # the kept epoch is the one with the lowest healthy-val loss, and the card says so
    losses = [float(r["val_normal_loss"]) for r in rows]
    assert card.training["best_epoch"] == int(np.argmin(losses))
    assert "healthy val" in card.training["selection"]


def test_also_select_writes_what_another_rule_would_have_kept(mini_cxr_manifest, tmp_path):
    from tests.unit.conftest import tiny_conv_ae_config
    from training.fit import fit

    config = tiny_conv_ae_config(mini_cxr_manifest, "tiny-also")
    config["optim"] = {**config["optim"], "select": "last", "also_select": ["val_auroc"]}
    out = tmp_path / "run"
    main = fit(config, out, epochs=3)
    history = json.loads((out / "history.json").read_text())
    assert main.training["best_epoch"] == 2  # "last" of 3 epochs
    other = checkpoints.read_card(out / "select-val_auroc")
    aurocs = [h["val_auroc"] for h in history]
    assert other.training["best_epoch"] == int(np.argmax(aurocs))
    assert "val labels" in other.training["selection"]
    assert other.weights_sha256 == checkpoints.sha256_of(
        out / "select-val_auroc" / "weights.safetensors"
    )
    # both load and score; each is calibrated on its own weights
    items = read_manifest(mini_cxr_manifest, "test")[:2]
    images = [load_image(i.path) for i in items]
    for folder in (out, out / "select-val_auroc"):
        assert np.isfinite(predict_images(checkpoints.load(folder, "cpu"), images).score).all()
    if other.training["best_epoch"] != 2:
        assert other.weights_sha256 != main.weights_sha256


def test_checkpoint_round_trip_gives_the_same_scores(tiny_checkpoint, mini_cxr_manifest):
    items = read_manifest(mini_cxr_manifest, "test")[:4]
    images = [load_image(i.path) for i in items]
    a = predict_images(checkpoints.load(tiny_checkpoint, "cpu"), images).score
    b = predict_images(checkpoints.load(tiny_checkpoint, "cpu"), images).score
    assert np.array_equal(a.numpy(), b.numpy())


def test_tampered_weights_are_refused(tiny_checkpoint, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    weights = load_file(str(bad / "weights.safetensors"))
    first = next(iter(weights))
    weights[first] = weights[first] + 1.0
    save_file(weights, str(bad / "weights.safetensors"))
    with pytest.raises(ModelLoadError, match="sha256"):
        checkpoints.load(bad, "cpu")


def test_unknown_checkpoint_name_says_what_exists():
    with pytest.raises(ModelLoadError, match="shipped"):
        checkpoints.resolve("no-such-checkpoint")


def test_evaluate_prints_the_contract_json_as_last_line(tiny_checkpoint, mini_cxr_manifest):
    proc = run_cli(
        "evaluate",
        "--checkpoint",
        str(tiny_checkpoint),
        "--manifest",
        str(mini_cxr_manifest),
        "--split",
        "test",
        "--bootstrap",
        "50",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in (
        "auroc",
        "auprc",
        "sensitivity",
        "specificity",
        "threshold",
        "n_normal",
        "n_abnormal",
    ):
        assert key in result
    assert (result["n_normal"], result["n_abnormal"]) == (6, 6)
    assert result["threshold"] == pytest.approx(
        checkpoints.read_card(tiny_checkpoint).calibration.threshold
    )
    assert 0.0 <= result["auroc"] <= 1.0
    assert "pixel_auroc" not in result  # no masks in this manifest


def test_evaluate_reports_pixel_metrics_when_the_manifest_has_masks(
    tiny_checkpoint, mini_brain_manifest
):
    proc = run_cli(
        "evaluate",
        "--checkpoint",
        str(tiny_checkpoint),
        "--manifest",
        str(mini_brain_manifest),
        "--split",
        "val",
        "--bootstrap",
        "20",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0.0 <= result["pixel_auroc"] <= 1.0
    assert 0.0 <= result["dice"] <= 1.0
    assert result["n_masks"] == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "train"], "needs both classes"),
        (["--split", "nonexistent"], "needs both classes"),
    ],
)
def test_evaluate_fails_clearly_on_a_one_class_split(
    tiny_checkpoint, mini_cxr_manifest, args, message
):
    proc = run_cli(
        "evaluate",
        "--checkpoint",
        str(tiny_checkpoint),
        "--manifest",
        str(mini_cxr_manifest),
        *args,
    )
    assert proc.returncode != 0
    assert message in proc.stderr


def test_evaluate_fails_clearly_on_a_bad_manifest_or_checkpoint(
    tiny_checkpoint, tmp_path, mini_cxr_manifest
):
    bad = tmp_path / "m.csv"
    bad.write_text("path,label\nx.png,0\n")
    proc = run_cli(
        "evaluate", "--checkpoint", str(tiny_checkpoint), "--manifest", str(bad), "--split", "test"
    )
    assert proc.returncode != 0
    assert "lacks column(s) split" in proc.stderr
    proc = run_cli(
        "evaluate",
        "--checkpoint",
        str(tmp_path / "nothing"),
        "--manifest",
        str(mini_cxr_manifest),
        "--split",
        "test",
    )
    assert proc.returncode != 0
    assert "no checkpoint" in proc.stderr


def test_calibrate_refits_thresholds_on_val_with_the_same_weights(
    tiny_checkpoint, mini_cxr_manifest, tmp_path
):
    out = tmp_path / "recal"
    proc = run_cli(
        "calibrate",
        "--checkpoint", str(tiny_checkpoint),
        "--out", str(out),
        "--manifest", str(mini_cxr_manifest),
        "--set", "scoring.residual=positive",
        "--set", "scoring.rules=[map_mean]",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    old, new = checkpoints.read_card(tiny_checkpoint), checkpoints.read_card(out)
    assert new.weights_sha256 == old.weights_sha256  # same weights
    assert new.training["scoring"]["residual"] == "positive"
    assert new.training["scoring"]["rule"] == "map_mean"
    # other scoring settings: fit's per-rule figures no longer hold, only the re-chosen one
    assert list(new.metrics["val_auroc_by_score_rule"]) == ["map_mean"]
    assert new.version == f"{old.version}-recal"
    cal = new.calibration
    assert cal.threshold == pytest.approx(np.percentile(cal.healthy_scores, 95))
    # the healthy scores are what the recalibrated model gives the healthy val images
    healthy = [i for i in read_manifest(mini_cxr_manifest, "val") if i.label == 0]
    scores = predict_images(checkpoints.load(out, "cpu"), [load_image(i.path) for i in healthy])
    assert sorted(scores.score.tolist()) == pytest.approx(list(cal.healthy_scores), rel=1e-5)
    assert proc.stdout.strip().splitlines()[-1].startswith("{")


def test_calibrate_with_the_same_settings_keeps_the_rules_fit_chose_among(
    tiny_checkpoint, tmp_path
):
    old = checkpoints.read_card(tiny_checkpoint)
    fit_rules = old.metrics["val_auroc_by_score_rule"]
    assert len(fit_rules) > 1
    out = tmp_path / "recal"
    proc = run_cli("calibrate", "--checkpoint", str(tiny_checkpoint), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    new = checkpoints.read_card(out)
    assert new.training["scoring"]["rule"] == old.training["scoring"]["rule"]
    assert new.metrics["val_auroc_by_score_rule"] == pytest.approx(fit_rules)
    assert f"among {list(fit_rules)}" in (out / "README.md").read_text()
    # a rule forced by --set is not "chosen among" the others: only its own figure stays
    worst = min(fit_rules, key=fit_rules.__getitem__)
    assert fit_rules[worst] < max(fit_rules.values())
    forced = tmp_path / "forced"
    args = ["--checkpoint", str(tiny_checkpoint), "--out", str(forced)]
    proc = run_cli("calibrate", *args, "--set", f"scoring.rules=[{worst}]")
    assert proc.returncode == 0, proc.stderr
    assert list(checkpoints.read_card(forced).metrics["val_auroc_by_score_rule"]) == [worst]


def test_calibrate_refuses_to_overwrite_its_source(tiny_checkpoint):
    proc = run_cli("calibrate", "--checkpoint", str(tiny_checkpoint), "--out", str(tiny_checkpoint))
    assert proc.returncode == 2
    assert "error: --out must be a new folder" in proc.stderr
    assert "Traceback" not in proc.stderr
