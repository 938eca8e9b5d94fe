"""Scaled-out node: a real redis-server, the node with ``broker_url``, two real worker processes.

One worker (its engine runs in a child process of the worker) is killed with SIGKILL in the
middle of a job; the other must take the job over, and every study's result must be
delivered exactly once (by real C-STORE).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, StoragePresentationContexts, evt

from devstack.processes import free_port
from dicom_node.config import NodeSettings
from dicom_node.queue import JobQueue, JobStateValues
from dicom_node.service import NodeService

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests/data/dicom/kermany_normal_mono1/kermany_normal_mono1.dcm"
LEASE_SECONDS = 1.5
STUDIES = 4


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on a free loopback port, no persistence."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (Debian package; scripts/setup.sh installs it)")
    port = free_port()
    data = tmp_path / "redis"
    data.mkdir()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(data)],
        stdout=(data / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        client = redis.Redis(host="127.0.0.1", port=port)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.exceptions.ConnectionError:
                return False

        wait_for(up, 15, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Destination:
    """A real C-STORE SCP receiving the node's results (records study and SOP UIDs)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str]] = []
        self.ae = AE(ae_title="ORTHANC")
        for cx in AllStoragePresentationContexts:
            self.ae.add_supported_context(
                cx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
            )
        self.server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event) -> int:
        ds = event.dataset
        self.received.append((str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)))
        return 0x0000

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


def send_study(port: int, path: Path) -> None:
    ae = AE(ae_title="TESTSCU")
    for cx in StoragePresentationContexts[:120]:
        ae.add_requested_context(cx.abstract_syntax, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    assert assoc.is_established
    try:
        assert int(assoc.send_c_store(path).Status) == 0x0000
    finally:
        assoc.release()


def make_study(out_dir: Path) -> tuple[str, Path]:
    ds = dcmread(SAMPLE)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return str(ds.StudyInstanceUID), path


def engine_log(path: Path) -> list[tuple[str, int, str]]:
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(r[0], int(r[1]), r[2]) for r in rows]


def parent_pid(pid: int) -> int:
    """The parent of a running process (a worker's engine process -> the worker)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_two_workers_one_killed_mid_job_every_study_delivered_once(
    tmp_path: Path, redis_url: str
) -> None:
    data_dir = tmp_path / "node"
    hold_dir = tmp_path / "hold"
    hold_dir.mkdir()
    log = tmp_path / "engine.log"
    destination = Destination()
    settings = NodeSettings(
        data_dir=data_dir,
        port=0,
        http_port=free_port(),
        allowed_calling_aes=["TESTSCU"],
        study_quiet_seconds=0.3,
        poll_interval_seconds=0.1,
        min_free_disk_mb=0,
        destination="cstore",
        cstore_port=destination.port,
        broker_url=redis_url,
        worker_lease_seconds=LEASE_SECONDS,
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)]),
        "DICOM_NODE_DATA_DIR": str(data_dir),
        "DICOM_NODE_BROKER_URL": redis_url,
        "DICOM_NODE_WORKER_LEASE_SECONDS": str(LEASE_SECONDS),
        "DICOM_NODE_WORKER_ENGINE": "standin_engine:run",
        "STANDIN_ENGINE_LOG": str(log),
        "STANDIN_ENGINE_HOLD_DIR": str(hold_dir),
        "STANDIN_ENGINE_SECONDS": "0.2",
    }
    node = NodeService(settings)
    node.start()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(2):
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "dicom_node", "worker", "--log-level", "INFO"],
                    env=env,
                    stdout=(tmp_path / f"worker{i}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )
        api = f"http://127.0.0.1:{node.http_port}"
        studies = [make_study(tmp_path / "in" / str(i)) for i in range(STUDIES)]
        held_uid = studies[0][0]
        (hold_dir / f"hold-{held_uid}").touch()

        # The held study: a worker starts it and waits; the job API shows it running.
        send_study(node.scp_port, studies[0][1])
        wait_for(lambda: any(e[2] == held_uid for e in engine_log(log)), 40, "held job start")
        # the engine runs in a child process of its worker (as in the embedded node)
        victim_engine = next(pid for ev, pid, uid in engine_log(log) if uid == held_uid)
        victim = parent_pid(victim_engine)
        assert victim in {w.pid for w in workers}
        running = requests.get(f"{api}/jobs", params={"state": "running"}, timeout=5).json()
        assert [j["study_instance_uid"] for j in running] == [held_uid]

        os.kill(victim, signal.SIGKILL)
        killed = next(w for w in workers if w.pid == victim)
        survivor = next(w for w in workers if w.pid != victim)
        killed.wait(timeout=10)
        (hold_dir / f"hold-{held_uid}").unlink()
        for _, path in studies[1:]:
            send_study(node.scp_port, path)

        def all_done() -> bool:
            jobs = requests.get(f"{api}/jobs", timeout=5).json()
            return len(jobs) == STUDIES and all(j["state"] == "done" for j in jobs)

        wait_for(all_done, 45, "all jobs done")
        assert survivor.poll() is None, "the surviving worker died"
        survivor_engine = next(
            pid for ev, pid, uid in engine_log(log) if uid == held_uid and pid != victim_engine
        )
        assert parent_pid(survivor_engine) == survivor.pid

        # The dispatcher counts a processed job when its next pass sees it leave running/,
        # which can come after the sender delivered it: the counts may lag /jobs by a pass.
        def counted() -> bool:
            metrics = requests.get(f"{api}/metrics", timeout=5).text.splitlines()
            return (
                f"dicom_node_jobs_processed_total {STUDIES}" in metrics
                and f"dicom_node_jobs_sent_total {STUDIES}" in metrics
            )

        wait_for(counted, 5, "metrics count every job processed and sent")
        metrics = requests.get(f"{api}/metrics", timeout=5).text.splitlines()
        assert f"dicom_node_jobs_processed_total {STUDIES}" in metrics
        assert f"dicom_node_jobs_sent_total {STUDIES}" in metrics
        assert "dicom_node_jobs_failed_total 0" in metrics
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=15)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        node.stop()
        destination.server.shutdown()

    # Every study's result was delivered exactly once.
    assert sorted(Counter(s for s, _ in destination.received).items()) == sorted(
        (uid, 1) for uid, _ in studies
    )
    # The engine finished each study once; the held one was started by the killed worker
    # and re-run (and finished) by the survivor.
    events = engine_log(log)
    assert Counter(uid for ev, _, uid in events if ev == "end") == {uid: 1 for uid, _ in studies}
    held = [(ev, pid) for ev, pid, uid in events if uid == held_uid]
    assert held == [("start", victim_engine), ("start", survivor_engine), ("end", survivor_engine)]
    # The job folders (the truth) and the node's metrics agree.
    queue = JobQueue(data_dir / "jobs")
    assert queue.counts() == {"queued": 0, "running": 0, "sending": 0, "done": STUDIES, "failed": 0}
    done = {job.study_instance_uid: job for job in queue.iter_jobs(JobStateValues.DONE)}
    assert done[held_uid].attempts["process"] == 2
    assert all(done[uid].attempts["process"] == 1 for uid, _ in studies[1:])
    assert all(len(job.sent_files) == 1 for job in done.values())
