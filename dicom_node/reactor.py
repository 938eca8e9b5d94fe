"""Event-driven reactors for the SCP's associations (pynetdicom 3.0's, without the 1 ms naps).

pynetdicom runs every association as two threads that poll: the DUL thread checks the socket
and its queue and sleeps 1 ms whenever neither had anything; the association thread sleeps
1 ms before each look at the DIMSE message queue. A C-STORE of a 50 KB image arrives as
several PDUs and its response goes back through both threads, so one instance paid several
of those naps: with one association the SCP waited more than it worked, and on a loaded
machine every nap became a trip through the scheduler (``bench/ingest.py``:
docs/results/ingest.md).

`EventRequestHandler` (the SCP's request handler) gives each accepted association the two
loops below, which are pynetdicom 3.0.4's loops with each nap replaced by a wait that ends as
soon as there is work:

* DUL thread: ``select`` on the peer's socket and a wake-up pipe that `EventDul.send_pdu`
  writes to, so a received PDU and an outgoing response are both handled at once (TLS:
  bytes already decrypted by OpenSSL count as readable);
* association thread: a blocking ``get`` on the DIMSE message queue;
* `EventDimse`: a C-STORE request is served in the DUL thread that decoded it (no hand-off
  to the association thread and back); a plain C-STORE-RQ received to memory is decoded
  with ``struct`` (`parse_c_store_rq`) instead of a pydicom ``Dataset`` per command set;
  a plain C-STORE-RSP is encoded directly (the same bytes as pynetdicom's);
* pynetdicom's standard logging handlers are unbound while its logger is above INFO;
* `SharedContexts`: the server's presentation contexts are not deep-copied into each
  association.

Each wait still times out after `POLL_SECONDS`, so the checks that the loops make on every
pass (ARTIM and idle timers, release and abort requests, ``kill``) run as before, at most
that much later. Everything else (state machine, PDU decoding, association negotiation,
events, every other DIMSE message) is pynetdicom's own code. The classes of the association,
its DUL and its DIMSE provider are set before either thread starts (`EventDul.run`: the
DUL thread's target was bound by pynetdicom's constructor); the SCU side
(`dicom_node.sender`, `dicom_node.pull`) is unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from dataclasses import field as dc_field
from io import BytesIO
from typing import Any, cast

from pynetdicom import _config, evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_STORE, N_EVENT_REPORT
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import RequestHandler
from pynetdicom.utils import make_target

from dicom_node.logutil import log_failure

logger = logging.getLogger(__name__)

#: Longest wait of either loop when nothing arrives (the old loops woke every 1 ms).
POLL_SECONDS = 0.005


class EventDul(DULServiceProvider):
    """The DUL reactor, waking on socket data or an outgoing primitive instead of napping."""

    _wake_read: int
    _wake_write: int

    def prepare_wake(self) -> None:
        """Create the wake-up pipe (before the thread starts)."""
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)

    def send_pdu(self, primitive: Any) -> None:
        """Queue a primitive for the peer (pynetdicom's) and wake the reactor."""
        super().send_pdu(primitive)
        with contextlib.suppress(OSError):  # full pipe: a wake-up is pending anyway
            os.write(self._wake_write, b"\0")

    def _wait(self, timeout: float) -> None:
        """Until the socket is readable, a primitive was queued, or ``timeout`` passed."""
        transport = self.socket
        sock = getattr(transport, "socket", None)
        if sock is None:
            time.sleep(timeout)
            return
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return
        try:
            select.select([sock, self._wake_read], [], [], timeout)
        except (OSError, ValueError):  # closed meanwhile: the loop sees it next
            time.sleep(timeout)
        with contextlib.suppress(OSError):
            while os.read(self._wake_read, 4096):
                pass

    def run(self) -> None:
        """The thread's body: this class's `run_reactor`.

        pynetdicom's constructor binds the thread's target to *its* ``run_reactor`` before
        the class is changed to this one, so without this the thread would run
        pynetdicom's napping loop (and nothing would ever read the wake-up pipe).
        """
        self.run_reactor()

    def run_reactor(self) -> None:
        """Pynetdicom 3.0.4's ``DULServiceProvider.run_reactor``, with `_wait` for the nap."""
        try:
            self._run_reactor()
        finally:
            for fd in (self._wake_read, self._wake_write):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _run_reactor(self) -> None:
        self._idle_timer.start()
        sleep = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True
            # pynetdicom's loop sleeps here when the previous pass found nothing to do
            if sleep and self.to_provider_queue.empty():
                self._wait(POLL_SECONDS)
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                logger.exception(
                    "Exception in DUL.run(), aborting association",
                    extra={"error_type": type(exc).__name__},
                )
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                if self.socket is not None:
                    self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue
            self.state_machine.do_action(event)
            sleep = False


class EventAssociation(Association):
    """An acceptor association whose reactor blocks on the DIMSE queue instead of napping."""

    def _run_reactor(self) -> None:
        """Pynetdicom 3.0.4's acceptor loop, with a blocking queue ``get`` for the nap."""
        self._is_paused = False
        while not self._kill:
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            try:
                context_id, msg = self.dimse.msg_queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                context_id, msg = None, None
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                logger.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                logger.info(log_msg)
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                logger.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


_STANDARD_LOG_HANDLERS = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)
_IMPLICIT_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")


