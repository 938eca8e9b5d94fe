"""Pull mode against a real Orthanc: QIDO-RS finds the studies, WADO-RS retrieves them.

Orthanc (Debian, DICOMweb plugin) is started for this module with its routing off, filled
by C-STORE with the sample radiographs (CR and DX studies), and the node's pull mode is
pointed at it. The jobs it queues are then processed and delivered by a `NodeService` on
the same data folder, as a running node would.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

from devstack.demo import send_files
from devstack.orthanc import (
    DicomPeer,
    OrthancProcess,
    render_orthanc_config,
    write_orthanc_config,
)
from devstack.processes import free_port, loopback_only_namespace, network_interfaces
from devstack.stack import SAMPLE_SCU_AET
from dicom_node.config import NodeSettings
from dicom_node.credentials import load_or_create_secrets
from dicom_node.pull import pull_studies
from dicom_node.queue import INPUT_DIR, JobQueue, JobStateValues
from dicom_node.service import NodeService
from dicom_node.spool import Spool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "tests" / "data" / "dicom"
CR_FILES = sorted(SAMPLES.glob("original_*cr*/*.dcm"))
DX_FILES = sorted(SAMPLES.glob("kermany_normal_*/*.dcm"))
LONG_AGO = date(1900, 1, 1)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancProcess]:
    if not loopback_only_namespace():
        pytest.fail(
            "integration tests must run in a loopback-only network namespace; this one has "
            f"{network_interfaces()}: unshare -n bash -c 'ip link set lo up; ...'",
            pytrace=False,
        )
    root = tmp_path_factory.mktemp("pull-orthanc")
    secrets = load_or_create_secrets(root)
    config = render_orthanc_config(
        storage_dir=root / "storage",
        http_port=free_port(),
        dicom_port=free_port(),
        users={"ainode": secrets.orthanc_password},
        node=DicomPeer("ainode", "AINODE", port=free_port()),
        scanners=(DicomPeer("scanner", SAMPLE_SCU_AET),),
        routing_enabled=False,
    )
    process = OrthancProcess.from_config(write_orthanc_config(root, config), config)
    with process:
        send_files([*CR_FILES, *DX_FILES], "127.0.0.1", config["DicomPort"])  # raises if refused
        yield process


@pytest.fixture
def client(orthanc: OrthancProcess) -> DICOMwebClient:
    session = requests.Session()
    session.auth = orthanc.auth
    return DICOMwebClient(url=f"{orthanc.http_url}/dicom-web", session=session)


@pytest.fixture
def settings(tmp_path: Path, orthanc: OrthancProcess) -> NodeSettings:
    return NodeSettings(
        data_dir=tmp_path / "node",
        port=0,
        http_port=0,
        min_free_disk_mb=0,
        poll_interval_seconds=0.05,
        orthanc_url=f"{orthanc.http_url}/dicom-web",
        orthanc_username=orthanc.auth[0],
        orthanc_password=orthanc.auth[1],
    )


def cr_sources() -> dict[str, tuple[str, str]]:
    """SOPInstanceUID -> (StudyInstanceUID, TransferSyntaxUID) of the CR samples."""
    out = {}
    for path in CR_FILES:
        ds = dcmread(path, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID)] = (
            str(ds.StudyInstanceUID),
            str(ds.file_meta.TransferSyntaxUID),
        )
    return out


def test_pull_queues_each_instance_once_per_version_and_the_node_processes_them(
    client: DICOMwebClient, settings: NodeSettings
) -> None:
    expected = cr_sources()
    studies = {study for study, _ in expected.values()}
    assert len(CR_FILES) == 3
    assert len(studies) == 2

    # dry run: found and counted, nothing retrieved or queued
    dry = pull_studies(settings, client, modality="CR", since=LONG_AGO, dry_run=True)
    assert {s.study_instance_uid for s in dry.studies} == studies
    assert dry.instances == 3
    assert not dry.job_ids
    assert not settings.jobs_dir.exists() or not JobQueue(settings.jobs_dir).counts()["queued"]

    version = {"default-cxr": "1.0.0"}
    report = pull_studies(
        settings,
        client,
        modality="CR",
        since=LONG_AGO,
        checkpoints=["default-cxr"],
        version_of=version.__getitem__,
    )
    assert {s.study_instance_uid for s in report.studies} == studies  # DX studies not found
    assert report.instances == 3
    queue = JobQueue(settings.jobs_dir)
    jobs = list(queue.iter_jobs(JobStateValues.QUEUED))
    assert len(jobs) == 2
    assert sorted(s for j in jobs for s in j.sop_instance_uids) == sorted(expected)
    for job in jobs:
        assert job.checkpoints == ["default-cxr"]
        assert job.model_versions == {"default-cxr": "1.0.0"}
        for path in (queue.job_dir(job) / INPUT_DIR).glob("*.dcm"):
            ds = dcmread(path, stop_before_pixels=True)
            study, syntax = expected[str(ds.SOPInstanceUID)]
            assert str(ds.StudyInstanceUID) == study == job.study_instance_uid
            # WADO-RS with transfer-syntax=*: Orthanc sends what it stored, not a transcode
            assert str(ds.file_meta.TransferSyntaxUID) == syntax
    assert not list((settings.data_dir / "pull").rglob("*.dcm"))

    # the same pull again: every instance is already claimed with this version
    again = pull_studies(
        settings, client, modality="CR", since=LONG_AGO, version_of=version.__getitem__
    )
    assert again.instances == 3
    assert again.job_ids == []
    assert queue.counts()["queued"] == 2

    # a new version of the checkpoint: processed again
    version["default-cxr"] = "2.0.0"
    newer = pull_studies(
        settings, client, modality="CR", since=LONG_AGO, version_of=version.__getitem__
    )
    assert len(newer.job_ids) == 2
    assert queue.counts()["queued"] == 4

    # the running node takes the pulled jobs through the same durable path
    ran: list[list[str]] = []

    def engine(input_dir: Path, output_dir: Path, checkpoints: object) -> list[object]:
        ran.append(sorted(p.name for p in input_dir.glob("*.dcm")))
        return []

    node = NodeService(settings, engine)
    node.start()
    try:
        assert node.wait_until_idle(timeout=60)
    finally:
        node.stop()
    assert len(ran) == 4
    counts = queue.counts()
    assert counts["done"] == 4
    assert counts["failed"] == 0


def test_instances_an_interrupted_pull_left_are_queued_by_the_next_run(
    client: DICOMwebClient, settings: NodeSettings
) -> None:
    """A pull killed between retrieval and routing loses nothing: the next run routes it."""
    leftover = DX_FILES[0]
    ds = dcmread(leftover, stop_before_pixels=True)
    # what the interrupted run had written (durably) before it stopped
    Spool(settings.data_dir / "pull").store(
        str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), leftover.read_bytes()
    )
    version = {"default-cxr": "1.0.0"}
    # the next run finds no study in the PACS (no MG here) but routes what was left
    report = pull_studies(
        settings,
        client,
        modality="MG",
        since=LONG_AGO,
        checkpoints=["default-cxr"],
        version_of=version.__getitem__,
    )
    assert report.studies == []
    assert len(report.recovered_job_ids) == 1
    assert report.job_ids == list(report.recovered_job_ids)
    queue = JobQueue(settings.jobs_dir)
    (job,) = queue.iter_jobs(JobStateValues.QUEUED)
    assert job.sop_instance_uids == [str(ds.SOPInstanceUID)]
    assert job.study_instance_uid == str(ds.StudyInstanceUID)
    assert not list((settings.data_dir / "pull").rglob("*.dcm"))
    # a dry run never routes: it only queries
    Spool(settings.data_dir / "pull").store(
        str(ds.StudyInstanceUID), "1.2.826.0.1.3680043.8.498.1", leftover.read_bytes()
    )
    dry = pull_studies(settings, client, modality="MG", since=LONG_AGO, dry_run=True)
    assert dry.job_ids == []
    assert len(list((settings.data_dir / "pull").rglob("*.dcm"))) == 1


def test_pull_command_line_dry_run(settings: NodeSettings, orthanc: OrthancProcess) -> None:
    env = {
        "DICOM_NODE_DATA_DIR": str(settings.data_dir),
        "DICOM_NODE_ORTHANC_USERNAME": orthanc.auth[0],
        "DICOM_NODE_ORTHANC_PASSWORD": orthanc.auth[1],
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicom_node",
            "pull",
            "--qido-url",
            f"{orthanc.http_url}/dicom-web",
            "--modality",
            "DX",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "2 studies, would retrieve 2 instances, 0 jobs queued" in result.stdout
    assert not (settings.data_dir / "jobs").exists()
    # the DX samples have no StudyDate: a date query does not find them
    dated = subprocess.run(
        [*result.args, "--since", "19000101"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert "0 studies, would retrieve 0 instances, 0 jobs queued" in dated.stdout, dated.stderr
