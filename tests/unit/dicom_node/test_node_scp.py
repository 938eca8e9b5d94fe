"""Storage SCP over real associations on 127.0.0.1."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom.dsutils import split_dataset

from dicom_node.config import NodeSettings
from dicom_node.metrics import Metrics
from dicom_node.scp import StorageSCP
from dicom_node.spool import Spool, safe_name

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture
def scp(settings: NodeSettings) -> Iterator[StorageSCP]:
    spool = Spool(settings.spool_dir)
    server = StorageSCP(settings, spool, Metrics())
    server.start()
    yield server
    server.stop()


def test_echo(kit, scp: StorageSCP) -> None:
    assoc = kit.associate(scp.port)
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    assert status.Status == 0x0000


def test_store_lands_in_spool_byte_identical(
    kit, scp: StorageSCP, settings: NodeSettings, ct_path: Path, mr_path: Path
) -> None:
    assert kit.send_files(scp.port, [ct_path, mr_path]) == [0x0000, 0x0000]
    for path in (ct_path, mr_path):
        ds = dcmread(path, stop_before_pixels=True)
        spooled = settings.spool_dir / safe_name(ds.StudyInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
        assert spooled.is_file()
        meta, offset = split_dataset(spooled)
        _, src_offset = split_dataset(path)
        assert spooled.read_bytes()[offset:] == path.read_bytes()[src_offset:]
        assert meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        # a complete, readable Part 10 file
        assert dcmread(spooled).SOPInstanceUID == ds.SOPInstanceUID
    # no temporary files left behind
    assert not [p for p in settings.spool_dir.rglob("*") if p.name.startswith(".tmp-")]


def test_resend_same_instance_is_idempotent(
    kit, scp: StorageSCP, settings: NodeSettings, ct_path: Path
) -> None:
    assert kit.send_files(scp.port, [ct_path]) == [0]
    assert kit.send_files(scp.port, [ct_path]) == [0]
    files = list(settings.spool_dir.rglob("*.dcm"))
    assert len(files) == 1


def test_unknown_calling_ae_rejected(kit, scp: StorageSCP) -> None:
    assoc = kit.associate(scp.port, calling="INTRUDER")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)


def test_wrong_called_ae_rejected(kit, scp: StorageSCP) -> None:
    assoc = kit.associate(scp.port, called="SOMEONEELSE")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x07)


def test_empty_allow_list_refuses_everyone(kit, settings: NodeSettings) -> None:
    settings.allowed_calling_aes = []
    server = StorageSCP(settings, Spool(settings.spool_dir), Metrics())
    server.start()
    try:
        assoc = kit.associate(server.port, calling=kit.CALLING_AE)
        assert assoc.is_rejected
    finally:
        server.stop()


def test_disk_floor_rejects_transiently(kit, settings: NodeSettings) -> None:
    settings.min_free_disk_mb = 10**12  # more than any disk
    server = StorageSCP(settings, Spool(settings.spool_dir), Metrics())
    server.start()
    try:
        assoc = kit.associate(server.port)
        assert assoc.is_rejected
        rj = assoc.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x01)
    finally:
        server.stop()


def test_own_output_acked_not_spooled(
    kit, scp: StorageSCP, settings: NodeSettings, ct_path: Path
) -> None:
    ds = copy.deepcopy(dcmread(ct_path))
    ds.SOPClassUID = SEG_SOP_CLASS
    ds.file_meta.MediaStorageSOPClassUID = SEG_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Manufacturer = "AI Anomaly Node"
    assert kit.send_dataset(scp.port, ds) == 0x0000
    assert not list(settings.spool_dir.rglob("*.dcm"))
    # the same SOP class from another manufacturer is an ordinary input
    ds.Manufacturer = "Someone Else"
    ds.SOPInstanceUID = generate_uid()
    assert kit.send_dataset(scp.port, ds) == 0x0000
    assert len(list(settings.spool_dir.rglob("*.dcm"))) == 1


def test_dataset_without_study_uid_cannot_be_understood(
    kit, scp: StorageSCP, settings: NodeSettings, ct_path: Path
) -> None:
    ds = copy.deepcopy(dcmread(ct_path))
    del ds.StudyInstanceUID
    assert kit.send_dataset(scp.port, ds) == 0xC210
    assert not list(settings.spool_dir.rglob("*.dcm"))


def test_open_marker_until_release(
    kit, scp: StorageSCP, settings: NodeSettings, ct_path: Path, instances_dir: Path
) -> None:
    study = generate_uid()
    path = kit.new_instance(ct_path, study, instances_dir)
    assoc = kit.associate(scp.port)
    assert assoc.send_c_store(path).Status == 0
    folder = settings.spool_dir / study
    assert [p.name for p in folder.iterdir() if p.name.startswith(".open-")]
    assoc.release()
    for _ in range(100):
        if not [p for p in folder.iterdir() if p.name.startswith(".open-")]:
            break
        import time

        time.sleep(0.02)
    assert not [p for p in folder.iterdir() if p.name.startswith(".open-")]


def test_aborted_association_keeps_acked_files(
    kit, scp: StorageSCP, settings: NodeSettings, ct_path: Path, instances_dir: Path
) -> None:
    study = generate_uid()
    path = kit.new_instance(ct_path, study, instances_dir)
    assoc = kit.associate(scp.port)
    assert assoc.send_c_store(path).Status == 0
    assoc.abort()
    assert len(list((settings.spool_dir / study).glob("*.dcm"))) == 1
