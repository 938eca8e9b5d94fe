"""Throughput of the scaled-out node (jobs/min) with 1, 2, 4 Celery workers on one machine.

    .venv/bin/python bench/scale.py [--workers 1,2,4] [--jobs 24] [--seconds 0.5]
        [--cost sleep|cpu] [--real] [--checkpoint default-cxr]

Per worker count: a fresh ``redis-server`` (loopback, no persistence), the node
(`NodeService` with ``broker_url``, in this process, results by C-STORE to a pynetdicom SCP
in this process) and N ``python -m dicom_node worker`` processes on one ``data_dir``. When
every worker answers a Celery ping, ``--jobs`` one-image studies (copies of a committed
sample radiograph with new UIDs) are sent by C-STORE in one association, and the node takes
each study as complete after a 0.2 s quiet period.

Throughput = jobs / (last job delivered - first job queued) * 60, from the jobs' own
``created_at``/``finished_at`` in ``job.json``; worker start-up is not included.

Engine: the integration test's stand-in (``tests/integration/standin_engine.py``) with a fixed
cost per job, ``--cost sleep`` (waits: the CPU stays free, as with an engine on a GPU) or
``--cost cpu`` (busy loop on one core); or, with ``--real``, ``ai_engine.pipeline.run`` with
``--checkpoint`` (each worker loads the model on its first job, before timing starts: a
warm-up study per worker is processed first).

Runs only inside a loopback-only network namespace: started outside one it re-executes
itself under ``unshare -n`` after ``ip link set lo up``. Prints a table, then, as the last
line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, StoragePresentationContexts, evt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # devstack runs from the checkout (it is not installed)

from devstack.processes import free_port, loopback_only_namespace  # noqa: E402
from dicom_node.config import NodeSettings  # noqa: E402
from dicom_node.distributed import make_app  # noqa: E402
from dicom_node.queue import JobQueue, JobStateValues  # noqa: E402
from dicom_node.service import NodeService  # noqa: E402

SAMPLE = REPO / "tests/data/dicom/kermany_normal_mono1/kermany_normal_mono1.dcm"


def make_studies(out_dir: Path, count: int) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for _ in range(count):
        ds = dcmread(SAMPLE)
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out_dir / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def send(port: int, paths: list[Path]) -> None:
    ae = AE(ae_title="BENCHSCU")
    for cx in StoragePresentationContexts[:120]:
        ae.add_requested_context(cx.abstract_syntax, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    if not assoc.is_established:
        raise RuntimeError("association with the node failed")
    try:
        for path in paths:
            status = assoc.send_c_store(path)
            if int(status.Status) != 0:
                raise RuntimeError(f"C-STORE failed: {status}")
    finally:
        assoc.release()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    import redis

    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(host="127.0.0.1", port=port)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False

    wait_for(up, 15, "redis-server")
    return proc, f"redis://127.0.0.1:{port}/0"


def one_run(n_workers: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True)
    received: list[str] = []
    dest = AE(ae_title="ORTHANC")
    for cx in AllStoragePresentationContexts:
        dest.add_supported_context(
            cx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
    server = dest.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[
            (evt.EVT_C_STORE, lambda e: received.append(e.request.AffectedSOPInstanceUID) or 0)
        ],
    )
    redis_proc, broker = start_redis(work)
    data_dir = work / "node"
    settings = NodeSettings(
        data_dir=data_dir,
        port=0,
        http_port=0,
        allowed_calling_aes=["BENCHSCU"],
        study_quiet_seconds=0.2,
        poll_interval_seconds=0.1,
        min_free_disk_mb=0,
        destination="cstore",
        cstore_port=int(server.server_address[1]),
        broker_url=broker,
        checkpoints=[args.checkpoint],
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests" / "integration")]),
        "DICOM_NODE_DATA_DIR": str(data_dir),
        "DICOM_NODE_BROKER_URL": broker,
        "STANDIN_ENGINE_SECONDS": str(args.seconds),
        "STANDIN_ENGINE_COST": args.cost,
    }
    if not args.real:
        env["DICOM_NODE_WORKER_ENGINE"] = "standin_engine:run"
    node = NodeService(settings)
    node.start()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(n_workers):
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "dicom_node", "worker", "--log-level", "WARNING"],
                    env=env,
                    stdout=(work / f"worker{i}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )
        app = make_app(settings)
        wait_for(lambda: len(app.control.ping(timeout=0.5) or []) >= n_workers, 120, "workers")
        queue = JobQueue(settings.jobs_dir)
        if args.real:  # load the model in every worker before timing
            send(node.scp_port, make_studies(work / "warm", n_workers))
            wait_for(lambda: queue.counts()["done"] >= n_workers, 300, "warm-up")
            time.sleep(0.5)
        before = {j.job_id for j in queue.iter_jobs(JobStateValues.DONE)}
        received_before = len(received)
        send(node.scp_port, make_studies(work / "in", args.jobs))
        total = len(before) + args.jobs
        wait_for(lambda: queue.counts()["done"] >= total, 600, "all jobs done")
        jobs = [j for j in queue.iter_jobs(JobStateValues.DONE) if j.job_id not in before]
        delivered = len(received) - received_before
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        node.stop()
        server.shutdown()
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
    first = min(j.created_at for j in jobs)
    last = max(j.finished_at for j in jobs if j.finished_at is not None)
    span = (last - first).total_seconds()
    processing = [j.processing_seconds or 0.0 for j in jobs]
    return {
        "workers": n_workers,
        "jobs": len(jobs),
        "span_s": round(span, 2),
        "jobs_per_min": round(len(jobs) / span * 60, 1),
        "mean_engine_s": round(sum(processing) / len(processing), 3),
        "delivered": delivered,  # result files (SR; with --real also the SEGs)
        "failed": queue.counts()["failed"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=0.5, help="stand-in cost per job")
    parser.add_argument("--cost", choices=["sleep", "cpu"], default="sleep")
    parser.add_argument("--real", action="store_true", help="ai_engine.pipeline.run instead")
    parser.add_argument("--checkpoint", default="default-cxr")
    args = parser.parse_args(argv)
    if not loopback_only_namespace():
        inner = (
            f"ip link set lo up && exec {sys.executable} {Path(__file__).resolve()} "
            + " ".join(sys.argv[1:] if argv is None else argv)
        )
        return subprocess.call(["unshare", "-n", "bash", "-c", inner])
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (scripts/setup.sh installs it)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    load_start = [round(v, 2) for v in os.getloadavg()]
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for n in [int(x) for x in args.workers.split(",")]:
            runs.append(one_run(n, args, Path(tmp) / f"w{n}"))
    engine = (
        f"ai_engine.pipeline.run {args.checkpoint}"
        if args.real
        else f"stand-in {args.cost} {args.seconds} s/job"
    )
    print(f"engine: {engine}; {args.jobs} one-image studies; nproc {os.cpu_count()}")
    print("| workers | jobs | span s | jobs/min | mean engine s/job | files delivered | failed |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(
            f"| {r['workers']} | {r['jobs']} | {r['span_s']} | {r['jobs_per_min']} | "
            f"{r['mean_engine_s']} | {r['delivered']} | {r['failed']} |"
        )
    print(
        json.dumps(
            {
                "bench": "scale",
                "engine": engine,
                "nproc": os.cpu_count(),
                "machine": platform.platform(),
                "loadavg_start": load_start,
                "loadavg_end": [round(v, 2) for v in os.getloadavg()],
                "runs": runs,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
