"""Delivery: STOW-RS retries against a tiny local HTTP server (503 then 200), dead letters."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_node.config import NodeSettings
from dicom_node.errors import SendError
from dicom_node.index import StateIndex
from dicom_node.metrics import Metrics
from dicom_node.queue import Job, JobQueue, JobStateValues, new_job_id
from dicom_node.sender import DicomWebSender, Outbox, build_sender


class StowServer:
    """Answers STOW-RS POSTs with scripted statuses and records every request."""

    def __init__(self, statuses: list[int], failed_reason: int | None = None) -> None:
        self.statuses = list(statuses)
        self.failed_reason = failed_reason
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                outer.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                status = outer.statuses.pop(0) if outer.statuses else 200
                payload: dict = {}
                if status == 200 and outer.failed_reason is not None:
                    payload = {
                        "00081198": {
                            "vr": "SQ",
                            "Value": [{"00081197": {"vr": "US", "Value": [outer.failed_reason]}}],
                        }
                    }
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stow() -> Iterator[StowServer]:
    server = StowServer([503, 200])
    yield server
    server.stop()


def _outbox_job(settings: NodeSettings, kit, ct_path: Path) -> tuple[JobQueue, Job, str]:
    """A job with one result file waiting in the outbox."""
    queue = JobQueue(settings.jobs_dir)
    job = Job(job_id=new_job_id(), study_instance_uid=generate_uid(), checkpoints=["x"])
    folder = queue.stage(job)
    queue.save(job, folder)
    kit.new_instance(ct_path, job.study_instance_uid, folder / "input")
    queue.commit(job)
    claimed = queue.claim()
    assert claimed is not None
    folder = queue.job_dir(claimed)
    out = kit.FakeEngine()(folder / "input", folder / "output", ["x"])
    sop = str(dcmread(out[0]["files"][0]).SOPInstanceUID)
    queue.move(claimed, JobStateValues.SENDING)
    return queue, claimed, sop


def test_stow_retries_503_then_delivers_once(
    kit, settings: NodeSettings, stow: StowServer, ct_path: Path
) -> None:
    settings = NodeSettings(
        **{
            **settings.model_dump(),
            "orthanc_url": stow.url,
            "orthanc_username": "ainode",
            "orthanc_password": "pw-for-test",
        }
    )
    queue, job, sop = _outbox_job(settings, kit, ct_path)
    index = StateIndex(settings.state_db)
    done: list[Job] = []
    outbox = Outbox(settings, queue, index, Metrics(), build_sender(settings), done.append)

    assert outbox.run_once()
    waiting = queue.load(JobStateValues.SENDING, job.job_id)
    assert waiting.attempts["send"] == 1
    assert waiting.next_retry_at is not None
    assert waiting.last_error is not None
    assert waiting.last_error.retryable is True
    assert "503" in waiting.last_error.message
    assert done == []

    deadline = time.monotonic() + 5
    while not done and time.monotonic() < deadline:
        outbox.run_once()
        time.sleep(0.02)
    assert len(done) == 1
    assert queue.load(JobStateValues.DONE, job.job_id).attempts["send"] == 2
    assert len(stow.requests) == 2
    for req in stow.requests:
        assert req["path"] == "/dicom-web/studies"
        assert req["headers"]["Content-Type"].startswith("multipart/related")
        assert sop.encode() in req["body"]
        expected = base64.b64encode(b"ainode:pw-for-test").decode()
        assert req["headers"]["Authorization"] == f"Basic {expected}"
    assert not list(queue.state_dir(JobStateValues.SENDING).iterdir())
    index.close()


def test_bearer_token(kit, stow: StowServer, ct_path: Path, tmp_path: Path) -> None:
    stow.statuses = []
    sender = DicomWebSender(stow.url, token="tok-123")
    sender.send([ct_path])
    assert stow.requests[0]["headers"]["Authorization"] == "Bearer tok-123"


@pytest.mark.parametrize(
    ("statuses", "failed_reason", "retryable"),
    [
        ([400], None, False),
        ([409], None, False),
        ([500], None, True),
        ([429], None, True),
        ([200], 0xC000, False),
        ([200], 0xA700, True),
    ],
)
def test_stow_error_classification(
    ct_path: Path, statuses: list[int], failed_reason: int | None, retryable: bool
) -> None:
    server = StowServer(statuses, failed_reason)
    try:
        with pytest.raises(SendError) as info:
            DicomWebSender(server.url).send([ct_path])
        assert info.value.retryable is retryable
    finally:
        server.stop()


def test_pacs_down_is_retryable(kit, ct_path: Path) -> None:
    port = kit.free_port()  # nothing listens there
    with pytest.raises(SendError) as info:
        DicomWebSender(f"http://127.0.0.1:{port}/dicom-web", timeout=2).send([ct_path])
    assert info.value.retryable is True


def test_refused_content_dead_letters(kit, settings: NodeSettings, ct_path: Path) -> None:
    server = StowServer([400])
    try:
        settings.orthanc_url = server.url
        queue, job, _ = _outbox_job(settings, kit, ct_path)
        index = StateIndex(settings.state_db)
        metrics = Metrics()
        Outbox(settings, queue, index, metrics, build_sender(settings)).run_once()
        failed = queue.load(JobStateValues.FAILED, job.job_id)
        assert failed.failed_stage == "send"
        error = queue.read_error(failed)
        assert error is not None
        assert error["stage"] == "send"
        assert error["type"] == "SendError"
        assert metrics.snapshot()["jobs_failed_total"] == 1
        index.close()
    finally:
        server.stop()


def test_send_attempts_are_bounded(kit, settings: NodeSettings, ct_path: Path) -> None:
    server = StowServer([503] * 10)
    try:
        settings.orthanc_url = server.url
        settings.send_max_attempts = 3
        settings.send_backoff_seconds = 0
        queue, job, _ = _outbox_job(settings, kit, ct_path)
        index = StateIndex(settings.state_db)
        outbox = Outbox(settings, queue, index, Metrics(), build_sender(settings))
        for _ in range(5):
            outbox.run_once()
        failed = queue.load(JobStateValues.FAILED, job.job_id)
        assert failed.attempts["send"] == 3
        assert len(server.requests) == 3
        index.close()
    finally:
        server.stop()


def test_node_delivers_after_pacs_recovers(
    kit, settings: NodeSettings, ct_path: Path, instances_dir: Path
) -> None:
    """The whole node with STOW-RS: the PACS answers 503 twice, then accepts."""
    from dicom_node.service import NodeService

    server = StowServer([503, 503, 200])
    settings.orthanc_url = server.url
    node = NodeService(settings, kit.FakeEngine())
    node.start()
    try:
        kit.send_files(node.scp_port, [kit.new_instance(ct_path, generate_uid(), instances_dir)])
        assert node.wait_until_idle(timeout=20)
        assert len(server.requests) == 3
        assert len(list(node.queue.iter_jobs(JobStateValues.DONE))) == 1
    finally:
        node.stop()
        server.stop()
