"""The scaled-out node: Celery dispatches job ids, workers on other machines run the engine.

With ``broker_url`` set, ``python -m dicom_node serve`` keeps the SCP, the router, the outbox,
the cleaner and the HTTP API, and replaces its in-process worker with a `Dispatcher` that
sends the id of each due job in ``jobs/ready/`` to the Celery queue. Any number of
``python -m dicom_node worker`` processes (`run_worker`; one per GPU) take the ids and run
the engine through the same `dicom_node.worker.Worker` code and the same engine factory
(`dicom_node.engine.make_engine`: a child process of the worker by default) as the
embedded node.

The job folders on the shared ``data_dir`` stay the truth; the broker only says "look at
job X". A message for a job that is no longer queued is acknowledged and ignored, so
duplicate messages are harmless and lost ones are sent again:

- **claim:** the worker renames ``ready/<id>`` to ``running/<id>`` (exactly one wins, as in
  the embedded node) and writes ``running/<id>/lease.json`` with a random token;
- **lease:** a heartbeat thread rewrites the lease every ``worker_lease_seconds / 5``. Every
  state change out of ``running/`` first checks that the lease still holds the worker's
  token (`LeaseLostError` otherwise: the results are discarded, another worker owns it);
- **dead worker:** recovery has one owner, the lease (issue 18). The dispatcher sees a
  lease that did not change for ``worker_lease_seconds`` and sends the id again; the worker
  that takes it watches the lease for the same time itself, then moves the job back to
  ``ready/`` and claims it (its process attempts count the lost run). The broker does not
  redeliver: a task is acknowledged when a worker starts it (no ``acks_late``), so a job
  that outlives the visibility timeout is never handed to a second worker while the first
  still runs, and the lease's judgement is not raced by the broker's. A job id lost before
  any worker claimed it (a Redis without persistence, a worker killed between taking the
  message and the rename) leaves the job in ``ready/``, where the dispatcher's
  ``dispatch_timeout_seconds`` sends it again;
- a lease is judged by whether it *changes*, measured on the observer's own monotonic
  clock, so clocks of different machines never need to agree.

Only the node opens the sqlite index: workers pass ``index=None`` to the `Worker`, and the
dispatcher records a job that a worker dead-lettered, and counts processed jobs, retries and
run times in the node's metrics, when it sees the job's folder move.

Celery is an optional dependency (the ``distributed`` extra); it is imported only here.
"""

from __future__ import annotations

import enum
import importlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from dicom_node.config import NodeSettings
from dicom_node.engine import Engine, EngineFn, make_engine
from dicom_node.errors import ConfigError, JobError
from dicom_node.fsutil import move_durable, write_durable
from dicom_node.index import StateIndex
from dicom_node.jobs import JobLifecycle
from dicom_node.metrics import Metrics
from dicom_node.queue import Job, JobQueue, JobStageValues, JobStateValues
from dicom_node.worker import Worker

logger = logging.getLogger(__name__)

#: The one Celery task: ``process_job(job_id)``.
TASK_NAME = "dicom_node.process_job"
LEASE_FILE = "lease.json"


class LeaseLostError(JobError):
    """The worker's lease on a running job was taken over by another worker."""


class WorkerLostError(JobError):
    """A job's worker stopped renewing its lease in the middle of the job (died or froze)."""


class TaskOutcomeValues(enum.StrEnum):
    """What a worker did with one job id (the task's return value, logged)."""

    PROCESSED = "processed"  # engine ran; the job is in outbox/, ready/ (retry) or failed/
    NOT_DUE = "not_due"  # queued, but its retry wait is not over (dispatched again when due)
    OWNED = "owned"  # another live worker runs it
    GONE = "gone"  # not queued or running any more (done, sending, failed, removed)
    LOST = "lost"  # taken over while this worker ran it; its results were discarded
    DEAD_LETTERED = "dead_lettered"  # its workers were lost process_max_attempts times


def make_app(settings: NodeSettings) -> Any:
    """The Celery app of the node and its workers (no result backend).

    Args:
        settings: settings with ``broker_url``.

    Returns:
        A ``celery.Celery`` app.

    Raises:
        ConfigError: ``broker_url`` is not set, or Celery is not installed.
    """
    if settings.broker_url is None:
        raise ConfigError("broker_url (DICOM_NODE_BROKER_URL, the node's broker) is not set")
    try:
        celery = importlib.import_module("celery")
    except ImportError as exc:
        raise ConfigError(
            "broker_url is set but Celery is not installed: "
            "pip install 'ai-anomaly-node[distributed]'"
        ) from exc
    app = celery.Celery(
        "dicom_node", broker=settings.broker_url.get_secret_value(), set_as_current=False
    )
    app.conf.update(
        # One recovery owner: the lease (module docstring). A task is acknowledged when a
        # worker starts it, so the broker never hands a taken job id to a second worker; a
        # job whose worker died is found by its unchanged lease, and a job id lost between
        # the broker and a claim by the dispatch timeout.
        task_acks_late=False,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,  # a busy worker holds at most one more job id
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.broker_queue,
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout_seconds},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
    )
    return app


