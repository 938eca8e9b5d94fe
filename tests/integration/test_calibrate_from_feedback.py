"""``python -m training calibrate --from-feedback`` on judgements of real committed studies.

The embedded stack (Debian Orthanc, the node with the real engine and `default-cxr`) analyses
copies (new UIDs) of the labelled samples of ``tests/data/dicom``; each gets the judgement a
reader would give from its label (Agree, or the disagreement that fits the node's flag); then
the command builds its manifest from the node's API and Orthanc's DICOMweb and writes a new
model version. Its healthy scores must be the node's own scores of the confirmed normals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from ai_engine import checkpoints
from devstack.demo import send_files
from devstack.stack import EmbeddedStack

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLES = json.loads((REPO / "tests/data/samples.json").read_text())
RESULT_TIMEOUT = 300.0


def copy_with_new_uids(path: Path, folder: Path) -> tuple[Path, str]:
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    target = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(target, enforce_file_format=True)
    return target, str(ds.StudyInstanceUID)


def test_recalibration_from_reader_confirmed_studies(stack: EmbeddedStack, tmp_path: Path) -> None:
    assert stack.secrets is not None
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {stack.secrets.api_token}"
    node = f"http://127.0.0.1:{stack.options.node_http_port}"
    # the labelled single-image (chest) samples; the MR sample is a series for the brain model
    labelled = [s for s in SAMPLES if s["label"] in ("normal", "abnormal") and len(s["files"]) == 1]
    # the stack is shared by the session: other tests' judgements count too
    earlier = {
        kind: api.get(f"{node}/feedback", params={"confirmed": kind}).json()
        for kind in ("normal", "abnormal")
    }
    earlier_normal_scores = [r["score"] for r in earlier["normal"]]
    n_normal, n_abnormal = len(earlier["normal"]) + 4, len(earlier["abnormal"]) + 4
    studies: dict[str, str] = {}  # study uid -> label
    for sample in labelled:
        [rel] = sample["files"]
        path, study = copy_with_new_uids(REPO / "tests/data" / rel, tmp_path)
        send_files([path], "127.0.0.1", stack.options.dicom_port)  # raises on any failure
        studies[study] = sample["label"]
    rows: dict[str, dict] = {}
    deadline = time.monotonic() + RESULT_TIMEOUT
    while len(rows) < len(studies):
        found = api.get(
            f"{node}/studies/scores", params={"study_instance_uid": ",".join(studies)}
        ).json()
        rows = {r["study_instance_uid"]: r for r in found}
        if time.monotonic() > deadline:
            pytest.fail(f"{len(rows)} of {len(studies)} studies analysed in time")
        time.sleep(0.5)
    normal_scores = []
    for study, label in studies.items():
        row = rows[study]
        assert row["score"] is not None, f"{label} sample not analysed"
        if label == "normal":
            judgement = "false_alarm" if row["is_abnormal"] else "agree"
            normal_scores.append(row["score"])
        else:
            judgement = "agree" if row["is_abnormal"] else "missed_finding"
        body = {"judgement": judgement, "reader": "Dr Calibration", "model": row["model"]}
        r = api.post(f"{node}/studies/{study}/feedback", json=body)
        assert r.status_code == 201, r.text
    old = checkpoints.read_card(stack.options.checkpoints[0])
    token = tmp_path / "token"
    token.write_text(stack.secrets.api_token)
    password = tmp_path / "orthanc_password"
    password.write_text(stack.secrets.orthanc_password)
    out = tmp_path / "site-model"
    proc = subprocess.run(
        [
            sys.executable, "-m", "training", "calibrate",
            "--checkpoint", stack.options.checkpoints[0],
            "--from-feedback", node, "--node-token-file", str(token),
            "--orthanc", stack.orthanc_url, "--orthanc-user", stack.secrets.orthanc_user,
            "--orthanc-password-file", str(password),
            "--min-normals", "4", "--min-abnormals", "4",
            "--out", str(out), "--version", f"{old.version}-site1",
        ],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    card = checkpoints.read_card(out)
    assert (card.name, card.version) == (old.name, f"{old.version}-site1")
    assert card.weights_sha256 == old.weights_sha256  # same weights, new calibration
    assert printed["threshold"] == card.calibration.threshold
    # the calibration set is the confirmed normals, scored as the node scored them
    normal_scores += earlier_normal_scores
    assert len(card.calibration.healthy_scores) == n_normal
    np.testing.assert_allclose(card.calibration.healthy_scores, sorted(normal_scores), rtol=1e-4)
    assert card.calibration.threshold == pytest.approx(np.percentile(normal_scores, 95), rel=1e-4)
    where = card.training["recalibrated"]
    assert where["source"] == "reader feedback"
    assert (where["n_normal_studies"], where["n_abnormal_studies"]) == (n_normal, n_abnormal)
    assert (where["n_val_normal"], where["n_val_abnormal"]) == (n_normal, n_abnormal)
    assert where["node"] == node
    assert where["model_versions_judged"] == [old.version]
    assert "chosen on the val AUROC" in where["score_rule"]
    assert "reader feedback" in (out / "README.md").read_text()
    listed = (out / "feedback_studies.csv").read_text()
    assert all(study in listed for study in studies)
    assert "Dr Calibration" not in listed  # no reader names in the checkpoint
    # the node keeps its configured model: it switches only by configuration
    assert stack.node is not None
    assert stack.node.settings.checkpoints == list(stack.options.checkpoints)

    # too few abnormals to choose the score rule on: the card's rule is kept
    kept = tmp_path / "rule-kept"
    proc = subprocess.run(
        [
            sys.executable, "-m", "training", "calibrate",
            "--checkpoint", stack.options.checkpoints[0], "--from-feedback", node,
            "--node-token-file", str(token), "--orthanc", stack.orthanc_url,
            "--orthanc-user", stack.secrets.orthanc_user, "--orthanc-password-file", str(password),
            "--min-normals", "4", "--min-abnormals", str(n_abnormal + 1), "--out", str(kept),
        ],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    kept_card = checkpoints.read_card(kept)
    assert kept_card.version == f"{old.version}-feedback"
    assert kept_card.training["scoring"]["rule"] == old.training["scoring"]["rule"]
    assert kept_card.training["recalibrated"]["n_val_abnormal"] == 0
    assert kept_card.training["recalibrated"]["score_rule"].startswith("kept")
    if card.training["scoring"]["rule"] == old.training["scoring"]["rule"]:
        assert kept_card.calibration.healthy_scores == card.calibration.healthy_scores

    # too few normals: a clear refusal, nothing written
    refused = subprocess.run(
        [
            sys.executable, "-m", "training", "calibrate",
            "--checkpoint", stack.options.checkpoints[0], "--from-feedback", node,
            "--node-token-file", str(token), "--min-normals", "1000",
            "--out", str(tmp_path / "refused"),
        ],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert refused.returncode == 1
    assert "at least 1000 are needed" in refused.stderr
    assert not (tmp_path / "refused").exists()
