"""The job lifecycle: the one place that moves a job between states and records each move.

One vocabulary, `dicom_node.queue.JobStateValues`: its values are the states in ``job.json``,
the API's ``state`` and the index's ``processed.state``; `dicom_node.queue.STATE_FOLDERS`
maps them to the folders under ``jobs/``. After the router has queued a job::

    queued  --claim-->        running     JobQueue.claim (the atomic rename)
    running --processed-->    sending     engine results filed; jobs_processed_total
    running --handed_back-->  queued      never ran (its engine died first); attempt not counted
    running --failed-->       queued | failed          process_retries_total | jobs_failed_total
    sending --failed-->       sending | failed         send_retries_total | jobs_failed_total
    sending --delivered-->    done        index: instances done, study scores; jobs_sent_total
    done | failed --rerun-->  queued      POST /jobs/<id>/rerun; jobs_rerun_total

A failure is retried with backoff while attempts remain and the error is retryable
(`JobQueue.record_failure`); a dead-lettered job's instances become ``failed`` in the index,
so the same study sent again is processed again.

`JobLifecycle` wraps the queue the caller works on (a scaled-out worker's fenced queue
checks its lease before every move), the index (None in a scaled-out worker: only the node
opens it, and its `dicom_node.distributed.Dispatcher` records what it sees with
`JobLifecycle.seen_processed` and `JobLifecycle.seen_failed`) and the metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

from dicom_node.index import StateIndex
from dicom_node.metrics import Metrics
from dicom_node.queue import (
    ERROR_FILE,
    INPUT_DIR,
    Job,
    JobQueue,
    JobStageValues,
    JobStateValues,
    StudyOutcome,
    utcnow,
)

#: Counter of scheduled retries per failed stage.
RETRY_COUNTERS = {
    JobStageValues.PROCESS: "process_retries_total",
    JobStageValues.SEND: "send_retries_total",
}
#: States a job may be re-run from.
RERUNNABLE = (JobStateValues.DONE, JobStateValues.FAILED)
#: What a re-run resets: the record of the last run (job.json keeps ``last_error``).
_RUN_FIELDS: dict[str, object] = {
    "attempts": {},
    "next_retry_at": None,
    "failed_stage": None,
    "started_at": None,
    "processing_seconds": None,
    "finished_at": None,
    "results": [],
    "sent_files": [],
    "delivered_to": [],
}


class RerunConflictError(Exception):
    """The job cannot be re-run now (still active, or its input is gone)."""


class JobLifecycle:
    """Moves jobs between states, with the index and the metrics kept in step.

    Args:
        queue: the job queue (or a worker's fenced view of it).
        index: the node's index; None in a scaled-out worker.
        metrics: counters.
    """

    def __init__(self, queue: JobQueue, index: StateIndex | None, metrics: Metrics) -> None:
        self.queue = queue
        self._index = index
        self._metrics = metrics

    def processed(
        self, job: Job, outcomes: Sequence[StudyOutcome], processing_seconds: float
    ) -> None:
        """``running -> sending``: the engine's results are in ``output/``.

        Args:
            job: a running job.
            outcomes: the node's record of each (study, checkpoint) result.
            processing_seconds: the engine's wall time for the job.
        """
        job.processing_seconds = round(processing_seconds, 3)
        job.results = list(outcomes)
        job.failed_stage = None
        self.queue.move(job, JobStateValues.SENDING)
        self._metrics.inc("jobs_processed_total")

    def handed_back(self, job: Job) -> None:
        """``running -> queued`` for a claimed job that never ran; its attempt is not counted.

        Args:
            job: a running job.
        """
        attempts = job.attempts.get(JobStageValues.PROCESS, 1)
        job.attempts[JobStageValues.PROCESS] = max(0, attempts - 1)
        self.queue.move(job, JobStateValues.QUEUED)

    def failed(
        self,
        job: Job,
        stage: JobStageValues,
        exc: BaseException,
        *,
        retryable: bool,
        max_attempts: int,
        backoff_seconds: float,
        backoff_max_seconds: float | None = None,
    ) -> bool:
        """A stage failed: schedule a retry with backoff, or dead-letter the job.

        Args:
            job: the job (running for ``process``, sending for ``send``).
            stage: the stage that failed.
            exc: the exception.
            retryable: whether trying again may help.
            max_attempts: attempts allowed for this stage.
            backoff_seconds: first backoff.
            backoff_max_seconds: backoff cap.

        Returns:
            True if a retry was scheduled, False if the job moved to ``failed``.
        """
        retry = self.queue.record_failure(
            job,
            stage,
            exc,
            retryable=retryable,
            max_attempts=max_attempts,
            backoff_seconds=backoff_seconds,
            backoff_max_seconds=backoff_max_seconds,
        )
        if retry:
            self._metrics.inc(RETRY_COUNTERS[stage])
        elif job.kind == "feedback":  # a reader's review: no scores, no index row
            self._metrics.inc("jobs_failed_total")
        else:
            self.seen_failed(job.job_id)
        return retry

    def delivered(self, job: Job, sent_files: Sequence[str]) -> None:
        """``sending -> done``: every destination accepted the results.

        The counter goes up before the job shows as done, so a client that sees it done in
        ``/jobs`` finds it in ``/metrics`` too.

        Args:
            job: a sending job.
            sent_files: the files delivered, relative to ``output/``.

        A ``feedback`` job (a reader's review SR, `dicom_node.feedback`) records no scores and
        does not count in ``jobs_sent_total``.
        """
        is_feedback = job.kind == "feedback"
        if not is_feedback:
            self._metrics.inc("jobs_sent_total")
        job.sent_files = list(sent_files)
        job.finished_at = utcnow()
        job.next_retry_at = None
        job.failed_stage = None
        if self._index is not None and not is_feedback:
            self._index.record_done(job)
        self.queue.move(job, JobStateValues.DONE)

    def rerun(self, job_id: str) -> Job | None:
        """``done | failed -> queued``: run a finished job again with the input it kept.

        Its instances become ``queued`` in the index again, so the same instances arriving
        meanwhile do not start a second job.

        Args:
            job_id: the job.

        Returns:
            The queued job, or None if there is no such job.

        Raises:
            RerunConflictError: the job is not done or failed, its input is no longer kept,
                or another request moved it first.
        """
        job = self.queue.find(job_id)
        if job is None:
            return None
        if job.state not in RERUNNABLE:
            raise RerunConflictError(f"job is {job.state.value}; only done or failed jobs re-run")
        folder = self.queue.job_dir(job)
        if not any((folder / INPUT_DIR).glob("*.dcm")):
            raise RerunConflictError("the job's input instances are no longer kept")
        for name, value in _RUN_FIELDS.items():
            if name in Job.model_fields:
                setattr(job, name, value.copy() if isinstance(value, dict | list) else value)
        (folder / ERROR_FILE).unlink(missing_ok=True)
        try:
            self.queue.move(job, JobStateValues.QUEUED)
        except FileNotFoundError as exc:
            raise RerunConflictError("the job was moved meanwhile") from exc
        if self._index is not None:
            self._index.set_state(job.job_id, JobStateValues.QUEUED)
        self._metrics.inc("jobs_rerun_total")
        return job

    def seen_processed(self, job: Job) -> None:
        """A scaled-out worker moved a job on to ``sending``: count it for the node.

        Args:
            job: the job, as found in its new folder.
        """
        self._metrics.inc("jobs_processed_total")
        if job.processing_seconds is not None:
            self._metrics.observe("run_seconds", job.processing_seconds)

    def seen_retried(self, stage: JobStageValues) -> None:
        """A scaled-out worker scheduled a retry of a job (its attempts went up).

        Args:
            stage: the stage that failed.
        """
        self._metrics.inc(RETRY_COUNTERS[stage])

    def seen_failed(self, job_id: str, *, count: bool = True) -> None:
        """A job was dead-lettered: record it in the node's index and count it.

        Args:
            job_id: the job, now in ``failed/``.
            count: also count it in ``jobs_failed_total`` (not when catching up at start).
        """
        if self._index is not None:
            self._index.set_state(job_id, JobStateValues.FAILED)
        if count:
            self._metrics.inc("jobs_failed_total")