def read_lease(folder: Path) -> str | None:
    """The raw lease of a running job folder (None when it has none).

    Args:
        folder: ``running/<job_id>``.

    Returns:
        The lease file's text.
    """
    try:
        return (folder / LEASE_FILE).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None


def lease_token(folder: Path) -> str | None:
    """The token in a job folder's lease (None when it has none or it is unreadable)."""
    text = read_lease(folder)
    if text is None:
        return None
    try:
        token = json.loads(text).get("token")
    except (ValueError, AttributeError):
        return None
    return str(token) if token is not None else None


def _write_lease(folder: Path, token: str, worker: str, beat: int) -> None:
    record = {"token": token, "worker": worker, "beat": beat, "at": time.time()}
    write_durable(folder / LEASE_FILE, json.dumps(record).encode())


def lease_expired(folder: Path, lease_seconds: float, poll: float | None = None) -> bool:
    """Watch a running job's lease: True if it did not change for ``lease_seconds``.

    Args:
        folder: ``running/<job_id>``.
        lease_seconds: how long an unchanged lease means a dead worker.
        poll: seconds between looks (default: a tenth of ``lease_seconds``).

    Returns:
        True if the lease stayed the same (or absent) the whole time and the folder is still
        there; False if it changed or the job moved on.
    """
    first = read_lease(folder)
    deadline = time.monotonic() + lease_seconds
    step = poll if poll is not None else lease_seconds / 10
    while time.monotonic() < deadline:
        time.sleep(step)
        if not folder.is_dir() or read_lease(folder) != first:
            return False
    return folder.is_dir()


class _FencedQueue(JobQueue):
    """The job queue of one claim: leaving ``running/`` needs this claim's lease token."""

    def __init__(self, root: Path, token: str) -> None:
        super().__init__(root)
        self._token = token

    def check_lease(self, job: Job) -> None:
        if job.state is JobStateValues.RUNNING and lease_token(self.job_dir(job)) != self._token:
            raise LeaseLostError(f"job {job.job_id} was taken over by another worker")

    def move(self, job: Job, to: JobStateValues) -> None:
        self.check_lease(job)
        super().move(job, to)

    def record_failure(
        self, job: Job, stage: JobStageValues, exc: BaseException, **kw: Any
    ) -> bool:
        self.check_lease(job)
        return super().record_failure(job, stage, exc, **kw)


class _Heartbeat:
    """Renews a claim's lease in a thread; stops when the lease is not its own any more."""

    def __init__(self, folder: Path, token: str, worker: str, interval: float) -> None:
        self._folder = folder
        self._token = token
        self._worker = worker
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dicom-node-lease", daemon=True)

    def __enter__(self) -> _Heartbeat:
        _write_lease(self._folder, self._token, self._worker, 0)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        beat = 0
        while not self._stop.wait(self._interval):
            if lease_token(self._folder) != self._token:
                return  # moved on (outbox, ready) or taken over: nothing left to renew
            beat += 1
            try:
                _write_lease(self._folder, self._token, self._worker, beat)
            except OSError:
                return  # the folder moved between the check and the write


