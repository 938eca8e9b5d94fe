"""Scaled-out parts without a broker: the worker's claim, lease and take-over, the dispatcher.

The end-to-end test with a real redis-server and worker processes is
tests/integration/test_distributed.py.
"""

from __future__ import annotations

import shutil
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_node.__main__ import main
from dicom_node.config import NodeSettings, load_settings
from dicom_node.distributed import (
    Dispatcher,
    JobRunner,
    TaskOutcomeValues,
    _Heartbeat,
    _write_lease,
    lease_token,
)
from dicom_node.errors import ConfigError
from dicom_node.index import STATE_FAILED, STATE_QUEUED, StateIndex
from dicom_node.metrics import Metrics
from dicom_node.queue import (
    INPUT_DIR,
    Job,
    JobQueue,
    JobStageValues,
    JobStateValues,
    new_job_id,
    utcnow,
)


@pytest.fixture
def dist_settings(settings: NodeSettings) -> NodeSettings:
    settings.broker_url = "redis://127.0.0.1:9/0"  # type: ignore[assignment]
    settings.worker_lease_seconds = 0.5
    settings.process_backoff_seconds = 0
    return settings


def queue_job(kit, settings: NodeSettings, ct_path: Path, tmp_path: Path) -> Job:
    queue = JobQueue(settings.jobs_dir)
    src = kit.new_instance(ct_path, None, tmp_path / "src")
    ds = dcmread(src, stop_before_pixels=True)
    job = Job(
        job_id=new_job_id(),
        study_instance_uid=str(ds.StudyInstanceUID),
        checkpoints=["default-cxr"],
        sop_instance_uids=[str(ds.SOPInstanceUID)],
    )
    folder = queue.stage(job)
    shutil.copy(src, folder / INPUT_DIR / src.name)
    queue.commit(job)
    return job


def test_worker_claims_runs_and_ignores_a_second_message(
    kit, dist_settings: NodeSettings, ct_path: Path, tmp_path: Path
) -> None:
    job = queue_job(kit, dist_settings, ct_path, tmp_path)
    engine = kit.FakeEngine()
    runner = JobRunner(dist_settings, engine)
    assert runner.handle(job.job_id) is TaskOutcomeValues.PROCESSED
    queue = JobQueue(dist_settings.jobs_dir)
    sent = queue.load(JobStateValues.SENDING, job.job_id)
    assert sent.attempts["process"] == 1
    assert len(sent.results) == 1
    assert lease_token(queue.job_dir(sent)) is not None
    # A duplicate message (redelivery, re-dispatch) finds nothing to do.
    assert runner.handle(job.job_id) is TaskOutcomeValues.GONE
    assert runner.handle("../etc") is TaskOutcomeValues.GONE
    assert len(engine.calls) == 1


def test_results_of_a_run_whose_lease_was_taken_over_are_discarded(
    kit, dist_settings: NodeSettings, ct_path: Path, tmp_path: Path
) -> None:
    job = queue_job(kit, dist_settings, ct_path, tmp_path)
    running = JobQueue(dist_settings.jobs_dir).state_dir(JobStateValues.RUNNING) / job.job_id
    fake = kit.FakeEngine()

    def engine(input_dir, output_dir, checkpoints):
        # Another worker took the job over while this one was running.
        _write_lease(running, "someone-else", "other:1", 0)
        return fake(input_dir, output_dir, checkpoints)

    dist_settings.worker_lease_seconds = 60  # the heartbeat does not run during this call
    assert JobRunner(dist_settings, engine).handle(job.job_id) is TaskOutcomeValues.LOST
    assert running.is_dir()  # not moved to the outbox by the loser
    assert lease_token(running) == "someone-else"


def test_job_of_a_dead_worker_is_taken_over_and_counted_as_a_second_attempt(
    kit, dist_settings: NodeSettings, ct_path: Path, tmp_path: Path
) -> None:
    job = queue_job(kit, dist_settings, ct_path, tmp_path)
    queue = JobQueue(dist_settings.jobs_dir)
    claimed = queue.claim()
    assert claimed is not None
    _write_lease(queue.job_dir(claimed), "dead", "gone:1", 3)  # never renewed again
    (queue.job_dir(claimed) / "output" / "partial.dcm").write_bytes(b"half")
    engine = kit.FakeEngine()
    assert JobRunner(dist_settings, engine).handle(job.job_id) is TaskOutcomeValues.PROCESSED
    sent = queue.load(JobStateValues.SENDING, job.job_id)
    assert sent.attempts["process"] == 2
    assert not (queue.job_dir(sent) / "output" / "partial.dcm").exists()
    assert len(engine.calls) == 1


def test_job_that_lost_its_worker_too_often_is_dead_lettered(
    kit, dist_settings: NodeSettings, ct_path: Path, tmp_path: Path
) -> None:
    job = queue_job(kit, dist_settings, ct_path, tmp_path)
    queue = JobQueue(dist_settings.jobs_dir)
    for attempt in range(1, dist_settings.process_max_attempts + 1):
        if attempt > 1:  # the previous worker died; this one is taken over and killed too
            running = queue.load(JobStateValues.RUNNING, job.job_id)
            queue.move(running, JobStateValues.QUEUED)
        claimed = queue.claim()
        assert claimed is not None
        assert claimed.attempts["process"] == attempt
        _write_lease(queue.job_dir(claimed), f"dead{attempt}", "gone:1", 0)
    engine = kit.FakeEngine()
    outcome = JobRunner(dist_settings, engine).handle(job.job_id)
    assert outcome is TaskOutcomeValues.DEAD_LETTERED
    failed = queue.load(JobStateValues.FAILED, job.job_id)
    error = queue.read_error(failed)
    assert error is not None
    assert error["type"] == "WorkerLostError"
    assert engine.calls == []


