"""The SCP's receive paths (issue 23) over real pynetdicom associations.

``receive_mode=file`` (pynetdicom's chunked receive into ``spool/.incoming``), the direct
file-meta encoder, and ``scp_processes`` (several SCP processes on one port): each must
store what a success status acknowledged, byte for byte, and refuse what it must refuse.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta, encode_file_meta, split_dataset
from pynetdicom.pdu_primitives import P_DATA

from dicom_node.config import NodeSettings
from dicom_node.metrics import Metrics
from dicom_node.reactor import (
    EventAssociation,
    EventDimse,
    EventDul,
    StoreCommand,
    encode_c_store_rsp,
    parse_c_store_rq,
)
from dicom_node.scp import StorageSCP, encode_meta
from dicom_node.scp_pool import ScpPool
from dicom_node.service import NodeService
from dicom_node.spool import Spool, safe_name

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _wait_for(predicate: Callable[[], object], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


@pytest.fixture
def file_scp(settings: NodeSettings) -> Iterator[StorageSCP]:
    settings.receive_mode = "file"
    server = StorageSCP(settings, Spool(settings.spool_dir), Metrics())
    server.start()
    yield server
    server.stop()
    _config.STORE_RECV_CHUNKED_DATASET = False


def _spooled(settings: NodeSettings, path: Path) -> Path:
    ds = dcmread(path, stop_before_pixels=True)
    return settings.spool_dir / safe_name(ds.StudyInstanceUID) / f"{ds.SOPInstanceUID}.dcm"


def _assert_spooled_as_sent(settings: NodeSettings, path: Path) -> None:
    spooled = _spooled(settings, path)
    _, offset = split_dataset(spooled)
    _, src_offset = split_dataset(path)
    assert spooled.read_bytes()[offset:] == path.read_bytes()[src_offset:]
    full = dcmread(spooled)
    assert full.file_meta.SendingApplicationEntityTitle == "TESTSCU"
    assert full.file_meta.ReceivingApplicationEntityTitle == "AINODE"


def _incoming(settings: NodeSettings) -> list[Path]:
    folder = settings.spool_dir / ".incoming"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _send_encoded(
    port: int,
    sop_uid: str,
    encoded: bytes,
    *,
    abort_after: int = 0,
    sop_class: str = MR_STORAGE,
    syntax: str = ExplicitVRLittleEndian,
) -> Any:
    """C-STORE ``encoded`` byte for byte; returns the status, or None without a response.

    With ``abort_after`` > 0, only that many P-DATA PDUs of the message are sent (the
    data set is cut off) and the association is then aborted.
    """
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    assert assoc.is_established
    context = assoc.accepted_contexts[0]
    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_uid
    req.Priority = 2
    req.DataSet = BytesIO(encoded)
    assoc._reactor_checkpoint.clear()  # as send_c_store does: pause the reactor, then talk
    try:
        while not assoc._is_paused and assoc.is_established:
            time.sleep(0.0001)
        if abort_after:
            message = C_STORE_RQ()
            message.primitive_to_message(req)
            pdus = list(message.encode_msg(context.context_id, 4096))
            for pdu in pdus[:abort_after]:
                assoc.dul.send_pdu(pdu)
            return assoc
        assoc.dimse.send_msg(req, context.context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if assoc.is_established:
        assoc.release()
    return int(rsp.Status) if rsp is not None else None


def _body(path: Path) -> bytes:
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


# --------------------------------------------------------------------------- file meta


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "syntax", "sending", "receiving"),
    [
        ("1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.4", "1.2.840.10008.1.2.1", "ORTHANC", "AINODE"),
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.33", "1.2.840.10008.1.2", "", "X"),
        ("1.2", "1.23", "1.2.840.10008.1.2.4.50", "ABCDEFGHIJKLMNOP", "AINODE1"),
    ],
)
def test_direct_meta_is_what_pydicom_encodes(
    sop_class: str, sop_instance: str, syntax: str, sending: str, receiving: str
) -> None:
    meta = create_file_meta(
        sop_class_uid=UID(sop_class),
        sop_instance_uid=UID(sop_instance),
        transfer_syntax=UID(syntax),
    )
    meta.SendingApplicationEntityTitle = sending
    meta.ReceivingApplicationEntityTitle = receiving
    expected = b"\x00" * 128 + b"DICM" + encode_file_meta(meta)
    assert encode_meta(sop_class, sop_instance, syntax, sending, receiving) == expected


@pytest.mark.parametrize(
    ("status", "sop_class", "sop_instance"),
    [
        (0x0000, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.45"),
        (0xC210, None, "1.2.3"),
        (0xA700, "1.2", "1.22"),
    ],
)
def test_direct_c_store_rsp_is_what_pynetdicom_encodes(
    status: int, sop_class: str | None, sop_instance: str
) -> None:
    rsp = C_STORE()
    rsp.MessageID = rsp.MessageIDBeingRespondedTo = 7
    rsp.Status = status
    if sop_class is not None:
        rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    (pdata,) = message.encode_msg(1, 16382)
    assert pdata.presentation_data_value_list == [(1, b"\x03" + encode_c_store_rsp(rsp))]
    rsp.ErrorComment = "more than the plain fields: pynetdicom encodes it"
    assert encode_c_store_rsp(rsp) is None


def test_c_store_right_after_the_accept_gets_its_response(
    settings: NodeSettings, ct_path: Path
) -> None:
    """pynetdicom sends the A-ASSOCIATE-AC before it marks the association established;
    a C-STORE arriving in between must still be answered (here the gap is widened)."""
    server = StorageSCP(settings, Spool(settings.spool_dir), Metrics())
    server.start()
    try:
        server.ae._servers[0].bind(evt.EVT_ACCEPTED, lambda event: time.sleep(1.0))
        ae = AE(ae_title="TESTSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
        ae.add_requested_context(dcmread(ct_path).SOPClassUID, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="AINODE")
        assert assoc.is_established
        status = assoc.send_c_store(ct_path)  # sent while the SCP is still in EVT_ACCEPTED
        assoc.release()
    finally:
        server.stop()
    assert getattr(status, "Status", None) == 0x0000
    _assert_spooled_as_sent(settings, ct_path)


def _command_set(message: DIMSEMessage, primitive: object) -> bytes:
    """The command set bytes pynetdicom sends for ``primitive`` (one PDV, header dropped)."""
    message.primitive_to_message(primitive)
    pdvs = [pdv for pdata in message.encode_msg(1, 0) for pdv in pdata.presentation_data_value_list]
    return b"".join(pdv[1:] for _, pdv in pdvs if pdv[0] & 1)


def _store_rq(**extra: object) -> C_STORE:
    rq = C_STORE()
    rq.MessageID = 11
    rq.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    rq.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    rq.Priority = 1
    rq.DataSet = BytesIO(b"\x08\x00\x16\x00")
    for name, value in extra.items():
        setattr(rq, name, value)
    return rq


def test_the_store_command_decoder_reads_what_pynetdicom_encodes() -> None:
    """A plain C-STORE-RQ is read by the fast decoder; everything else is left to
    pynetdicom (a response, a C-ECHO, a store on behalf of a C-MOVE, broken bytes)."""
    command = _command_set(C_STORE_RQ(), _store_rq())
    assert parse_c_store_rq(command) == StoreCommand(
        11, "1.2.840.10008.5.1.4.1.1.2", "1.2.826.0.1.3680043.8.498.1", 1
    )
    moved = _store_rq(MoveOriginatorApplicationEntityTitle="MOVER", MoveOriginatorMessageID=3)
    assert parse_c_store_rq(_command_set(C_STORE_RQ(), moved)) is None
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    assert parse_c_store_rq(_command_set(C_ECHO_RQ(), echo)) is None
    rsp = _store_rq(MessageIDBeingRespondedTo=11, Status=0)
    rsp.MessageID = None
    rsp.DataSet = None
    assert parse_c_store_rq(_command_set(C_STORE_RSP(), rsp)) is None
    for broken in (command[:-3], command[:7], command + b"\x00\x00", command + command[12:30]):
        assert parse_c_store_rq(broken) is None


def _pdata(*pdvs: tuple[int, bytes]) -> P_DATA:
    primitive = P_DATA()
    primitive.presentation_data_value_list.extend(pdvs)
    return primitive


def _pynetdicom_reads(primitives: list[P_DATA]) -> tuple[bytes, bytes] | None:
    """(command set, data set) as pynetdicom's decoder reads the stream; None if unfinished."""
    message = DIMSEMessage()
    for primitive in primitives:
        if message.decode_msg(primitive):
            data_set = message.data_set
            data = data_set.getvalue() if isinstance(data_set, BytesIO) else b""
            return message.encoded_command_set.getvalue(), data
    return None


