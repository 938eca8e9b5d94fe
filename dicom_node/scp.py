"""The Storage SCP: a pynetdicom AE and its event handlers, nothing else.

Accepts every storage SOP class pynetdicom knows with every transfer syntax it knows, plus
Verification (C-ECHO). Handlers never decode pixels, never run models and never raise:

* ``EVT_REQUESTED``: association checks. Calling AE not allowed: A-ASSOCIATE-RJ
  rejected-permanent / service-user / "calling AE title not recognised" (0x01, 0x01, 0x03);
  called AE wrong: (0x01, 0x01, 0x07); free disk under ``min_free_disk_mb``:
  rejected-transient / service-provider presentation / "temporary congestion" (0x02, 0x03,
  0x01), so the peer retries later.
* ``EVT_C_STORE``: reads the two header attributes it needs (StudyInstanceUID,
  Manufacturer) in the structure walk below (no pydicom Dataset is built), then writes the
  dataset bytes exactly as sent, with preamble and file meta, durably to the spool and
  only then answers 0x0000. Own outputs (`ai_engine.dicom_io.markers.is_own_output`) are
  answered 0x0000 but not spooled, so they never start a job. Before anything is
  spooled, the data set's structure is walked once (`dicom_node.limits`): nesting deeper
  than ``max_dataset_depth``, more elements than ``max_dataset_elements`` or a Deflated
  data set inflating beyond ``max_inflated_mb`` are refused with 0xC211, a value running
  past the end of the data with 0xC210, native PixelData shorter than Rows x Columns x
  samples x frames x bits with 0xA900. Other failures: 0xA700 (out of resources: disk
  full, I/O error) or 0xC210 (cannot understand: no StudyInstanceUID or SOP Instance UID).
* Receive path: associations run `dicom_node.reactor`'s event-driven loops
  (``scp_event_reactor``); with ``receive_mode=file`` a data set is received to a file in
  ``spool/.incoming`` (pynetdicom's chunked receive) and memory-mapped for the checks and
  the spool write; ``scp_processes`` runs several SCPs on the port (`dicom_node.scp_pool`).
* Admission (`dicom_node.admission`): per-peer-address connection limit, a short timeout
  until the A-ASSOCIATE-RQ arrives, and slots idle connections can never take.
* TLS (``tls_cert_file``/``tls_key_file``; ``tls_ca_file`` requires client certificates):
  the handshake runs in the association's thread (`dicom_node.admission.AdmissionServer`),
  bounded by ``association_request_timeout_seconds``, so a silent or failing peer never
  blocks other associations.
* ``EVT_RELEASED`` / ``EVT_ABORTED``: the association's studies get their last activity noted
  (the quiet period starts now). Instances received before an abort were acknowledged with
  a success status, so the peer considers them stored: they are **kept** and processed like
  any other (PS3.4 B.2.3: the SCP has taken responsibility for an instance once it answered
  success; an abort only affects operations still in progress, which were never acked).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import os
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pydicom.config
import pynetdicom.dimse_messages
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
    _config,
    evt,
)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ai_engine.dicom_io.markers import is_own_output
from dicom_node.admission import AdmissionLimits, AdmissionServer
from dicom_node.config import NodeSettings
from dicom_node.errors import SpoolError
from dicom_node.fsutil import TMP_PREFIX, TMP_SUFFIX, ensure_dir
from dicom_node.limits import Buffer, DatasetRefusedError, check_dataset
from dicom_node.logutil import log_failure
from dicom_node.metrics import Metrics
from dicom_node.reactor import EventRequestHandler, SharedContexts
from dicom_node.spool import Spool
from dicom_node.tls import server_context

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_CONGESTION = (0x02, 0x03, 0x01)

#: Accepted transfer syntaxes in order of preference (the acceptor's order decides when a
#: peer proposes several in one context). Explicit VR Little Endian first: it keeps the VRs
#: of private elements, which implicit VR loses; then everything else pynetdicom knows.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    *(ts for ts in ALL_TRANSFER_SYNTAXES if ts != ExplicitVRLittleEndian),
)


#: Where pynetdicom writes a data set it receives to a file (``receive_mode=file``), per AE:
#: ``id(AE)`` -> the spool's incoming folder (same file system as the spool).
_INCOMING: dict[int, Path] = {}
#: ``id(AE)`` -> ``receive_mode`` of the running SCPs of this process.
_RECEIVE_MODES: dict[int, str] = {}
_ntf = tempfile.NamedTemporaryFile


def _incoming_file(*args: Any, **kwargs: Any) -> Any:
    """Pynetdicom's ``NamedTemporaryFile``, placed in the receiving SCP's incoming folder.

    pynetdicom 3 creates the file of a data set received in chunks with
    ``NamedTemporaryFile(delete=False, ...)`` from its DUL thread (the thread object is the
    association's `DULServiceProvider`, whose ``assoc.ae`` is the receiving AE): the file
    then lies in the spool's file system under a temporary name that `Spool.clear_stale`
    removes after a crash, not in the system temp folder.
    """
    assoc = getattr(threading.current_thread(), "assoc", None)
    folder = _INCOMING.get(id(getattr(assoc, "ae", None)))
    if folder is not None:
        kwargs.update(dir=folder, prefix=TMP_PREFIX, suffix=TMP_SUFFIX)
    return _ntf(*args, **kwargs)


pynetdicom.dimse_messages.NamedTemporaryFile = _incoming_file  # type: ignore[attr-defined]

_META_GROUP_LENGTH = struct.Struct("<4s2sHI")


def _dataset_offset(part10: Buffer) -> int:
    """Where the data set starts in a Part 10 file written by pynetdicom (after its meta).

    Returns:
        The offset; the file's length when it holds no data set or no readable meta.
    """
    if len(part10) < 144 or part10[128:132] != b"DICM":
        return len(part10)
    tag, vr, length, group_length = _META_GROUP_LENGTH.unpack_from(part10, 132)
    if tag != b"\x02\x00\x00\x00" or vr != b"UL" or length != 4:
        return len(part10)
    return min(len(part10), 144 + int(group_length))


@contextlib.contextmanager
def _received_dataset(event: evt.Event) -> Iterator[tuple[Buffer, int]]:
    """The received data set and its offset: in memory, or mapped from pynetdicom's file.

    With ``STORE_RECV_CHUNKED_DATASET`` pynetdicom wrote preamble, its own file meta and
    the data set as sent to ``event.dataset_path``; the data set is mapped, not read, so
    a large instance is never held in Python memory. Without it, the bytes pynetdicom
    collected in memory (offset 0).
    """
    path = event.dataset_path
    if path is None:
        yield event.encoded_dataset(include_meta=False), 0
        return
    with Path(path).open("rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            yield b"", 0
            return
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        yield mapped, _dataset_offset(mapped)
    finally:
        with contextlib.suppress(BufferError):  # a view still alive: unmapped when freed
            mapped.close()


def _send_reject(event: evt.Event, rsd: tuple[int, int, int]) -> None:
    """Send A-ASSOCIATE-RJ and wait until the peer got it, as pynetdicom's own checks do.

    Without waiting, the server closes the socket before the DUL thread has sent the PDU
    and the peer sees an abort instead of the rejection reason.
    """
    event.assoc.acse.send_reject(*rsd)
    event.assoc.kill()


def _drop_partial_file(event: evt.Event) -> None:
    """Remove the file of a data set whose transfer the association's end cut off.

    pynetdicom removes the file of every data set it hands to the C-STORE handler, but not
    that of a message still being received when the peer aborted or the connection dropped
    (it was never acknowledged).
    """
    message = getattr(event.assoc.dimse, "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is None:
        return
    with contextlib.suppress(OSError):
        partial.close()
    with contextlib.suppress(OSError):
        Path(partial.name).unlink()


_SHORT_ELEMENT = struct.Struct("<HH2sH")
_LONG_ELEMENT = struct.Struct("<HH2s2xI")
_PREAMBLE = b"\x00" * 128 + b"DICM"


def _meta_element(element: int, vr: bytes, value: str | bytes) -> bytes:
    raw = value if isinstance(value, bytes) else value.encode("ascii")
    if len(raw) % 2:
        raw += b"\x00" if vr == b"UI" else b" "
    if vr == b"OB":
        return _LONG_ELEMENT.pack(0x0002, element, vr, len(raw)) + raw
    return _SHORT_ELEMENT.pack(0x0002, element, vr, len(raw)) + raw


def encode_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, sending: str, receiving: str
) -> bytes:
    """Preamble, ``DICM`` and the file meta `part10_with_sender` writes, encoded directly.

    The same bytes as pynetdicom's ``create_file_meta`` + Sending/Receiving Application
    Entity Title encoded by pydicom's ``write_file_meta_info`` (a test compares them), in a
    fraction of the time (building and encoding a pydicom ``FileMetaDataset`` was the
    largest cost of the C-STORE handler).

    Raises:
        UnicodeEncodeError: a value is not ASCII (the caller falls back to pydicom).
    """
    body = b"".join(
        (
            _meta_element(0x0001, b"OB", b"\x00\x01"),
            _meta_element(0x0002, b"UI", sop_class_uid),
            _meta_element(0x0003, b"UI", sop_instance_uid),
            _meta_element(0x0010, b"UI", transfer_syntax),
            _meta_element(0x0012, b"UI", PYNETDICOM_IMPLEMENTATION_UID),
            _meta_element(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION),
            _meta_element(0x0017, b"AE", sending),
            _meta_element(0x0018, b"AE", receiving),
        )
    )
    group_length = _SHORT_ELEMENT.pack(0x0002, 0x0000, b"UL", 4) + struct.pack("<I", len(body))
    return _PREAMBLE + group_length + body


def part10_header(event: evt.Event) -> bytes:
    """Preamble, ``DICM`` and the file meta of `part10_with_sender` (without the data set).

    Args:
        event: the C-STORE event.

    Returns:
        The bytes that precede the data set in the spooled file.
    """
    request = cast(C_STORE, event.request)
    sending = str(event.assoc.requestor.ae_title).strip()
    receiving = str(event.assoc.acceptor.ae_title).strip()
    try:
        return encode_meta(
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
            str(event.context.transfer_syntax),
            sending,
            receiving,
        )
    except UnicodeEncodeError:  # not ASCII: pydicom encodes it as it can
        meta = event.file_meta
        meta.SendingApplicationEntityTitle = sending
        meta.ReceivingApplicationEntityTitle = receiving
        return b"".join((_PREAMBLE, encode_file_meta(meta)))


def part10_with_sender(event: evt.Event, stream: bytes | None = None) -> bytes:
    """The received instance as a Part 10 file whose meta records who sent it to whom.

    Like ``event.encoded_dataset()`` (the dataset bytes exactly as the peer sent them), with
    Sending and Receiving Application Entity Title (PS3.10, (0002,0017) and (0002,0018)) in
    the file meta, so the routing rules can match on the calling AE title later.

    Args:
        event: the C-STORE event.
        stream: the data set bytes as received, when the caller has them already (each
            ``encoded_dataset`` call copies the whole data set).

    Returns:
        Preamble, ``DICM``, file meta and dataset.
    """
    if stream is None:
        stream = event.encoded_dataset(include_meta=False)
    return part10_header(event) + stream


class _ReusePortServer(AdmissionServer):
    """`AdmissionServer` bound with ``SO_REUSEPORT`` (one of several SCP processes)."""

    def server_bind(self) -> None:
        """Set ``SO_REUSEPORT``, then bind as pynetdicom does (it ignores allow_reuse_port)."""
        cast(socket.socket, self.socket).setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class StorageSCP:
    """The node's Storage SCP.

    Args:
        settings: node settings (AE title, address, allow-list, disk floor, timeouts).
        spool: where received instances are written.
        metrics: counters to update.
        on_activity: called (without arguments) after instances were spooled or an
            association ended; used only to wake the router early.
        on_association_end: called (without arguments) when an association that sent
            instances was released or aborted: its studies' quiet periods start now.
        reuse_port: bind with ``SO_REUSEPORT``, so that several SCP processes share the
            port (`dicom_node.scp_pool`).
    """

    def __init__(
        self,
        settings: NodeSettings,
        spool: Spool,
        metrics: Metrics,
        on_activity: Callable[[], None] | None = None,
        on_association_end: Callable[[], None] | None = None,
        *,
        reuse_port: bool = False,
    ) -> None:
        self._settings = settings
        self._reuse_port = reuse_port
        self._spool = spool
        self._metrics = metrics
        self._on_activity = on_activity or (lambda: None)
        self._on_association_end_hook = on_association_end or (lambda: None)
        self._server: Any = None
        self._lock = threading.Lock()
        # id(association) -> (token, study UIDs it sent); local to this SCP.
        self._assoc_studies: dict[int, tuple[str, set[str]]] = {}
        self._tokens = itertools.count(1)
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        ae = AE(ae_title=self._settings.ae_title)
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, list(TRANSFER_SYNTAXES))
        ae.add_supported_context(Verification, list(TRANSFER_SYNTAXES))
        # Association checks are done in _on_requested (with logging and our own rules).
        ae.require_calling_aet = []
        ae.require_called_aet = False
        ae.maximum_associations = self._settings.max_associations
        ae.maximum_pdu_size = self._settings.max_pdu_size
        ae.acse_timeout = self._settings.acse_timeout_seconds
        ae.dimse_timeout = self._settings.dimse_timeout_seconds
        ae.network_timeout = self._settings.network_timeout_seconds
        return ae

    @property
    def port(self) -> int:
        """The port actually bound (useful with ``port=0``); 0 when not running."""
        if self._server is None:
            return 0
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start listening in a background thread (returns at once).

        Raises:
            OSError: the address cannot be bound.
            ConfigError: the TLS certificate, key or CA bundle cannot be loaded.
        """
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_RELEASED, self._on_association_end),
            (evt.EVT_ABORTED, self._on_association_end),
        ]
        s = self._settings
        if s.receive_mode == "file":
            ensure_dir(self._spool.incoming_dir)
            _INCOMING[id(self.ae)] = self._spool.incoming_dir
        # process-wide in pynetdicom: the SCP started last decides for every SCP of the
        # process; `_received_dataset` reads either form, so all keep storing correctly
        if any(mode != s.receive_mode for mode in _RECEIVE_MODES.values()):
            logger.warning(
                "receive_mode is process-wide: this SCP's setting now applies to all",
                extra={"reason": s.receive_mode},
            )
        _RECEIVE_MODES[id(self.ae)] = s.receive_mode
        _config.STORE_RECV_CHUNKED_DATASET = s.receive_mode == "file"
        # Process-wide too: pydicom's read-time value checks only warn (WARN, its default),
        # yet they ran two regular expressions on each of the hundreds of UIDs in every
        # A-ASSOCIATE-RQ, a third of an association's set-up. pynetdicom still validates
        # every UID it decodes itself (length, emptiness, and conformance where enforced);
        # the node never reads values through pydicom's warnings.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        ssl_context = None
        if s.tls_cert_file is not None and s.tls_key_file is not None:
            ssl_context = server_context(s.tls_cert_file, s.tls_key_file, s.tls_ca_file)
        # AE.start_server(block=False) takes no server class: the same steps, with ours.
        server = cast(
            AdmissionServer,
            self.ae.make_server(
                (s.host, s.port),
                ssl_context=ssl_context,
                evt_handlers=handlers,
                server_class=_ReusePortServer if self._reuse_port else AdmissionServer,
                request_handler=EventRequestHandler if s.scp_event_reactor else None,
            ),
        )
        server.contexts = SharedContexts(server.contexts)  # see SharedContexts
        server.admission = AdmissionLimits(
            max_associations=s.max_associations,
            per_peer=s.max_associations_per_peer,
            request_timeout=s.association_request_timeout_seconds,
            reserved=s.reserved_associations,
        )
        thread = threading.Thread(
            target=server.serve_forever, name="dicom-node-scp-accept", daemon=True
        )
        thread.start()
        self.ae._servers.append(server)  # so that AE.shutdown() and server.shutdown() work
        self._server = server
        logger.info(
            "storage SCP listening",
            extra={
                "ae_title": s.ae_title,
                "host": s.host,
                "port": self.port,
                "tls": ssl_context is not None,
                "client_certificates": s.tls_ca_file is not None,
            },
        )

    def stop(self) -> None:
        """Stop listening and end open associations."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()
        _INCOMING.pop(id(self.ae), None)
        _RECEIVE_MODES.pop(id(self.ae), None)

    def active_associations(self) -> int:
        """Associations currently open."""
        return len(self.ae.active_associations)

    # --- handlers ------------------------------------------------------------------------

    def _reject(self, event: evt.Event, rsd: tuple[int, int, int], why: str) -> None:
        primitive = cast(A_ASSOCIATE, event.assoc.requestor.primitive)
        calling = str(primitive.calling_ae_title).strip()
        logger.warning(
            "association rejected",
            extra={"calling_ae": calling, "reason": why, "peer": event.assoc.requestor.address},
        )
        self._metrics.inc("associations_rejected_total")
        _send_reject(event, rsd)

    def _on_requested(self, event: evt.Event) -> None:
        """Accept or reject an association request (A-ASSOCIATE-RJ with the right reason)."""
        try:
            primitive = cast(A_ASSOCIATE, event.assoc.requestor.primitive)
            calling = str(primitive.calling_ae_title).strip()
            called = str(primitive.called_ae_title).strip()
            if not self._settings.calling_ae_allowed(calling):
                self._reject(event, REJECT_CALLING_AE, "calling AE title not allowed")
                return
            if self._settings.require_called_ae and called != self._settings.ae_title:
                self._reject(event, REJECT_CALLED_AE, "called AE title not ours")
                return
            floor = self._settings.min_free_disk_mb * 1024 * 1024
            if floor and shutil.disk_usage(self._spool.root).free < floor:
                self._reject(event, REJECT_CONGESTION, "free disk below min_free_disk_mb")
                return
        except Exception as exc:  # noqa: BLE001 - a handler must never raise into pynetdicom
            log_failure(logger, "association check failed; rejecting", exc)
            _send_reject(event, REJECT_CONGESTION)
            return
        self._metrics.inc("associations_accepted_total")
        logger.debug("association accepted", extra={"calling_ae": calling})

    def _on_c_store(self, event: evt.Event) -> int:
        """Spool one instance durably, then answer; never raises."""
        try:
            return self._store(event)
        except Exception as exc:  # noqa: BLE001 - answer a status, never crash the association
            # Type and location only: messages of decoding errors may quote values (PHI).
            log_failure(logger, "C-STORE failed unexpectedly", exc)
            self._metrics.inc("instances_rejected_total")
            return STATUS_OUT_OF_RESOURCES

    def _store(self, event: evt.Event) -> int:
        with _received_dataset(event) as (received, start):
            return self._store_received(event, received, start)

    def _store_received(self, event: evt.Event, received: Buffer, start: int) -> int:
        request = cast(C_STORE, event.request)
        sop_instance_uid = str(request.AffectedSOPInstanceUID or "").strip()
        sop_class_uid = str(request.AffectedSOPClassUID or "").strip()
        transfer_syntax = event.context.transfer_syntax
        try:
            # structure limits first: nothing is acknowledged that the node cannot process;
            # the same pass reads the header values needed here (no Dataset is built)
            shape = check_dataset(
                received,
                start=start,
                implicit=transfer_syntax.is_implicit_VR,
                little_endian=transfer_syntax.is_little_endian,
                deflated=transfer_syntax.is_deflated,
                limits=self._settings.dataset_limits,
                native_pixels=not transfer_syntax.is_compressed,
            )
        except DatasetRefusedError as exc:
            logger.warning(
                "C-STORE data set refused",
                extra={"sop_uid": sop_instance_uid, "reason": exc.reason, "status": exc.status},
            )
            self._metrics.inc("instances_rejected_total")
            self._metrics.inc("instances_refused_limits_total")
            return exc.status
        study_uid = shape.texts.get("StudyInstanceUID")
        manufacturer = shape.texts.get("Manufacturer")
        if not study_uid or not sop_instance_uid:
            logger.warning(
                "C-STORE without StudyInstanceUID or SOPInstanceUID",
                extra={"sop_uid": sop_instance_uid},
            )
            self._metrics.inc("instances_rejected_total")
            return STATUS_CANNOT_UNDERSTAND
        if is_own_output(manufacturer, sop_class_uid):
            logger.info(
                "own output acknowledged, not spooled",
                extra={"study_uid": study_uid, "sop_uid": sop_instance_uid},
            )
            self._metrics.inc("own_outputs_ignored_total")
            return STATUS_SUCCESS
        try:
            self._spool_received(event, study_uid, sop_instance_uid, received, start)
        except SpoolError as exc:
            log_failure(
                logger,
                f"cannot spool instance: {exc}",
                exc,
                study_uid=study_uid,
                sop_uid=sop_instance_uid,
            )
            self._metrics.inc("instances_rejected_total")
            return STATUS_OUT_OF_RESOURCES
        self._note_study(event, study_uid)
        self._metrics.inc("instances_received_total")
        logger.debug(
            "instance spooled", extra={"study_uid": study_uid, "sop_uid": sop_instance_uid}
        )
        self._on_activity()
        return STATUS_SUCCESS

    def _spool_received(
        self, event: evt.Event, study_uid: str, sop_uid: str, received: Buffer, start: int
    ) -> None:
        """Write the instance durably: the new file meta, then the data set as received."""
        if isinstance(received, bytes) and start == 0:
            self._spool.store(study_uid, sop_uid, part10_with_sender(event, received))
            return
        # the data set stays in the mapped file: written from there, never copied in memory
        with memoryview(received) as whole, whole[start:] as data_set:
            self._spool.store(study_uid, sop_uid, (part10_header(event), data_set))

    def _note_study(self, event: evt.Event, study_uid: str) -> None:
        key = id(event.assoc)
        with self._lock:
            entry = self._assoc_studies.get(key)
            if entry is None:
                entry = (f"{os.getpid()}-{threading.get_native_id()}-{next(self._tokens)}", set())
                self._assoc_studies[key] = entry
            token, studies = entry
            is_new = study_uid not in studies
            studies.add(study_uid)
        if is_new:
            self._spool.mark_open(study_uid, token)

    def _on_association_end(self, event: evt.Event) -> None:
        """Released or aborted: the quiet period of the association's studies starts now."""
        try:
            _drop_partial_file(event)
            with self._lock:
                entry = self._assoc_studies.pop(id(event.assoc), None)
            if entry is None:
                return
            token, studies = entry
            for study_uid in studies:
                self._spool.mark_closed(study_uid, token)
            if event.event == evt.EVT_ABORTED:
                logger.info(
                    "association aborted; instances already acknowledged are kept",
                    extra={"studies": len(studies)},
                )
            self._on_activity()
            self._on_association_end_hook()
        except Exception as exc:  # noqa: BLE001 - a handler must never raise into pynetdicom
            log_failure(logger, "association end handling failed", exc)
