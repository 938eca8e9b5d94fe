"""Fixtures for the dicom_node unit tests: real pynetdicom associations on 127.0.0.1."""

from __future__ import annotations

import copy
import socket
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.config import NodeSettings

CALLING_AE = "TESTSCU"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def settings(tmp_path: Path) -> NodeSettings:
    return NodeSettings(
        data_dir=tmp_path / "node",
        port=0,
        http_port=0,
        allowed_calling_aes=[CALLING_AE],
        study_quiet_seconds=0.3,
        study_max_wait_seconds=30,
        poll_interval_seconds=0.05,
        min_free_disk_mb=0,
        process_backoff_seconds=0.05,
        send_backoff_seconds=0.05,
        send_backoff_max_seconds=0.2,
        orthanc_url="http://127.0.0.1:9/dicom-web",
    )


def testdata_path(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(path)


@pytest.fixture
def ct_path() -> Path:
    return testdata_path("CT_small.dcm")


@pytest.fixture
def mr_path() -> Path:
    return testdata_path("MR_small.dcm")


def new_instance(path: Path, study_uid: str | None = None, out_dir: Path | None = None) -> Path:
    """A copy of a test file with a new SOPInstanceUID (and optionally a given study)."""
    ds = dcmread(path)
    ds = copy.deepcopy(ds)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if study_uid is not None:
        ds.StudyInstanceUID = study_uid
    assert out_dir is not None
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(dst, enforce_file_format=True)
    return dst


def associate(port: int, calling: str = CALLING_AE, called: str = "AINODE") -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = 5
    ae.dimse_timeout = 5
    ae.network_timeout = 5
    # Explicit VR first: the test files are explicit VR, so they travel unchanged.
    for cx in StoragePresentationContexts[:120]:
        ae.add_requested_context(
            cx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title=called)


def send_files(port: int, paths: list[Path], calling: str = CALLING_AE) -> list[int]:
    """Send files (as sent on disk, not re-encoded) in one association; returns statuses."""
    assoc = associate(port, calling)
    assert assoc.is_established
    statuses = []
    try:
        for path in paths:
            status = assoc.send_c_store(path)
            statuses.append(int(status.Status))
    finally:
        assoc.release()
    return statuses


def send_dataset(port: int, ds: Dataset, calling: str = CALLING_AE) -> int:
    assoc = associate(port, calling)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status)
    finally:
        assoc.release()


@pytest.fixture
def instances_dir(tmp_path: Path) -> Path:
    d = tmp_path / "instances"
    d.mkdir()
    return d