class JobRunner:
    """Runs the job ids a worker receives (the body of the Celery task).

    Args:
        settings: node settings (``data_dir`` on shared storage, retry policy, lease).
        engine: an engine function to run inline (stand-in engines of tests); default:
            `dicom_node.engine.make_engine` from the settings, so a Celery worker runs the
            engine in a child process exactly like the embedded node.
        metrics: this worker's counters (the node's metrics follow the job folders).

    Raises:
        ConfigError: ``worker_engine`` cannot be imported.
    """

    def __init__(
        self,
        settings: NodeSettings,
        engine: EngineFn | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self.engine: Engine = make_engine(settings, engine)
        self._metrics = metrics or Metrics()
        self._queue = JobQueue(settings.jobs_dir)
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def handle(self, job_id: str) -> TaskOutcomeValues:
        """Process one job id: claim the queued job (or take over a lost one), run it.

        Args:
            job_id: the job.

        Returns:
            What was done.
        """
        queue = self._queue
        if not job_id or "/" in job_id or job_id.startswith("."):
            return TaskOutcomeValues.GONE
        running = queue.state_dir(JobStateValues.RUNNING) / job_id
        ready = queue.state_dir(JobStateValues.QUEUED) / job_id
        ctx: dict[str, Any] = {"job_id": job_id}
        taken_over = False
        if running.is_dir():
            if not lease_expired(running, self._settings.worker_lease_seconds):
                return TaskOutcomeValues.OWNED
            try:
                move_durable(running, ready)  # one taker wins; the others find it claimed
                taken_over = True
                logger.warning("lease of a lost worker expired; job taken over", extra=ctx)
            except FileNotFoundError:
                pass
        try:
            job = queue.load(JobStateValues.QUEUED, job_id)
        except JobError:
            return TaskOutcomeValues.OWNED if running.is_dir() else TaskOutcomeValues.GONE
        attempts = job.attempts.get(JobStageValues.PROCESS, 0)
        if taken_over and attempts >= self._settings.process_max_attempts:
            lost = WorkerLostError(f"the job's worker was lost in {attempts} attempt(s)")
            JobLifecycle(queue, None, self._metrics).failed(
                job,
                JobStageValues.PROCESS,
                lost,
                retryable=False,
                max_attempts=self._settings.process_max_attempts,
                backoff_seconds=self._settings.process_backoff_seconds,
            )
            logger.error("job lost its worker too often; moved to failed", extra=ctx)
            return TaskOutcomeValues.DEAD_LETTERED
        if not job.due():
            return TaskOutcomeValues.NOT_DUE
        token = uuid.uuid4().hex
        fenced = _FencedQueue(queue.root, token)
        if not fenced.claim_job(job):
            return TaskOutcomeValues.OWNED if running.is_dir() else TaskOutcomeValues.GONE
        interval = self._settings.worker_lease_seconds / 5
        worker = Worker(self._settings, fenced, None, self._metrics, self.engine)
        try:
            with _Heartbeat(running, token, self.name, interval):
                worker.process(job)
        except LeaseLostError:
            logger.warning("job taken over while running; results discarded", extra=ctx)
            return TaskOutcomeValues.LOST
        return TaskOutcomeValues.PROCESSED


def run_worker(settings: NodeSettings, engine: EngineFn | None = None) -> int:
    """Run one Celery worker process (solo pool: one job at a time) until SIGTERM/SIGINT.

    Args:
        settings: settings with ``broker_url`` and the shared ``data_dir``.
        engine: engine function (default: from ``worker_engine``).

    Returns:
        The worker's exit status.

    Raises:
        ConfigError: no broker, Celery missing, or the engine cannot be imported.
    """
    app = make_app(settings)
    runner = JobRunner(settings, engine)

    @app.task(  # type: ignore[untyped-decorator]
        name=TASK_NAME,
        acks_late=False,  # the lease recovers a dead worker's job, not the broker
        reject_on_worker_lost=False,
        autoretry_for=(OSError,),  # shared storage hiccup: try the id again later
        retry_backoff=2,
        max_retries=5,
    )
    def process_job(job_id: str) -> str:
        outcome = runner.handle(job_id)
        logger.info("job id handled", extra={"job_id": job_id, "reason": outcome.value})
        return outcome.value

    worker = app.Worker(
        hostname=f"dicom_node.{os.getpid()}@{socket.gethostname()}",
        pool_cls="solo",
        concurrency=1,
        queues=[settings.broker_queue],
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
        quiet=True,
        loglevel=logging.getLogger().getEffectiveLevel(),
    )
    runner.engine.start()  # loads torch and the models before the first job arrives
    logger.info("worker started", extra={"stage": runner.name})
    try:
        worker.start()
    finally:
        runner.engine.close()
    return int(worker.exitcode or 0)


class Dispatcher:
    """The node's side: sends due job ids to the broker and follows the jobs' folders.

    One `run_once` (the node's ``dispatcher`` stage):

    1. every due job in ``ready/`` is sent once per process attempt; again only if it is
       still there ``dispatch_timeout_seconds`` later while the broker queue is empty;
    2. a job in ``running/`` whose lease did not change for ``worker_lease_seconds`` is sent
       again (a worker then confirms and takes it over);
    3. jobs seen leaving ``running/`` are counted (processed, retried, failed) and a
       dead-lettered one is marked failed in the index.

    Args:
        settings: node settings with ``broker_url``.
        queue: the job queue.
        index: the node's index.
        metrics: the node's counters.
        send: sends one job id (default: Celery ``send_task`` to ``broker_queue``).
    """

    def __init__(
        self,
        settings: NodeSettings,
        queue: JobQueue,
        index: StateIndex,
        metrics: Metrics,
        send: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._queue = queue
        self._index = index
        self._metrics = metrics
        self._jobs = JobLifecycle(queue, index, metrics)
        self._app: Any = None
        if send is None:
            self._app = make_app(settings)
        self._send_fn = send
        self._dispatched: dict[str, tuple[int, float]] = {}  # id -> (attempts, when sent)
        self._leases: dict[str, tuple[str | None, float]] = {}  # id -> (lease, since)
        self._tracked: dict[str, int] = {}  # id -> process attempts last seen

    def recover(self) -> int:
        """At startup: mark failed in the index the jobs dead-lettered while it was away.

        Returns:
            Number of jobs marked.
        """
        failed_dir = self._queue.state_dir(JobStateValues.FAILED)
        marked = 0
        for job_id in self._index.job_ids(JobStateValues.QUEUED):
            if (failed_dir / job_id).is_dir():
                self._jobs.seen_failed(job_id, count=False)
                marked += 1
        return marked

    def _send(self, job_id: str) -> None:
        if self._send_fn is not None:
            self._send_fn(job_id)
        else:
            self._app.send_task(TASK_NAME, args=[job_id], queue=self._settings.broker_queue)

    def _broker_queue_empty(self) -> bool:
        if self._app is None:
            return True
        try:
            with self._app.connection_for_write() as conn:
                ok = conn.default_channel.queue_declare(
                    queue=self._settings.broker_queue, passive=True
                )
                return int(ok.message_count) == 0
        except Exception:  # noqa: BLE001 - an empty redis queue does not exist: "not found"
            return True

    def run_once(self) -> bool:
        """One dispatch pass (see the class docstring).

        Returns:
            True if a job id was sent or a job was seen leaving ``running/``.
        """
        now = time.monotonic()
        did = False
        ready_ids: set[str] = set()
        for job in self._queue.iter_jobs(JobStateValues.QUEUED):
            ready_ids.add(job.job_id)
            attempts = job.attempts.get(JobStageValues.PROCESS, 0)
            seen = self._tracked.get(job.job_id)
            if seen is not None and attempts > seen:
                self._jobs.seen_retried(JobStageValues.PROCESS)
            self._tracked[job.job_id] = attempts
            if not job.due():
                continue
            sent = self._dispatched.get(job.job_id)
            if (
                sent is None
                or sent[0] != attempts
                or (
                    now - sent[1] >= self._settings.dispatch_timeout_seconds
                    and self._broker_queue_empty()
                )
            ):
                self._send(job.job_id)
                self._dispatched[job.job_id] = (attempts, now)
                logger.debug("job dispatched", extra={"job_id": job.job_id})
                did = True
        running_dir = self._queue.state_dir(JobStateValues.RUNNING)
        running_ids = {p.name for p in running_dir.iterdir() if p.is_dir()}
        for job_id in running_ids:
            self._tracked.setdefault(job_id, 0)
            lease = read_lease(running_dir / job_id)
            seen_lease = self._leases.get(job_id)
            if seen_lease is None or seen_lease[0] != lease:
                self._leases[job_id] = (lease, now)
            elif now - seen_lease[1] >= self._settings.worker_lease_seconds:
                logger.warning(
                    "worker lease expired; job sent again for take-over", extra={"job_id": job_id}
                )
                self._send(job_id)
                self._leases[job_id] = (lease, now)  # wait another lease period before resending
                did = True
        for job_id in set(self._leases) - running_ids:
            del self._leases[job_id]
        for job_id in set(self._dispatched) - ready_ids - running_ids:
            del self._dispatched[job_id]
        for job_id in set(self._tracked) - ready_ids - running_ids:
            del self._tracked[job_id]
            did = self._follow(job_id) or did
        return did

    def _follow(self, job_id: str) -> bool:
        """Count a job that left ``ready/``/``running/``; True if a worker finished it."""
        job = self._queue.find(job_id)
        if job is None:
            return False
        if job.state in (JobStateValues.SENDING, JobStateValues.DONE):
            self._jobs.seen_processed(job)
            return True
        if job.state is JobStateValues.FAILED:
            self._jobs.seen_failed(job_id)
            return True
        return False
