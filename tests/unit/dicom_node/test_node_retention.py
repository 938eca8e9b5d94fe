"""Retention clean-up: old done/failed jobs, quarantine and index rows go; nothing undelivered."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

from pydicom.uid import generate_uid

from dicom_node.config import NodeSettings
from dicom_node.index import StateIndex
from dicom_node.metrics import Metrics
from dicom_node.queue import Job, JobQueue, JobStateValues, new_job_id, utcnow
from dicom_node.retention import Cleaner
from dicom_node.service import NodeService
from dicom_node.spool import Spool

DAY = timedelta(days=1)


def make_job(queue: JobQueue, index: StateIndex, state: JobStateValues, age_days: float) -> Job:
    """A job in ``state`` that finished (or was last touched) ``age_days`` ago."""
    job = Job(job_id=new_job_id(), study_instance_uid=generate_uid(), checkpoints=["c"])
    job.sop_instance_uids = [generate_uid()]
    folder = queue.stage(job)
    (folder / "input" / "x.dcm").write_bytes(b"x")
    index.claim(job.job_id, job.study_instance_uid, [(job.sop_instance_uids[0], "c", "1")])
    queue.commit(job)
    if state is not JobStateValues.QUEUED:
        queue.move(job, state)
    when = utcnow() - age_days * DAY
    if state is JobStateValues.DONE:
        job.finished_at = when
        index.record_done(job)
    elif state is JobStateValues.FAILED:
        index.set_state(job.job_id, "failed")
    queue.save(job)
    # save() stamps updated_at with now; rewrite it to the wanted age
    path = queue.job_dir(job) / "job.json"
    aged = Job.model_validate_json(path.read_bytes()).model_copy(update={"updated_at": when})
    path.write_text(aged.model_dump_json())
    index._db.execute(
        "UPDATE processed SET updated_at = ? WHERE job_id = ?", (when.isoformat(), job.job_id)
    )
    return job


def test_cleaner_removes_only_finished_and_old(settings: NodeSettings, tmp_path: Path) -> None:
    settings.retention_days_done = 7
    settings.retention_days_failed = 30
    settings.retention_days_index = 60
    queue = JobQueue(settings.jobs_dir)
    index = StateIndex(settings.state_db)
    spool = Spool(settings.spool_dir)
    old_done = make_job(queue, index, JobStateValues.DONE, 10)
    new_done = make_job(queue, index, JobStateValues.DONE, 1)
    old_failed = make_job(queue, index, JobStateValues.FAILED, 40)
    new_failed = make_job(queue, index, JobStateValues.FAILED, 10)
    # not delivered yet, however old: never touched
    undelivered = [
        make_job(queue, index, state, 400)
        for state in (JobStateValues.QUEUED, JobStateValues.RUNNING, JobStateValues.SENDING)
    ]
    spooled = spool.store(generate_uid(), generate_uid(), b"DICM")
    long_ago = time.time() - 400 * 86400
    os.utime(spooled, (long_ago, long_ago))
    quarantine = settings.data_dir / "quarantine"
    quarantine.mkdir()
    (quarantine / "old.dcm").write_bytes(b"x")
    os.utime(quarantine / "old.dcm", (long_ago, long_ago))
    (quarantine / "new.dcm").write_bytes(b"x")
    index.record_not_routed("1.2.3", ["1.2.3.4"], "fallback")

    metrics = Metrics()
    report = Cleaner(settings, queue, index, metrics).run_once()

    assert (report.done_jobs, report.failed_jobs, report.quarantined_files) == (1, 1, 1)
    assert metrics.snapshot()["cleanup_removed_total"] == report.total
    remaining = {
        j.job_id
        for state in JobStateValues
        if state.value != "received"
        for j in queue.iter_jobs(state)
    }
    assert old_done.job_id not in remaining
    assert old_failed.job_id not in remaining
    assert {new_done.job_id, new_failed.job_id} <= remaining
    assert {j.job_id for j in undelivered} <= remaining
    for job in undelivered:
        assert queue.input_files(queue.find(job.job_id))  # type: ignore[arg-type]
    assert spooled.exists()
    assert sorted(p.name for p in quarantine.iterdir()) == ["new.dcm"]
    assert not any((settings.jobs_dir / "trash").iterdir())
    # index: nothing older than 60 days among finished rows, so all rows stay ...
    assert report.index_rows == 0
    # ... until the index retention passes: the old rows of finished jobs go, queued ones stay
    later = Cleaner(settings, queue, index).run_once(now=utcnow() + 100 * DAY)
    assert later.index_rows >= 2
    rows = dict(index._db.execute("SELECT job_id, state FROM processed").fetchall())
    assert set(rows.values()) == {"queued"}
    assert index.not_routed("1.2.3") == {}
    index.close()


def test_zero_keeps_everything_and_trash_is_emptied(settings: NodeSettings) -> None:
    settings.retention_days_done = 0
    settings.retention_days_failed = 0
    queue = JobQueue(settings.jobs_dir)
    index = StateIndex(settings.state_db)
    done = make_job(queue, index, JobStateValues.DONE, 1000)
    failed = make_job(queue, index, JobStateValues.FAILED, 1000)
    cleaner = Cleaner(settings, queue, index)
    # a deletion interrupted by a crash left a folder in the trash
    (cleaner.trash_dir / "done-leftover" / "input").mkdir(parents=True)
    assert cleaner.run_once().total == 0
    assert queue.find(done.job_id) is not None
    assert queue.find(failed.job_id) is not None
    assert not any(cleaner.trash_dir.iterdir())
    index.close()


def test_service_runs_the_cleaner(kit, settings: NodeSettings) -> None:
    settings.retention_days_done = 1
    settings.cleanup_interval_seconds = 0.1
    queue = JobQueue(settings.jobs_dir)
    index = StateIndex(settings.state_db)
    old = make_job(queue, index, JobStateValues.DONE, 5)
    index.close()
    node = NodeService(settings, kit.FakeEngine())
    node.start()
    try:
        deadline = time.monotonic() + 10
        while queue.find(old.job_id) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        node.stop()
    assert queue.find(old.job_id) is None
