"""The Storage SCP: a pynetdicom AE and its event handlers, nothing else.

Accepts every storage SOP class pynetdicom knows with every transfer syntax it knows, plus
Verification (C-ECHO). Handlers never decode pixels, never run models and never raise:

* ``EVT_REQUESTED``: association checks. Calling AE not allowed: A-ASSOCIATE-RJ
  rejected-permanent / service-user / "calling AE title not recognised" (0x01, 0x01, 0x03);
  called AE wrong: (0x01, 0x01, 0x07); free disk under ``min_free_disk_mb``:
  rejected-transient / service-provider presentation / "temporary congestion" (0x02, 0x03,
  0x01), so the peer retries later.
* ``EVT_C_STORE``: reads only the few header attributes it needs (up to StudyInstanceUID,
  stopping before pixel data), then writes the dataset bytes exactly as sent, with preamble
  and file meta, durably to the spool and only then answers 0x0000. Own outputs
  (`ai_engine.dicom_io.markers.is_own_output`) are answered 0x0000 but not spooled, so they
  never start a job. Before anything is spooled, the data set's structure is walked once
  (`dicom_node.limits`): nesting deeper than ``max_dataset_depth``, more elements than
  ``max_dataset_elements`` or a Deflated data set inflating beyond ``max_inflated_mb``
  are refused with 0xC211, a value running past the end of the data with 0xC210, native
  PixelData shorter than Rows x Columns x samples x frames x bits with 0xA900. Other
  failures: 0xA700 (out of resources: disk full, I/O error) or 0xC210 (cannot
  understand: the header does not parse or lacks StudyInstanceUID).
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

import itertools
import logging
import shutil
import threading
from collections.abc import Callable
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ai_engine.dicom_io.markers import is_own_output
from dicom_node.admission import AdmissionLimits, AdmissionServer
from dicom_node.config import NodeSettings
from dicom_node.errors import SpoolError
from dicom_node.limits import DatasetRefusedError, check_dataset
from dicom_node.logutil import log_failure
from dicom_node.metrics import Metrics
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

_STUDY_INSTANCE_UID_TAG = 0x0020000D

#: Accepted transfer syntaxes in order of preference (the acceptor's order decides when a
#: peer proposes several in one context). Explicit VR Little Endian first: it keeps the VRs
#: of private elements, which implicit VR loses; then everything else pynetdicom knows.
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    *(ts for ts in ALL_TRANSFER_SYNTAXES if ts != ExplicitVRLittleEndian),
)


def _stop_after_study_uid(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) > _STUDY_INSTANCE_UID_TAG


def read_header(dataset_bytes: bytes, is_implicit_vr: bool, is_little_endian: bool) -> Dataset:
    """Parse the start of an encoded dataset, up to and including StudyInstanceUID.

    Args:
        dataset_bytes: the dataset as sent (no file meta), not deflated.
        is_implicit_vr: the transfer syntax's VR encoding.
        is_little_endian: its byte order.

    Returns:
        A dataset with the elements (0008,xxxx)..(0020,000D) that were present.
    """
    return read_dataset(
        BytesIO(dataset_bytes),
        is_implicit_VR=is_implicit_vr,
        is_little_endian=is_little_endian,
        stop_when=_stop_after_study_uid,
    )


def _send_reject(event: evt.Event, rsd: tuple[int, int, int]) -> None:
    """Send A-ASSOCIATE-RJ and wait until the peer got it, as pynetdicom's own checks do.

    Without waiting, the server closes the socket before the DUL thread has sent the PDU
    and the peer sees an abort instead of the rejection reason.
    """
    event.assoc.acse.send_reject(*rsd)
    event.assoc.kill()


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
    meta = event.file_meta
    meta.SendingApplicationEntityTitle = str(event.assoc.requestor.ae_title).strip()
    meta.ReceivingApplicationEntityTitle = str(event.assoc.acceptor.ae_title).strip()
    if stream is None:
        stream = event.encoded_dataset(include_meta=False)
    return b"".join((b"\x00" * 128, b"DICM", encode_file_meta(meta), stream))


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip().rstrip("\x00")
    return text or None


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
    """

    def __init__(
        self,
        settings: NodeSettings,
        spool: Spool,
        metrics: Metrics,
        on_activity: Callable[[], None] | None = None,
        on_association_end: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
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
                server_class=AdmissionServer,
            ),
        )
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
        request = cast(C_STORE, event.request)
        sop_instance_uid = str(request.AffectedSOPInstanceUID or "").strip()
        sop_class_uid = str(request.AffectedSOPClassUID or "").strip()
        transfer_syntax = event.context.transfer_syntax
        try:
            # structure limits first: nothing is acknowledged that the node cannot process
            received = event.encoded_dataset(include_meta=False)
            plain = check_dataset(
                received,
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
        try:
            header = read_header(
                plain, transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian
            )
            study_uid = _text(header, "StudyInstanceUID")
            manufacturer = _text(header, "Manufacturer")
        except Exception as exc:  # noqa: BLE001 - any decoding failure is "cannot understand"
            log_failure(
                logger,
                "C-STORE dataset header cannot be parsed",
                exc,
                level=logging.WARNING,
                sop_uid=sop_instance_uid,
            )
            self._metrics.inc("instances_rejected_total")
            return STATUS_CANNOT_UNDERSTAND
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
            self._spool.store(study_uid, sop_instance_uid, part10_with_sender(event, received))
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

    def _note_study(self, event: evt.Event, study_uid: str) -> None:
        key = id(event.assoc)
        with self._lock:
            entry = self._assoc_studies.get(key)
            if entry is None:
                entry = (f"{threading.get_native_id()}-{next(self._tokens)}", set())
                self._assoc_studies[key] = entry
            token, studies = entry
            is_new = study_uid not in studies
            studies.add(study_uid)
        if is_new:
            self._spool.mark_open(study_uid, token)

    def _on_association_end(self, event: evt.Event) -> None:
        """Released or aborted: the quiet period of the association's studies starts now."""
        try:
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
