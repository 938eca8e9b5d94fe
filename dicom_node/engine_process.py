"""The engine in a child process of its own, so it neither shares the GIL nor dies with the node.

The node's SCP, router and sender are Python threads of one process. Run in that process, the
engine (torch, highdicom: mostly Python) holds the GIL while a study is analysed and the
other stages wait for it; on two cores the node then uses about one. In a child process the
engine and the node's own stages run side by side, and a crash of the engine (a segfault in a
native library, the kernel's OOM killer, a hang) fails the job, which is retried, instead of
taking the node and its open associations down.

`EngineProcess` is the default `dicom_node.engine.Engine` (`dicom_node.engine.make_engine`):
``submit`` sends ``(input_dir, output_dir, checkpoints)`` over a socket pair to a persistent
child, ``python -m dicom_node.engine_process`` (a fresh interpreter: no forked threads or
locks, and unlike ``multiprocessing``'s *spawn* it does not re-import the parent's main
script), that keeps its models loaded between jobs; ``collect`` returns the child's results
as `dicom_node.engine.EngineResult` records, which the child makes from the engine's
``StudyResult`` objects, so no engine type (and no torch) is unpickled in the node. Errors
come back as:

- `ai_engine.errors.AiEngineError` when the engine raised one (bad input, unknown model:
  deterministic, the worker dead-letters the job at once), with the child's class name and
  message;
- `EngineProcessError` for anything else, for a child that died (exit status in the message)
  or that ran past ``timeout_seconds`` (it is killed): retryable. The next call starts a new
  child.

The child leaves by itself when the node process is gone (it checks its parent every
`PARENT_CHECK_SECONDS` and reads EOF on the pipe), and ignores SIGINT, so a Ctrl-C in a
terminal stops the node, which then stops the child.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ai_engine.errors import AiEngineError
from dicom_node.engine import DEFAULT_TARGET, EngineResult, resolve_engine_fn

logger = logging.getLogger(__name__)


class EngineProcessError(RuntimeError):
    """The engine process failed in a way another attempt may not (retryable)."""


#: How often the child checks that its parent lives. Short, so that the engine of a killed
#: scaled-out worker stops well within the lease another worker waits out before it takes
#: the job over (``worker_lease_seconds``).
PARENT_CHECK_SECONDS = 0.1


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(0)
        time.sleep(PARENT_CHECK_SECONDS)


def _child_main(
    conn: Connection,
    target: str,
    preload: tuple[str, ...],
    parent_pid: int,
    log_level: int,
    overlay_sc: str = "off",
) -> None:
    """Body of the child: serve ``run`` requests until ``stop``, EOF or the parent's death."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    engine: Any = None
    startup_error: BaseException | None = None
    try:
        engine = resolve_engine_fn(target, overlay_sc)
        if preload and target == DEFAULT_TARGET:  # load the models before the first job
            from ai_engine.pipeline import get_model

            for checkpoint in preload:
                get_model(checkpoint)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent on its first call
        startup_error = exc
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        _, input_dir, output_dir, checkpoints = message
        if startup_error is not None:
            name, text = type(startup_error).__name__, f"engine {target} did not start"
            conn.send(("error", (name, f"{text}: {startup_error}", False)))
            continue
        try:
            out = Path(output_dir)
            results = engine(Path(input_dir), out, tuple(checkpoints))
            conn.send(("ok", [EngineResult.from_engine(r, out) for r in results]))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the node
            deterministic = isinstance(exc, AiEngineError)
            conn.send(("error", (type(exc).__name__, str(exc), deterministic)))


def _child_log_level() -> int:
    """The node's logging level, but at least WARNING.

    The node logs each job itself, and the child's stderr is the node's console (the embedded
    demo keeps its console at WARNING).
    """
    return max(logging.getLogger().getEffectiveLevel(), logging.WARNING)


