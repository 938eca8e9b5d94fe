"""The worker: runs the engine on a job folder and records the verdicts in ``job.json``.

The engine is a `dicom_node.engine.Engine` from `dicom_node.engine.make_engine` (the engine
process by default; an inline one for stand-in engines in tests), and its results are
`dicom_node.engine.EngineResult` records.

Failures: an `ai_engine.errors.AiEngineError` (unreadable input, unknown model, weights that
do not load) is deterministic and dead-letters the job at once; anything else (memory,
I/O, a missing engine module) is retried with backoff up to ``process_max_attempts``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ai_engine.errors import AiEngineError
from dicom_node.config import NodeSettings
from dicom_node.engine import Engine, EngineResult
from dicom_node.index import StateIndex
from dicom_node.jobs import JobLifecycle
from dicom_node.logutil import log_failure
from dicom_node.metrics import ENGINE_STAGES, Metrics
from dicom_node.queue import (
    INPUT_DIR,
    OUTPUT_DIR,
    Job,
    JobQueue,
    JobStageValues,
)

logger = logging.getLogger(__name__)


class Worker:
    """Takes ready jobs, runs the engine, moves them to the outbox.

    Args:
        settings: node settings (retry policy).
        queue: the job queue.
        index: the processed-instance index (claims released when a job fails); None in
            a distributed worker process, where the node records it (`dicom_node.distributed`).
        metrics: counters.
        engine: the engine (`dicom_node.engine.make_engine`).
    """

    def __init__(
        self,
        settings: NodeSettings,
        queue: JobQueue,
        index: StateIndex | None,
        metrics: Metrics,
        engine: Engine,
    ) -> None:
        self._settings = settings
        self._queue = queue
        self._metrics = metrics
        self._jobs = JobLifecycle(queue, index, metrics)
        self._engine = engine
        #: set by the node when it stops: a pipelined chain of jobs ends after the current one
        self.stopping = threading.Event()
        #: True while `run_once` holds a job (read by the other workers of the node)
        self.busy = False
        self._peers: list[Worker] = []
        self._started: dict[str, float] = {}

    @staticmethod
    def share_work(workers: Sequence[Worker]) -> None:
        """Make workers that serve the same queue aware of each other.

        A pipelining worker claims the next job while its engine is busy; with several engine
        processes that would queue a job behind another while a second engine sits idle, so a
        worker does not claim ahead while one of its peers is idle.
        """
        for worker in workers:
            worker._peers = [w for w in workers if w is not worker]

    def _claim_ahead(self) -> Job | None:
        if not self._engine.concurrent:
            return None  # the engine would not run it any earlier
        if self.stopping.is_set() or any(not peer.busy for peer in self._peers):
            return None
        return self._queue.claim()

    def run_once(self) -> bool:
        """Process one due job, if any (with a concurrent engine: every due job, see below).

        With a ``concurrent`` engine (`dicom_node.engine_process.EngineProcess`), the
        next due job is claimed and submitted before the current one's results are filed, so
        the engine never waits for the worker's bookkeeping (claims, job.json, fsynced
        renames); the chain ends when no job is due or `stopping` is set, and no job is claimed
        ahead while another worker of the node is idle (`share_work`).

        Returns:
            True if a job was processed (successfully or not).
        """
        job = self._queue.claim()
        if job is None:
            return False
        self.busy = True
        try:
            self._run_chain(job)
        finally:
            self.busy = False
        return True

    def _run_chain(self, job: Job) -> None:
        engine = self._engine
        if not self._submit(job):
            return
        while True:
            following = self._claim_ahead()
            if following is not None and not self._submit(following):
                following = None
            try:
                results = list(engine.collect())
            except Exception as exc:  # noqa: BLE001 - any engine failure is recorded on the job
                self._engine_took(following)
                self._done(job, None, exc)
                if following is not None and engine.pending == 0:
                    # the child died with the following job queued: not that job's fault
                    self._release(following)
                    following = None
            else:
                self._engine_took(following)
                self._done(job, results, None)
            if following is None:
                return
            job = following

    def _engine_took(self, job: Job | None) -> None:
        """Time a queued job's run from now: the engine has just answered for the job before it.

        So ``run_seconds`` and ``processing_seconds`` stay one engine run, without the wait.
        """
        if job is not None and job.job_id in self._started:
            self._started[job.job_id] = time.monotonic()

    def process(self, job: Job) -> None:
        """Run the engine on a claimed job (state ``running``).

        Args:
            job: the job.
        """
        if not self._submit(job):
            return
        try:
            results = self._engine.collect()
        except Exception as exc:  # noqa: BLE001 - any engine failure is recorded on the job
            self._done(job, None, exc)
            return
        self._done(job, results, None)

    def _begin(self, job: Job) -> tuple[Path, Path]:
        folder = self._queue.job_dir(job)
        input_dir, output_dir = folder / INPUT_DIR, folder / OUTPUT_DIR
        shutil.rmtree(output_dir, ignore_errors=True)  # leftovers of an interrupted run
        output_dir.mkdir()
        ctx: dict[str, Any] = {"job_id": job.job_id, "study_uid": job.study_instance_uid}
        logger.info("job running", extra={**ctx, "model_id": ",".join(job.checkpoints)})
        if job.attempts.get(JobStageValues.PROCESS, 0) <= 1:
            self._observe_receive_to_queued(job, input_dir)
        self._started[job.job_id] = time.monotonic()
        return input_dir, output_dir

    def _submit(self, job: Job) -> bool:
        input_dir, output_dir = self._begin(job)
        try:
            self._engine.submit(input_dir, output_dir, job.checkpoints)
        except Exception as exc:  # noqa: BLE001 - recorded on the job
            self._done(job, None, exc)
            return False
        return True

    def _release(self, job: Job) -> None:
        """Put a claimed job that never ran back into ``ready/``, its attempt not counted."""
        self._started.pop(job.job_id, None)
        self._jobs.handed_back(job)
        logger.info(
            "job handed back: the engine process died before it ran", extra={"job_id": job.job_id}
        )

    def _done(
        self, job: Job, results: Sequence[EngineResult] | None, error: Exception | None
    ) -> None:
        """File one job's engine results (to the outbox) or its failure."""
        started = self._started.pop(job.job_id, time.monotonic())
        ctx: dict[str, Any] = {"job_id": job.job_id, "study_uid": job.study_instance_uid}
        self._metrics.observe("run_seconds", time.monotonic() - started)
        if error is not None or results is None:
            failure = error or RuntimeError("engine returned nothing")
            self._failed(job, failure, retryable=not isinstance(failure, AiEngineError))
            return
        outcomes = [r.outcome() for r in results]
        for result in results:  # per-stage engine times, when the engine reports them
            for stage, value in result.seconds.items():
                if stage in ENGINE_STAGES:
                    self._metrics.observe(ENGINE_STAGES[stage], value)
        self._jobs.processed(job, outcomes, time.monotonic() - started)
        logger.info(
            "job processed",
            extra={**ctx, "seconds": job.processing_seconds, "results": len(outcomes)},
        )

    def _observe_receive_to_queued(self, job: Job, input_dir: Path) -> None:
        """Latency from the study's first spooled instance to its job being queued.

        Spooled files keep their modification time when moved into the job (``os.replace``),
        so the oldest input file tells when the study's first instance arrived.
        """
        try:
            first = min(p.stat().st_mtime for p in input_dir.glob("*.dcm"))
        except (OSError, ValueError):  # no input, or a file vanished: nothing to measure
            return
        self._metrics.observe("receive_to_queued_seconds", job.created_at.timestamp() - first)

    def _failed(self, job: Job, exc: BaseException, *, retryable: bool) -> None:
        retry = self._jobs.failed(
            job,
            JobStageValues.PROCESS,
            exc,
            retryable=retryable,
            max_attempts=self._settings.process_max_attempts,
            backoff_seconds=self._settings.process_backoff_seconds,
        )
        ctx: dict[str, Any] = {"job_id": job.job_id, "study_uid": job.study_instance_uid}
        if retry:
            log_failure(logger, "engine failed; job will be retried", exc, **ctx)
        else:
            log_failure(logger, "engine failed; job moved to failed", exc, **ctx)
