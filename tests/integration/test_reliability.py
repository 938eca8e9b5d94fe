"""Reliability against the real Orthanc: a burst, ``kill -9`` of the node, an Orthanc outage.

The node runs as ``python -m dicom_node serve`` (real engine, ``default-cxr``, real STOW-RS to
a Debian Orthanc). A burst of two-image studies is sent by C-STORE; while jobs are being
processed the node is killed with SIGKILL and started again on the same data folder; later
Orthanc itself is stopped for a few seconds while the node is delivering. At the end every
instance received must have been processed and every study must have its results in Orthanc
exactly once: one SR, and one binary and one fractional SEG and one overlay Secondary Capture
(the node's default for radiographs) per image — nothing lost, nothing duplicated. The
figures are printed (run with ``-s``) and written to ``reliability.json`` in the test's
temporary folder; the README quotes them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE

from devstack.orthanc import (
    DicomPeer,
    OrthancProcess,
    render_orthanc_config,
    write_orthanc_config,
)
from devstack.processes import free_port, loopback_only_namespace, network_interfaces
from dicom_node.config import NodeSettings
from dicom_node.credentials import load_or_create_secrets
from dicom_node.queue import JobQueue, JobStageValues, JobStateValues

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "tests" / "data" / "dicom" / "kermany_normal_mono2" / "kermany_normal_mono2.dcm"
N_STUDIES = 16
IMAGES_PER_STUDY = 2
CALLING_AE = "ORTHANC"


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancProcess]:
    if not loopback_only_namespace():
        pytest.fail(
            "integration tests must run in a loopback-only network namespace; this one has "
            f"{network_interfaces()}: unshare -n bash -c 'ip link set lo up; ...'",
            pytrace=False,
        )
    root = tmp_path / "orthanc"
    secrets = load_or_create_secrets(root)
    config = render_orthanc_config(
        storage_dir=root / "storage",
        http_port=free_port(),
        dicom_port=free_port(),
        users={"ainode": secrets.orthanc_password},
        node=DicomPeer("ainode", "AINODE", port=free_port()),
        scanners=(),
        routing_enabled=False,
    )
    process = OrthancProcess.from_config(write_orthanc_config(root, config), config)
    with process:
        yield process
    process.stop()


def start_node(data_dir: Path, port: int, orthanc: OrthancProcess) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DICOM_NODE_DATA_DIR": str(data_dir),
        "DICOM_NODE_PORT": str(port),
        "DICOM_NODE_HTTP_PORT": "0",
        "DICOM_NODE_ALLOWED_CALLING_AES": CALLING_AE,
        "DICOM_NODE_MIN_FREE_DISK_MB": "0",
        "DICOM_NODE_STUDY_QUIET_SECONDS": "0.5",
        "DICOM_NODE_POLL_INTERVAL_SECONDS": "0.1",
        "DICOM_NODE_CHECKPOINTS": "default-cxr",
        "DICOM_NODE_ORTHANC_URL": f"{orthanc.http_url}/dicom-web",
        "DICOM_NODE_ORTHANC_USERNAME": orthanc.auth[0],
        "DICOM_NODE_ORTHANC_PASSWORD": orthanc.auth[1],
        "DICOM_NODE_SEND_BACKOFF_SECONDS": "0.5",
        "DICOM_NODE_SEND_BACKOFF_MAX_SECONDS": "2",
        "DICOM_NODE_SEND_MAX_ATTEMPTS": "200",
        "DICOM_NODE_HTTP_TIMEOUT_SECONDS": "10",
    }
    log = (data_dir.parent / f"node-{time.monotonic_ns()}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "dicom_node", "serve", "--log-level", "WARNING"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def echo_ok(port: int) -> bool:
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


def send_burst(port: int) -> dict[str, list[str]]:
    """C-STORE the studies over one association; StudyInstanceUID -> its SOP Instance UIDs."""
    template = dcmread(SOURCE)
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(template.SOPClassUID, template.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    assert assoc.is_established
    studies: dict[str, list[str]] = {}
    try:
        for _ in range(N_STUDIES):
            study = generate_uid()
            series = generate_uid()
            for i in range(IMAGES_PER_STUDY):
                ds = dcmread(SOURCE)
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
                ds.SOPInstanceUID = generate_uid()
                ds.InstanceNumber = i + 1
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                status = assoc.send_c_store(ds)
                assert int(status.Status) == 0
                studies.setdefault(study, []).append(str(ds.SOPInstanceUID))
    finally:
        assoc.release()
    return studies


def results_in_orthanc(session: requests.Session, url: str, study: str) -> Counter[str]:
    """Instances per modality (SEG by type) of the node's results in one study."""
    counts: Counter[str] = Counter()
    response = session.get(f"{url}/dicom-web/studies/{study}/instances", timeout=30)
    if response.status_code != 200 or not response.content:
        return counts
    for item in response.json():
        modality = item.get("00080060", {}).get("Value", [""])[0]
        counts[modality] += 1
    return counts


