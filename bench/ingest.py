"""DICOM ingest rate: the node's SCP vs dcmtk storescp vs Orthanc's C-STORE SCP (issue 10).

    .venv/bin/python bench/ingest.py [--files 200] [--reps 3] [--associations 1,4]
        [--source tests/data/dicom/kermany_normal_mono2/kermany_normal_mono2.dcm]
        [--receivers node,storescp,orthanc]

Receivers, each on an ephemeral loopback port:

- ``node``: `dicom_node.service.NodeService` in this process with the default settings
  (pynetdicom SCP; every instance written to the spool with fsync of the file and its
  folder before the C-STORE response). The quiet period is one hour and the engine a
  no-op, so no job runs during the bench. Variants for comparison in the same run:
  ``node-p<N>`` (``scp_processes=N``: N SCP processes on the port, `dicom_node.scp_pool`),
  ``node-file`` (``receive_mode=file``), ``node-poll`` (``scp_event_reactor=false``:
  pynetdicom's own polling loops), combined as in ``node-p2-file``; the goals are printed
  for each.
- ``storescp``: dcmtk ``storescp --fork`` (one process per association; writes files, no fsync).
- ``orthanc``: the Debian Orthanc with the project's configuration (``SyncStorageArea``
  default: fsync), routing off.

Senders: dcmtk ``storescu +sd DIR`` processes, one per association, all started together,
with ``TCP_NODELAY=1`` (Debian's dcmtk leaves Nagle on; stack-notes section 5); Orthanc is
started with ``TCP_NODELAY=1`` too. The files are copies of one sample DX with new Study,
Series and SOP Instance UIDs; with A associations each sends ``files / A`` of them, as its own
study. Every receiver gets the very same files; a fresh set is made per (repetition,
association count), so no receiver sees an instance twice. Rate = files received / wall time
from starting the storescu processes until the last one exits (process start and association
set-up included). Cells run receiver-interleaved; the table shows the median over ``--reps``.

Runs only inside a network namespace whose only interface is ``lo``: when started outside one
it re-executes itself under ``unshare -n`` (``-r`` when not root) after ``ip link set lo up``,
like scripts/test.sh. Prints tables, then, as the last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # devstack runs from the checkout (it is not installed)

from devstack.orthanc import (  # noqa: E402
    DicomPeer,
    OrthancProcess,
    render_orthanc_config,
    write_orthanc_config,
)
from devstack.processes import ManagedProcess, free_port, loopback_only_namespace  # noqa: E402

DEFAULT_SOURCE = (
    REPO / "tests" / "data" / "dicom" / "kermany_normal_mono2" / "kermany_normal_mono2.dcm"
)
NETNS_MARKER = "AI_NODE_BENCH_NETNS"
SCU_AET = "BENCH"
SEND_TIMEOUT = 300.0


def ensure_loopback_namespace(argv: Sequence[str], script: Path | None = None) -> None:
    """Re-exec ``script`` (default: this one) in a loopback-only netns unless in one."""
    if loopback_only_namespace():
        return
    if os.environ.get(NETNS_MARKER) == "1":
        raise SystemExit("not in a loopback-only network namespace even after unshare -n")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        raise SystemExit("needs unshare (util-linux) and ip (iproute2) for a loopback-only netns")
    userns = ["-r"] if os.getuid() != 0 else []
    os.environ[NETNS_MARKER] = "1"
    command = [
        "unshare",
        *userns,
        "-n",
        "--",
        "sh",
        "-c",
        'ip link set lo up && exec "$0" "$@"',
        sys.executable,
        str((script or Path(__file__)).resolve()),
        *argv,
    ]
    sys.stdout.flush()
    os.execvp("unshare", command)  # noqa: S606 - fixed command line


# --------------------------------------------------------------------------- files


def make_files(source: Path, root: Path, n_files: int, associations: int) -> list[Path]:
    """Copies of ``source`` with new UIDs, split into one folder (one study) per association."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    template = dcmread(source)
    per_assoc = n_files // associations
    folders = []
    for a in range(associations):
        folder = root / f"assoc{a}"
        folder.mkdir(parents=True)
        study, series = generate_uid(), generate_uid()
        for i in range(per_assoc):
            ds = template.copy()
            ds.StudyInstanceUID = study
            ds.SeriesInstanceUID = series
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = i + 1
            ds.save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)
        folders.append(folder)
    return folders


