"""Sustained throughput: a burst of one-image studies through the node, vs the engine alone.

    .venv/bin/python bench/throughput.py [--studies 1000] [--quiet 1] [--checkpoint default-cxr]
        [--engine-studies 200] [--source FILE.dcm]

Node run: the embedded stack (`devstack.stack.EmbeddedStack`: the Debian Orthanc and the
node with the real engine and checkpoint; no viewer) on ephemeral loopback ports. ``--studies``
copies of the source image, each with new Study/Series/SOP Instance UIDs (one-image studies),
are sent as fast as possible over one association from AE ``ORTHANC`` (as Orthanc's
auto-routing would send them) by dcmtk ``storescu`` in its own process (``TCP_NODELAY=1``),
so the sender does not share this process's GIL with the node. The clock runs from the first
C-STORE until every study's job is done (results stored in Orthanc by STOW-RS).
Studies/min = studies / that time.

Per-stage breakdown (mean seconds per study), from the node's own Prometheus histograms:
``receive`` (storescu's wall time / studies: C-STORE round trips, spool fsyncs), ``read``,
``preprocess``, ``infer``, ``write`` (engine stages, `ai_engine.pipeline.run`),
``run`` (the whole engine call of a job) and ``send`` (STOW-RS to Orthanc). CPU seconds
per study (user + system, from ``/proc``) of the node's process, each engine process and
Orthanc, over the node run: where the two cores went.

Engine alone: `ai_engine.pipeline.run` in this process on ``--engine-studies`` folders of the
same files (one study each), writing what the node writes (SEG, SEG, SR and, as the node's
``overlay_sc`` setting asks, the overlay Secondary Capture), no networking, with as many
torch threads as each of the node's engine processes (``DICOM_NODE_ENGINE_THREADS``), after one
warm-up run, half of them before the node run and half after it (the load of a shared
machine changes over a long run); its studies/min is the reference.
Ratio = node studies/min / engine studies/min (goal: >= 0.9). ``--isolation thread`` runs
the node's engine in its worker thread instead of its own process
(``DICOM_NODE_ENGINE_ISOLATION``), for comparison; ``--engine-processes N`` runs N engine
processes side by side (``DICOM_NODE_ENGINE_PROCESSES``; the reference stays one engine).

Runs in a loopback-only network namespace (re-executes itself with ``unshare -n`` when
needed). Prints tables and, as the last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))  # devstack runs from the checkout (it is not installed)

from ingest import ensure_loopback_namespace, process_cpu_seconds, send  # noqa: E402

from devstack.orthanc import ORTHANC_AET  # noqa: E402
from devstack.processes import free_port  # noqa: E402
from devstack.stack import NODE_AET, EmbeddedStack, StackOptions  # noqa: E402
from dicom_node.metrics import ENGINE_STAGES  # noqa: E402

DEFAULT_SOURCE = (
    REPO / "tests" / "data" / "dicom" / "kermany_normal_mono2" / "kermany_normal_mono2.dcm"
)


def copies(source: Path, n: int) -> list[Dataset]:
    """``n`` one-image studies: the source with new Study/Series/SOP Instance UIDs."""
    out = []
    for _ in range(n):
        ds = dcmread(source)
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(ds)
    return out


def engine_alone(
    studies: list[Dataset], checkpoint: str, work: Path, threads: int
) -> tuple[float, int]:
    """Seconds for `pipeline.run` over one folder per study (model loaded before timing).

    The outputs are the node's: its ``overlay_sc`` setting (the default, or
    ``DICOM_NODE_OVERLAY_SC``) is passed on, so both sides write the same files.
    """
    import torch

    from ai_engine import pipeline
    from dicom_node.config import load_settings

    overlay_sc = load_settings().overlay_sc

    torch.set_num_threads(threads)  # as many as each of the node's engine processes has

    folders = []
    for i, ds in enumerate(studies):
        folder = work / "engine-in" / f"{i:05d}"
        folder.mkdir(parents=True)
        ds.save_as(folder / "image.dcm", enforce_file_format=True)
        folders.append(folder)
    # load the model and run once (imports, thread pools), as the node's worker has when warm
    pipeline.run(folders[0], work / "engine-out" / "warm-up", [checkpoint], overlay_sc=overlay_sc)
    t0 = time.monotonic()
    for i, folder in enumerate(folders):
        pipeline.run(folder, work / "engine-out" / f"{i:05d}", [checkpoint], overlay_sc=overlay_sc)
    return time.monotonic() - t0, len(folders)


def engine_threads(args: argparse.Namespace) -> int:
    """Torch threads of each of the node's engine processes (`NodeSettings.engine_threads`)."""
    from dicom_node.config import NodeSettings

    settings = NodeSettings(engine_processes=args.engine_processes)
    return settings.engine_thread_count()


