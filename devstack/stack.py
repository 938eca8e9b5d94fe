"""`EmbeddedStack`: Orthanc + the node + the viewer server, started in order, stopped in reverse.

1. ``<data_dir>/secrets.json`` (mode 0600; `dicom_node.credentials`) holds the generated
   passwords, created on the first run and reused afterwards;
2. Orthanc runs from a configuration rendered by `devstack.orthanc.render_orthanc_config`,
   as a subprocess in its own process group;
3. the node (`dicom_node.service.NodeService`) runs in this process; its SCP accepts
   Orthanc's AE only, and it sends its results back by STOW-RS;
4. the viewer server (``ohif-extension/server/serve.mjs``) runs when it is there.

The integration tests and the benchmarks use it with free ports inside a loopback-only
network namespace; `devstack.demo.main` uses it on the host.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import requests

from devstack import REPO_ROOT, EmbeddedError
from devstack.orthanc import (
    ORTHANC_AET,
    DicomPeer,
    OrthancProcess,
    render_orthanc_config,
    write_orthanc_config,
)
from devstack.processes import ManagedProcess, port_is_free
from dicom_node.credentials import Secrets, load_or_create_secrets, write_private

if TYPE_CHECKING:
    from dicom_node.index import StudyScore
    from dicom_node.service import NodeService

logger = logging.getLogger(__name__)

VIEWER_SERVER = REPO_ROOT / "ohif-extension" / "server" / "serve.mjs"
DEFAULT_DATA_DIR = REPO_ROOT / "var"

#: AE titles of the stack.
NODE_AET = "AINODE"
SAMPLE_SCU_AET = "SAMPLESCU"
#: Orthanc's name for the node in DicomModalities (the routing plugin's target).
NODE_MODALITY = "ainode"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


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
    checkpoints: tuple[str, ...] = ("default-cxr", "default-brain")
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

    def study_score(self, study_uid: str) -> StudyScore | None:
        """The node's newest study score for a study whose results are delivered, or None.

        The node's index records it once the PACS accepted the results (the same rows as
        ``GET /studies/scores``).

        Args:
            study_uid: StudyInstanceUID.

        Returns:
            The newest row, or None while the study has no delivered results.

        Raises:
            EmbeddedError: the stack is not started.
        """
        if self.node is None or self.node.index is None:
            raise EmbeddedError("the stack is not started")
        rows = self.node.index.scores([study_uid])
        return rows[0] if rows else None

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
        write_private(orthanc_pw, self.secrets.orthanc_password + "\n")
        write_private(token, self.secrets.api_token + "\n")
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
        if opts.viewer_host not in LOOPBACK_HOSTS:
            viewer_pw = secret_dir / "viewer_password"
            write_private(viewer_pw, self.secrets.viewer_password + "\n")
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