def _command_element(element: int, value: bytes) -> bytes:
    return _IMPLICIT_ELEMENT.pack(0x0000, element, len(value)) + value


def _command_uid(uid: object) -> bytes:
    raw = str(uid).encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def encode_c_store_rsp(rsp: C_STORE) -> bytes | None:
    """The command set of a C-STORE-RSP as pynetdicom encodes it (Implicit VR Little Endian).

    Returns:
        The encoded command set; None when the response carries more than the plain fields
        (an error comment, an offending element) or a value that is not ASCII: pynetdicom
        encodes those.
    """
    if rsp.ErrorComment is not None or rsp.OffendingElement is not None:
        return None
    if rsp.MessageIDBeingRespondedTo is None or rsp.Status is None:
        return None
    try:
        parts = []
        if rsp.AffectedSOPClassUID is not None:
            parts.append(_command_element(0x0002, _command_uid(rsp.AffectedSOPClassUID)))
        parts.append(_command_element(0x0100, _US.pack(0x8001)))
        parts.append(_command_element(0x0120, _US.pack(int(rsp.MessageIDBeingRespondedTo))))
        parts.append(_command_element(0x0800, _US.pack(0x0101)))  # no data set
        parts.append(_command_element(0x0900, _US.pack(int(rsp.Status))))
        if rsp.AffectedSOPInstanceUID is not None:
            parts.append(_command_element(0x1000, _command_uid(rsp.AffectedSOPInstanceUID)))
    except (UnicodeEncodeError, struct.error):
        return None
    body = b"".join(parts)
    return _command_element(0x0000, struct.pack("<I", len(body))) + body


#: Command elements (0000,eeee) a plain C-STORE-RQ must carry, and those it may (plus the
#: group length); a command set with anything else goes to pynetdicom.
_C_STORE_RQ_REQUIRED = frozenset({0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000})
_C_STORE_RQ_ELEMENTS = _C_STORE_RQ_REQUIRED | {0x0000}


@dataclass(frozen=True)
class StoreCommand:
    """The fields of a plain C-STORE-RQ command set (no Move Originator)."""

    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    priority: int


def parse_c_store_rq(command: bytes) -> StoreCommand | None:
    """Read a command set (Implicit VR Little Endian) if it is a plain C-STORE-RQ.

    Returns:
        Its fields; None for anything else (another command, a response, a C-STORE with
        Move Originator or without a data set, a duplicate, unknown or malformed element):
        pynetdicom decodes those as it always did.
    """
    fields: dict[int, bytes] = {}
    pos, end = 0, len(command)
    while pos < end:
        if pos + 8 > end:
            return None
        group, element, length = _IMPLICIT_ELEMENT.unpack_from(command, pos)
        pos += 8
        if group != 0x0000 or pos + length > end or element in fields:
            return None
        if element not in _C_STORE_RQ_ELEMENTS:
            return None
        fields[element] = command[pos : pos + length]
        pos += length
    if not fields.keys() >= _C_STORE_RQ_REQUIRED:
        return None
    shorts = {}
    for element in (0x0100, 0x0110, 0x0700, 0x0800):
        if len(fields[element]) != 2:
            return None
        shorts[element] = _US.unpack(fields[element])[0]
    if shorts[0x0100] != 0x0001 or shorts[0x0800] == 0x0101:
        return None  # not a C-STORE-RQ, or one without a data set
    try:
        sop_class, sop_instance = (
            fields[e].decode("ascii").rstrip("\x00").strip() for e in (0x0002, 0x1000)
        )
    except UnicodeDecodeError:
        return None
    return StoreCommand(shorts[0x0110], sop_class, sop_instance, shorts[0x0700])


