"""The worker keeps a pipelining engine busy: job N+1 is handed over before job N is filed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from dicom_node.config import NodeSettings
from dicom_node.engine import EngineResult
from dicom_node.engine_process import EngineProcessError
from dicom_node.index import StateIndex
from dicom_node.metrics import Metrics
from dicom_node.queue import Job, JobQueue, JobStageValues, JobStateValues, new_job_id
from dicom_node.worker import Worker


class PipelinedEngine:
    """In-process stand-in for a concurrent `Engine` like EngineProcess; logs the order of calls."""

    concurrent = True
    pid = None

    def __init__(self, kit: Any, die_on_collect: int | None = None) -> None:
        self.fake = kit.FakeEngine()
        self.log: list[str] = []
        self.submitted: list[tuple[Path, Path, Sequence[str]]] = []
        self.pending = 0
        self.die_on_collect = die_on_collect
        self.collects = 0

    def start(self) -> None:
        pass

    def close(self, timeout: float = 10.0) -> None:
        pass

    def submit(self, input_dir: Path, output_dir: Path, checkpoints: Sequence[str]) -> None:
        self.log.append(f"submit {input_dir.parent.name}")
        self.submitted.append((input_dir, output_dir, checkpoints))
        self.pending += 1

    def collect(self) -> Any:
        self.collects += 1
        input_dir, output_dir, checkpoints = self.submitted.pop(0)
        self.log.append(f"collect {input_dir.parent.name}")
        if self.collects == self.die_on_collect:
            self.submitted.clear()
            self.pending = 0  # as EngineProcess after a dead child: everything queued is lost
            raise EngineProcessError("engine process died (exit status -9)")
        self.pending -= 1
        results = self.fake(input_dir, output_dir, checkpoints)
        return [EngineResult.from_engine(r, output_dir) for r in results]


def queued_jobs(queue: JobQueue, kit: Any, ct_path: Path, n: int) -> list[Job]:
    jobs = []
    for _ in range(n):
        job = Job(job_id=new_job_id(), study_instance_uid=generate_uid(), checkpoints=["c"])
        folder = queue.stage(job)
        kit.new_instance(ct_path, job.study_instance_uid, folder / "input")
        queue.commit(job)
        jobs.append(job)
    return sorted(jobs, key=lambda j: j.job_id)  # the order workers claim them in


@pytest.fixture
def parts(settings: NodeSettings) -> tuple[JobQueue, StateIndex, Metrics]:
    settings.process_backoff_seconds = 60.0
    return JobQueue(settings.jobs_dir), StateIndex(settings.state_db), Metrics()


def test_next_job_is_submitted_before_the_last_one_is_filed(
    kit, settings: NodeSettings, parts, ct_path: Path
) -> None:
    queue, index, metrics = parts
    a, b, c = (j.job_id for j in queued_jobs(queue, kit, ct_path, 3))
    engine = PipelinedEngine(kit)
    worker = Worker(settings, queue, index, metrics, engine)
    assert worker.run_once() is True
    assert engine.log == [
        f"submit {a}",
        f"submit {b}",
        f"collect {a}",
        f"submit {c}",
        f"collect {b}",
        f"collect {c}",
    ]
    sending = {j.job_id for j in queue.iter_jobs(JobStateValues.SENDING)}
    assert sending == {a, b, c}
    assert worker.run_once() is False  # nothing left


def test_a_stopping_worker_ends_its_chain_after_the_current_job(
    kit, settings: NodeSettings, parts, ct_path: Path
) -> None:
    queue, index, metrics = parts
    a, b = (j.job_id for j in queued_jobs(queue, kit, ct_path, 2))
    engine = PipelinedEngine(kit)
    worker = Worker(settings, queue, index, metrics, engine)
    worker.stopping.set()
    assert worker.run_once() is True
    assert engine.log == [f"submit {a}", f"collect {a}"]
    assert [j.job_id for j in queue.iter_jobs(JobStateValues.QUEUED)] == [b]


def test_a_dead_engine_fails_its_job_and_hands_the_next_one_back_uncounted(
    kit, settings: NodeSettings, parts, ct_path: Path
) -> None:
    queue, index, metrics = parts
    a, b = (j.job_id for j in queued_jobs(queue, kit, ct_path, 2))
    engine = PipelinedEngine(kit, die_on_collect=1)
    worker = Worker(settings, queue, index, metrics, engine)
    assert worker.run_once() is True
    ready = {j.job_id: j for j in queue.iter_jobs(JobStateValues.QUEUED)}
    assert set(ready) == {a, b}
    # the job that was running when the engine died: one attempt used, retried after backoff
    assert ready[a].attempts[JobStageValues.PROCESS] == 1
    assert ready[a].next_retry_at is not None
    assert ready[a].last_error is not None
    assert "died" in ready[a].last_error.message
    # the job only queued in the dead engine: as if never claimed, due at once
    assert ready[b].attempts.get(JobStageValues.PROCESS, 0) == 0
    assert ready[b].next_retry_at is None
    assert metrics.snapshot().get("process_retries_total") == 1


def two_workers(
    kit: Any, settings: NodeSettings, parts: Any, ct_path: Path
) -> tuple[list[str], list[PipelinedEngine], list[Worker]]:
    """Two due jobs and two workers of one node, each with its own pipelining engine."""
    queue, index, metrics = parts
    job_ids = [j.job_id for j in queued_jobs(queue, kit, ct_path, 2)]
    engines = [PipelinedEngine(kit), PipelinedEngine(kit)]
    workers = [Worker(settings, queue, index, metrics, e) for e in engines]
    Worker.share_work(workers)
    return job_ids, engines, workers


def test_no_job_is_claimed_ahead_while_another_engine_is_idle(
    kit, settings: NodeSettings, parts, ct_path: Path
) -> None:
    """With two engine processes, a second due job goes to the idle one, not into a queue."""
    (a, b), (first, second), workers = two_workers(kit, settings, parts, ct_path)
    assert workers[0].run_once() is True
    assert first.log == [f"submit {a}", f"collect {a}"]  # b left for the idle worker
    assert workers[1].run_once() is True
    assert second.log == [f"submit {b}", f"collect {b}"]
    assert not any(w.busy for w in workers)


def test_jobs_are_claimed_ahead_while_every_other_engine_is_busy(
    kit, settings: NodeSettings, parts, ct_path: Path
) -> None:
    (a, b), (first, _), workers = two_workers(kit, settings, parts, ct_path)
    workers[1].busy = True  # working on a study of its own
    assert workers[0].run_once() is True
    assert first.log == [f"submit {a}", f"submit {b}", f"collect {a}", f"collect {b}"]