def send(
    folders: Sequence[Path], port: int, called_ae: str, calling_ae: str = SCU_AET
) -> tuple[float, list[str]]:
    """Run one storescu per folder concurrently; wall seconds and any failure messages."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                "storescu",
                "-aet",
                calling_ae,
                "-aec",
                called_ae,
                "127.0.0.1",
                str(port),
                "+sd",
                str(f),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for f in folders
    ]
    problems = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=SEND_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            problems.append("storescu timed out")
        if proc.returncode != 0:
            problems.append(
                f"storescu exit {proc.returncode}: {out.decode(errors='replace')[-300:]}"
            )
    return time.perf_counter() - started, problems


# --------------------------------------------------------------------------- receivers


class Receiver:
    """A started SCP: name, port, called AE title, received-instance and CPU-seconds counters."""

    def __init__(
        self,
        name: str,
        port: int,
        aet: str,
        count: Callable[[], int],
        stop: Callable[[], None],
        cpu: Callable[[], float],
    ) -> None:
        self.name, self.port, self.aet = name, port, aet
        self.count, self.stop, self.cpu = count, stop, cpu


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and of its children it has reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def node_options(name: str) -> dict[str, Any]:
    """Settings of a ``node`` receiver variant: ``node`` (the defaults), ``node-p<N>``
    (``scp_processes=N``), ``node-file`` (``receive_mode=file``), e.g. ``node-p2-file``."""
    options: dict[str, Any] = {}
    for part in name.split("-")[1:]:
        if part == "file" or part == "memory":
            options["receive_mode"] = part
        elif part == "poll":
            options["scp_event_reactor"] = False
        elif part.startswith("p") and part[1:].isdigit():
            options["scp_processes"] = int(part[1:])
        else:
            raise SystemExit(f"unknown node variant {name!r} (node, node-p2, node-file, ...)")
    return options


def start_node(work: Path, name: str = "node") -> Receiver:
    from dicom_node.config import NodeSettings
    from dicom_node.scp_pool import ScpPool
    from dicom_node.service import NodeService

    settings = NodeSettings(
        **node_options(name),
        ae_title="AINODE",
        host="127.0.0.1",
        port=0,
        allowed_calling_aes=[SCU_AET],
        http_port=0,
        data_dir=work / "node",
        study_quiet_seconds=3600,
        study_max_wait_seconds=3600,
        min_free_disk_mb=0,
    )
    service = NodeService(settings, engine=lambda _i, _o, _c: [])
    service.start()

    def count() -> int:
        return service.metrics.snapshot()["instances_received_total"]

    def cpu() -> float:
        # the node's process (no engine process here: the engine is injected) and, with
        # scp_processes, its SCP processes
        workers = service.scp.pids if isinstance(service.scp, ScpPool) else []
        return sum(os.times()[:2]) + sum(process_cpu_seconds(pid) for pid in workers)

    return Receiver(name, service.scp_port, "AINODE", count, service.stop, cpu)


def wait_listening(port: int, proc: ManagedProcess, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.name} exited: {proc.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{proc.name} not listening on {port} after {timeout} s")


def start_storescp(work: Path) -> Receiver:
    out = work / "storescp"
    out.mkdir()
    port = free_port()
    proc = ManagedProcess(
        "storescp",
        ["storescp", "--fork", "-aet", "STORESCP", "-od", str(out), "-fe", ".dcm", str(port)],
        work / "storescp.log",
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    proc.start()
    wait_listening(port, proc)
    pid = proc.pid or 0
    return Receiver(
        "storescp",
        port,
        "STORESCP",
        lambda: sum(1 for _ in out.glob("*.dcm")),
        proc.stop,
        lambda: process_cpu_seconds(pid),  # --fork: children's CPU once storescp reaped them
    )


def start_orthanc(work: Path) -> Receiver:
    password = secrets.token_urlsafe(16)
    dicom_port = free_port()
    config = render_orthanc_config(
        storage_dir=work / "orthanc" / "db",
        http_port=free_port(),
        dicom_port=dicom_port,
        users={"bench": password},
        node=DicomPeer("ainode", "AINODE", port=free_port()),
        scanners=[DicomPeer("bench", SCU_AET)],
        stable_age=3600,
        routing_enabled=False,
    )
    orthanc = OrthancProcess.from_config(write_orthanc_config(work / "orthanc", config), config)
    orthanc.start()
    session = orthanc.session()

    def count() -> int:
        stats = session.get(f"{orthanc.http_url}/statistics", timeout=30)
        stats.raise_for_status()
        return int(stats.json()["CountInstances"])

    def stop() -> None:
        session.close()
        orthanc.stop()

    pid = orthanc.pid or 0
    return Receiver(
        "orthanc", dicom_port, config["DicomAet"], count, stop, lambda: process_cpu_seconds(pid)
    )


def wait_count(rx: Receiver, before: int, expected: int, timeout: float = 5.0) -> int:
    """Instances received since ``before``, once ``expected`` arrived or ``timeout`` passed.

    Counters of other processes (Orthanc's index, the node's SCP processes forwarding their
    increments) may lag the last C-STORE response by a few milliseconds; not timed.
    """
    deadline = time.monotonic() + timeout
    received = rx.count() - before
    while received < expected and time.monotonic() < deadline:
        time.sleep(0.02)
        received = rx.count() - before
    return received


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200, help="instances per cell")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--associations", default="1,4")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--receivers", default="node,storescp,orthanc")
    args = parser.parse_args(argv)
    ensure_loopback_namespace(argv)
    logging.basicConfig(level=logging.WARNING)
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install dcmtk")

    assoc_counts = [int(a) for a in args.associations.split(",")]
    names = args.receivers.split(",")
    starters: dict[str, Callable[[Path], Receiver]] = {
        "storescp": start_storescp,
        "orthanc": start_orthanc,
    }
    receive_modes = set()
    for name in names:
        if name == "node" or name.startswith("node-"):
            # a wrong variant fails before anything starts
            receive_modes.add(node_options(name).get("receive_mode", "memory"))
            starters[name] = lambda path, name=name: start_node(path, name)
    if len(receive_modes) > 1:
        # pynetdicom's STORE_RECV_CHUNKED_DATASET is process-wide: the last node started
        # would decide for all of them
        raise SystemExit("node variants with different receive modes need separate runs")
    load_start = [round(v, 2) for v in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    receivers: list[Receiver] = []
    results: list[dict[str, Any]] = []
    try:
        for name in names:
            (work / name).mkdir(exist_ok=True)
            receivers.append(starters[name](work / name))
        source_kb = args.source.stat().st_size // 1024
        print(
            f"{args.files} copies of {args.source.name} ({source_kb} KB) per cell, "
            f"{args.reps} reps, receivers {names}, in a loopback-only netns"
        )
        for rep in range(args.reps):
            for n_assoc in assoc_counts:
                folders = make_files(
                    args.source, work / f"files-r{rep}-a{n_assoc}", args.files, n_assoc
                )
                n_sent = sum(len(list(f.glob("*.dcm"))) for f in folders)
                order = receivers[rep % len(receivers) :] + receivers[: rep % len(receivers)]
                for rx in order:
                    before, cpu_before = rx.count(), rx.cpu()
                    seconds, problems = send(folders, rx.port, rx.aet)
                    received = wait_count(rx, before, n_sent)
                    time.sleep(0.3)  # storescp --fork: its children's CPU counts once reaped
                    cpu = rx.cpu() - cpu_before
                    row = {
                        "receiver": rx.name,
                        "associations": n_assoc,
                        "rep": rep,
                        "sent": n_sent,
                        "received": received,
                        "seconds": round(seconds, 3),
                        "inst_per_s": round(received / seconds, 1),
                        "cpu_ms_per_inst": round(1000 * cpu / max(1, received), 2),
                        "problems": problems,
                    }
                    results.append(row)
                    note = f" {problems}" if problems else ""
                    print(
                        f"  rep {rep} {rx.name:<9} x{n_assoc}: {row['inst_per_s']:>7.1f} inst/s "
                        f"({received}/{n_sent} in {seconds:.2f} s){note}",
                        file=sys.stderr,
                    )
                shutil.rmtree(work / f"files-r{rep}-a{n_assoc}")
    finally:
        for rx in receivers:
            rx.stop()
        shutil.rmtree(work, ignore_errors=True)

    summary: dict[str, dict[int, float]] = {}
    print()
    print(
        "| receiver | associations | inst/s (median) | all reps | received/sent "
        "| receiver CPU ms/inst (median) |"
    )
    print("|---|---:|---:|---|---:|---:|")
    for rx_name in names:
        for n_assoc in assoc_counts:
            rows = [r for r in results if r["receiver"] == rx_name and r["associations"] == n_assoc]
            median = statistics.median(r["inst_per_s"] for r in rows)
            summary.setdefault(rx_name, {})[n_assoc] = median
            received = sum(r["received"] for r in rows)
            sent = sum(r["sent"] for r in rows)
            reps = ", ".join(f"{r['inst_per_s']:.0f}" for r in rows)
            cpu_ms = statistics.median(r["cpu_ms_per_inst"] for r in rows)
            print(
                f"| {rx_name} | {n_assoc} | {median:.1f} | {reps} | {received}/{sent} "
                f"| {cpu_ms:.2f} |"
            )

    goals: dict[str, Any] = {}
    for rx_name in names:
        if rx_name != "node" and not rx_name.startswith("node-"):
            continue
        node = summary[rx_name]
        prefix = "" if rx_name == "node" else f"{rx_name}:"
        if 1 in node and 1 in summary.get("orthanc", {}):
            ratio = node[1] / summary["orthanc"][1]
            goals[f"{prefix}node_vs_orthanc_1assoc"] = {
                "ratio": round(ratio, 2),
                "goal": ">= 1.0",
                "met": ratio >= 1.0,
            }
        if 4 in node and 4 in summary.get("storescp", {}):
            ratio = node[4] / summary["storescp"][4]
            goals[f"{prefix}node_vs_storescp_4assoc"] = {
                "ratio": round(ratio, 2),
                "goal": ">= 0.5",
                "met": ratio >= 0.5,
            }
        if 1 in node and 4 in node:
            ratio = node[4] / node[1]
            goals[f"{prefix}node_4assoc_vs_1assoc"] = {
                "ratio": round(ratio, 2),
                "goal": ">= 1.0",
                "met": ratio >= 1.0,
            }
    if goals:
        print()
        print("| goal (issues 10, 23) | ratio | target | met |")
        print("|---|---:|---|---|")
        for goal_name, g in goals.items():
            print(
                f"| {goal_name} | {g['ratio']:.2f} | {g['goal']} | {'yes' if g['met'] else 'no'} |"
            )
    failures = [r for r in results if r["problems"] or r["received"] != r["sent"]]
    print(
        json.dumps(
            {
                "bench": "ingest",
                "files_per_cell": args.files,
                "source": str(
                    args.source.relative_to(REPO)
                    if args.source.is_relative_to(REPO)
                    else args.source
                ),
                "source_kb": source_kb,
                "reps": args.reps,
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "loadavg_start": load_start,
                    "loadavg_end": [round(v, 2) for v in os.getloadavg()],
                },
                "median_inst_per_s": {
                    k: {str(a): v for a, v in d.items()} for k, d in summary.items()
                },
                "goals": goals,
                "runs": results,
                "failures": len(failures),
            }
        )
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
