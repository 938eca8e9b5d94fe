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

import argparse
import contextlib
import ctypes
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import requests

from dicom_node.errors import ConfigError, DicomNodeError

if TYPE_CHECKING:
    from pydicom import Dataset

    from dicom_node.service import NodeService

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
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_PR_SET_PDEATHSIG = 1


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
        viewer_user: login of the viewer server when it listens beyond loopback.
        viewer_password: its password.
    """

    orthanc_user: str
    orthanc_password: str
    api_token: str
    viewer_user: str
    viewer_password: str


def load_or_create_secrets(data_dir: Path) -> Secrets:
    """Read ``<data_dir>/secrets.json``, creating it (mode 0600) with new random values.

    Values missing from an existing file (written by an older version) are generated and
    the file is rewritten; existing values are kept.

    Args:
        data_dir: the embedded default's state folder.

    Returns:
        The secrets.

    Raises:
        ConfigError: the file exists but is not a JSON object.
    """
    path = data_dir / "secrets.json"
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); delete it to regenerate") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} is not a JSON object; delete it to regenerate")
    defaults: dict[str, Callable[[], str]] = {
        "orthanc_user": lambda: ORTHANC_USER,
        "orthanc_password": lambda: secrets.token_urlsafe(24),
        "api_token": lambda: secrets.token_urlsafe(32),
        "viewer_user": lambda: "radiologist",
        "viewer_password": lambda: secrets.token_urlsafe(18),
    }
    values = {key: str(raw[key]) if raw.get(key) else make() for key, make in defaults.items()}
    if values != raw:
        _write_private(path, json.dumps(values, indent=2) + "\n")
    else:
        path.chmod(0o600)
    return Secrets(**values)


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


# --------------------------------------------------------------------------- scanner (SCU)


@dataclass(frozen=True)
class SendReport:
    """Outcome of `send_files`.

    Attributes:
        sent: files stored with status 0x0000 (or a warning status).
        failed: (file, status or reason) of the others.
    """

    sent: list[Path]
    failed: list[tuple[Path, str]]


def send_files(
    files: Sequence[Path],
    host: str,
    port: int,
    *,
    calling_ae: str = SAMPLE_SCU_AET,
    called_ae: str = ORTHANC_AET,
    timeout: float = 60.0,
) -> SendReport:
    """C-STORE DICOM files over one association, each in its own transfer syntax.

    Args:
        files: Part 10 files.
        host: the SCP's address.
        port: its port.
        calling_ae: our AE title (the "scanner").
        called_ae: the SCP's AE title.
        timeout: ACSE/DIMSE/network timeout in seconds.

    Returns:
        Which files were stored.

    Raises:
        EmbeddedError: the association was rejected or aborted.
    """
    from pydicom import dcmread
    from pynetdicom import AE

    datasets = [(path, dcmread(path)) for path in files]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    contexts = sorted(
        {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _p, ds in datasets}
    )
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise EmbeddedError(
            f"association {calling_ae} -> {called_ae} at {host}:{port} was rejected or failed"
        )
    sent: list[Path] = []
    failed: list[tuple[Path, str]] = []
    try:
        for path, ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(getattr(status, "Status", -1))
            if code == 0 or (code >> 12) == 0xB:
                sent.append(path)
            else:
                failed.append((path, f"status 0x{code & 0xFFFF:04X}" if code >= 0 else "no reply"))
    finally:
        assoc.release()
    return SendReport(sent, failed)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SrGroup:
    """One TID 1501 measurement group of the node's SR.

    Attributes:
        tracking_id: its tracking identifier ("anomaly study" or "anomaly <SOPInstanceUID>").
        score: the anomaly score, if present.
        threshold: the score threshold, if present.
        status: the code meaning of the anomaly status ("Normal", "Abnormal", "Not analysed").
        abnormal: whether the status is SCT 263654008 (Abnormal).
    """

    tracking_id: str
    score: float | None
    threshold: float | None
    status: str | None
    abnormal: bool


def parse_anomaly_sr(ds: Dataset) -> dict[str, SrGroup]:
    """Read the measurement groups of the node's TID 1500 SR (docs/CONTRACTS.md).

    Args:
        ds: the SR dataset.

    Returns:
        Groups keyed by tracking identifier ("anomaly study", "anomaly <SOPInstanceUID>").
    """
    groups: dict[str, SrGroup] = {}

    def visit(items: Iterable[Dataset]) -> None:
        for item in items:
            if item.get("ValueType") == "CONTAINER":
                group = _read_group(item)
                if group is not None:
                    groups[group.tracking_id] = group
            if "ContentSequence" in item:
                visit(item.ContentSequence)

    visit(ds.get("ContentSequence", []))
    return groups


def _code_value(code: Dataset) -> str:
    """CodeValue, or LongCodeValue for codes longer than 16 characters (e.g. ANOMALY_THRESHOLD)."""
    return str(code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue") or "")


def _concept(item: Dataset) -> str:
    seq = item.get("ConceptNameCodeSequence")
    return _code_value(seq[0]) if seq else ""


def _read_group(container: Dataset) -> SrGroup | None:
    tracking: str | None = None
    score = threshold = None
    status: str | None = None
    abnormal = False
    for item in container.get("ContentSequence", []):
        concept = _concept(item)
        value_type = item.get("ValueType")
        if value_type in ("TEXT", "UIDREF") and concept == _TRACKING_IDENTIFIER_CODE:
            tracking = str(item.get("TextValue", ""))
        elif value_type == "NUM" and concept in (_SCORE_CODE, _THRESHOLD_CODE):
            measured = item.get("MeasuredValueSequence")
            value = float(measured[0].NumericValue) if measured else None
            if concept == _SCORE_CODE:
                score = value
            else:
                threshold = value
        elif value_type == "CODE" and concept == _STATUS_CODE:
            code = item.ConceptCodeSequence[0]
            status = str(code.CodeMeaning)
            abnormal = _code_value(code) in _ABNORMAL_CODES
    if tracking is None:
        return None
    return SrGroup(tracking, score, threshold, status, abnormal)


def find_results(
    session: requests.Session,
    orthanc_url: str,
    study_uid: str,
    modalities: Iterable[str] = ("SR", "SEG"),
) -> list[Dataset]:
    """The node's result instances stored in Orthanc for a study.

    Args:
        session: authenticated session.
        orthanc_url: Orthanc's HTTP root.
        study_uid: StudyInstanceUID.
        modalities: which result series to download (SR first in the answer).

    Returns:
        Datasets (read from Orthanc) whose series' Manufacturer is the node's.

    Raises:
        requests.HTTPError: Orthanc answered an error.
    """
    from io import BytesIO

    from pydicom import dcmread

    from ai_engine.dicom_io import markers

    wanted = set(modalities)
    found = session.post(
        f"{orthanc_url}/tools/find",
        json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
        timeout=30,
    )
    found.raise_for_status()
    results: list[Dataset] = []
    for series in found.json():
        tags = series["MainDicomTags"]
        if tags.get("Manufacturer") != markers.OUTPUT_MANUFACTURER:
            continue
        if tags.get("Modality") not in wanted:
            continue
        for instance_id in series["Instances"]:
            raw = session.get(f"{orthanc_url}/instances/{instance_id}/file", timeout=60)
            raw.raise_for_status()
            results.append(dcmread(BytesIO(raw.content)))
    results.sort(key=lambda d: d.Modality != "SR")
    return results


# --------------------------------------------------------------------------- the stack


@dataclass(frozen=True)
class StackOptions:
    """How to run the embedded default.

    Attributes:
        data_dir: state folder (secrets, Orthanc storage, node spool and jobs, logs).
        http_port: Orthanc HTTP port.
        dicom_port: Orthanc DICOM port.
        node_port: the node's Storage SCP port (binds 127.0.0.1).
        node_http_port: the node's HTTP API port (binds 127.0.0.1); 0 disables it.
        viewer_port: the OHIF viewer server's port; 0 disables the viewer.
        viewer_host: address the viewer server binds.
        stable_age: Orthanc's StableAge in seconds.
        quiet_seconds: the node's study quiet period.
        checkpoints: engine checkpoints.
        scanners: AEs allowed to C-STORE into Orthanc (the node is not one of them: it
            sends its results by STOW-RS).
        fresh: wipe Orthanc's storage and the node's state first (tests).
    """

    data_dir: Path = DEFAULT_DATA_DIR
    http_port: int = 8042
    dicom_port: int = 4242
    node_port: int = 11112
    node_http_port: int = 8099
    viewer_port: int = 3000
    viewer_host: str = "127.0.0.1"
    stable_age: int = 5
    quiet_seconds: float = 3.0
    checkpoints: tuple[str, ...] = ("default-cxr",)
    scanners: tuple[DicomPeer, ...] = (DicomPeer("scanner", SAMPLE_SCU_AET),)
    fresh: bool = False


class EmbeddedStack:
    """Orthanc + node + viewer server, started in that order and stopped in reverse.

    Use as a context manager. The integration tests use it with free ports inside a
    loopback-only network namespace; `main` uses it on the host.

    Args:
        options: ports, folders and timings.
    """

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.data_dir = options.data_dir.resolve()
        self.secrets: Secrets | None = None
        self.orthanc: OrthancProcess | None = None
        self.node: NodeService | None = None
        self.viewer: ManagedProcess | None = None
        self._stack = contextlib.ExitStack()

    @property
    def orthanc_url(self) -> str:
        """Orthanc's HTTP root on loopback."""
        return f"http://127.0.0.1:{self.options.http_port}"

    @property
    def viewer_url(self) -> str | None:
        """The viewer's root URL, or None when no viewer server runs."""
        if self.viewer is None:
            return None
        host = self.options.viewer_host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104
        return f"http://{shown}:{self.options.viewer_port}"

    @property
    def auth(self) -> tuple[str, str]:
        """Orthanc's HTTP user and password."""
        if self.secrets is None:
            raise EmbeddedError("the stack is not started")
        return (self.secrets.orthanc_user, self.secrets.orthanc_password)

    def session(self) -> requests.Session:
        """A requests session authenticated to Orthanc."""
        session = requests.Session()
        session.auth = self.auth
        return session

    def __enter__(self) -> EmbeddedStack:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the viewer, the node and Orthanc (in that order)."""
        self._stack.close()

    def _start(self) -> None:
        opts = self.options
        if opts.fresh:
            for sub in ("orthanc", "node"):
                shutil.rmtree(self.data_dir / sub, ignore_errors=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.secrets = load_or_create_secrets(self.data_dir)
        for port, what in ((opts.http_port, "--http-port"), (opts.dicom_port, "--dicom-port")):
            if not port_is_free(port):
                raise EmbeddedError(f"port {port} is in use: pick another with {what}")
        config = render_orthanc_config(
            storage_dir=self.data_dir / "orthanc" / "db",
            http_port=opts.http_port,
            dicom_port=opts.dicom_port,
            users={self.secrets.orthanc_user: self.secrets.orthanc_password},
            node=DicomPeer(NODE_MODALITY, NODE_AET, "127.0.0.1", opts.node_port),
            scanners=opts.scanners,
            stable_age=opts.stable_age,
        )
        config_path = write_orthanc_config(self.data_dir / "orthanc", config)
        self.orthanc = OrthancProcess(config_path, self.orthanc_url, self.auth)
        self._stack.enter_context(self.orthanc)
        logger.info("Orthanc is up", extra={"url": self.orthanc_url})

        self.node = self._start_node()
        self._stack.callback(self.node.stop)

        if opts.viewer_port and VIEWER_SERVER.exists():
            self.viewer = self._start_viewer()
            self._stack.enter_context(self.viewer)
            self._wait_viewer()
        elif opts.viewer_port:
            logger.warning("no viewer server at %s; running without the viewer", VIEWER_SERVER)

    def _start_node(self) -> NodeService:
        from dicom_node.config import load_settings
        from dicom_node.service import NodeService

        opts = self.options
        settings = load_settings(
            ae_title=NODE_AET,
            host="127.0.0.1",
            port=opts.node_port,
            allowed_calling_aes=[ORTHANC_AET],
            data_dir=self.data_dir / "node",
            study_quiet_seconds=opts.quiet_seconds,
            checkpoints=list(opts.checkpoints),
            orthanc_url=f"{self.orthanc_url}/dicom-web",
            orthanc_username=self.auth[0],
            orthanc_password=self.auth[1],
            http_host="127.0.0.1",
            http_port=opts.node_http_port,
            api_token=self.secrets.api_token if self.secrets else None,
        )
        node = NodeService(settings)
        node.start()
        return node

    def _start_viewer(self) -> ManagedProcess:
        if self.secrets is None:
            raise EmbeddedError("the stack is not started")
        opts = self.options
        secret_dir = self.data_dir / "secrets"
        orthanc_pw = secret_dir / "orthanc_password"
        token = secret_dir / "node_api_token"
        _write_private(orthanc_pw, self.secrets.orthanc_password + "\n")
        _write_private(token, self.secrets.api_token + "\n")
        args = [
            "node",
            str(VIEWER_SERVER),
            "--host",
            opts.viewer_host,
            "--port",
            str(opts.viewer_port),
            "--orthanc",
            self.orthanc_url,
            "--orthanc-user",
            self.secrets.orthanc_user,
            "--orthanc-password-file",
            str(orthanc_pw),
        ]
        if opts.node_http_port:
            args += ["--node-api", f"http://127.0.0.1:{opts.node_http_port}"]
            args += ["--node-token-file", str(token)]
        if opts.viewer_host not in _LOOPBACK_HOSTS:
            viewer_pw = secret_dir / "viewer_password"
            _write_private(viewer_pw, self.secrets.viewer_password + "\n")
            args += ["--viewer-user", self.secrets.viewer_user]
            args += ["--viewer-password-file", str(viewer_pw)]
        return ManagedProcess("viewer", args, self.data_dir / "logs" / "viewer.log")

    def _wait_viewer(self, timeout: float = 30.0) -> None:
        viewer = self.viewer
        if viewer is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            code = viewer.poll()
            if code is not None:
                raise EmbeddedError(
                    f"viewer server exited with status {code}; log {viewer.log_path}:\n"
                    f"{viewer.log_tail()}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.viewer_url}/", timeout=2).status_code < 500:
                    return
            if time.monotonic() > deadline:
                raise EmbeddedError(f"viewer server not up after {timeout:.0f} s")
            time.sleep(0.2)

    def check_alive(self) -> None:
        """Raise if Orthanc or the viewer server has exited.

        Raises:
            EmbeddedError: a child process ended.
        """
        for proc in (self.orthanc, self.viewer):
            if proc is not None and proc.poll() is not None:
                raise EmbeddedError(
                    f"{proc.name} exited (status {proc.poll()}); log {proc.log_path}:\n"
                    f"{proc.log_tail()}"
                )


# --------------------------------------------------------------------------- the demo


@dataclass(frozen=True)
class SampleStudy:
    """A sample study folder under tests/data/dicom/.

    Attributes:
        name: folder name.
        files: its DICOM files.
        study_uid: StudyInstanceUID.
        description: StudyDescription (public sample text, no PHI) or the folder name.
        label: the source's label, if known.
    """

    name: str
    files: tuple[Path, ...]
    study_uid: str
    description: str
    label: str


def discover_samples(samples_dir: Path = SAMPLES_DIR) -> list[SampleStudy]:
    """The sample studies (one per folder), with labels from ``samples.json`` when present.

    Args:
        samples_dir: ``tests/data/dicom``.

    Returns:
        The studies, sorted by folder name.
    """
    from pydicom import dcmread

    labels: dict[str, str] = {}
    index = samples_dir.parent / "samples.json"
    if index.exists():
        labels = {e["study"]: e["label"] for e in json.loads(index.read_text(encoding="utf-8"))}
    studies = []
    for folder in sorted(p for p in samples_dir.iterdir() if p.is_dir()):
        files = tuple(sorted(folder.glob("*.dcm")))
        if not files:
            continue
        head = dcmread(files[0], stop_before_pixels=True)
        studies.append(
            SampleStudy(
                name=folder.name,
                files=files,
                study_uid=str(head.StudyInstanceUID),
                description=str(head.get("StudyDescription") or folder.name),
                label=labels.get(folder.name, "unknown"),
            )
        )
    return studies


@dataclass
class _Pending:
    study: SampleStudy
    sent_at: float
    done: bool = False


@dataclass(frozen=True)
class SampleOutcome:
    """What happened to one sample study.

    Attributes:
        seconds: from the C-STORE to the SR being in Orthanc (0 for an earlier run's result).
        abnormal: the node's study-level flag.
    """

    seconds: float
    abnormal: bool


def summary_line(study: SampleStudy, groups: Mapping[str, SrGroup], seconds: float) -> str:
    """One line per study: name, short UID, score, threshold, flag, time taken."""
    overall = groups.get("anomaly study")
    short_uid = "…" + study.study_uid[-10:]
    if overall is None or overall.score is None:
        return f"{study.name:<24} {short_uid}  SR without a study score  {seconds:6.1f} s"
    flag = "ABNORMAL" if overall.abnormal else (overall.status or "normal").lower()
    threshold = f"{overall.threshold:.4g}" if overall.threshold is not None else "?"
    return (
        f"{study.name:<24} {short_uid}  score {overall.score:<8.4g} threshold {threshold:<8} "
        f"{flag:<12} {seconds:6.1f} s  (source label: {study.label})"
    )


def send_samples_and_report(
    stack: EmbeddedStack,
    studies: Sequence[SampleStudy],
    *,
    timeout: float = 600.0,
    out: IO[str] | None = None,
) -> dict[str, SampleOutcome]:
    """C-STORE each sample study to Orthanc as the scanner and print a line when its SR is in.

    A sample study whose results are already in Orthanc (an earlier run on the same data
    folder) is not sent again: its line is printed at once, marked as such. ``--fresh``
    wipes the state to run every study through again.

    Args:
        stack: the running stack.
        studies: the sample studies.
        timeout: seconds to wait for all results.
        out: where to print (stdout by default).

    Returns:
        The outcome per study name; studies without results are missing.
    """
    import sys

    stream = out or sys.stdout
    pending: list[_Pending] = []
    timings: dict[str, SampleOutcome] = {}
    with stack.session() as session:
        for study in studies:
            earlier = find_results(session, stack.orthanc_url, study.study_uid, ("SR",))
            if earlier:
                groups = parse_anomaly_sr(earlier[0])
                line = summary_line(study, groups, 0.0)
                model = str(earlier[0].get("ManufacturerModelName", "?"))
                print(
                    f"{line}  [earlier run, model {model}; --fresh re-analyses]",
                    file=stream,
                    flush=True,
                )
                timings[study.name] = SampleOutcome(0.0, _study_abnormal(groups))
                continue
            t0 = time.monotonic()
            report = send_files(study.files, "127.0.0.1", stack.options.dicom_port)
            if report.failed:
                print(f"{study.name}: {len(report.failed)} file(s) refused", file=stream)
            pending.append(_Pending(study, t0))
        if pending:
            print(
                f"sent {len(pending)} studies as AE {SAMPLE_SCU_AET}; each result needs Orthanc's "
                f"StableAge ({stack.options.stable_age} s) + the node's quiet period "
                f"({stack.options.quiet_seconds:g} s) + inference",
                file=stream,
                flush=True,
            )
        deadline = time.monotonic() + timeout
        while any(not p.done for p in pending) and time.monotonic() < deadline:
            stack.check_alive()
            for item in pending:
                if item.done:
                    continue
                srs = find_results(session, stack.orthanc_url, item.study.study_uid, ("SR",))
                if srs:
                    seconds = time.monotonic() - item.sent_at
                    item.done = True
                    groups = parse_anomaly_sr(srs[0])
                    timings[item.study.name] = SampleOutcome(seconds, _study_abnormal(groups))
                    line = summary_line(item.study, groups, seconds)
                    print(line, file=stream, flush=True)
            time.sleep(0.5)
    for item in pending:
        if not item.done:
            print(f"{item.study.name}: no results within {timeout:.0f} s", file=stream)
    return timings


def _study_abnormal(groups: Mapping[str, SrGroup]) -> bool:
    overall = groups.get("anomaly study")
    return bool(overall and overall.abnormal)


def _parse_peer(text: str) -> DicomPeer:
    """``AET@HOST`` (or ``AET@HOST:PORT``) -> an allowed scanner."""
    aet, sep, rest = text.partition("@")
    if not sep or not aet or not rest:
        raise argparse.ArgumentTypeError(f"expected AET@HOST[:PORT], got {text!r}")
    host, _, port = rest.partition(":")
    return DicomPeer(f"scanner-{aet.lower()}", aet, host, int(port or 104))


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m dicom_node demo`` command line."""
    parser = argparse.ArgumentParser(
        prog="python -m dicom_node demo",
        description="Run the embedded default (Orthanc + AI node + OHIF viewer) and send "
        "the sample studies through it. Ctrl-C stops everything.",
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--no-samples", action="store_true", help="do not send sample studies")
    parser.add_argument("--samples-dir", type=Path, default=SAMPLES_DIR)
    parser.add_argument("--quiet-seconds", type=float, default=3.0)
    parser.add_argument("--stable-age", type=int, default=5)
    parser.add_argument("--http-port", type=int, default=8042)
    parser.add_argument("--dicom-port", type=int, default=4242)
    parser.add_argument("--node-port", type=int, default=11112)
    parser.add_argument("--node-http-port", type=int, default=8099)
    parser.add_argument("--viewer-port", type=int, default=3000, help="0: no viewer")
    parser.add_argument(
        "--viewer-host",
        default="127.0.0.1",
        help="address the viewer binds (0.0.0.0 to reach it from other machines)",
    )
    parser.add_argument("--checkpoint", action="append", dest="checkpoints")
    parser.add_argument(
        "--allow-scanner",
        action="append",
        type=_parse_peer,
        default=[],
        metavar="AET@HOST[:PORT]",
        help="another AE allowed to C-STORE into Orthanc (repeatable)",
    )
    parser.add_argument("--fresh", action="store_true", help="wipe Orthanc and node state first")
    parser.add_argument("--result-timeout", type=float, default=600.0)
    parser.add_argument(
        "--once", action="store_true", help="exit after the samples' results (or at once)"
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="console log level (the full INFO log goes to <data-dir>/logs/node.log)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the embedded default until Ctrl-C.

    Args:
        argv: command-line arguments (without the program name).

    Returns:
        The exit status.
    """
    args = build_parser().parse_args(argv)
    _configure_logging(args.data_dir.resolve() / "logs", args.log_level)
    options = StackOptions(
        data_dir=args.data_dir,
        http_port=args.http_port,
        dicom_port=args.dicom_port,
        node_port=args.node_port,
        node_http_port=args.node_http_port,
        viewer_port=args.viewer_port,
        viewer_host=args.viewer_host,
        stable_age=args.stable_age,
        quiet_seconds=args.quiet_seconds,
        checkpoints=tuple(args.checkpoints or ("default-cxr",)),
        scanners=(DicomPeer("scanner", SAMPLE_SCU_AET), *args.allow_scanner),
        fresh=args.fresh,
    )

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    t0 = time.monotonic()
    stack = EmbeddedStack(options)
    try:
        stack.__enter__()
        _print_banner(stack, time.monotonic() - t0)
        if not args.no_samples:
            studies = discover_samples(args.samples_dir)
            timings = send_samples_and_report(stack, studies, timeout=args.result_timeout)
            if stack.viewer_url and studies:
                flagged = [st for st in studies if st.name in timings and timings[st.name].abnormal]
                flagged.sort(
                    key=lambda st: st.label != "abnormal"
                )  # agreeing with the source first
                shown = (flagged or studies)[0]
                print(
                    f"open a study ({shown.name}): {stack.viewer_url}/viewer?"
                    f"StudyInstanceUIDs={shown.study_uid}"
                )
            if args.once:
                return 0 if len(timings) == len(studies) else 1
        if args.once:
            return 0
        print("running; press Ctrl-C to stop", flush=True)
        while True:
            stack.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
        return 0
    except DicomNodeError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    finally:
        # A second Ctrl-C must not cut the shutdown short and orphan Orthanc.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.close()
        print(f"stopped (Orthanc, node and viewer) after {time.monotonic() - t0:.0f} s", flush=True)


def _configure_logging(log_dir: Path, console_level: str) -> None:
    """Console at ``console_level``; everything from INFO up into ``log_dir/node.log``."""
    root = logging.getLogger()
    if root.handlers:  # configured by the caller
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    file_handler = logging.FileHandler(log_dir / "node.log", encoding="utf-8")
    file_handler.setFormatter(fmt)
    file_handler.setLevel(logging.INFO)
    console = logging.StreamHandler()
    console.setFormatter(fmt)
    console.setLevel(console_level.upper())
    root.addHandler(file_handler)
    root.addHandler(console)
    root.setLevel(logging.INFO)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per PDU otherwise


def _print_banner(stack: EmbeddedStack, startup_seconds: float) -> None:
    opts = stack.options
    print(f"started in {startup_seconds:.1f} s; state in {stack.data_dir}")
    print(f"logs:     {stack.data_dir / 'logs'}/ (node.log, viewer.log), orthanc/orthanc.log")
    if stack.viewer_url:
        print(f"viewer:   {stack.viewer_url}/   (OHIF with the AI anomaly panel)")
        if opts.viewer_host not in _LOOPBACK_HOSTS:
            print(
                f"          login {stack.secrets.viewer_user if stack.secrets else '?'}, "
                f"password in {stack.data_dir / 'secrets.json'}"
            )
    else:
        print("viewer:   not running (ohif-extension/server/serve.mjs missing or --viewer-port 0)")
    print(
        f"Orthanc:  {stack.orthanc_url}/app/explorer.html (this host only; user "
        f"{stack.auth[0]}, password in {stack.data_dir / 'secrets.json'})"
    )
    scanners = ", ".join(f"{p.aet}@{p.host}" for p in opts.scanners)
    print(f"DICOM:    send to AE {ORTHANC_AET} port {opts.dicom_port} (allowed: {scanners})")
    print(
        f"node:     AE {NODE_AET} on 127.0.0.1:{opts.node_port}, "
        f"API on 127.0.0.1:{opts.node_http_port}"
    )