@pytest.mark.parametrize(
    "stray",
    [
        [(3, b"\x02tail")],  # the data set's last fragment on another context
        [(1, b"\x01" + b"\x00" * 12), (1, b"\x02tail")],  # a command fragment inside it
    ],
)
def test_a_store_the_fast_decoder_gives_up_midway_reaches_pynetdicom_whole(
    stray: list[tuple[int, bytes]],
) -> None:
    """Whatever the fast decoder took of a message before it saw something it does not
    handle is handed back: pynetdicom's decoder then reads the same bytes it would have
    read from the peer."""
    command = _command_set(C_STORE_RQ(), _store_rq())
    first = _pdata((1, b"\x03" + command), (1, b"\x00" + b"head-"))
    stream = [first, _pdata(*stray)]
    dimse = EventDimse.__new__(EventDimse)  # no association: these PDVs serve no store
    assert dimse._receive_store(first) is None  # taken: a plain C-STORE-RQ so far
    rest = dimse._receive_store(stream[1])
    assert rest is not None
    expected = _pynetdicom_reads(stream)
    assert expected is not None
    assert expected[1] == b"head-tail"
    assert _pynetdicom_reads([rest]) == expected


def test_stores_the_fast_decoder_leaves_to_pynetdicom_are_stored_too(
    settings: NodeSettings, ct_path: Path, mr_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On one association: plain stores skip pynetdicom's decoder; a C-ECHO and a store
    for a C-MOVE (Move Originator) go through it; every store is spooled as sent."""
    decoded: list[int] = []
    original = DIMSEMessage.decode_msg

    def counting(self: DIMSEMessage, primitive: object, assoc: object = None) -> bool:
        if isinstance(assoc, EventAssociation):  # the SCP's side, not the test's SCU
            decoded.append(1)
        return original(self, primitive, assoc)

    monkeypatch.setattr(DIMSEMessage, "decode_msg", counting)
    server = StorageSCP(settings, Spool(settings.spool_dir), Metrics())
    server.start()
    try:
        ae = AE(ae_title="TESTSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
        for path in (ct_path, mr_path):
            ae.add_requested_context(dcmread(path).SOPClassUID, ExplicitVRLittleEndian)
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", server.port, ae_title="AINODE")
        assert assoc.is_established
        assert getattr(assoc.send_c_store(ct_path), "Status", None) == 0x0000
        plain = len(decoded)
        assert getattr(assoc.send_c_echo(), "Status", None) == 0x0000
        moved = assoc.send_c_store(mr_path, originator_aet="MOVER", originator_id=7)
        assert getattr(moved, "Status", None) == 0x0000
        assert getattr(assoc.send_c_store(ct_path), "Status", None) == 0x0000
        assoc.release()
    finally:
        server.stop()
    assert plain == 0
    assert len(decoded) >= 2  # the echo and the moved store
    _assert_spooled_as_sent(settings, ct_path)
    _assert_spooled_as_sent(settings, mr_path)


def _loop_codes(thread: threading.Thread) -> set[object]:
    frame = sys._current_frames().get(thread.ident or -1)
    codes = set()
    while frame is not None:
        codes.add(frame.f_code)
        frame = frame.f_back
    return codes


@pytest.mark.parametrize("event_reactor", [True, False])
def test_the_scp_association_runs_the_loop_the_setting_names(
    settings: NodeSettings, ct_path: Path, event_reactor: bool
) -> None:
    """With ``scp_event_reactor`` the DUL thread runs the event-driven loop, not
    pynetdicom's napping one (its thread target is bound before the class is changed);
    either way the association shares the server's presentation contexts."""
    settings.scp_event_reactor = event_reactor
    server = StorageSCP(settings, Spool(settings.spool_dir), Metrics())
    server.start()
    try:
        ae = AE(ae_title="TESTSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
        ae.add_requested_context(dcmread(ct_path).SOPClassUID, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="AINODE")
        assert assoc.is_established
        assert assoc.acceptor.maximum_length == settings.max_pdu_size  # told to the peer
        assert getattr(assoc.send_c_store(ct_path), "Status", None) == 0x0000
        (scp_side,) = server.ae.active_associations
        codes = _loop_codes(scp_side.dul)
        # the server's contexts are shared, not deep-copied into every association
        shared = scp_side.acceptor.supported_contexts[0] is server.ae._servers[0].contexts[0]
        assoc.release()
    finally:
        server.stop()
    assert (EventDul._run_reactor.__code__ in codes) is event_reactor
    assert shared
    _assert_spooled_as_sent(settings, ct_path)


# --------------------------------------------------------------------------- receive_mode=file


def test_file_mode_spools_byte_identical(
    kit, file_scp: StorageSCP, settings: NodeSettings, ct_path: Path, mr_path: Path
) -> None:
    assert kit.send_files(file_scp.port, [ct_path, mr_path]) == [0, 0]
    for path in (ct_path, mr_path):
        _assert_spooled_as_sent(settings, path)
    # a Deflated data set is inflated for the checks and spooled as received
    deflated = Path(get_testdata_file("image_dfl.dcm"))  # type: ignore[arg-type]
    ds = dcmread(deflated, stop_before_pixels=True)
    assert (
        _send_encoded(
            file_scp.port,
            ds.SOPInstanceUID,
            _body(deflated),
            sop_class=ds.SOPClassUID,
            syntax=ds.file_meta.TransferSyntaxUID,
        )
        == 0
    )
    _assert_spooled_as_sent(settings, deflated)
    assert dcmread(_spooled(settings, deflated)).pixel_array.size > 0
    assert _incoming(settings) == []  # pynetdicom removed each file it handed over
    assert not [p for p in settings.spool_dir.rglob(".tmp-*")]


def test_file_mode_truncated_data_set_is_refused_and_nothing_kept(
    file_scp: StorageSCP, settings: NodeSettings
) -> None:
    truncated = Path(get_testdata_file("MR_truncated.dcm"))  # type: ignore[arg-type]
    status = _send_encoded(file_scp.port, generate_uid(), _body(truncated))
    assert status == 0xC210
    assert not list(settings.spool_dir.rglob("*.dcm"))
    assert _incoming(settings) == []


def test_file_mode_two_byte_data_set_is_refused(
    file_scp: StorageSCP, settings: NodeSettings
) -> None:
    assert _send_encoded(file_scp.port, generate_uid(), b"\x08\x00") == 0xC210
    assert not list(settings.spool_dir.rglob("*.dcm"))


def test_file_mode_cut_off_transfer_leaves_nothing(
    file_scp: StorageSCP, settings: NodeSettings, mr_path: Path
) -> None:
    body = _body(mr_path) * 4  # several PDUs
    assoc = _send_encoded(file_scp.port, generate_uid(), body, abort_after=3)
    # the partial data set is written where the spool can clear it after a crash...
    assert _wait_for(lambda: _incoming(settings), 30)
    assoc.abort()
    # ... and removed when the association ends without it being acknowledged
    assert _wait_for(lambda: not _incoming(settings), 30)
    assert not list(settings.spool_dir.rglob("*.dcm"))


def test_memory_mode_scp_still_stores_when_chunked_receive_is_on(
    kit, settings: NodeSettings, ct_path: Path
) -> None:
    """pynetdicom's switch is process-wide: an SCP in either mode reads both forms."""
    server = StorageSCP(settings, Spool(settings.spool_dir), Metrics())
    server.start()
    try:
        _config.STORE_RECV_CHUNKED_DATASET = True
        assert kit.send_files(server.port, [ct_path]) == [0]
    finally:
        server.stop()
        _config.STORE_RECV_CHUNKED_DATASET = False
    _assert_spooled_as_sent(settings, ct_path)


def test_stale_incoming_files_are_cleared_at_start(settings: NodeSettings) -> None:
    spool = Spool(settings.spool_dir)
    spool.incoming_dir.mkdir()
    stale = spool.incoming_dir / ".tmp-abc.part"
    stale.write_bytes(b"half a data set")
    spool.clear_stale()
    assert not stale.exists()
    assert spool.scan() == []


# --------------------------------------------------------------------------- scp_processes


@pytest.fixture
def pool_node(kit, settings: NodeSettings) -> Iterator[NodeService]:
    settings.scp_processes = 2
    settings.study_max_wait_seconds = 3600  # received studies stay in the spool
    settings.study_quiet_seconds = 3600
    node = NodeService(settings, kit.FakeEngine())
    node.start()
    yield node
    node.stop()


def test_scp_processes_receive_concurrent_associations(
    kit, pool_node: NodeService, settings: NodeSettings, ct_path: Path, tmp_path: Path
) -> None:
    assert isinstance(pool_node.scp, ScpPool)
    assert len(pool_node.scp.pids) == 2
    batches = [
        [kit.new_instance(ct_path, generate_uid(), tmp_path / f"in{a}") for _ in range(5)]
        for a in range(4)
    ]
    statuses: list[list[int]] = []
    threads = [
        threading.Thread(target=lambda b=b: statuses.append(kit.send_files(pool_node.scp_port, b)))
        for b in batches
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(statuses) == [[0] * 5] * 4
    for batch in batches:
        for path in batch:
            _assert_spooled_as_sent(settings, path)
    # counters are forwarded to the node's process (before each success status)
    assert _wait_for(lambda: pool_node.metrics.snapshot()["instances_received_total"] == 20)
    assert _wait_for(lambda: pool_node.scp is not None and not pool_node.scp.active_associations())


def test_scp_processes_keep_the_allow_list(kit, pool_node: NodeService) -> None:
    assoc = kit.associate(pool_node.scp_port, calling="INTRUDER")
    assert assoc.is_rejected
    assert _wait_for(lambda: pool_node.metrics.snapshot()["associations_rejected_total"] == 1)


def test_scp_processes_refuse_hostile_data_sets(
    pool_node: NodeService, settings: NodeSettings
) -> None:
    truncated = Path(get_testdata_file("MR_truncated.dcm"))  # type: ignore[arg-type]
    assert _send_encoded(pool_node.scp_port, generate_uid(), _body(truncated)) == 0xC210
    assert not list(settings.spool_dir.rglob("*.dcm"))


def test_killed_scp_process_is_replaced(
    kit, pool_node: NodeService, settings: NodeSettings, ct_path: Path, tmp_path: Path
) -> None:
    pool = pool_node.scp
    assert isinstance(pool, ScpPool)
    victim = pool.pids[0]
    os.kill(victim, signal.SIGKILL)
    assert _wait_for(lambda: len(pool.pids) == 2 and victim not in pool.pids, 60)
    files = [kit.new_instance(ct_path, generate_uid(), tmp_path / "in") for _ in range(6)]
    for path in files:  # one association each: the kernel spreads them over both
        assert kit.send_files(pool_node.scp_port, [path]) == [0]
        _assert_spooled_as_sent(settings, path)
