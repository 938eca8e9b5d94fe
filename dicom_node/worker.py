"""The worker: runs the engine on a job folder and records the verdicts in ``job.json``.

The engine is ``ai_engine.pipeline.run(input_dir, output_dir, checkpoints)``, imported only
when the first job runs (it pulls torch and takes seconds). It is injectable (`EngineFn`),
so tests can run the node with a small stand-in engine.

Failures: an `ai_engine.errors.AiEngineError` (unreadable input, unknown model, weights that
do not load) is deterministic and dead-letters the job at once; anything else (memory,
I/O, a missing engine module) is retried with backoff up to ``process_max_attempts``.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ai_engine.errors import AiEngineError
from dicom_node.config import NodeSettings
from dicom_node.errors import ConfigError
from dicom_node.index import STATE_FAILED, StateIndex
from dicom_node.logutil import log_failure
from dicom_node.metrics import ENGINE_STAGES, Metrics
from dicom_node.queue import (
    INPUT_DIR,
    OUTPUT_DIR,
    Job,
    JobQueue,
    JobStageValues,
    JobStateValues,
    StudyOutcome,
)

logger = logging.getLogger(__name__)

#: ``(input_dir, output_dir, checkpoints) -> results``; results are StudyResult-like objects
#: (attributes) or mappings with the same field names.
EngineFn = Callable[[Path, Path, Sequence[str]], Sequence[Any]]


def default_engine(input_dir: Path, output_dir: Path, checkpoints: Sequence[str]) -> Sequence[Any]:
    """Call ``ai_engine.pipeline.run``, importing it on first use.

    Args:
        input_dir: folder with the study's DICOM files.
        output_dir: empty folder for the result DICOM files.
        checkpoints: checkpoint names.

    Returns:
        The engine's ``StudyResult`` list.
    """
    pipeline = importlib.import_module("ai_engine.pipeline")
    results: Sequence[Any] = pipeline.run(input_dir, output_dir, tuple(checkpoints))
    return results


def load_engine(spec: str | None) -> EngineFn:
    """The engine function named by ``worker_engine`` (``module:function``).

    Args:
        spec: ``module:function``, or None for ``ai_engine.pipeline.run``.

    Returns:
        The engine function.

    Raises:
        ConfigError: the module or function cannot be imported.
    """
    if spec is None:
        return default_engine
    module_name, _, name = spec.partition(":")
    try:
        engine: EngineFn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"worker_engine {spec!r} cannot be imported: {exc}") from exc
    return engine


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def outcome_from_result(result: Any, output_dir: Path) -> StudyOutcome:
    """Read the fields the node needs from one engine result.

    Result files listed outside ``output_dir`` are copied into it (the sender delivers
    everything in ``output/``).

    Args:
        result: a ``StudyResult`` (or a mapping with its field names).
        output_dir: the job's ``output/``.

    Returns:
        The node's record of it.
    """
    algorithm = _field(result, "algorithm")
    images = list(_field(result, "images", ()) or ())
    analysed = [i for i in images if _field(i, "score") is not None]
    threshold = next(
        (_field(i, "threshold") for i in analysed if _field(i, "threshold") is not None), None
    )
    files: list[str] = []
    for item in _field(result, "files", ()) or ():
        path = Path(item)
        if not path.is_absolute():
            path = output_dir / path
        try:
            files.append(str(path.resolve().relative_to(output_dir.resolve())))
        except ValueError:
            target = output_dir / path.name
            shutil.copy2(path, target)
            files.append(target.name)
    score = _field(result, "study_score")
    is_abnormal = _field(result, "is_abnormal")
    return StudyOutcome(
        study_instance_uid=str(_field(result, "study_instance_uid", "")),
        model=str(_field(algorithm, "name") or _field(algorithm, "model_id") or ""),
        model_version=str(_field(algorithm, "version") or ""),
        score=None if score is None else float(score),
        is_abnormal=None if is_abnormal is None else bool(is_abnormal),
        threshold=None if threshold is None else float(threshold),
        images=len(images),
        images_analysed=len(analysed),
        files=files,
    )


class Worker:
    """Takes ready jobs, runs the engine, moves them to the outbox.

    Args:
        settings: node settings (retry policy).
        queue: the job queue.
        index: the processed-instance index (claims released when a job fails); None in
            a distributed worker process, where the node records it (`dicom_node.distributed`).
        metrics: counters.
        engine: the engine function (default: `default_engine`).
    """

    def __init__(
        self,
        settings: NodeSettings,
        queue: JobQueue,
        index: StateIndex | None,
        metrics: Metrics,
        engine: EngineFn | None = None,
    ) -> None:
        self._settings = settings
        self._queue = queue
        self._index = index
        self._metrics = metrics
        self._engine: EngineFn = engine or default_engine
        #: the engine takes a job while it works on another (`EngineProcess.submit`/`collect`)
        self._pipelined = hasattr(self._engine, "submit") and hasattr(self._engine, "collect")
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
        if self.stopping.is_set() or any(not peer.busy for peer in self._peers):
            return None
        return self._queue.claim()

    def run_once(self) -> bool:
        """Process one due job, if any (with a pipelining engine: every due job, see below).

        With an engine that has ``submit``/``collect`` (`dicom_node.engine_process`), the
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
        if not self._pipelined:
            self.process(job)
            return
        engine: Any = self._engine
        if not self._submit(engine, job):
            return
        while True:
            following = self._claim_ahead()
            if following is not None and not self._submit(engine, following):
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
        input_dir, output_dir = self._begin(job)
        try:
            results = list(self._engine(input_dir, output_dir, job.checkpoints))
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

    def _submit(self, engine: Any, job: Job) -> bool:
        input_dir, output_dir = self._begin(job)
        try:
            engine.submit(input_dir, output_dir, job.checkpoints)
        except Exception as exc:  # noqa: BLE001 - recorded on the job
            self._done(job, None, exc)
            return False
        return True

    def _release(self, job: Job) -> None:
        """Put a claimed job that never ran back into ``ready/``, its attempt not counted."""
        self._started.pop(job.job_id, None)
        attempts = job.attempts.get(JobStageValues.PROCESS, 1)
        job.attempts[JobStageValues.PROCESS] = max(0, attempts - 1)
        self._queue.move(job, JobStateValues.QUEUED)
        logger.info(
            "job handed back: the engine process died before it ran", extra={"job_id": job.job_id}
        )

    def _done(self, job: Job, results: list[Any] | None, error: Exception | None) -> None:
        """File one job's engine results (to the outbox) or its failure."""
        started = self._started.pop(job.job_id, time.monotonic())
        ctx: dict[str, Any] = {"job_id": job.job_id, "study_uid": job.study_instance_uid}
        output_dir = self._queue.job_dir(job) / OUTPUT_DIR
        if error is None and results is not None:
            try:
                outcomes = [outcome_from_result(r, output_dir) for r in results]
            except Exception as exc:  # noqa: BLE001 - an unusable result fails the job
                error = exc
        self._metrics.observe("run_seconds", time.monotonic() - started)
        if error is not None or results is None:
            failure = error or RuntimeError("engine returned nothing")
            self._failed(job, failure, retryable=not isinstance(failure, AiEngineError))
            return
        for result in results:  # per-stage engine times, when the engine reports them
            for stage, value in dict(getattr(result, "seconds", None) or {}).items():
                if stage in ENGINE_STAGES:
                    self._metrics.observe(ENGINE_STAGES[stage], float(value))
        job.processing_seconds = round(time.monotonic() - started, 3)
        job.results = outcomes
        job.failed_stage = None
        self._queue.move(job, JobStateValues.SENDING)
        self._metrics.inc("jobs_processed_total")
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
        retry = self._queue.record_failure(
            job,
            JobStageValues.PROCESS,
            exc,
            retryable=retryable,
            max_attempts=self._settings.process_max_attempts,
            backoff_seconds=self._settings.process_backoff_seconds,
        )
        ctx: dict[str, Any] = {"job_id": job.job_id, "study_uid": job.study_instance_uid}
        if retry:
            self._metrics.inc("process_retries_total")
            log_failure(logger, "engine failed; job will be retried", exc, **ctx)
        else:
            if self._index is not None:
                self._index.set_state(job.job_id, STATE_FAILED)
            self._metrics.inc("jobs_failed_total")
            log_failure(logger, "engine failed; job moved to failed", exc, **ctx)