class EngineProcess:
    """The engine run in a persistent child process (a ``concurrent`` `Engine`).

    A call runs one job and is thread-safe; `submit`/`collect` (one thread only) let a worker
    keep the child busy with the next job while it files the last one's results.

    Args:
        target: ``module:function`` of the engine, importable in a fresh interpreter
            (default: ``ai_engine.pipeline:run``).
        timeout_seconds: a job that runs longer is given up: the child is killed and
            `EngineProcessError` raised (None: no limit).
        preload: checkpoints the child loads before its first job (default engine only).
        threads: intra-op threads of the child's torch/OpenMP/MKL (``OMP_NUM_THREADS`` and
            ``MKL_NUM_THREADS`` in its environment); None leaves the libraries' default.
        overlay_sc: the default engine's overlay Secondary Captures (settings ``overlay_sc``).

    Example:
        >>> engine = EngineProcess()  # doctest: +SKIP
        >>> results = engine(Path("in"), Path("out"), ["default-cxr"])  # doctest: +SKIP
        >>> engine.close()  # doctest: +SKIP
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout_seconds: float | None = None,
        preload: Sequence[str] = (),
        threads: int | None = None,
        overlay_sc: str = "off",
    ) -> None:
        self.target = target
        self.threads = threads
        self.overlay_sc = overlay_sc
        self.timeout_seconds = timeout_seconds
        self._preload = tuple(preload)
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Connection | None = None
        self.starts = 0
        #: jobs submitted and not collected yet
        self.pending = 0

    @property
    def concurrent(self) -> bool:
        """True: the child works on a submitted job while the caller does other things."""
        return True

    @property
    def pid(self) -> int | None:
        """The child's process id (None when none is running)."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the child now (it loads the engine while the node waits for studies)."""
        with self._lock:
            self._ensure_started()

    def __call__(
        self, input_dir: Path, output_dir: Path, checkpoints: Sequence[str]
    ) -> list[EngineResult]:
        """Run the engine on one job folder in the child.

        Args:
            input_dir: folder with the study's DICOM files.
            output_dir: empty folder for the result files.
            checkpoints: checkpoint names.

        Returns:
            The engine's results.

        Raises:
            AiEngineError: the engine rejected the input or the model (deterministic).
            EngineProcessError: any other failure, a dead child or a timeout (retryable).
        """
        with self._lock:
            self.submit(input_dir, output_dir, checkpoints)
            return self.collect()

    def submit(self, input_dir: Path, output_dir: Path, checkpoints: Sequence[str]) -> None:
        """Hand the child a job without waiting; `collect` returns results in submit order.

        The child takes the next job as soon as it has finished the one before, so a worker
        that submits job N+1 before it collects job N keeps the engine busy while it files
        job N's results (`dicom_node.worker.Worker`).

        Raises:
            EngineProcessError: the child is gone (nothing was submitted).
        """
        conn = self._ensure_started()
        try:
            conn.send(("run", str(input_dir), str(output_dir), tuple(checkpoints)))
        except OSError as exc:
            code = self._reap()
            raise EngineProcessError(f"engine process died (exit status {code})") from exc
        self.pending += 1

    def collect(self) -> list[EngineResult]:
        """The results of the oldest submitted job (waits for them; see `__call__`).

        Raises:
            AiEngineError: the engine rejected the input or the model (deterministic).
            EngineProcessError: any other failure, a dead child or a timeout (retryable);
                after a dead child or a timeout every other submitted job is lost as well
                (`pending` is 0 again) and must be submitted again.
        """
        conn = self._conn
        if conn is None or self.pending == 0:
            raise EngineProcessError("no job submitted to the engine process")
        try:
            if not conn.poll(self.timeout_seconds):
                self._kill()
                self._reap()
                raise EngineProcessError(
                    f"engine ran longer than {self.timeout_seconds:g} s; process killed"
                )
            kind, payload = conn.recv()
        except (EOFError, OSError) as exc:
            code = self._reap()
            raise EngineProcessError(f"engine process died (exit status {code})") from exc
        self.pending -= 1
        if kind == "ok":
            results: list[EngineResult] = payload
            return results
        name, message, deterministic = payload
        if deterministic:
            raise AiEngineError(f"{name}: {message}")
        raise EngineProcessError(f"{name}: {message}")

    def close(self, timeout: float = 10.0) -> None:
        """Ask the child to stop; kill it if it has not within ``timeout`` seconds."""
        with self._lock:
            if self._process is None:
                return
            try:
                if self._conn is not None:
                    self._conn.send(("stop",))
            except OSError:
                pass
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
            self._reap()

    def _ensure_started(self) -> Connection:
        if self._process is not None and self._process.poll() is None and self._conn is not None:
            return self._conn
        self._reap()
        ours, theirs = socket.socketpair()
        command = [
            sys.executable,
            "-m",
            "dicom_node.engine_process",
            "--fd",
            str(theirs.fileno()),
            "--target",
            self.target,
            "--parent-pid",
            str(os.getpid()),
            "--log-level",
            str(_child_log_level()),
            "--overlay-sc",
            self.overlay_sc,
            *(arg for checkpoint in self._preload for arg in ("--preload", checkpoint)),
        ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        try:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                command, pass_fds=(theirs.fileno(),), env=env
            )
        finally:
            theirs.close()
        self._process, self._conn = process, Connection(ours.detach())
        self.starts += 1
        logger.info("engine process started", extra={"stage": "engine", "pid": process.pid})
        return self._conn

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(5.0)

    def _reap(self) -> int | None:
        """Forget the child (after it ended or was killed); its exit status, if any."""
        code = None
        if self._process is not None:
            try:
                code = self._process.wait(1.0)
            except subprocess.TimeoutExpired:
                self._kill()
                code = self._process.returncode
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None
        self.pending = 0
        return code


def main(argv: Sequence[str] | None = None) -> None:
    """Entry of the child process (started by `EngineProcess`, not by hand)."""
    parser = argparse.ArgumentParser(prog="python -m dicom_node.engine_process")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--target", default=DEFAULT_TARGET)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--log-level", type=int, default=logging.WARNING)
    parser.add_argument("--preload", action="append", default=[])
    parser.add_argument("--overlay-sc", default="off", choices=("off", "projection", "all"))
    args = parser.parse_args(argv)
    conn = Connection(args.fd)
    _child_main(
        conn, args.target, tuple(args.preload), args.parent_pid, args.log_level, args.overlay_sc
    )


if __name__ == "__main__":
    main()