def test_job_of_a_live_worker_is_left_alone(
    kit, dist_settings: NodeSettings, ct_path: Path, tmp_path: Path
) -> None:
    job = queue_job(kit, dist_settings, ct_path, tmp_path)
    queue = JobQueue(dist_settings.jobs_dir)
    claimed = queue.claim()
    assert claimed is not None
    folder = queue.job_dir(claimed)
    engine = kit.FakeEngine()
    with _Heartbeat(folder, "alive", "live:1", interval=0.02):
        outcome = JobRunner(dist_settings, engine).handle(job.job_id)
    assert outcome is TaskOutcomeValues.OWNED
    assert folder.is_dir()
    assert lease_token(folder) == "alive"
    assert engine.calls == []


def test_a_job_not_due_yet_is_not_run(
    kit, dist_settings: NodeSettings, ct_path: Path, tmp_path: Path
) -> None:
    job = queue_job(kit, dist_settings, ct_path, tmp_path)
    queue = JobQueue(dist_settings.jobs_dir)
    loaded = queue.load(JobStateValues.QUEUED, job.job_id)
    loaded.next_retry_at = utcnow() + timedelta(hours=1)
    queue.save(loaded)
    engine = kit.FakeEngine()
    assert JobRunner(dist_settings, engine).handle(job.job_id) is TaskOutcomeValues.NOT_DUE
    assert engine.calls == []


def test_dispatcher_sends_each_attempt_once_follows_leases_and_records_failures(
    kit, dist_settings: NodeSettings, ct_path: Path, tmp_path: Path
) -> None:
    sent: list[str] = []
    queue = JobQueue(dist_settings.jobs_dir)
    index = StateIndex(dist_settings.state_db)
    metrics = Metrics()
    try:
        dispatcher = Dispatcher(dist_settings, queue, index, metrics, send=sent.append)
        job = queue_job(kit, dist_settings, ct_path, tmp_path)
        index.claim(job.job_id, job.study_instance_uid, [("1.2.3", "default-cxr", "1")])
        assert dispatcher.run_once()
        assert not dispatcher.run_once()  # sent once, not again
        assert sent == [job.job_id]

        # A worker claims it and dies: its lease never changes; the id is sent again.
        claimed = queue.claim()
        assert claimed is not None
        _write_lease(queue.job_dir(claimed), "dead", "gone:1", 0)
        dispatcher.run_once()
        threading.Event().wait(dist_settings.worker_lease_seconds + 0.1)
        assert dispatcher.run_once()
        assert sent == [job.job_id, job.job_id]

        # Another worker dead-letters it: the node marks the index and counts it.
        claimed.next_retry_at = None
        queue.record_failure(
            claimed,
            JobStageValues.PROCESS,
            RuntimeError("boom"),
            retryable=False,
            max_attempts=1,
            backoff_seconds=0,
        )
        assert dispatcher.run_once()
        assert index.job_ids(STATE_FAILED) == {job.job_id}
        assert metrics.snapshot()["jobs_failed_total"] == 1
    finally:
        index.close()


def test_dispatcher_recover_marks_jobs_dead_lettered_while_the_node_was_down(
    kit, dist_settings: NodeSettings, ct_path: Path, tmp_path: Path
) -> None:
    queue = JobQueue(dist_settings.jobs_dir)
    index = StateIndex(dist_settings.state_db)
    try:
        failed = queue_job(kit, dist_settings, ct_path, tmp_path)
        waiting = queue_job(kit, dist_settings, ct_path, tmp_path)
        index.claim(failed.job_id, failed.study_instance_uid, [("1.1", "default-cxr", "1")])
        index.claim(waiting.job_id, waiting.study_instance_uid, [("1.2", "default-cxr", "1")])
        queue.move(queue.load(JobStateValues.QUEUED, failed.job_id), JobStateValues.FAILED)
        dispatcher = Dispatcher(dist_settings, queue, index, Metrics(), send=lambda _: None)
        assert dispatcher.recover() == 1
        assert index.job_ids(STATE_FAILED) == {failed.job_id}
        assert index.job_ids(STATE_QUEUED) == {waiting.job_id}
    finally:
        index.close()


def test_broker_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="broker_url"):
        load_settings(data_dir=tmp_path, broker_url="localhost:6379")
    with pytest.raises(ConfigError, match="worker_engine"):
        load_settings(data_dir=tmp_path, worker_engine="not an import path")
    settings = load_settings(data_dir=tmp_path, broker_url="redis://:secret@host:6379/0")
    assert "secret" not in repr(settings)


def test_worker_command_without_broker_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DICOM_NODE_BROKER_URL", raising=False)
    assert main(["worker", "--log-level", "WARNING"]) == 2
    assert "DICOM_NODE_BROKER_URL" in capsys.readouterr().err
