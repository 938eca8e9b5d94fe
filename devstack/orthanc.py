"""The Debian Orthanc of the development stack: its configuration and its process.

`render_orthanc_config` fills ``orthanc/orthanc.template.json`` (DICOMweb, the Python routing
plugin ``orthanc/route_stable_studies.py``, HTTP remote access off, authentication on, DICOM
AE allow-list with host check) and `OrthancProcess` runs Orthanc from it with
``TCP_NODELAY=1``, returning once it is healthy.

Orthanc 1.10 cannot bind one address: it listens on all interfaces. ``RemoteAccessAllowed``
false rejects HTTP clients that are not on this host, and ``DicomAlwaysAllowStore`` false with
``DicomCheckModalityHost`` true accepts C-STORE only from the AE titles and hosts listed in
``DicomModalities``. The tests run everything inside a loopback-only network namespace.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from devstack import REPO_ROOT, EmbeddedError
from devstack.processes import ManagedProcess
from dicom_node.credentials import write_private
from dicom_node.errors import ConfigError

logger = logging.getLogger(__name__)

ORTHANC_TEMPLATE = REPO_ROOT / "orthanc" / "orthanc.template.json"
ROUTING_SCRIPT = REPO_ROOT / "orthanc" / "route_stable_studies.py"
ORTHANC_BINARY = "/usr/sbin/Orthanc"
#: Orthanc's AE title in the development stack.
ORTHANC_AET = "ORTHANC"


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
    write_private(path, json.dumps(config, indent=2) + "\n")
    Path(config["StorageDirectory"]).mkdir(parents=True, exist_ok=True)
    return path


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
