"""NodeService end to end over real associations: quiet period, exactly-once, recovery, API."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_node.config import NodeSettings
from dicom_node.queue import INPUT_DIR, Job, JobQueue, JobStateValues, new_job_id
from dicom_node.service import NodeService

TOKEN = "test-token-0123456789"
ADMIN_TOKEN = "admin-token-9876543210"


@pytest.fixture
def node_settings(settings: NodeSettings, destination) -> NodeSettings:
    settings.destination = "cstore"
    settings.cstore_port = destination.port
    return settings


@pytest.fixture
def make_node(kit, node_settings: NodeSettings) -> Iterator[Callable[..., NodeService]]:
    started: list[NodeService] = []

    def make(engine=None, **kwargs: object) -> NodeService:
        node = NodeService(node_settings, engine or kit.FakeEngine(), **kwargs)
        node.start()
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()


def jobs_in(settings: NodeSettings, state: JobStateValues) -> list[Job]:
    return list(JobQueue(settings.jobs_dir).iter_jobs(state))


def test_quiet_period_makes_exactly_one_job(
    kit,
    make_node: Callable[..., NodeService],
    node_settings: NodeSettings,
    destination,
    ct_path: Path,
    instances_dir: Path,
) -> None:
    engine = kit.FakeEngine()
    done: list[Job] = []
    node = make_node(engine, on_result=done.append)
    study = generate_uid()
    files = [kit.new_instance(ct_path, study, instances_dir) for _ in range(3)]
    assert kit.send_files(node.scp_port, files) == [0, 0, 0]
    # still inside the quiet period: nothing queued yet
    assert node.queue is not None
    assert node.queue.active_count() == 0
    assert node.wait_until_idle(timeout=20)
    assert len(engine.calls) == 1
    assert sorted(engine.calls[0][0]) == sorted(dcmread(f).SOPInstanceUID for f in files)
    done_jobs = jobs_in(node_settings, JobStateValues.DONE)
    assert len(done_jobs) == 1
    assert done_jobs[0].results[0].score == pytest.approx(0.7)
    assert done_jobs[0].results[0].is_abnormal is True
    assert done_jobs[0].processing_seconds is not None
    assert [j.job_id for j in done] == [done_jobs[0].job_id]
    # one result (one SR) delivered, and it is ours
    assert len(destination.received) == 1
    assert destination.received[0][1] == "AI Anomaly Node"
    # the spool is empty again
    assert not list(node_settings.spool_dir.rglob("*.dcm"))


def test_resend_after_processing_makes_no_job_and_new_instance_does(
    kit,
    make_node: Callable[..., NodeService],
    node_settings: NodeSettings,
    destination,
    ct_path: Path,
    instances_dir: Path,
) -> None:
    engine = kit.FakeEngine()
    node = make_node(engine)
    study = generate_uid()
    files = [kit.new_instance(ct_path, study, instances_dir) for _ in range(2)]
    kit.send_files(node.scp_port, files)
    assert node.wait_until_idle(timeout=20)
    assert len(engine.calls) == 1

    # Orthanc sends the whole study again (e.g. it became stable again): nothing new
    kit.send_files(node.scp_port, files)
    assert node.wait_until_idle(timeout=20, settle=0.5)
    assert len(engine.calls) == 1
    assert len(jobs_in(node_settings, JobStateValues.DONE)) == 1
    assert len(destination.received) == 1
    assert node.metrics.snapshot()["duplicates_skipped_total"] == 2

    # a late, new instance of the same study: a new job with only that instance
    late = kit.new_instance(ct_path, study, instances_dir)
    kit.send_files(node.scp_port, [*files, late])
    assert node.wait_until_idle(timeout=20, settle=0.5)
    assert len(engine.calls) == 2
    assert engine.calls[1][0] == [str(dcmread(late).SOPInstanceUID)]
    assert len(jobs_in(node_settings, JobStateValues.DONE)) == 2
    assert len(destination.received) == 2


def test_own_outputs_never_start_a_job(
    kit,
    make_node: Callable[..., NodeService],
    node_settings: NodeSettings,
    ct_path: Path,
) -> None:
    engine = kit.FakeEngine()
    node = make_node(engine)
    ds = dcmread(ct_path)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.SOPInstanceUID = generate_uid()
    ds.Manufacturer = "AI Anomaly Node"
    assert kit.send_dataset(node.scp_port, ds) == 0
    assert node.wait_until_idle(timeout=5, settle=0.6)
    assert engine.calls == []
    assert node.metrics.snapshot()["own_outputs_ignored_total"] == 1


def _stage_job(queue: JobQueue, files: list[Path]) -> Job:
    """Put a job into ready/ the way the router does (used to build post-crash states)."""
    headers = [dcmread(f, stop_before_pixels=True) for f in files]
    job = Job(
        job_id=new_job_id(),
        study_instance_uid=str(headers[0].StudyInstanceUID),
        checkpoints=["default-cxr"],
        sop_instance_uids=[str(h.SOPInstanceUID) for h in headers],
    )
    folder = queue.stage(job)
    for f in files:
        f.replace(folder / INPUT_DIR / f.name)
    queue.commit(job)
    return job


def test_restart_resumes_interrupted_jobs(
    kit,
    node_settings: NodeSettings,
    destination,
    ct_path: Path,
    tmp_path: Path,
    make_node: Callable[..., NodeService],
) -> None:
    # The on-disk state a kill -9 leaves: one job mid-run (running/, partial output),
    # one with results waiting in the outbox, one half-created in staging/.
    queue = JobQueue(node_settings.jobs_dir)
    running = _stage_job(queue, [kit.new_instance(ct_path, generate_uid(), tmp_path / "a")])
    claimed = queue.claim()
    assert claimed is not None
    assert claimed.job_id == running.job_id
    (queue.job_dir(claimed) / "output" / "partial.dcm").write_bytes(b"half a file")

    outbox_job = _stage_job(queue, [kit.new_instance(ct_path, generate_uid(), tmp_path / "b")])
    claimed2 = queue.claim()
    assert claimed2 is not None
    kit.FakeEngine()(queue.job_dir(claimed2) / "input", queue.job_dir(claimed2) / "output", ["x"])
    queue.move(claimed2, JobStateValues.SENDING)

    staged_study = generate_uid()
    staged = Job(job_id=new_job_id(), study_instance_uid=staged_study, checkpoints=["default-cxr"])
    folder = queue.stage(staged)
    queue.save(staged, folder)
    kit.new_instance(ct_path, staged_study, tmp_path / "c").replace(folder / INPUT_DIR / "x.dcm")

    engine = kit.FakeEngine()
    node = make_node(engine)
    assert node.wait_until_idle(timeout=20)
    done = {j.job_id for j in jobs_in(node_settings, JobStateValues.DONE)}
    assert running.job_id in done
    assert outbox_job.job_id in done
    assert len(done) == 3  # the staged study was rolled back to the spool and routed again
    assert len(engine.calls) == 2
    # three result files delivered; the half-written one never was
    assert len(destination.received) == 3
    assert not jobs_in(node_settings, JobStateValues.FAILED)


def test_engine_failure_retries_then_dead_letters(
    kit,
    make_node: Callable[..., NodeService],
    node_settings: NodeSettings,
    ct_path: Path,
    instances_dir: Path,
) -> None:
    node_settings.process_max_attempts = 2
    engine = kit.FakeEngine()
    engine.fail_with = MemoryError("pretend OOM")
    node = make_node(engine)
    study = generate_uid()
    f = kit.new_instance(ct_path, study, instances_dir)
    kit.send_files(node.scp_port, [f])
    assert node.wait_until_idle(timeout=20)
    failed = jobs_in(node_settings, JobStateValues.FAILED)
    assert len(failed) == 1
    assert failed[0].attempts["process"] == 2
    error = JobQueue(node_settings.jobs_dir).read_error(failed[0])
    assert error is not None
    assert error["stage"] == "process"
    assert error["type"] == "MemoryError"
    assert "pretend OOM" in str(error["traceback"])
    # a failed job does not block the study: sending it again processes it
    engine.fail_with = None
    kit.send_files(node.scp_port, [f])
    assert node.wait_until_idle(timeout=20)
    assert len(jobs_in(node_settings, JobStateValues.DONE)) == 1


def test_engine_input_error_is_not_retried(
    kit,
    make_node: Callable[..., NodeService],
    node_settings: NodeSettings,
    ct_path: Path,
    instances_dir: Path,
) -> None:
    from ai_engine.errors import UnsupportedInputError

    node_settings.process_max_attempts = 5
    engine = kit.FakeEngine()
    engine.fail_with = UnsupportedInputError("no readable image")
    node = make_node(engine)
    kit.send_files(node.scp_port, [kit.new_instance(ct_path, generate_uid(), instances_dir)])
    assert node.wait_until_idle(timeout=20)
    failed = jobs_in(node_settings, JobStateValues.FAILED)
    assert len(failed) == 1
    assert failed[0].attempts["process"] == 1


# --------------------------------------------------------------------------- HTTP API


def _api(node: NodeService, path: str, token: str | None = None, method: str = "GET"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(
        method, f"http://127.0.0.1:{node.http_port}{path}", headers=headers, timeout=5
    )


def test_http_api_with_token(
    kit,
    make_node: Callable[..., NodeService],
    node_settings: NodeSettings,
    ct_path: Path,
    instances_dir: Path,
) -> None:
    from pydantic import SecretStr

    node_settings.http_port = kit.free_port()
    node_settings.api_token = SecretStr(TOKEN)
    node_settings.api_admin_token = SecretStr(ADMIN_TOKEN)
    node_settings.study_quiet_seconds = 30  # only process-now completes the study
    node = make_node(kit.FakeEngine(score=0.2))

    assert _api(node, "/health").status_code == 200
    for path in ("/ready", "/metrics", "/jobs", "/studies/scores"):
        r = _api(node, path)
        assert r.status_code == 401, path
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert _api(node, path, "wrong").status_code == 401
    assert _api(node, "/ready", TOKEN).json()["ready"] is True

    study = generate_uid()
    kit.send_files(node.scp_port, [kit.new_instance(ct_path, study, instances_dir)])
    assert _api(node, f"/studies/{study}/process-now", method="POST").status_code == 401
    # the read-only token cannot change state
    assert _api(node, f"/studies/{study}/process-now", TOKEN, "POST").status_code == 403
    assert _api(node, "/studies/1.2.3.4/process-now", ADMIN_TOKEN, "POST").status_code == 404
    r = _api(node, f"/studies/{study}/process-now", ADMIN_TOKEN, "POST")
    assert r.status_code == 202
    assert node.wait_until_idle(timeout=10)

    jobs = _api(node, "/jobs", TOKEN).json()
    assert len(jobs) == 1
    assert jobs[0]["state"] == "done"
    detail = _api(node, f"/jobs/{jobs[0]['job_id']}", TOKEN).json()
    assert detail["study_instance_uid"] == study
    assert detail["error"] is None
    assert _api(node, "/jobs/nonexistent", TOKEN).status_code == 404
    assert _api(node, "/jobs?state=bogus", TOKEN).status_code == 400

    scores = _api(node, f"/studies/scores?study_instance_uid={study}", TOKEN).json()
    assert len(scores) == 1
    row = scores[0]
    assert row["study_instance_uid"] == study
    assert row["score"] == pytest.approx(0.2)
    assert row["is_abnormal"] is False
    assert row["threshold"] == pytest.approx(0.5)
    assert row["model"] == "default-cxr"
    assert row["finished_at"]
    assert _api(node, "/studies/scores?study_instance_uid=1.2.3", TOKEN).json() == []

    metrics = _api(node, "/metrics", TOKEN)
    assert metrics.headers["Content-Type"].startswith("text/plain")
    text = metrics.text
    assert "# TYPE dicom_node_instances_received_total counter" in text
    assert "dicom_node_instances_received_total 1" in text
    assert "dicom_node_jobs_queued_total 1" in text
    assert "dicom_node_jobs_processed_total 1" in text
    assert "dicom_node_jobs_failed_total 0" in text
    assert 'dicom_node_jobs{state="done"} 1' in text


def test_http_api_without_token_is_open(
    kit, make_node: Callable[..., NodeService], node_settings: NodeSettings
) -> None:
    node_settings.http_port = kit.free_port()
    node = make_node()
    assert _api(node, "/jobs").json() == []
    assert _api(node, "/studies/scores").json() == []
    assert _api(node, "/ready").status_code == 200


def test_http_disabled_with_port_zero(kit, make_node: Callable[..., NodeService]) -> None:
    node = make_node()
    assert node.http_port == 0
    time.sleep(0)
