"""kill -9 of a real node process mid-job (with its SCP in-process or in SCP processes), then a
restart on the same data_dir: what was acknowledged is processed and delivered once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_node.config import NodeSettings
from dicom_node.queue import JobQueue, JobStateValues
from dicom_node.service import NodeService

CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from dicom_node.config import NodeSettings
    from dicom_node.service import NodeService

    data_dir, dest_port, marker, port_file = sys.argv[1:5]

    def slow_engine(input_dir, output_dir, checkpoints):
        Path(marker).touch()
        time.sleep(120)
        return []

    settings = NodeSettings(
        data_dir=Path(data_dir), port=0, http_port=0, allowed_calling_aes=["TESTSCU"],
        study_quiet_seconds=0.3, poll_interval_seconds=0.05, min_free_disk_mb=0,
        destination="cstore", cstore_port=int(dest_port),
    )
    node = NodeService(settings, slow_engine)
    node.start()
    pids = getattr(node.scp, "pids", [])  # scp_processes > 1: the SCP processes
    Path(port_file + ".pids").write_text(" ".join(str(p) for p in pids))
    Path(port_file).write_text(str(node.scp_port))
    time.sleep(300)
    """
)


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("scp_processes", [1, 2])
def test_kill_9_mid_job_then_restart_delivers_once(
    kit, settings: NodeSettings, destination, ct_path: Path, tmp_path: Path, scp_processes: int
) -> None:
    marker = tmp_path / "engine-started"
    port_file = tmp_path / "port"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(settings.data_dir),
            str(destination.port),
            str(marker),
            str(port_file),
        ],
        env={
            **os.environ,
            "PYTHONPATH": str(Path(__file__).resolve().parents[3]),
            "DICOM_NODE_SCP_PROCESSES": str(scp_processes),
        },
    )
    scp_pids: list[int] = []
    try:
        assert _wait_for(lambda: port_file.exists() and port_file.read_text(), 60)
        scp_pids = [int(p) for p in Path(f"{port_file}.pids").read_text().split()]
        assert len(scp_pids) == (scp_processes if scp_processes > 1 else 0)
        study = generate_uid()
        files = [kit.new_instance(ct_path, study, tmp_path / "in") for _ in range(2)]
        assert kit.send_files(int(port_file.read_text()), files) == [0, 0]
        assert _wait_for(marker.exists, 30)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    # the SCP processes die with the node (no orphan keeps the port or writes the spool)
    assert _wait_for(lambda: not any(_alive(p) for p in scp_pids), 30)

    queue = JobQueue(settings.jobs_dir)
    assert len(list(queue.iter_jobs(JobStateValues.RUNNING))) == 1

    settings.destination = "cstore"
    settings.cstore_port = destination.port
    engine = kit.FakeEngine()
    node = NodeService(settings, engine)
    node.start()
    try:
        assert node.wait_until_idle(timeout=20)
    finally:
        node.stop()
    done = list(queue.iter_jobs(JobStateValues.DONE))
    assert len(done) == 1
    assert sorted(engine.calls[0][0]) == sorted(str(dcmread(f).SOPInstanceUID) for f in files)
    assert len(engine.calls) == 1
    assert len(destination.received) == 1
    assert done[0].attempts["process"] == 2