@dataclass
class _StoreMessage:
    """A C-STORE-RQ being received by `EventDimse` itself: command and data set so far."""

    command: bytearray = dc_field(default_factory=bytearray)
    context_id: int | None = None
    fields: StoreCommand | None = None
    data_set: bytearray = dc_field(default_factory=bytearray)


class EventDimse(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider; a plain C-STORE-RQ is decoded and its RSP encoded directly.

    The request side is `receive_primitive`'s. Building the response through pynetdicom's
    DIMSE message (a pydicom ``Dataset`` per response, encoded element by element) took
    about a millisecond of Python per instance; the bytes are the same (a test compares
    them). Anything else goes through pynetdicom.
    """

    _store: _StoreMessage | None = None

    def receive_primitive(self, primitive: P_DATA) -> None:
        """As pynetdicom 3.0.4's ``receive_primitive``; a C-STORE-RQ is served right here.

        pynetdicom queues every decoded request for the association thread, which answers
        through the DUL thread's queue: two thread hand-offs per instance, each a trip
        through the scheduler on a busy machine. A C-STORE request is served in the DUL
        thread that decoded it instead (the peer waits for the response before it sends
        more: only one operation is negotiated); everything else is queued as before.

        A plain C-STORE-RQ received to memory is also decoded here (`parse_c_store_rq`:
        seven elements read with ``struct``, the primitive filled through pynetdicom's own
        validating setters) instead of through a pydicom ``Dataset`` per command set, which
        was about a third of the Python time per instance. Any other message, and any
        command set this does not recognise, is handed to pynetdicom as received.
        """
        if self.message is None and self._may_decode_stores():
            rest = self._receive_store(primitive)
            if rest is None:
                return
            primitive = rest
        if self.message is None:
            self.message = DIMSEMessage()
        if not self.message.decode_msg(primitive, self.assoc):
            return
        evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": self.message})
        context_id = cast(int, self.message.context_id)
        try:
            d_primitive = self.message.message_to_primitive()
        except Exception as exc:  # noqa: BLE001 - as pynetdicom: it ends the association
            self._end_invalid_message(exc)
            return
        # reset the message for the next one (pynetdicom's fix for its issue 41)
        self.message.encoded_command_set = BytesIO()
        self.message.data_set = BytesIO()
        self.message._data_set_file = None
        self.message._data_set_path = None
        self.message = None
        self._dispatch(d_primitive, context_id)

    def _end_invalid_message(self, exc: Exception) -> None:
        """An invalid DIMSE message ends the association (Evt19), as in pynetdicom.

        Logged with type and location only: the messages of pynetdicom's validators quote
        the peer's values (UIDs are PHI).
        """
        log_failure(logger, "Received an invalid DIMSE message", exc)
        self.dul.event_queue.put("Evt19")

    def _may_decode_stores(self) -> bool:
        """Whether C-STORE-RQs may be decoded here.

        Only when received to memory and nobody listens for the decoded DIMSE message
        (`EVT_DIMSE_RECV` handlers get pynetdicom's).
        """
        return not _config.STORE_RECV_CHUNKED_DATASET and not self.assoc.get_handlers(
            evt.EVT_DIMSE_RECV
        )

    def _receive_store(self, primitive: P_DATA) -> P_DATA | None:
        """Take the PDVs of a plain C-STORE-RQ; what is not one goes back to pynetdicom.

        Returns:
            None when every PDV was taken; otherwise a P-DATA for pynetdicom's decoder with
            the message so far (its command set as one fragment) and the PDVs not taken.
        """
        pdvs = list(primitive.presentation_data_value_list)
        for index, (context_id, pdv) in enumerate(pdvs):
            header, payload = pdv[0], pdv[1:]
            store = self._store
            if header & 1:  # command fragment
                if store is None:
                    store = self._store = _StoreMessage()
                elif store.fields is not None:  # a command inside a data set: not ours
                    return self._hand_over(store, pdvs[index:])
                store.command += payload
                if header & 2:
                    store.context_id = context_id
                    store.fields = parse_c_store_rq(bytes(store.command))
                    if store.fields is None:
                        return self._hand_over(store, pdvs[index + 1 :])
                continue
            if store is None or store.fields is None or context_id != store.context_id:
                return self._hand_over(store, pdvs[index:])
            store.data_set += payload
            if header & 2:
                self._store = None
                self._serve_store(store)
        return None

    def _hand_over(self, store: _StoreMessage | None, rest: list[tuple[int, bytes]]) -> P_DATA:
        """A P-DATA replaying what `_receive_store` took of this message, then ``rest``.

        The replay is the command set as one fragment and, when some of the data set was
        taken, that part as one non-final fragment: pynetdicom's decoder concatenates
        fragments, so it reads the same bytes as from the peer.
        """
        self._store = None
        pdata = P_DATA()
        pdvs = pdata.presentation_data_value_list
        if store is not None and store.command:
            complete = store.context_id is not None
            context_id = cast(int, store.context_id if complete else rest[0][0])
            pdvs.append((context_id, (b"\x03" if complete else b"\x01") + bytes(store.command)))
            if store.data_set:
                pdvs.append((context_id, b"\x00" + bytes(store.data_set)))
        pdvs.extend(rest)
        return pdata

    def _serve_store(self, store: _StoreMessage) -> None:
        """Build the C-STORE primitive through pynetdicom's setters and serve it."""
        fields = cast(StoreCommand, store.fields)
        request = C_STORE()
        try:  # the setters validate as pynetdicom's decoder does
            request.MessageID = fields.message_id
            request.AffectedSOPClassUID = fields.sop_class_uid
            request.AffectedSOPInstanceUID = fields.sop_instance_uid
            request.Priority = fields.priority
            request.DataSet = BytesIO(store.data_set)
        except Exception as exc:  # noqa: BLE001 - as pynetdicom: it ends the association
            self._end_invalid_message(exc)
            return
        request._context_id = store.context_id
        self._dispatch(request, cast(int, store.context_id))

    def _dispatch(self, d_primitive: Any, context_id: int) -> None:
        """Route a decoded request as pynetdicom does, a C-STORE-RQ served right here."""
        if isinstance(d_primitive, C_CANCEL) and len(self.cancel_req) < 10:
            self.cancel_req[cast(int, d_primitive.MessageIDBeingRespondedTo)] = d_primitive
        elif isinstance(d_primitive, N_EVENT_REPORT) and d_primitive.is_valid_request:
            threading.Thread(
                target=make_target(self.assoc._serve_request), args=(d_primitive, context_id)
            ).start()
        elif (
            type(d_primitive) is C_STORE
            and d_primitive.MessageIDBeingRespondedTo is None
            and self.assoc.is_established
        ):
            # Only once established: pynetdicom sends the A-ASSOCIATE-AC before it sets
            # is_established, a fast peer's first C-STORE can arrive in between, and
            # pynetdicom's C-STORE service sends no response on an association that is not
            # established (the peer then waited for the network timeout). Before that the
            # request is queued, and the association thread serves it once its loop runs.
            self.assoc._serve_request(d_primitive, context_id)
        else:
            self.msg_queue.put((context_id, cast(Any, d_primitive)))

    def send_msg(self, primitive: Any, context_id: int) -> None:
        """Send a DIMSE message; see the class docstring."""
        if type(primitive) is C_STORE and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            encoded = encode_c_store_rsp(primitive)
            max_pdu = self.maximum_pdu_size
            if encoded is not None and (max_pdu == 0 or len(encoded) + 6 <= max_pdu):
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))
                self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)


class SharedContexts(list[Any]):
    """The server's supported presentation contexts, handed to each association uncopied.

    pynetdicom deep-copies the server's contexts into every association it accepts: for
    every storage SOP class with every transfer syntax that is thousands of UIDs, each
    validated again, about 80 ms of Python per association (more than receiving 50
    instances). Negotiation only reads them (it builds new contexts for the result), and
    nothing of the node changes them once the server runs, so each association gets a
    copy of the list, not of the contexts.
    """

    def __deepcopy__(self, memo: dict[int, object]) -> list[Any]:
        return list(self)


class EventRequestHandler(RequestHandler):
    """pynetdicom's request handler; the association it creates uses the classes above."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        assoc.__class__ = EventAssociation
        assoc.dul.__class__ = EventDul
        assoc.dimse.__class__ = EventDimse
        cast(EventDul, assoc.dul).prepare_wake()
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
            # pynetdicom's standard handlers only write INFO/DEBUG lines about every PDU
            # and DIMSE message (the C-STORE one copies the whole data set to say that it
            # has one); with its logger above INFO they cost time and show nothing
            for event, handler in _STANDARD_LOG_HANDLERS:
                assoc.unbind(event, handler)
        return assoc
