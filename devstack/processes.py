"""Child processes of the development stack, and the network checks its tests rely on.

`ManagedProcess` runs a child in its own process group and stops the whole group (with a
Linux parent-death signal, so no child outlives a SIGKILLed parent). `free_port`,
`port_is_free` and `loopback_only_namespace` are what the stack and the integration tests
use to pick ports and to check they run in a loopback-only network namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the OS picks it).

    Args:
        host: address to probe.

    Returns:
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "0.0.0.0") -> bool:  # noqa: S104 - Orthanc binds all
    """Whether a TCP port can be bound on ``host`` (Orthanc binds every address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def network_interfaces() -> list[str]:
    """Names of the network interfaces of the current network namespace."""
    return [name for _index, name in socket.if_nameindex()]


def loopback_only_namespace() -> bool:
    """True inside a network namespace whose only interface is ``lo`` (and ``lo`` is up).

    ``/sys/class/net`` is not used: it shows the namespace sysfs was mounted in, which
    ``unshare -n`` does not remount.
    """
    if network_interfaces() != ["lo"]:
        return False
    try:
        with socket.create_server(("127.0.0.1", 0)):
            return True
    except OSError:  # lo is down
        return False


class ManagedProcess:
    """A child process in its own process group, stopped with the whole group.

    Args:
        name: for messages.
        args: the command.
        log_path: stdout and stderr go here (appended).
        env: the environment (default: this process's).
        cwd: working folder.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The child's pid (also its process group id), or None before start."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the child in a new session (so it and its children form one group)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(  # noqa: S603 - fixed, trusted command lines
            self.args,
            preexec_fn=_die_with_parent,  # no orphan Orthanc even if we are SIGKILLed
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        logger.debug("started %s (pid %d)", self.name, self._proc.pid)

    def poll(self) -> int | None:
        """The exit status if the child has ended, else None."""
        return self._proc.poll() if self._proc is not None else None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the child's log (for error messages)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it has not ended within ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    logger.warning("%s did not stop in %.0f s; killing it", self.name, timeout)
                    _signal_group(proc.pid, signal.SIGKILL)
                    proc.wait(10)
            # Children that outlived the leader (none expected) go with the group.
            _signal_group(proc.pid, signal.SIGKILL)
        finally:
            self._proc = None
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> ManagedProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
