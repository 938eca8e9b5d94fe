"""One-command recalibration from reader feedback: seconds for N confirmed normals.

    .venv/bin/python bench/feedback_recalibration.py [--normals 52] [--checkpoint default-cxr]

The embedded stack (Debian Orthanc, the node with the real engine; no viewer) on loopback
ports analyses ``--normals`` copies (new UIDs) of the committed samples labelled normal
(``tests/data/samples.json``), each judged by the API as a reader would (Agree when not
flagged, "false alarm" when flagged). Then, timed:

- **from feedback**: ``python -m training calibrate --from-feedback`` (node API, WADO-RS of
  each judged SR and its images from Orthanc, manifest, scoring, new checkpoint);
- **peer**: ``python -m training calibrate --manifest`` on the same images already on disk
  (kept by the first run with ``--keep-images``): the recalibration without the node and the
  PACS, measured in the same run; the ratio is what the feedback path adds.

Both are fresh Python processes (imports and model loading included). Runs inside a
loopback-only network namespace (re-executes itself with ``unshare -n``). Prints a table and,
as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import requests
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))  # devstack runs from the checkout (it is not installed)

from ingest import ensure_loopback_namespace  # noqa: E402

from devstack.demo import send_files  # noqa: E402
from devstack.processes import free_port  # noqa: E402
from devstack.stack import EmbeddedStack, StackOptions  # noqa: E402

TIMEOUT_SECONDS = 900.0


def normal_samples() -> list[Path]:
    samples = json.loads((REPO / "tests/data/samples.json").read_text())
    return [REPO / "tests/data" / s["files"][0] for s in samples if s["label"] == "normal"]


def copies(sources: list[Path], n: int, folder: Path) -> list[Path]:
    out = []
    for i in range(n):
        ds = pydicom.dcmread(sources[i % len(sources)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def timed(argv: list[str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "training", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"training {argv[0]} failed:\n{proc.stderr[-3000:]}")
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--normals", type=int, default=52)
    parser.add_argument("--checkpoint", default="default-cxr")
    args = parser.parse_args(argv)
    ensure_loopback_namespace(argv, Path(__file__))
    logging.basicConfig(level=logging.WARNING)
    load_start = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bench-recal-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "in").mkdir()
        options = StackOptions(
            data_dir=tmp / "stack",
            http_port=free_port(),
            dicom_port=free_port(),
            node_port=free_port(),
            node_http_port=free_port(),
            viewer_port=0,
            quiet_seconds=0.5,
            checkpoints=(args.checkpoint,),
            fresh=True,
        )
        with EmbeddedStack(options) as stack:
            if stack.secrets is None:
                raise SystemExit("the stack has no secrets")
            api = requests.Session()
            api.headers["Authorization"] = f"Bearer {stack.secrets.api_token}"
            node = f"http://127.0.0.1:{options.node_http_port}"
            files = copies(normal_samples(), args.normals, tmp / "in")
            studies = [
                str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files
            ]
            send_files(files, "127.0.0.1", options.dicom_port)  # raises if Orthanc refuses one
            deadline = time.monotonic() + TIMEOUT_SECONDS
            rows: dict[str, dict] = {}
            while len(rows) < len(studies):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{len(rows)} of {len(studies)} studies analysed in time")
                time.sleep(1.0)
                found = api.get(f"{node}/studies/scores").json()
                rows = {
                    r["study_instance_uid"]: r for r in found if r["study_instance_uid"] in studies
                }
            for study, row in rows.items():
                judgement = "false_alarm" if row["is_abnormal"] else "agree"
                body = {"judgement": judgement, "reader": "Bench Reader", "model": row["model"]}
                r = api.post(f"{node}/studies/{study}/feedback", json=body, timeout=30)
                if r.status_code != 201:
                    raise SystemExit(f"POST answered {r.status_code}: {r.text}")
            (tmp / "token").write_text(stack.secrets.api_token)
            (tmp / "pw").write_text(stack.secrets.orthanc_password)
            feedback_s = timed(
                [
                    "calibrate", "--checkpoint", args.checkpoint, "--from-feedback", node,
                    "--node-token-file", str(tmp / "token"), "--orthanc", stack.orthanc_url,
                    "--orthanc-user", stack.secrets.orthanc_user,
                    "--orthanc-password-file", str(tmp / "pw"),
                    "--min-normals", str(args.normals), "--keep-images", str(tmp / "kept"),
                    "--out", str(tmp / "from-feedback"), "--version", "bench-feedback",
                ]
            )  # fmt: skip
        peer_s = timed(
            [
                "calibrate", "--checkpoint", args.checkpoint,
                "--manifest", str(tmp / "kept" / "manifest.csv"),
                "--out", str(tmp / "from-manifest"), "--version", "bench-manifest",
            ]
        )  # fmt: skip
        a = json.loads((tmp / "from-feedback" / "card.json").read_text())["calibration"]
        b = json.loads((tmp / "from-manifest" / "card.json").read_text())["calibration"]
        same = a["healthy_scores"] == b["healthy_scores"] and a["threshold"] == b["threshold"]
    print()
    print("| recalibration | normals | seconds | same calibration |")
    print("|---|---:|---:|---|")
    print(
        f"| `calibrate --from-feedback` (node API + DICOMweb pull) | {args.normals} "
        f"| {feedback_s:.1f} | |"
    )
    print(
        f"| peer: `calibrate --manifest` on the same images on disk | {args.normals} "
        f"| {peer_s:.1f} | {'yes' if same else 'NO'} |"
    )
    print(
        json.dumps(
            {
                "bench": "feedback_recalibration",
                "checkpoint": args.checkpoint,
                "normals": args.normals,
                "from_feedback_s": round(feedback_s, 1),
                "peer_manifest_s": round(peer_s, 1),
                "ratio": round(feedback_s / peer_s, 2),
                "same_calibration": same,
                "cpus": os.cpu_count(),
                "machine": platform.platform(),
                "load_start": load_start,
                "load_end": [round(v, 2) for v in os.getloadavg()],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
