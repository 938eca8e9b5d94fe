"""Durable job queue on the file system: one folder per job, one folder per state.

Layout under ``data_dir/jobs/``::

    staging/<job_id>/   being created by the router (never seen by workers)
    ready/<job_id>/     queued: waiting for a worker (or for ``next_retry_at``)
    running/<job_id>/   the engine is working on it
    outbox/<job_id>/    results written, being delivered (or waiting for a retry)
    done/<job_id>/      delivered
    failed/<job_id>/    dead letter: ``error.json`` says which stage failed and why

Each job folder holds ``input/`` (the study's instances), ``output/`` (the engine's DICOM
files) and ``job.json`` (the `Job` model). A job changes state by an atomic, fsynced rename
of its folder (`os.replace`), so after ``kill -9`` every job is in exactly one state folder.
The folder is the truth: ``job.json``'s ``state`` is corrected from it when loaded.
`JobQueue.recover` puts jobs found in ``running/`` back into ``ready/``; jobs in ``outbox/``
are simply delivered again (STOW-RS of the same SOP instances is idempotent).

Several workers (threads or processes on the same file system) may claim jobs concurrently:
the rename ``ready/<id> -> running/<id>`` succeeds for exactly one of them.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import re
import shutil
import traceback
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from dicom_node.errors import JobError
from dicom_node.fsutil import ensure_dir, fsync_dir, move_durable, write_durable

logger = logging.getLogger(__name__)

JOB_FILE = "job.json"
ERROR_FILE = "error.json"
INPUT_DIR = "input"
OUTPUT_DIR = "output"
#: A job folder's copies of the study's current SRs, when more of an analysed study arrived
#: (the router fills it; the engine carries them into the new SR: `ai_engine.pipeline.run`).
PRIOR_DIR = "prior"


class JobStateValues(enum.StrEnum):
    """Job states. ``received`` is the spool; the others are job folders."""

    RECEIVED = "received"
    QUEUED = "queued"
    RUNNING = "running"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"


class JobStageValues(enum.StrEnum):
    """Stages that can fail and be retried."""

    PROCESS = "process"
    SEND = "send"


#: state -> folder name under ``jobs/``.
STATE_FOLDERS: dict[JobStateValues, str] = {
    JobStateValues.QUEUED: "ready",
    JobStateValues.RUNNING: "running",
    JobStateValues.SENDING: "outbox",
    JobStateValues.DONE: "done",
    JobStateValues.FAILED: "failed",
}
STAGING_FOLDER = "staging"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def new_job_id() -> str:
    """A sortable, unique job id: UTC timestamp + random suffix."""
    return f"{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}"


class StudyOutcome(BaseModel):
    """The engine's verdict on one study for one checkpoint, as the node records it.

    Attributes:
        study_instance_uid: the study.
        model: checkpoint name (e.g. ``default-cxr``).
        model_version: version of its weights.
        score: study score (max over analysed images), None if nothing was analysed.
        is_abnormal: any analysed image flagged.
        threshold: the calibrated threshold the scores were compared with.
        images: images in the job for this study.
        images_analysed: images that got a score.
        files: names of the result files (in the job's ``output/``).
    """

    study_instance_uid: str
    model: str
    model_version: str
    score: float | None = None
    is_abnormal: bool | None = None
    threshold: float | None = None
    images: int = 0
    images_analysed: int = 0
    files: list[str] = Field(default_factory=list)


class JobErrorRecord(BaseModel):
    """What went wrong in a stage (also written to ``error.json`` when the job fails).

    Attributes:
        stage: ``process`` or ``send``.
        type: exception class name.
        message: exception message.
        traceback: formatted traceback.
        retryable: whether the stage was (or would have been) retried.
        at: when it happened.
    """

    stage: JobStageValues
    type: str
    message: str
    traceback: str = ""
    retryable: bool = False
    at: datetime = Field(default_factory=utcnow)


class Job(BaseModel):
    """``job.json``: everything known about a job.

    Attributes:
        job_id: folder name and id in logs and the API.
        study_instance_uid: the study the instances belong to.
        checkpoints: checkpoint names to run.
        model_versions: checkpoint name -> weights version assumed when routed.
        sop_instance_uids: the instances in ``input/``.
        state: current state (corrected from the folder when loaded).
        created_at: when the router created it.
        updated_at: last change.
        attempts: stage -> attempts started.
        next_retry_at: not to be picked up before this time.
        failed_stage: stage of the last failure (set on dead-lettered jobs too).
        last_error: the last failure.
        started_at: when the last engine run started.
        processing_seconds: duration of the successful engine run.
        finished_at: when the results were delivered.
        results: one entry per (study, checkpoint).
        sent_files: result files delivered.
        destinations: names of the destinations the results go to (routing rules); empty
            means the node's configured destination, ``default``.
        delivered_to: destinations that have accepted all results (a retry sends only to
            the others).
        kind: ``analysis`` (the engine's results of a study) or ``feedback`` (a reader's
            review SR, `dicom_node.feedback`: created straight into ``outbox/``, never
            run by the engine, no scores).
        feedback_version: the judgement version a ``feedback`` job delivers.
    """

    job_id: str
    study_instance_uid: str
    checkpoints: list[str]
    model_versions: dict[str, str] = Field(default_factory=dict)
    sop_instance_uids: list[str] = Field(default_factory=list)
    state: JobStateValues = JobStateValues.QUEUED
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    attempts: dict[JobStageValues, int] = Field(default_factory=dict)
    next_retry_at: datetime | None = None
    failed_stage: JobStageValues | None = None
    last_error: JobErrorRecord | None = None
    started_at: datetime | None = None
    processing_seconds: float | None = None
    finished_at: datetime | None = None
    results: list[StudyOutcome] = Field(default_factory=list)
    sent_files: list[str] = Field(default_factory=list)
    destinations: list[str] = Field(default_factory=list)
    delivered_to: list[str] = Field(default_factory=list)
    kind: Literal["analysis", "feedback"] = "analysis"
    feedback_version: int | None = None

    def due(self, now: datetime | None = None) -> bool:
        """Whether the job may be worked on now (its retry wait is over)."""
        return self.next_retry_at is None or self.next_retry_at <= (now or utcnow())


def backoff_delay(attempt: int, base_seconds: float, max_seconds: float | None = None) -> float:
    """Exponential backoff: ``base * 2**(attempt-1)``, capped at ``max_seconds``.

    Args:
        attempt: the attempt that just failed (1 for the first).
        base_seconds: wait after the first failure.
        max_seconds: cap (None for none).

    Returns:
        Seconds to wait before the next attempt.
    """
    delay = base_seconds * (2 ** max(0, attempt - 1))
    if max_seconds is not None:
        delay = min(delay, max_seconds)
    return float(delay)


#: Dates and times in any common form (a birth date in a message is PHI).
_DATE = re.compile(r"(?<!\d)(?:1[89]|20)\d{2}[-./]?[01]\d[-./]?[0-3]\d(?!\d)")
_PATH = re.compile(r"(?<![\w.])/[^\s:;,()'\"]+")


def redact(message: str, *, keep_lines: bool = False) -> str:
    """An error message without dates (birth dates are PHI) or file-system paths.

    E.g. ``Unable to convert '1961-07-04' to 'DA' object`` becomes
    ``Unable to convert '<date>' to 'DA' object``, and
    ``/srv/node/jobs/x/input/1.2.dcm: no PixelData`` becomes ``…/1.2.dcm: no PixelData``
    (file names stay, so a traceback still says which module and line).

    Args:
        message: the exception's message (or a traceback).
        keep_lines: keep line breaks (tracebacks); else the result is one line.

    Returns:
        The redacted text.
    """
    text = _PATH.sub(lambda m: "…/" + m.group(0).rsplit("/", 1)[-1], _DATE.sub("<date>", message))
    return text if keep_lines else " ".join(text.split())


class JobQueue:
    """The job folders and the operations that move jobs between states.

    Args:
        root: ``data_dir/jobs`` (created with its state folders if missing).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        ensure_dir(root)
        for name in (*STATE_FOLDERS.values(), STAGING_FOLDER):
            ensure_dir(root / name)

    # --- paths ---------------------------------------------------------------------------

    def state_dir(self, state: JobStateValues) -> Path:
        """Folder of a state.

        Args:
            state: any state but ``received``.

        Returns:
            The folder.
        """
        return self.root / STATE_FOLDERS[state]

    @property
    def staging_dir(self) -> Path:
        """Folder of jobs being created."""
        return self.root / STAGING_FOLDER

    def job_dir(self, job: Job) -> Path:
        """The folder of a job in its current state."""
        return self.state_dir(job.state) / job.job_id

    # --- reading ---------------------------------------------------------------------------

    @staticmethod
    def read_job(folder: Path) -> Job:
        """Load ``job.json`` from a job folder.

        Args:
            folder: the job folder.

        Returns:
            The job.

        Raises:
            JobError: missing or invalid ``job.json``.
        """
        try:
            return Job.model_validate_json((folder / JOB_FILE).read_bytes())
        except FileNotFoundError as exc:
            raise JobError(f"job {folder.name} has no {JOB_FILE}") from exc
        except ValidationError as exc:
            raise JobError(f"job {folder.name}: invalid {JOB_FILE}: {exc}") from exc

    def load(self, state: JobStateValues, job_id: str) -> Job:
        """Load a job from a state folder (``state`` set from the folder).

        Args:
            state: the folder to look in.
            job_id: the job.

        Returns:
            The job.

        Raises:
            JobError: it is not there or unreadable.
        """
        job = self.read_job(self.state_dir(state) / job_id)
        job.state = state
        return job

    def result_files(self, job_id: str, study_uid: str, model: str) -> list[Path]:
        """The output files a job recorded for one study and model, that still exist.

        Args:
            job_id: the job (e.g. an index row's ``job_id``).
            study_uid: the study.
            model: the checkpoint name.

        Returns:
            Paths in the job's ``output/`` (none when the job or its folder is gone).
        """
        job = self.find(job_id)
        if job is None:
            return []
        output = self.job_dir(job) / OUTPUT_DIR
        paths = []
        for outcome in job.results:
            if outcome.study_instance_uid != study_uid or outcome.model != model:
                continue
            for name in outcome.files:  # relative to output/ (`worker` writes them so)
                if ".." in Path(name).parts or Path(name).is_absolute():
                    continue
                if (output / name).is_file():
                    paths.append(output / name)
        return paths

    def find(self, job_id: str) -> Job | None:
        """Find a job in any state folder.

        Args:
            job_id: the job id (anything else, e.g. ``../x``, finds nothing).

        Returns:
            The job, or None.
        """
        if not job_id or "/" in job_id or job_id.startswith("."):
            return None
        for state in STATE_FOLDERS:
            folder = self.state_dir(state) / job_id
            if folder.is_dir():
                with contextlib.suppress(JobError):
                    return self.load(state, job_id)
        return None

    def iter_jobs(self, state: JobStateValues) -> Iterator[Job]:
        """Jobs in one state, oldest id first; unreadable folders are skipped with a warning.

        Args:
            state: the state.

        Yields:
            The jobs.
        """
        folder = self.state_dir(state)
        for job_id in sorted(p.name for p in folder.iterdir() if p.is_dir()):
            try:
                yield self.load(state, job_id)
            except JobError as exc:
                if not (folder / job_id).is_dir():
                    continue  # moved to another state meanwhile (another worker claimed it)
                logger.warning("skipping unreadable job", extra={"job_id": job_id, "err": str(exc)})

    def counts(self) -> dict[str, int]:
        """Number of jobs per state (folder)."""
        return {
            state.value: sum(1 for p in self.state_dir(state).iterdir() if p.is_dir())
            for state in STATE_FOLDERS
        }

    def active_count(self) -> int:
        """Jobs not yet done or failed (including those being created)."""
        counts = self.counts()
        staging = sum(1 for p in self.staging_dir.iterdir() if p.is_dir())
        return staging + sum(
            counts[s.value]
            for s in (JobStateValues.QUEUED, JobStateValues.RUNNING, JobStateValues.SENDING)
        )

    # --- writing ---------------------------------------------------------------------------

    def save(self, job: Job, folder: Path | None = None) -> None:
        """Write ``job.json`` atomically and durably.

        Args:
            job: the job.
            folder: its folder (default: the folder of its current state).
        """
        job.updated_at = utcnow()
        target = folder if folder is not None else self.job_dir(job)
        write_durable(target / JOB_FILE, job.model_dump_json(indent=2).encode())

    def stage(self, job: Job) -> Path:
        """Create the staging folder of a new job (with empty ``input/`` and ``output/``).

        Args:
            job: the new job.

        Returns:
            The staging folder; fill ``input/``, then call `commit`.
        """
        folder = self.staging_dir / job.job_id
        (folder / INPUT_DIR).mkdir(parents=True)
        (folder / OUTPUT_DIR).mkdir()
        fsync_dir(self.staging_dir)
        return folder

    def commit(self, job: Job, to: JobStateValues = JobStateValues.QUEUED) -> None:
        """Queue a staged job: write ``job.json`` and rename the folder into ``ready/``.

        Args:
            job: the job given to `stage`, with its instances (or, for a job that goes
                straight to the outbox, its output files) filled in.
            to: ``queued`` (default), or ``sending`` for a job with nothing to run.
        """
        folder = self.staging_dir / job.job_id
        fsync_dir(folder / INPUT_DIR)
        fsync_dir(folder / OUTPUT_DIR)
        job.state = to
        self.save(job, folder)
        move_durable(folder, self.state_dir(to) / job.job_id)

    def move(self, job: Job, to: JobStateValues) -> None:
        """Move a job to another state: save ``job.json``, then rename its folder.

        Args:
            job: the job (its ``state`` is where it is now).
            to: the new state.
        """
        src = self.job_dir(job)
        self.save(job, src)
        move_durable(src, self.state_dir(to) / job.job_id)
        job.state = to

    def claim(self, now: datetime | None = None) -> Job | None:
        """Take the oldest due job from ``ready/`` into ``running/``.

        Args:
            now: the current time (tests).

        Returns:
            The claimed job (state ``running``, process attempts counted), or None.
        """
        for job in self.iter_jobs(JobStateValues.QUEUED):
            if self.claim_job(job, now):
                return job
        return None

    def claim_job(self, job: Job, now: datetime | None = None) -> bool:
        """Take one given job from ``ready/`` into ``running/`` if it is due.

        Args:
            job: the job as loaded from ``ready/``.
            now: the current time (tests).

        Returns:
            True if this call claimed it (``job`` is then ``running``, process attempts
            counted); False if it is not due or another claimant was first.
        """
        if not job.due(now):
            return False
        src = self.state_dir(JobStateValues.QUEUED) / job.job_id
        dst = self.state_dir(JobStateValues.RUNNING) / job.job_id
        try:
            src.rename(dst)  # atomic: exactly one claimant wins
        except FileNotFoundError:
            return False
        fsync_dir(dst.parent)
        fsync_dir(src.parent)
        job.state = JobStateValues.RUNNING
        job.attempts[JobStageValues.PROCESS] = job.attempts.get(JobStageValues.PROCESS, 0) + 1
        job.next_retry_at = None
        job.started_at = utcnow()
        self.save(job)
        return True

    def due_outbox(self, now: datetime | None = None) -> list[Job]:
        """Jobs in the outbox whose retry wait is over.

        Args:
            now: the current time (tests).

        Returns:
            The jobs, oldest first.
        """
        return [job for job in self.iter_jobs(JobStateValues.SENDING) if job.due(now)]

    def record_failure(
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
        """Handle a failed stage: schedule a retry with backoff, or dead-letter the job.

        A failed ``process`` attempt goes back to ``ready/``; a failed ``send`` stays in
        ``outbox/``. When the error is not retryable or ``max_attempts`` are used up, the
        job moves to ``failed/`` with ``error.json``.

        Args:
            job: the job (in ``running`` or ``sending``).
            stage: the stage that failed.
            exc: the exception.
            retryable: whether trying again may help.
            max_attempts: attempts allowed for this stage.
            backoff_seconds: first backoff.
            backoff_max_seconds: backoff cap.

        Returns:
            True if a retry was scheduled, False if the job was dead-lettered.
        """
        record = JobErrorRecord(
            stage=stage,
            type=type(exc).__name__,
            message=redact(str(exc)),
            traceback=redact("".join(traceback.format_exception(exc)), keep_lines=True),
            retryable=retryable,
        )
        job.last_error = record
        job.failed_stage = stage
        attempts = job.attempts.get(stage, 0)
        if retryable and attempts < max_attempts:
            delay = backoff_delay(attempts, backoff_seconds, backoff_max_seconds)
            job.next_retry_at = utcnow() + timedelta(seconds=delay)
            if stage is JobStageValues.PROCESS:
                self.move(job, JobStateValues.QUEUED)
            else:
                self.save(job)
            return True
        job.next_retry_at = None
        write_durable(self.job_dir(job) / ERROR_FILE, record.model_dump_json(indent=2).encode())
        self.move(job, JobStateValues.FAILED)
        return False

    def recover(self) -> list[str]:
        """At startup: put jobs interrupted in ``running/`` back into ``ready/``.

        Their partial ``output/`` is emptied (the engine writes it again).

        Returns:
            The recovered job ids.
        """
        recovered = []
        running = self.state_dir(JobStateValues.RUNNING)
        for folder in sorted(p for p in running.iterdir() if p.is_dir()):
            output = folder / OUTPUT_DIR
            shutil.rmtree(output, ignore_errors=True)
            output.mkdir(exist_ok=True)
            try:
                job = self.load(JobStateValues.RUNNING, folder.name)
            except JobError:
                logger.warning(
                    "interrupted job without valid job.json; moved to failed",
                    extra={"job_id": folder.name},
                )
                move_durable(folder, self.state_dir(JobStateValues.FAILED) / folder.name)
                continue
            job.next_retry_at = None
            self.move(job, JobStateValues.QUEUED)
            recovered.append(job.job_id)
            logger.info("interrupted job queued again", extra={"job_id": job.job_id})
        return recovered

    def staged_jobs(self) -> list[Path]:
        """Folders left in ``staging/`` by an interrupted router (see `Router.recover`)."""
        return sorted(p for p in self.staging_dir.iterdir() if p.is_dir())

    def read_error(self, job: Job) -> dict[str, object] | None:
        """The ``error.json`` of a failed job, if any."""
        path = self.job_dir(job) / ERROR_FILE
        try:
            data: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return data

    def input_files(self, job: Job) -> list[Path]:
        """The job's input instance files."""
        return sorted((self.job_dir(job) / INPUT_DIR).glob("*.dcm"))

    def output_files(self, job: Job) -> list[Path]:
        """All result files the engine wrote (any depth under ``output/``)."""
        return sorted(p for p in (self.job_dir(job) / OUTPUT_DIR).rglob("*") if p.is_file())
