"""Result latency: C-STORE of a one-image study to the node -> SEG and SR visible in Orthanc.

    .venv/bin/python bench/latency.py [--studies 100] [--quiet 0,3] [--checkpoint default-cxr]
        [--source tests/data/dicom/kermany_normal_mono2/kermany_normal_mono2.dcm]

The embedded stack (`devstack.stack.EmbeddedStack`: the Debian Orthanc with the project's
configuration, and the node with the real engine and checkpoint; no viewer) runs on ephemeral
loopback ports. For each quiet period in ``--quiet`` a fresh stack is started and the studies
are sent one after the other, as Orthanc's auto-routing would send them (calling AE
``ORTHANC``, one association per study, pynetdicom SCU): a copy of the source image with new
Study/Series/SOP Instance UIDs. The clock starts when the association is released after the
C-STORE succeeded (the node has the instance on disk) and stops when a QIDO-RS query of the
study in Orthanc lists both a SEG and an SR series (polled every 10 ms). "Beyond quiet" is
that latency minus the configured quiet period, i.e. what the node's machinery (completion
check, queue, engine, DICOM writers, STOW-RS, Orthanc's indexing) adds.

``--mr-slices N`` (issue 19 item 6): each study is instead an N-slice MR FLAIR series made
from one LGG test patient's PNG slices in ``../shared/data/brain_lgg_flair`` (TCGA_HT_7473, 32
contiguous slices; `convert.pngs_to_mr_series` with `anatomy.brain.assumed_spacing`), sent
in one association and analysed by ``--checkpoint default-brain`` (use that with it); the
clock starts after the last slice's C-STORE, and the goal is p95 beyond the quiet period
under 60 s on 2 CPU cores.

Runs inside a loopback-only network namespace (re-executes itself with ``unshare -n`` when
started outside one, like bench/ingest.py). Prints a table and, as its last line, one JSON
object. Goal (issue 10): p95 beyond the quiet period under 1 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))  # devstack runs from the checkout (it is not installed)

from ingest import ensure_loopback_namespace  # noqa: E402

from devstack.orthanc import ORTHANC_AET  # noqa: E402
from devstack.processes import free_port  # noqa: E402
from devstack.stack import NODE_AET, EmbeddedStack, StackOptions  # noqa: E402

DEFAULT_SOURCE = (
    REPO / "tests" / "data" / "dicom" / "kermany_normal_mono2" / "kermany_normal_mono2.dcm"
)
POLL_SECONDS = 0.01
TIMEOUT_SECONDS = 120.0
MR_TIMEOUT_SECONDS = 600.0
MR_DATASET = REPO.parent / "shared" / "data" / "brain_lgg_flair"
MR_PATIENT = "TCGA_HT_7473"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between order statistics."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def send_study(source: Path, port: int) -> str:
    """C-STORE a copy of ``source`` with new UIDs to the node; returns the StudyInstanceUID."""
    ds = dcmread(source)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ae = AE(ae_title=ORTHANC_AET)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    if not assoc.is_established:
        raise SystemExit("the node refused the association")
    try:
        status = assoc.send_c_store(ds)
        if not status or int(status.Status) != 0:
            raise SystemExit(f"C-STORE failed: {status}")
    finally:
        assoc.release()
    return str(ds.StudyInstanceUID)


def mr_pngs(n: int) -> list[Path]:
    """The first ``n`` PNG slices (manifest order) of the LGG patient used for --mr-slices."""
    import csv

    with (MR_DATASET / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["patient_id"] == MR_PATIENT]
    rows.sort(key=lambda r: int(r["slice"]))
    if len(rows) < n:
        raise SystemExit(f"{MR_PATIENT} has {len(rows)} slices; --mr-slices {n} is too many")
    return [MR_DATASET / r["path"] for r in rows[:n]]


def send_mr_series(pngs: list[Path], port: int) -> str:
    """C-STORE a new MR series (new UIDs) of these slices in one association; its study UID."""
    from ai_engine.anatomy.brain import assumed_spacing
    from ai_engine.dicom_io.convert import pngs_to_mr_series

    datasets = pngs_to_mr_series(
        pngs,
        assumed_spacing(len(pngs)),
        patient_id="BENCH-MR",
        study_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
        frame_of_reference_uid=generate_uid(),
        sop_instance_uids=[generate_uid() for _ in pngs],
    )
    ae = AE(ae_title=ORTHANC_AET)
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AET)
    if not assoc.is_established:
        raise SystemExit("the node refused the association")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if not status or int(status.Status) != 0:
                raise SystemExit(f"C-STORE failed: {status}")
    finally:
        assoc.release()
    return str(datasets[0].StudyInstanceUID)


def wait_results(
    stack: EmbeddedStack, session: Any, study_uid: str, timeout: float = TIMEOUT_SECONDS
) -> None:
    """Poll QIDO-RS until the study has a SEG and an SR series in Orthanc."""
    url = f"{stack.orthanc_url}/dicom-web/studies/{study_uid}/series"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = session.get(url, params={"includefield": "00080060"}, timeout=10)
        if response.status_code == 200 and response.content:
            modalities = {
                v for s in response.json() for v in s.get("00080060", {}).get("Value", [])
            }
            if {"SEG", "SR"} <= modalities:
                return
        time.sleep(POLL_SECONDS)
    raise SystemExit(f"no SEG and SR for study {study_uid} after {timeout:.0f} s")


def run_cell(args: argparse.Namespace, quiet: float, work: Path) -> list[float]:
    """Start a fresh stack with this quiet period; latencies (s) of ``args.studies`` studies."""
    options = StackOptions(
        data_dir=work / f"quiet-{quiet:g}",
        http_port=free_port(),
        dicom_port=free_port(),
        node_port=free_port(),
        node_http_port=0,
        viewer_port=0,
        quiet_seconds=quiet,
        checkpoints=(args.checkpoint,),
        fresh=True,
    )
    latencies: list[float] = []
    pngs = mr_pngs(args.mr_slices) if args.mr_slices else []
    timeout = MR_TIMEOUT_SECONDS if pngs else TIMEOUT_SECONDS

    def send() -> str:
        if pngs:
            return send_mr_series(pngs, options.node_port)
        return send_study(args.source, options.node_port)

    with EmbeddedStack(options) as stack, stack.session() as session:
        wait_results(stack, session, send(), timeout)  # warm-up
        for i in range(args.studies):
            study_uid = send()
            t0 = time.monotonic()
            wait_results(stack, session, study_uid, timeout)
            latencies.append(time.monotonic() - t0)
            if (i + 1) % 20 == 0:
                print(f"  quiet {quiet:g} s: {i + 1}/{args.studies}", file=sys.stderr)
    return latencies


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--quiet", default="0,3", help="quiet periods (s), comma-separated")
    parser.add_argument("--checkpoint", default="default-cxr")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument(
        "--mr-slices", type=int, default=0, help="send N-slice MR FLAIR series instead (N <= 32)"
    )
    args = parser.parse_args(argv)
    ensure_loopback_namespace(argv, Path(__file__))
    logging.basicConfig(level=logging.WARNING)
    load_start = [round(v, 2) for v in os.getloadavg()]
    cells: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        for quiet in (float(q) for q in args.quiet.split(",")):
            lat = run_cell(args, quiet, Path(tmp))
            beyond = [v - quiet for v in lat]
            cells.append(
                {
                    "quiet_s": quiet,
                    "studies": len(lat),
                    "p50_s": round(percentile(lat, 50), 3),
                    "p95_s": round(percentile(lat, 95), 3),
                    "max_s": round(max(lat), 3),
                    "beyond_quiet_p50_s": round(percentile(beyond, 50), 3),
                    "beyond_quiet_p95_s": round(percentile(beyond, 95), 3),
                    "mean_s": round(statistics.fmean(lat), 3),
                }
            )
    goal = 60.0 if args.mr_slices else 1.0
    print()
    print(
        "| quiet period s | studies | p50 s | p95 s | max s | beyond quiet p50 s "
        f"| beyond quiet p95 s | goal p95 beyond < {goal:g} s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for c in cells:
        met = "yes" if c["beyond_quiet_p95_s"] < goal else "no"
        print(
            f"| {c['quiet_s']:g} | {c['studies']} | {c['p50_s']:.3f} | {c['p95_s']:.3f} "
            f"| {c['max_s']:.3f} | {c['beyond_quiet_p50_s']:.3f} | {c['beyond_quiet_p95_s']:.3f} "
            f"| {met} |"
        )
    print(
        json.dumps(
            {
                "bench": "latency",
                "checkpoint": args.checkpoint,
                "source": (
                    f"{MR_PATIENT} MR FLAIR, {args.mr_slices} slices"
                    if args.mr_slices
                    else args.source.name
                ),
                "cpus": os.cpu_count(),
                "machine": platform.platform(),
                "load_start": load_start,
                "load_end": [round(v, 2) for v in os.getloadavg()],
                "cells": cells,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
