"""Several Storage SCP processes behind one port (``scp_processes`` other than 1).

pynetdicom runs each association in Python threads of one process, so associations share one
GIL and one core: four at once received no faster than one (``bench/ingest.py``). `ScpPool`
starts ``scp_processes`` child processes, each a complete `dicom_node.scp.StorageSCP` (the
same allow-list, TLS, admission and data set limits, the same durable spool writes before
the success status) listening on the same address with ``SO_REUSEPORT``: the kernel spreads
new connections over them, so associations are received in parallel on all cores. The
spool is the only thing they share, and it is already safe for concurrent writers (every
instance is a file written aside and renamed, `dicom_node.fsutil.write_durable`).

What the node's main process keeps: the port (a socket bound with ``SO_REUSEPORT`` that
never listens reserves it, also when ``port`` is 0), the counters (each worker forwards its
`Metrics` increments over a pipe before it answers the C-STORE), the number of open
associations (for `dicom_node.service.NodeService.is_idle`), the router wake-up at the end
of an association, and the log (records are forwarded and logged by the main process).

A worker that dies is started again (its open associations are lost, as with any crash;
everything it acknowledged is on disk). Workers die with the main process (Linux
``PR_SET_PDEATHSIG``), so a ``kill -9`` of the node leaves no orphan on the port.

Limits that count associations (``max_associations``, ``max_associations_per_peer``,
``reserved_associations``) apply per process: N processes accept up to N times as many.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from dicom_node.config import NodeSettings
from dicom_node.logutil import log_failure
from dicom_node.metrics import Metrics

logger = logging.getLogger(__name__)

_START_TIMEOUT = 60.0  # a spawned worker imports pydicom and pynetdicom first
_PR_SET_PDEATHSIG = 1


def _listen_family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class ScpPool:
    """``settings.scp_processes`` Storage SCP processes sharing one port and the spool.

    Args:
        settings: node settings (the SCP's and ``scp_processes``).
        metrics: the main process's counters; workers' increments are added to them.
        on_association_end: called (without arguments) when an association that sent
            instances ended in any worker.
    """

    def __init__(
        self,
        settings: NodeSettings,
        metrics: Metrics,
        on_association_end: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._on_association_end = on_association_end or (lambda: None)
        self._context = multiprocessing.get_context("spawn")
        self._reservation: socket.socket | None = None
        self._port = 0
        self._workers: list[_Worker] = []
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port the workers listen on; 0 when not running."""
        return self._port

    def start(self) -> None:
        """Reserve the port and start the workers; returns once all of them listen.

        Raises:
            OSError: the address cannot be bound, or a worker did not start.
        """
        s = self._settings
        reservation = socket.socket(_listen_family(s.host), socket.SOCK_STREAM)
        try:
            reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            reservation.bind((s.host, s.port))
        except OSError:
            reservation.close()
            raise
        self._reservation = reservation
        self._port = int(reservation.getsockname()[1])
        try:
            self._workers = [self._spawn(i) for i in range(s.scp_process_count())]
            for worker in self._workers:
                self._wait_ready(worker)
        except BaseException:
            self.stop()
            raise
        self._monitor = threading.Thread(
            target=self._watch, name="dicom-node-scp-pool", daemon=True
        )
        self._monitor.start()
        logger.info(
            "storage SCP processes listening",
            extra={"port": self._port, "processes": len(self._workers)},
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the workers (open associations end) and release the port."""
        self._stopping.set()
        for worker in self._workers:
            with contextlib.suppress(OSError, ValueError):
                worker.send(("stop",))
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.process.join(max(0.1, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(5)
        if self._monitor is not None:
            self._monitor.join(timeout)
            self._monitor = None
        for worker in self._workers:
            worker.conn.close()
        self._workers = []
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None
        self._port = 0

    def active_associations(self) -> int:
        """Associations open in all workers (as last reported)."""
        with self._lock:
            return sum(w.active for w in self._workers)

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    # --- internals ---------------------------------------------------------------------

    def _spawn(self, index: int) -> _Worker:
        parent, child = self._context.Pipe(duplex=True)
        settings = self._settings.model_copy(update={"port": self._port})
        process = self._context.Process(
            target=worker_main,
            args=(settings, child, logging.getLogger().getEffectiveLevel()),
            name=f"dicom-node-scp-{index + 1}",
            daemon=True,
        )
        process.start()
        child.close()
        return _Worker(index, process, parent)

    def _wait_ready(self, worker: _Worker) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if worker.conn.poll(0.1):
                try:
                    message = worker.conn.recv()
                except EOFError:
                    break
                if message[0] == "ready":
                    return
                if message[0] == "failed":
                    raise OSError(message[1])
                self._handle(worker, message)
            elif not worker.process.is_alive():
                break
        raise OSError(f"storage SCP process {worker.index + 1} did not start")

    def _watch(self) -> None:
        while not self._stopping.is_set():
            conns = {w.conn: w for w in self._workers}
            try:
                ready = multiprocessing.connection.wait(list(conns), timeout=0.5)
            except OSError:
                ready = []
            for ready_conn in ready:
                worker = conns[ready_conn]  # type: ignore[index]
                conn = worker.conn
                try:
                    while conn.poll():
                        self._handle(worker, conn.recv())
                except (EOFError, OSError):
                    if not self._stopping.is_set():
                        self._restart(worker)
            for worker in list(self._workers):
                if not worker.process.is_alive() and not self._stopping.is_set():
                    self._restart(worker)

    def _restart(self, worker: _Worker) -> None:
        worker.process.join(1)
        logger.error(
            "storage SCP process died; starting it again",
            extra={"pid": worker.process.pid, "exit_code": worker.process.exitcode},
        )
        worker.conn.close()
        try:
            fresh = self._spawn(worker.index)
            self._wait_ready(fresh)
        except Exception as exc:  # noqa: BLE001 - keep the other workers serving
            log_failure(logger, "storage SCP process could not be started again", exc)
            time.sleep(1.0)
            return
        with self._lock:
            self._workers[self._workers.index(worker)] = fresh

    def _handle(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "inc":
            self._metrics.inc(message[1], message[2])
        elif kind == "active":
            with self._lock:
                worker.active = int(message[1])
        elif kind == "end":
            with self._lock:
                worker.active = int(message[1])
            try:
                self._on_association_end()
            except Exception as exc:  # noqa: BLE001 - the monitor must keep running
                log_failure(logger, "association end hook failed", exc)
        elif kind == "log":
            record = logging.makeLogRecord(message[1])
            logging.getLogger(record.name).handle(record)


class _Worker:
    def __init__(self, index: int, process: Any, conn: Any) -> None:
        self.index = index
        self.process = process
        self.conn = conn
        self.active = 0
        self._send_lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self.conn.send(message)


# --- the worker process --------------------------------------------------------------------


class _Link:
    """The worker's end of the pipe; ``send`` is safe from any thread."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):
            self.conn.send(message)


class _ForwardingMetrics(Metrics):
    """Counters that go to the main process (synchronously: before the C-STORE answer)."""

    def __init__(self, link: _Link) -> None:
        super().__init__()
        self._link = link

    def inc(self, name: str, amount: int = 1) -> None:
        super().inc(name, amount)
        self._link.send(("inc", name, amount))


class _ForwardingHandler(logging.Handler):
    """Log records go to the main process, which logs them with its own handlers."""

    def __init__(self, link: _Link) -> None:
        super().__init__()
        self._link = link

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = dict(record.__dict__)
            fields["msg"] = record.getMessage()
            fields["args"] = None
            if record.exc_info:
                fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
            fields["exc_info"] = None
            fields["processName"] = multiprocessing.current_process().name
            self._link.send(("log", fields))
        except Exception:  # noqa: BLE001 - logging must never break the SCP
            self.handleError(record)


def _die_with_parent() -> None:
    """SIGKILL this process when the node's main process ends (even by ``kill -9``)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl
        os._exit(1)


def worker_main(settings: NodeSettings, conn: Any, log_level: int = logging.INFO) -> None:
    """One SCP process: serve on ``settings.port`` (``SO_REUSEPORT``) until told to stop.

    Args:
        settings: the node's settings, ``port`` already the pool's.
        conn: the pipe to the main process.
        log_level: the main process's root log level (records below it are not sent).
    """
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the main process
    link = _Link(conn)
    root = logging.getLogger()
    root.handlers[:] = [_ForwardingHandler(link)]
    root.setLevel(log_level)
    logging.getLogger("pynetdicom").setLevel(max(log_level, logging.WARNING))

    from dicom_node.scp import StorageSCP
    from dicom_node.spool import Spool

    scp = StorageSCP(
        settings,
        Spool(settings.spool_dir),
        _ForwardingMetrics(link),
        on_association_end=lambda: link.send(("end", scp.active_associations())),
        reuse_port=True,
    )
    try:
        scp.start()
    except Exception as exc:  # noqa: BLE001 - reported to the main process
        link.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    link.send(("ready", os.getpid()))
    active = 0
    try:
        while True:
            if conn.poll(0.05):
                try:
                    message = conn.recv()
                except EOFError:
                    break
                if message[0] == "stop":
                    break
            now = scp.active_associations()
            if now != active:
                active = now
                link.send(("active", active))
    finally:
        scp.stop()
