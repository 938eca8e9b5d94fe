"""The embedded default: local Orthanc + the node + the OHIF viewer, with sample studies.

``python -m dicom_node demo`` calls `main`. It

1. generates passwords into ``<data_dir>/secrets.json`` (mode 0600; ``var/`` by default, which
   git ignores) on the first run and reuses them afterwards;
2. renders Orthanc's configuration from ``orthanc/orthanc.template.json`` (DICOMweb, the
   Python routing plugin ``orthanc/route_stable_studies.py``, HTTP remote access off,
   authentication on, DICOM AE allow-list with host check) and starts the Debian Orthanc as a
   subprocess in its own process group, with ``TCP_NODELAY=1``;
3. starts the node (`dicom_node.service.NodeService`), whose SCP accepts Orthanc's AE only;
4. starts the viewer server (``ohif-extension/server/serve.mjs``) when it is there;
5. C-STOREs the sample studies under ``tests/data/dicom/`` to Orthanc as the "scanner"
   ``SAMPLESCU`` and prints one line per study when its results are in Orthanc;
6. runs until Ctrl-C (or SIGTERM) and then stops everything, Orthanc's process group included.

The pieces (`load_or_create_secrets`, `render_orthanc_config`, `write_orthanc_config`,
`OrthancProcess`, `send_files`, `find_results`, `free_port`, `loopback_only_namespace`) are
also what the integration tests use.

Orthanc 1.10 cannot bind one address: it listens on all interfaces. ``RemoteAccessAllowed``
false rejects HTTP clients that are not on this host, and ``DicomAlwaysAllowStore`` false with
``DicomCheckModalityHost`` true accepts C-STORE only from the AE titles and hosts listed in
``DicomModalities``. The tests run everything inside a loopback-only network namespace.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import requests

from dicom_node.errors import ConfigError, DicomNodeError

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

#: Repository root (this file is dicom_node/embedded.py; the project runs from a checkout).
REPO_ROOT = Path(__file__).resolve().parent.parent
ORTHANC_TEMPLATE = REPO_ROOT / "orthanc" / "orthanc.template.json"
ROUTING_SCRIPT = REPO_ROOT / "orthanc" / "route_stable_studies.py"
SAMPLES_DIR = REPO_ROOT / "tests" / "data" / "dicom"
VIEWER_SERVER = REPO_ROOT / "ohif-extension" / "server" / "serve.mjs"
DEFAULT_DATA_DIR = REPO_ROOT / "var"
ORTHANC_BINARY = "/usr/sbin/Orthanc"

#: AE titles of the embedded default.
ORTHANC_AET = "ORTHANC"
NODE_AET = "AINODE"
SAMPLE_SCU_AET = "SAMPLESCU"
#: Orthanc's name for the node in DicomModalities (the routing plugin's target).
NODE_MODALITY = "ainode"
ORTHANC_USER = "ainode"

#: Codes of the node's SR (docs/CONTRACTS.md).
_SCORE_CODE = "ANOMALY_SCORE"
_THRESHOLD_CODE = "ANOMALY_THRESHOLD"
_STATUS_CODE = "ANOMALY_STATUS"
_TRACKING_IDENTIFIER_CODE = "112039"
_ABNORMAL_CODES = {"263654008"}


class EmbeddedError(DicomNodeError):
    """A part of the embedded default could not be started or did not become healthy."""


# --------------------------------------------------------------------------- secrets


@dataclass(frozen=True)
class Secrets:
    """Credentials generated on the first run and kept in ``<data_dir>/secrets.json``.

    Attributes:
        orthanc_user: Orthanc HTTP user (the node's STOW-RS and the viewer's proxy use it).
        orthanc_password: its password.
        api_token: bearer token of the node's small HTTP API.
    """

    orthanc_user: str
    orthanc_password: str
    api_token: str


def load_or_create_secrets(data_dir: Path) -> Secrets:
    """Read ``<data_dir>/secrets.json``, creating it (mode 0600) with new random values.

    Args:
        data_dir: the embedded default's state folder.

    Returns:
        The secrets.

    Raises:
        ConfigError: the file exists but is not valid.
    """
    path = data_dir / "secrets.json"
    if path.exists():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return Secrets(
                orthanc_user=str(raw["orthanc_user"]),
                orthanc_password=str(raw["orthanc_password"]),
                api_token=str(raw["api_token"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is not valid ({exc}); delete it to regenerate") from exc
    created = Secrets(
        orthanc_user=ORTHANC_USER,
        orthanc_password=secrets.token_urlsafe(24),
        api_token=secrets.token_urlsafe(32),
    )
    _write_private(path, json.dumps(created.__dict__, indent=2) + "\n")
    return created


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (created 0600, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    tmp.chmod(0o600)
    tmp.replace(path)


# --------------------------------------------------------------------------- Orthanc config


@dataclass(frozen=True)
class DicomPeer:
    """One entry of Orthanc's DicomModalities (a known AE; C-STORE only from these).

    Attributes:
        name: Orthanc's symbolic name (key in DicomModalities).
        aet: the peer's AE title.
        host: its address; with DicomCheckModalityHost the connection must come from it.
        port: its DICOM port (used when Orthanc connects to it).
        allow_store: whether it may C-STORE into Orthanc.
    """

    name: str
    aet: str
    host: str = "127.0.0.1"
    port: int = 104
    allow_store: bool = True

    def as_orthanc(self) -> dict[str, Any]:
        """The advanced DicomModalities form of Orthanc 1.10."""
        return {
            "AET": self.aet,
            "Host": self.host,
            "Port": self.port,
            "AllowEcho": True,
            "AllowStore": self.allow_store,
            "AllowFind": False,
            "AllowMove": False,
            "AllowGet": False,
        }


def render_orthanc_config(
    *,
    storage_dir: Path,
    http_port: int,
    dicom_port: int,
    users: Mapping[str, str],
    node: DicomPeer,
    scanners: Sequence[DicomPeer] = (),
    stable_age: int = 60,
    aet: str = ORTHANC_AET,
    check_modality_host: bool = True,
    routing_enabled: bool = True,
    template: Path = ORTHANC_TEMPLATE,
    routing_script: Path = ROUTING_SCRIPT,
) -> dict[str, Any]:
    """Orthanc's configuration: the template with this deployment's values filled in.

    Args:
        storage_dir: Orthanc's storage and index folder.
        http_port: HTTP (REST + DICOMweb) port.
        dicom_port: DICOM port.
        users: HTTP users and passwords (authentication is always on).
        node: the AI node; the routing plugin C-STOREs stable studies to it. It may not
            store into Orthanc (results come back by STOW-RS).
        scanners: AEs allowed to C-STORE into Orthanc (the allow-list).
        stable_age: seconds without a new instance before a study is stable (and routed).
        aet: Orthanc's own AE title (DicomCheckCalledAet is on).
        check_modality_host: check that a known AE connects from its listed host.
        routing_enabled: whether the routing plugin sends stable studies to the node.
        template: the JSON template.
        routing_script: the Python plugin script.

    Returns:
        The configuration as a JSON-ready dict.

    Raises:
        ConfigError: a value is out of range or two peers share a name.
    """
    if stable_age < 1:
        raise ConfigError("stable_age must be at least 1 second")
    if not users:
        raise ConfigError("Orthanc needs at least one HTTP user (authentication is on)")
    peers = [node, *scanners]
    if len({p.name for p in peers}) != len(peers):
        raise ConfigError("DicomModalities names must be unique")
    config: dict[str, Any] = json.loads(template.read_text(encoding="utf-8"))
    config = _strip_comments(config)
    config.update(
        {
            "StorageDirectory": str(storage_dir),
            "IndexDirectory": str(storage_dir),
            "PythonScript": str(routing_script),
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomAet": aet,
            "RegisteredUsers": dict(users),
            "StableAge": stable_age,
            "DicomCheckModalityHost": check_modality_host,
            "DicomModalities": {
                node.name: DicomPeer(node.name, node.aet, node.host, node.port, False).as_orthanc(),
                **{s.name: s.as_orthanc() for s in scanners},
            },
        }
    )
    config["AiNodeRouting"] = {
        **config.get("AiNodeRouting", {}),
        "Enabled": routing_enabled,
        "TargetModality": node.name,
    }
    return config


def _strip_comments(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_comments(v) for k, v in value.items() if not k.startswith("_comment")}
    return value


def write_orthanc_config(config_dir: Path, config: Mapping[str, Any]) -> Path:
    """Write ``orthanc.json`` (mode 0600: it holds passwords) into ``config_dir``.

    Args:
        config_dir: folder for the configuration (created).
        config: from `render_orthanc_config`.

    Returns:
        The path of the written file.
    """
    path = config_dir / "orthanc.json"
    _write_private(path, json.dumps(config, indent=2) + "\n")
    Path(config["StorageDirectory"]).mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- processes


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


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class OrthancProcess(ManagedProcess):
    """The Debian Orthanc, started from a configuration file, with ``TCP_NODELAY=1``.

    Use as a context manager; `start` returns once ``/system`` answers and both plugins
    (DICOMweb, Python) are loaded.

    Args:
        config_path: the rendered ``orthanc.json``.
        http_url: e.g. ``http://127.0.0.1:8042``.
        auth: HTTP user and password.
        log_path: Orthanc's log (default: ``orthanc.log`` beside the config).
        binary: the Orthanc executable.
        startup_timeout: seconds to wait for health.
    """

    def __init__(
        self,
        config_path: Path,
        http_url: str,
        auth: tuple[str, str],
        log_path: Path | None = None,
        binary: str = ORTHANC_BINARY,
        startup_timeout: float = 30.0,
    ) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            # Orthanc's embedded Python is the system's, not this virtualenv's.
            if k not in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONSTARTUP")
        }
        env["TCP_NODELAY"] = "1"  # Debian's dcmtk leaves Nagle on: 20 instead of 200 inst/s
        super().__init__(
            "Orthanc",
            [binary, str(config_path)],
            log_path or config_path.parent / "orthanc.log",
            env=env,
            cwd=config_path.parent,
        )
        self.config_path = config_path
        self.http_url = http_url.rstrip("/")
        self.auth = auth
        self.startup_timeout = startup_timeout

    @classmethod
    def from_config(cls, config_path: Path, config: Mapping[str, Any]) -> OrthancProcess:
        """Build from a rendered configuration (loopback URL, its first user).

        Args:
            config_path: where `write_orthanc_config` wrote it.
            config: the same configuration.

        Returns:
            The (not yet started) process.
        """
        user, password = next(iter(config["RegisteredUsers"].items()))
        return cls(config_path, f"http://127.0.0.1:{config['HttpPort']}", (user, password))

    def start(self) -> None:
        """Start Orthanc and wait until it is healthy.

        Raises:
            EmbeddedError: Orthanc is missing, exited, or did not become healthy in time
                (it is stopped again; the message has the end of its log).
        """
        if not Path(self.args[0]).exists() and shutil.which(self.args[0]) is None:
            raise EmbeddedError(
                f"{self.args[0]} not found: install the Debian packages orthanc "
                "orthanc-dicomweb orthanc-python (scripts/run.sh does)"
            )
        super().start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def wait_healthy(self) -> None:
        """Block until ``/system`` answers 200 and the DICOMweb and Python plugins are loaded.

        Raises:
            EmbeddedError: Orthanc exited or the timeout passed.
        """
        deadline = time.monotonic() + self.startup_timeout
        with requests.Session() as session:
            session.auth = self.auth
            while True:
                code = self.poll()
                if code is not None:
                    raise EmbeddedError(
                        f"Orthanc exited with status {code} during startup; log "
                        f"{self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    system = session.get(f"{self.http_url}/system", timeout=2)
                    plugins = session.get(f"{self.http_url}/plugins", timeout=2)
                    if system.ok and plugins.ok and {"dicom-web", "python"} <= set(plugins.json()):
                        return
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise EmbeddedError(
                        f"Orthanc not healthy after {self.startup_timeout:.0f} s; log "
                        f"{self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(0.2)

    def session(self) -> requests.Session:
        """A requests session authenticated to this Orthanc."""
        session = requests.Session()
        session.auth = self.auth
        return session

    def __enter__(self) -> OrthancProcess:
        self.start()
        return self