def node_run(args: argparse.Namespace, studies: list[Dataset], work: Path) -> dict[str, Any]:
    """Send the burst to the node and wait until every job is done."""
    options = StackOptions(
        data_dir=work / "stack",
        http_port=free_port(),
        dicom_port=free_port(),
        node_port=free_port(),
        node_http_port=0,
        viewer_port=0,
        quiet_seconds=args.quiet,
        checkpoints=(args.checkpoint,),
        fresh=True,
    )
    folder = work / "burst"
    folder.mkdir(parents=True)
    for i, ds in enumerate(studies):
        ds.save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)
    os.environ["DICOM_NODE_ENGINE_ISOLATION"] = args.isolation
    os.environ["DICOM_NODE_ENGINE_PROCESSES"] = str(args.engine_processes)
    with EmbeddedStack(options) as stack:
        node = stack.node
        if node is None or node.queue is None:
            raise SystemExit("the node did not start")
        time.sleep(args.warm_up)  # the engine process loads torch and the model meanwhile
        pids = {
            "node": os.getpid(),
            "orthanc": stack.orthanc.pid if stack.orthanc is not None else None,
            **{f"engine-{i + 1}": pid for i, pid in enumerate(node.engine_pids)},
        }
        cpu0 = {k: process_cpu_seconds(v) for k, v in pids.items() if v}
        t0 = time.monotonic()
        _, problems = send([folder], options.node_port, NODE_AET, calling_ae=ORTHANC_AET)
        if problems:
            raise SystemExit(f"C-STORE failed: {problems}")
        sent_seconds = time.monotonic() - t0
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            done = node.metrics.snapshot().get("jobs_sent_total", 0)
            failed = node.metrics.snapshot().get("jobs_failed_total", 0)
            if done + failed >= len(studies):
                break
            time.sleep(0.1)
        total = time.monotonic() - t0
        cpu = {k: process_cpu_seconds(pids[k]) - v for k, v in cpu0.items()}
        histograms = node.metrics.histograms()
        counters = node.metrics.snapshot()
    stages = {"receive": sent_seconds / len(studies)}
    for key, name in (*ENGINE_STAGES.items(), ("run", "run_seconds"), ("send", "send_seconds")):
        h = histograms[name]
        stages[key] = h.total / max(1, sum(h.counts))
    return {
        "seconds": total,
        "send_seconds": sent_seconds,
        "done": counters.get("jobs_sent_total", 0),
        "failed": counters.get("jobs_failed_total", 0),
        "jobs": counters.get("jobs_queued_total", 0),
        "stages": stages,
        "cpu_s_per_study": {k: v / max(1, len(studies)) for k, v in cpu.items()},
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--quiet", type=float, default=1.0, help="node quiet period (s)")
    parser.add_argument("--checkpoint", default="default-cxr")
    parser.add_argument("--engine-studies", type=int, default=200)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--isolation", choices=("process", "thread"), default="process")
    parser.add_argument("--engine-processes", type=int, default=1)
    parser.add_argument(
        "--warm-up", type=float, default=10.0, help="seconds between node start and the burst"
    )
    args = parser.parse_args(argv)
    ensure_loopback_namespace(argv, Path(__file__))
    logging.basicConfig(level=logging.WARNING)
    load_start = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        work = Path(tmp)
        # the engine alone before and after the node run, half each: on a shared machine the
        # load changes over a long run, and the reference should see the same conditions
        half = max(1, args.engine_studies // 2)
        threads = engine_threads(args)
        before_s, before_n = engine_alone(
            copies(args.source, half), args.checkpoint, work / "a", threads
        )
        node = node_run(args, copies(args.source, args.studies), work)
        after_s, after_n = engine_alone(
            copies(args.source, half), args.checkpoint, work / "b", threads
        )
        engine_s, engine_n = before_s + after_s, before_n + after_n
    engine_rate = 60.0 * engine_n / engine_s
    node_rate = 60.0 * node["done"] / node["seconds"]
    ratio = node_rate / engine_rate
    print()
    print("| run | studies | seconds | studies/min |")
    print("|---|---:|---:|---:|")
    print(f"| engine alone (pipeline.run, in process) | {engine_n} | {engine_s:.1f} "
          f"| {engine_rate:.0f} |")  # fmt: skip
    print(f"| node (C-STORE burst -> results in Orthanc) | {node['done']} | "
          f"{node['seconds']:.1f} | {node_rate:.0f} |")  # fmt: skip
    print()
    print("| stage | mean s per study |")
    print("|---|---:|")
    for stage, value in node["stages"].items():
        print(f"| {stage} | {value:.4f} |")
    print()
    print("| process | CPU s per study (user + system) |")
    print("|---|---:|")
    for name, value in node["cpu_s_per_study"].items():
        print(f"| {name} | {value:.4f} |")
    print()
    met = "yes" if ratio >= 0.9 else "no"
    print(f"torch threads per engine (node and reference): {threads}")
    print(f"node / engine = {ratio:.2f} (goal >= 0.9: {met}); failed jobs: {node['failed']}")
    print(
        json.dumps(
            {
                "bench": "throughput",
                "checkpoint": args.checkpoint,
                "quiet_s": args.quiet,
                "isolation": args.isolation,
                "engine_processes": args.engine_processes,
                "engine_threads": threads,
                "cpus": os.cpu_count(),
                "machine": platform.platform(),
                "load_start": load_start,
                "load_end": [round(v, 2) for v in os.getloadavg()],
                "engine": {"studies": engine_n, "seconds": round(engine_s, 2),
                           "studies_per_min": round(engine_rate, 1),
                           "before_s": round(before_s, 2), "after_s": round(after_s, 2)},
                "node": {**node, "studies_per_min": round(node_rate, 1),
                         "stages": {k: round(v, 5) for k, v in node["stages"].items()},
                         "cpu_s_per_study": {k: round(v, 5)
                                             for k, v in node["cpu_s_per_study"].items()}},
                "ratio": round(ratio, 3),
            }
        )
    )  # fmt: skip
    return 0 if node["failed"] == 0 and node["done"] == args.studies else 1


if __name__ == "__main__":
    sys.exit(main())
