"""`NodeService`: the whole node in one process (the embedded default).

With ``broker_url`` set, the worker stage is replaced by `dicom_node.distributed.Dispatcher`
(job ids to Celery workers on other machines); everything else stays in this process.

Stages talk only through the durable state on disk (spool, job folders, sqlite index);
each runs in its own thread:

    SCP (pynetdicom server threads) -> spool -> router -> jobs/ready -> worker
        -> jobs/outbox -> outbox sender -> done | failed

(with ``scp_processes`` > 1 the SCP runs in processes of its own: `dicom_node.scp_pool`)

plus the HTTP API. ``start()`` returns at once; ``stop()`` ends everything. Restarting on the
same ``data_dir`` resumes: temporary spool files and association markers are dropped,
half-created jobs rolled back, jobs found in ``running/`` queued again, and the outbox
delivered.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from dicom_node.config import NodeSettings
from dicom_node.engine import Engine, EngineFn, make_engine
from dicom_node.errors import ConfigError
from dicom_node.feedback import DriftSettings, Feedback, FeedbackStore
from dicom_node.fsutil import ensure_dir, write_durable
from dicom_node.http_api import ApiServer, create_app
from dicom_node.index import StateIndex
from dicom_node.logutil import log_failure
from dicom_node.metrics import Metrics
from dicom_node.queue import Job, JobQueue
from dicom_node.retention import Cleaner
from dicom_node.router import Router, RoutingRules
from dicom_node.rules import RulesFile
from dicom_node.rules_file import build_rules
from dicom_node.scp import StorageSCP
from dicom_node.scp_pool import ScpPool
from dicom_node.sender import Outbox, ResultSender, build_sender
from dicom_node.spool import Spool
from dicom_node.worker import Worker

logger = logging.getLogger(__name__)

ResultCallback = Callable[[Job], None]


class _Loop:
    """A daemon thread calling ``step`` until stopped; sleeps ``interval`` when idle.

    ``next_wait``, if given, may shorten an idle sleep: it returns the seconds until work is
    known to be due (or None), so a due study is routed on time rather than at the next tick.
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], object],
        interval: float,
        next_wait: Callable[[], float | None] | None = None,
    ) -> None:
        self.name = name
        self._step = step
        self._interval = interval
        self._next_wait = next_wait
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.busy = False
        self._thread = threading.Thread(target=self._run, name=f"dicom-node-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            logger.warning("stage did not stop in time", extra={"stage": self.name})

    def _run(self) -> None:
        while not self._stop.is_set():
            self.busy = True
            try:
                did_work = bool(self._step())
            except Exception as exc:  # noqa: BLE001 - a stage must never die; state is on disk
                log_failure(logger, "stage step failed", exc, stage=self.name)
                did_work = False
            finally:
                self.busy = False
            if not did_work:
                timeout = self._interval
                if self._next_wait is not None:
                    due = self._next_wait()
                    if due is not None:
                        timeout = min(timeout, max(0.0, due) + 0.01)
                self._wake.wait(timeout)
                self._wake.clear()


class NodeService:
    """The node: SCP, router, worker, outbox sender and HTTP API over one ``data_dir``.

    Args:
        settings: validated settings.
        engine: an engine function to run inline, in the worker thread (stand-in engines of
            tests and benchmarks); default: `dicom_node.engine.make_engine` from the
            settings (the engine process).
        on_result: called with each job whose results were delivered (e.g. to print one
            summary line per study: ``job.results[i].score``, ``.is_abnormal``,
            ``job.processing_seconds``). Runs in the sender thread; keep it short.
        sender: result destination (default: from the settings, `build_sender`).
        rules: routing rules (default: ``settings.rules_file`` if set, else `DefaultRules`
            over ``settings.checkpoints``; see `dicom_node.rules_file.build_rules`).

    Raises:
        ConfigError: the rules file is invalid (`dicom_node.rules.RulesError`, each problem
            with its line).

    Example:
        >>> service = NodeService(load_settings())  # doctest: +SKIP
        >>> service.start(); ...; service.stop()  # doctest: +SKIP
    """

    def __init__(
        self,
        settings: NodeSettings,
        engine: EngineFn | None = None,
        *,
        on_result: ResultCallback | None = None,
        sender: ResultSender | None = None,
        rules: RoutingRules | None = None,
    ) -> None:
        self.settings = settings
        self.on_result = on_result
        self.metrics = Metrics()
        self._engine = engine
        self._sender = sender
        self._rules = rules or build_rules(settings)
        self._started = False
        self._engines: list[Engine] = []
        self._workers: list[Worker] = []
        self._loops: list[_Loop] = []
        self._http: ApiServer | None = None
        self.scp: StorageSCP | ScpPool | None = None
        self.spool: Spool | None = None
        self.queue: JobQueue | None = None
        self.index: StateIndex | None = None
        self.feedback: Feedback | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Recover the state on disk and start all stages (returns at once).

        Raises:
            ConfigError: the data folder is not usable, or an address cannot be bound.
        """
        if self._started:
            return
        s = self.settings
        self._check_data_dir(s.data_dir)
        spool = self.spool = Spool(s.spool_dir)
        queue = self.queue = JobQueue(s.jobs_dir)
        index = self.index = StateIndex(s.state_db)
        router = Router(
            spool,
            queue,
            index,
            self.metrics,
            quiet_seconds=s.study_quiet_seconds,
            max_wait_seconds=s.study_max_wait_seconds,
            rules=self._rules,
            quarantine_dir=s.data_dir / "quarantine",
        )
        spool.clear_stale()
        router.recover()
        steps: list[Callable[[], bool]]
        if s.broker_url is None:
            queue.recover()
            # one worker thread per engine (one injected engine: one); claims are atomic renames
            count = 1 if self._engine is not None else s.engine_processes
            engines = [make_engine(s, self._engine) for _ in range(count)]
            self._engines = engines
            for engine in engines:
                engine.start()  # loads torch and the models while the node waits for studies
            self._workers = [Worker(s, queue, index, self.metrics, e) for e in engines]
            Worker.share_work(self._workers)
            steps = [w.run_once for w in self._workers]
        else:  # scaled out: workers elsewhere own running/; the dispatcher follows leases
            from dicom_node.distributed import Dispatcher

            dispatcher = Dispatcher(s, queue, index, self.metrics)
            dispatcher.recover()
            steps = [dispatcher.run_once]
        feedback = self.feedback = Feedback(
            FeedbackStore(s.feedback_dir),
            queue,
            index,
            self.metrics,
            checkpoints=s.checkpoints,
            drift=DriftSettings(s.feedback_drift_alert_ks, s.feedback_drift_min_normals),
            max_comment_chars=s.feedback_comment_max_chars,
        )
        outbox = Outbox(
            s,
            queue,
            index,
            self.metrics,
            self._sender or build_sender(s),
            self._on_done,
            senders=self._rules.senders(s) if isinstance(self._rules, RulesFile) else None,
            on_feedback=feedback.delivered,
        )
        cleaner = Cleaner(s, queue, index, self.metrics, s.data_dir / "quarantine")
        interval = s.poll_interval_seconds
        outbox_loop = _Loop("outbox", outbox.run_once, interval)
        feedback.recover()

        def working(step: Callable[[], bool]) -> Callable[[], bool]:
            def work() -> bool:
                did = step()
                if did:
                    outbox_loop.wake()
                return did

            return work

        name = "worker" if s.broker_url is None else "dispatcher"
        worker_loops = [
            _Loop(name if len(steps) == 1 else f"{name}-{i + 1}", working(step), interval)
            for i, step in enumerate(steps)
        ]

        def route() -> bool:
            if router.run_once():
                for loop in worker_loops:
                    loop.wake()
            return False  # routing is time-driven: always wait for the next tick

        router_loop = _Loop("router", route, interval, next_wait=router.seconds_until_due)
        cleaner_loop = _Loop("cleaner", cleaner.step, s.cleanup_interval_seconds)
        self._loops = [router_loop, *worker_loops, outbox_loop, cleaner_loop]
        if s.scp_process_count() == 1:
            self.scp = StorageSCP(
                s, spool, self.metrics, on_activity=None, on_association_end=router_loop.wake
            )
        else:  # several SCP processes share the port and the spool (`dicom_node.scp_pool`)
            self.scp = ScpPool(s, self.metrics, on_association_end=router_loop.wake)
        try:
            self.scp.start()
        except OSError as exc:
            index.close()
            self._close_engines(5.0)
            raise ConfigError(f"cannot listen on {s.host}:{s.port}: {exc.strerror or exc}") from exc
        for loop in self._loops:
            loop.start()
        if s.http_port:
            app = create_app(
                api_token=s.api_token.get_secret_value() if s.api_token else None,
                api_admin_token=(
                    s.api_admin_token.get_secret_value() if s.api_admin_token else None
                ),
                on_change=self._wake_stages,
                allowed_hosts=(s.http_host, *s.api_allowed_hosts),
                queue=queue,
                spool=spool,
                index=index,
                metrics=self.metrics,
                readiness=self.readiness,
                feedback=feedback,
            )
            try:
                self._http = ApiServer(app, s.http_host, s.http_port)
            except OSError as exc:
                self._stop_stages(5.0)
                raise ConfigError(
                    f"cannot listen on {s.http_host}:{s.http_port}: {exc.strerror}"
                ) from exc
            self._http.start()
        self._started = True
        logger.info(
            "node started",
            extra={"ae_title": s.ae_title, "port": self.scp_port, "http_port": self.http_port},
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the SCP, the stages and the HTTP API. A job being processed finishes first.

        Args:
            timeout: seconds to wait for each stage.
        """
        if not self._started:
            return
        if self._http is not None:
            self._http.stop()
            self._http = None
        self._stop_stages(timeout)
        self._started = False
        logger.info("node stopped")

    def _stop_stages(self, timeout: float) -> None:
        if self.scp is not None:
            self.scp.stop()
        for worker in self._workers:
            worker.stopping.set()
        for loop in self._loops:
            loop.stop(timeout)
        self._close_engines(timeout)
        if self.index is not None:
            self.index.close()

    def _close_engines(self, timeout: float) -> None:
        for engine in self._engines:
            engine.close(timeout)
        self._engines = []

    def __enter__(self) -> NodeService:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def _check_data_dir(data_dir: Path) -> None:
        try:
            ensure_dir(data_dir)
            write_durable(data_dir / ".write-test", b"ok")
            (data_dir / ".write-test").unlink()
        except OSError as exc:
            raise ConfigError(f"data_dir {data_dir} is not writable: {exc.strerror}") from exc

    # --- information -------------------------------------------------------------------------

    @property
    def scp_port(self) -> int:
        """The SCP's bound port (0 before `start`)."""
        return self.scp.port if self.scp is not None else 0

    @property
    def http_port(self) -> int:
        """The HTTP API's bound port (0 when disabled or not started)."""
        return self._http.port if self._http is not None else 0

    @property
    def engine_pids(self) -> list[int]:
        """Process ids of the node's engine processes (empty with an injected engine)."""
        return [e.pid for e in self._engines if e.pid is not None]

    def readiness(self) -> dict[str, bool]:
        """Named readiness checks (all True when the node can take studies)."""
        data_dir = self.settings.data_dir
        try:
            free_ok = (
                shutil.disk_usage(data_dir).free >= self.settings.min_free_disk_mb * 1024 * 1024
            )
        except OSError:
            free_ok = False
        return {
            "scp_listening": self.scp_port > 0,
            "data_dir_writable": data_dir.is_dir() and _writable(data_dir),
            "free_disk_above_floor": free_ok,
            "stages_running": bool(self._loops) and all(loop.is_alive() for loop in self._loops),
        }

    def is_idle(self) -> bool:
        """Nothing spooled, no active job, no open association, no stage mid-step."""
        if not self._started or self.spool is None or self.queue is None:
            return True
        if self.scp is not None and self.scp.active_associations():
            return False
        if any(loop.busy for loop in self._loops):
            return False
        return self.queue.active_count() == 0 and self.spool.pending_count() == 0

    def wait_until_idle(self, timeout: float = 30.0, settle: float = 0.0) -> bool:
        """Wait until `is_idle` (jobs whose delivery waits for a retry count as active).

        Args:
            timeout: seconds to wait at most.
            settle: the node must stay idle this long (covers a C-STORE about to arrive).

        Returns:
            True if idle, False on timeout.
        """
        deadline = time.monotonic() + timeout
        idle_since: float | None = None
        while time.monotonic() < deadline:
            if self.is_idle():
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= settle:
                    return True
            else:
                idle_since = None
            time.sleep(0.02)
        return False

    def process_now(self, study_uid: str) -> bool:
        """Ask for a spooled study to be processed without waiting (see the HTTP route).

        Args:
            study_uid: StudyInstanceUID.

        Returns:
            True if instances of it were waiting.
        """
        if self.spool is None:
            return False
        accepted = self.spool.request_process_now(study_uid)
        if accepted:
            for loop in self._loops:
                loop.wake()
        return accepted

    def _wake_stages(self) -> None:
        for loop in self._loops:
            loop.wake()

    def _on_done(self, job: Job) -> None:
        if self.on_result is not None:
            self.on_result(job)


def _writable(path: Path) -> bool:
    probe = path / ".ready-probe"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return False
    return True
