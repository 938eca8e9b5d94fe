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
    # generous: on a loaded 2-core CI machine negotiating 121 contexts can take seconds
    ae.acse_timeout = 30
    ae.dimse_timeout = 30
    ae.network_timeout = 30
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


# --------------------------------------------------------------------------- engine stand-in

SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"


class FakeEngine:
    """Stands in for ai_engine.pipeline.run: one small, real DICOM SR per study and checkpoint."""

    def __init__(self, score: float = 0.7, threshold: float = 0.5) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []  # (input SOP UIDs, checkpoints)
        self.score = score
        self.threshold = threshold
        self.fail_with: BaseException | None = None

    def __call__(self, input_dir: Path, output_dir: Path, checkpoints) -> list[dict]:
        if self.fail_with is not None:
            raise self.fail_with
        from pydicom.dataset import FileMetaDataset

        studies: dict[str, list[str]] = {}
        for path in sorted(input_dir.rglob("*.dcm")):
            ds = dcmread(path, stop_before_pixels=True)
            studies.setdefault(str(ds.StudyInstanceUID), []).append(str(ds.SOPInstanceUID))
        self.calls.append(([s for v in studies.values() for s in v], list(checkpoints)))
        results = []
        for study_uid, sops in studies.items():
            for ckpt in checkpoints:
                out = Dataset()
                out.SOPClassUID = SR_SOP_CLASS
                out.SOPInstanceUID = generate_uid()
                out.StudyInstanceUID = study_uid
                out.SeriesInstanceUID = generate_uid()
                out.Modality = "SR"
                out.Manufacturer = "AI Anomaly Node"
                out.SeriesDescription = (
                    "AI anomaly report (research use only, not for clinical use)"
                )
                out.file_meta = FileMetaDataset()
                out.file_meta.MediaStorageSOPClassUID = out.SOPClassUID
                out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
                out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                target = output_dir / f"{out.SOPInstanceUID}.dcm"
                out.save_as(target, enforce_file_format=True)
                results.append(
                    {
                        "study_instance_uid": study_uid,
                        "algorithm": {"name": ckpt, "version": "1.0.0"},
                        "images": [
                            {
                                "sop_instance_uid": s,
                                "score": self.score,
                                "threshold": self.threshold,
                            }
                            for s in sops
                        ],
                        "study_score": self.score,
                        "is_abnormal": self.score >= self.threshold,
                        "files": [str(target)],
                    }
                )
        return results


# --------------------------------------------------------------------------- destination SCP


class DestinationSCP:
    """A real pynetdicom Storage SCP ("ORTHANC") receiving the node's results by C-STORE."""

    def __init__(self) -> None:
        from pynetdicom import AllStoragePresentationContexts, evt

        self.received: list[tuple[str, str]] = []  # (SOPInstanceUID, Manufacturer)
        self.ae = AE(ae_title="ORTHANC")
        for cx in AllStoragePresentationContexts:
            self.ae.add_supported_context(
                cx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
            )
        self.server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event) -> int:
        ds = event.dataset
        self.received.append((str(ds.SOPInstanceUID), str(ds.get("Manufacturer", ""))))
        return 0x0000

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def destination():
    scp = DestinationSCP()
    yield scp
    scp.stop()


class NodeTestKit:
    """Helpers for the tests (``--import-mode=importlib``: tests cannot import conftest)."""

    CALLING_AE = CALLING_AE
    FakeEngine = FakeEngine
    free_port = staticmethod(free_port)
    new_instance = staticmethod(new_instance)
    associate = staticmethod(associate)
    send_files = staticmethod(send_files)
    send_dataset = staticmethod(send_dataset)


@pytest.fixture
def kit() -> NodeTestKit:
    return NodeTestKit()