def test_burst_kill_9_and_pacs_outage_lose_and_duplicate_nothing(
    tmp_path: Path, orthanc: OrthancProcess
) -> None:
    data_dir = tmp_path / "node"
    port = free_port()
    queue = JobQueue(NodeSettings(data_dir=data_dir).jobs_dir)
    faults: list[str] = []

    node = start_node(data_dir, port, orthanc)
    try:
        wait_for(lambda: echo_ok(port), 60, "the node to answer C-ECHO")
        studies = send_burst(port)

        # kill -9 while jobs are being processed (some done, some not)
        wait_for(
            lambda: queue.counts().get("done", 0) >= 2 and queue.counts().get("running", 0) >= 1,
            180,
            "the first results and a job running",
        )
        node.send_signal(signal.SIGKILL)
        node.wait(30)
        faults.append(f"kill -9 of the node with {queue.counts()} jobs")

        node = start_node(data_dir, port, orthanc)
        wait_for(lambda: echo_ok(port), 60, "the restarted node")

        # PACS outage while the node is delivering
        done_before = queue.counts().get("done", 0)
        wait_for(
            lambda: (
                queue.counts().get("done", 0) >= min(done_before + 2, N_STUDIES - 2)
                and queue.counts().get("running", 0) >= 1
            ),
            180,
            "more results after the restart and a job running",
        )
        orthanc.stop()
        faults.append(f"Orthanc stopped for 5 s with {queue.counts()} jobs")
        time.sleep(5)
        orthanc.start()

        wait_for(
            lambda: (
                queue.counts().get("done", 0) >= N_STUDIES
                and not any(queue.counts().get(s, 0) for s in ("ready", "running", "sending"))
            ),
            300,
            "every job to be done",
        )
        counts = queue.counts()
        done_jobs = list(queue.iter_jobs(JobStateValues.DONE))
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()

    session = orthanc.session()
    per_study = {s: results_in_orthanc(session, orthanc.http_url, s) for s in studies}
    # per image a binary and a fractional SEG and an overlay SC (Modality OT); one SR per study
    expected = Counter({"SR": 1, "SEG": 2 * IMAGES_PER_STUDY, "OT": IMAGES_PER_STUDY})
    lost = [s for s, c in per_study.items() if any(c[m] < n for m, n in expected.items())]
    duplicated = [s for s, c in per_study.items() if any(c[m] > n for m, n in expected.items())]
    rerun = sum(1 for j in done_jobs if j.attempts.get(JobStageValues.PROCESS, 0) > 1)
    resent = sum(1 for j in done_jobs if j.attempts.get(JobStageValues.SEND, 0) > 1)
    figures = {
        "studies": len(studies),
        "instances": sum(len(v) for v in studies.values()),
        "faults_injected": faults,
        "jobs": counts,
        "jobs_rerun_after_kill": rerun,
        "jobs_resent_after_outage": resent,
        "studies_lost": len(lost),
        "studies_duplicated": len(duplicated),
        "result_instances_in_orthanc": sum(sum(c.values()) for c in per_study.values()),
    }
    print(json.dumps(figures))
    (tmp_path / "reliability.json").write_text(json.dumps(figures, indent=1))
    assert counts.get("failed", 0) == 0, counts
    assert rerun >= 1, "the job killed mid-run was not run again"
    assert resent >= 1, "no delivery met the outage: the fault was not exercised"
    assert not lost, {s: per_study[s] for s in lost}
    assert not duplicated, {s: per_study[s] for s in duplicated}
    assert all(c == expected for c in per_study.values()), per_study
