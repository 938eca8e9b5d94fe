"""Session fixtures for the integration tests: the embedded stack on loopback.

The whole test run must execute inside a loopback-only network namespace
(``unshare -n bash -c 'ip link set lo up; ...'``; ``scripts/test.sh`` does this), because
Orthanc 1.10 cannot bind a single address and would otherwise listen on every interface.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from devstack.orthanc import DicomPeer
from devstack.processes import (
    ManagedProcess,
    free_port,
    loopback_only_namespace,
    network_interfaces,
)
from devstack.stack import SAMPLE_SCU_AET, EmbeddedStack, StackOptions

#: AE title dcmtk's storescu uses in the tests (allowed to store into Orthanc).
STORESCU_AET = "STORESCU"
STABLE_AGE = 2
QUIET_SECONDS = 1.5
#: The engine checkpoint the node runs. Override to try the tests with another checkpoint
#: (a name the engine resolves: shipped, or a folder of that name in the working directory).
CHECKPOINT = os.environ.get("AI_NODE_TEST_CHECKPOINT", "default-cxr")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """Orthanc (Debian, DICOMweb, routing plugin, StableAge 2 s) + node + viewer server."""
    if not loopback_only_namespace():
        pytest.fail(
            "integration tests must run in a loopback-only network namespace (Orthanc 1.10 "
            f"binds every interface); this one has {network_interfaces()}. Run "
            "scripts/test.sh, or: unshare -n bash -c 'ip link set lo up; .venv/bin/pytest ...'",
            pytrace=False,
        )
    options = StackOptions(
        data_dir=tmp_path_factory.mktemp("embedded"),
        http_port=free_port(),
        dicom_port=free_port(),
        node_port=free_port(),
        node_http_port=free_port(),
        viewer_port=free_port(),
        stable_age=STABLE_AGE,
        quiet_seconds=QUIET_SECONDS,
        # default routing: chest radiographs to CHECKPOINT, brain MR to default-brain
        checkpoints=tuple(dict.fromkeys((CHECKPOINT, "default-brain"))),
        scanners=(
            DicomPeer("scanner", SAMPLE_SCU_AET),
            DicomPeer("storescu", STORESCU_AET),
        ),
        fresh=True,
    )
    with EmbeddedStack(options) as running:
        orthanc_pid = running.orthanc.pid if running.orthanc else None
        yield running
    # EmbeddedStack.__exit__ stopped Orthanc's whole process group; make sure of it.
    if orthanc_pid is not None:
        stat = Path(f"/proc/{orthanc_pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", (
            "Orthanc is still running after the stack stopped"
        )


@pytest.fixture(scope="session")
def dicomweb(stack: EmbeddedStack) -> DICOMwebClient:
    session = requests.Session()
    session.auth = stack.auth
    return DICOMwebClient(url=f"{stack.orthanc_url}/dicom-web", session=session)


#: The repository root (the browser scripts live in ohif-extension/tests/).
REPO = Path(__file__).resolve().parents[2]
BrowserScript = Callable[..., str]


@pytest.fixture(scope="session")
def browser_script() -> BrowserScript:
    """Runs one of ``ohif-extension/tests/*.mjs`` (headless Chromium) and returns its stdout.

    ``browser_script("e2e.mjs", "--url", url, ..., passed="E2E PASS")`` asserts exit status 0
    and that ``passed`` was printed, showing the script's output (and where its screenshots
    are, given ``screenshots``) otherwise.
    """

    def run(script: str, *args: str, passed: str, screenshots: Path | None = None) -> str:
        proc = subprocess.run(
            ["node", str(REPO / "ohif-extension" / "tests" / script), *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO / "ohif-extension",
            check=False,
        )
        output = f"{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
        where = f" (screenshots in {screenshots})" if screenshots else ""
        assert proc.returncode == 0, f"{script} failed{where}:\n{output}"
        assert passed in proc.stdout, output
        return proc.stdout

    return run


@pytest.fixture(scope="session")
def stock_viewer_url(
    stack: EmbeddedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The address of a **stock** OHIF 3.13.2 (no extension of this project) on the stack's
    Orthanc: the viewer server with ``ohif-extension/tests/stock-app-config.js``."""
    assert stack.secrets is not None
    port = free_port()
    viewer = ManagedProcess(
        "stock-viewer",
        [
            "node",
            str(REPO / "ohif-extension" / "server" / "serve.mjs"),
            "--port",
            str(port),
            "--orthanc",
            stack.orthanc_url,
            "--orthanc-user",
            stack.secrets.orthanc_user,
            "--orthanc-password-file",
            str(stack.data_dir / "secrets" / "orthanc_password"),
            "--app-config",
            str(REPO / "ohif-extension" / "tests" / "stock-app-config.js"),
        ],
        tmp_path_factory.mktemp("stock-viewer") / "stock-viewer.log",
    )
    with viewer:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{url}/", timeout=2).status_code < 500:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"stock viewer not up: {viewer.log_tail()}")
            time.sleep(0.2)
        yield url
