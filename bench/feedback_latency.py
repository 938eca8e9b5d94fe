"""Reader judgement latency: POST of a judgement to the node -> its review SR in Orthanc.

    .venv/bin/python bench/feedback_latency.py [--judgements 50] [--checkpoint default-cxr]
        [--source tests/data/dicom/kermany_normal_mono2/kermany_normal_mono2.dcm]

The embedded stack (`devstack.stack.EmbeddedStack`: the Debian Orthanc with the
project's configuration, the node with the real engine; no viewer) runs on ephemeral loopback
ports. One copy of the source (new UIDs) is sent and analysed; then ``--judgements``
judgements of it are posted one after the other to the node's API (``POST
/studies/<uid>/feedback``, what the viewer server forwards from the panel's button), each a
new version (Agree / the disagreement that fits the result, alternately). Per judgement:

- **stored**: from sending the POST to its 201 (the version is fsynced on the node);
- **in Orthanc**: from sending the POST until a QIDO-RS query of the review SR's SOP
  Instance UID in Orthanc lists it (polled every 10 ms);
- **peer**: the same review SR content written by the bench itself
  (`ai_engine.dicom_io.sr_writer.write_review_sr`, new UIDs) and stored by one STOW-RS
  straight to Orthanc, until the same QIDO-RS lists it: what Orthanc alone takes, measured in
  the same run, so the ratio says what the node adds.

Runs inside a loopback-only network namespace (re-executes itself with ``unshare -n`` like
bench/ingest.py). Prints a table and, as its last line, one JSON object. Goal (issue 25):
click to durable storage in Orthanc under 1 s (p95 of "in Orthanc"; the browser and the
viewer server add a loopback hop, not measured here).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pydicom
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))  # devstack runs from the checkout (it is not installed)

from ingest import ensure_loopback_namespace  # noqa: E402
from latency import percentile, send_study  # noqa: E402

from ai_engine.dicom_io.sr_writer import write_review_sr  # noqa: E402
from devstack.processes import free_port  # noqa: E402
from devstack.stack import EmbeddedStack, StackOptions  # noqa: E402

DEFAULT_SOURCE = REPO / "tests/data/dicom/kermany_normal_mono2/kermany_normal_mono2.dcm"
POLL_SECONDS = 0.01
TIMEOUT_SECONDS = 240.0


def wait_instance(session: Any, base: str, study: str, sop: str, timeout: float) -> None:
    """Poll QIDO-RS until Orthanc lists the instance."""
    url = f"{base}/dicom-web/studies/{study}/instances"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = session.get(url, params={"SOPInstanceUID": sop}, timeout=10)
        if r.status_code == 200 and r.content and r.json():
            return
        time.sleep(POLL_SECONDS)
    raise SystemExit(f"instance {sop} not in Orthanc after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judgements", type=int, default=50)
    parser.add_argument("--checkpoint", default="default-cxr")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    args = parser.parse_args(argv)
    ensure_loopback_namespace(argv, Path(__file__))
    logging.basicConfig(level=logging.WARNING)
    load_start = [round(v, 2) for v in os.getloadavg()]
    stored: list[float] = []
    pacs: list[float] = []
    peer: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-feedback-") as tmp:
        options = StackOptions(
            data_dir=Path(tmp),
            http_port=free_port(),
            dicom_port=free_port(),
            node_port=free_port(),
            node_http_port=free_port(),
            viewer_port=0,
            quiet_seconds=0.0,
            checkpoints=(args.checkpoint,),
            fresh=True,
        )
        with EmbeddedStack(options) as stack, stack.session() as session:
            if stack.secrets is None:
                raise SystemExit("the stack has no secrets")
            api = requests.Session()
            api.headers["Authorization"] = f"Bearer {stack.secrets.api_token}"
            node = f"http://127.0.0.1:{options.node_http_port}"
            study = send_study(args.source, options.node_port)
            deadline = time.monotonic() + TIMEOUT_SECONDS
            while not (rows := api.get(f"{node}/studies/scores?study_instance_uid={study}").json()):
                if time.monotonic() > deadline:
                    raise SystemExit("the study got no result")
                time.sleep(0.1)
            flagged = bool(rows[0]["is_abnormal"])
            other = "false_alarm" if flagged else "missed_finding"
            judged = _retrieve_ai_sr(session, stack.orthanc_url, study)
            for i in range(args.judgements):
                body = {
                    "judgement": "agree" if i % 2 == 0 else other,
                    "reader": "Bench Reader",
                    "comment": f"bench judgement {i + 1}",
                }
                t0 = time.monotonic()
                r = api.post(f"{node}/studies/{study}/feedback", json=body, timeout=30)
                t1 = time.monotonic()
                if r.status_code != 201:
                    raise SystemExit(f"POST answered {r.status_code}: {r.text}")
                wait_instance(session, stack.orthanc_url, study, r.json()["sop_instance_uid"], 30)
                t2 = time.monotonic()
                stored.append(t1 - t0)
                pacs.append(t2 - t0)
                # the peer: the same kind of object straight to Orthanc by one STOW-RS
                review = write_review_sr(
                    judged, body["judgement"], "Bench Reader", comment=body["comment"]
                )
                buffer = io.BytesIO()
                review.save_as(buffer, enforce_file_format=True)
                t3 = time.monotonic()
                _stow(session, stack.orthanc_url, buffer.getvalue())
                wait_instance(session, stack.orthanc_url, study, str(review.SOPInstanceUID), 30)
                peer.append(time.monotonic() - t3)
    cells = {
        name: {
            "p50_s": round(percentile(v, 50), 3),
            "p95_s": round(percentile(v, 95), 3),
            "max_s": round(max(v), 3),
        }
        for name, v in (("stored", stored), ("in_orthanc", pacs), ("peer_stow", peer))
    }
    ratio = round(percentile(pacs, 50) / percentile(peer, 50), 2)
    print()
    print("| path | judgements | p50 s | p95 s | max s |")
    print("|---|---:|---:|---:|---:|")
    labels = {
        "stored": "POST -> 201 (fsynced on the node)",
        "in_orthanc": "POST -> review SR listed by Orthanc",
        "peer_stow": "peer: STOW-RS straight to Orthanc -> listed",
    }
    for name, cell in cells.items():
        print(
            f"| {labels[name]} | {len(stored)} | {cell['p50_s']:.3f} | {cell['p95_s']:.3f} "
            f"| {cell['max_s']:.3f} |"
        )
    print(
        f"node / peer (p50): {ratio}; goal p95 in Orthanc < 1 s: "
        f"{'yes' if cells['in_orthanc']['p95_s'] < 1.0 else 'no'}"
    )
    print(
        json.dumps(
            {
                "bench": "feedback_latency",
                "checkpoint": args.checkpoint,
                "judgements": len(stored),
                "cpus": os.cpu_count(),
                "machine": platform.platform(),
                "load_start": load_start,
                "load_end": [round(v, 2) for v in os.getloadavg()],
                "cells": cells,
                "node_over_peer_p50": ratio,
            }
        )
    )
    return 0


def _retrieve_ai_sr(session: Any, base: str, study: str) -> pydicom.Dataset:
    """The node's SR of the study, by WADO-RS."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=f"{base}/dicom-web", session=session)
    for series in client.search_for_series(study, search_filters={"Modality": "SR"}):
        for ds in client.retrieve_series(study, series["0020000E"]["Value"][0]):
            if ds.get("SeriesNumber") == 9003:
                return ds
    raise SystemExit("no AI SR in Orthanc")


def _stow(session: Any, base: str, data: bytes) -> None:
    boundary = "benchboundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = session.post(
        f"{base}/dicom-web/studies",
        data=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=30,
    )
    if r.status_code != 200:
        raise SystemExit(f"peer STOW-RS answered {r.status_code}")


if __name__ == "__main__":
    raise SystemExit(main())
