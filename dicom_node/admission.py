"""Association admission: idle or greedy TCP peers cannot lock the SCP out.

pynetdicom counts a TCP connection as an association from the moment it is accepted and
waits ``acse_timeout`` for its A-ASSOCIATE-RQ, so ten idle connections (no AE title needed)
once filled ``max_associations`` for 30 s at a time, renewable forever. `AdmissionServer`
(the SCP's server class) checks each new connection before pynetdicom sees it:

* *per peer address:* at most ``max_associations_per_peer`` open connections from one
  address; more are closed at once;
* *short request timeout:* a connection that sends nothing within
  ``association_request_timeout_seconds`` (after a TLS handshake, if any) is closed;
* *reserved slots:* at most ``max_associations - reserved_associations`` connections may
  wait for their request at a time; a new connection beyond that closes the one that has
  been silent longest, so a peer that sends its A-ASSOCIATE-RQ at once (and whose calling AE
  `dicom_node.scp.StorageSCP` then checks against the allow-list) always gets in. Waiting
  connections never hold one of pynetdicom's ``max_associations`` slots.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
from collections import Counter
from dataclasses import dataclass

from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.tls import HandshakeInThreadServer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdmissionLimits:
    """Limits on connections that have not become associations yet.

    Attributes:
        max_associations: the SCP's association limit.
        per_peer: open connections allowed from one peer address.
        request_timeout: seconds a new connection may stay silent.
        reserved: slots idle connections may never take.
    """

    max_associations: int
    per_peer: int
    request_timeout: float
    reserved: int


class AdmissionServer(HandshakeInThreadServer):
    """The SCP's threaded server with admission checks (see the module docstring).

    `admission` must be set before the server serves; without it nothing is checked.
    """

    admission: AdmissionLimits | None = None
    _admission_lock = threading.Lock()

    def service_actions(self) -> None:
        """Nothing (pynetdicom's runs a full ``gc.collect()`` every 60 accept-loop passes).

        That collection walks the whole heap of the node's process, tens of milliseconds
        with the GIL held, while every open association waits; finished associations are
        collected by Python's own garbage collector like everything else.
        """

    def _state(self) -> tuple[Counter[str], list[socket.socket], set[int]]:
        if not hasattr(self, "_peers"):
            self._peers: Counter[str] = Counter()
            self._waiting: list[socket.socket] = []  # oldest first
            self._evicted: set[int] = set()
        return self._peers, self._waiting, self._evicted

    def process_request_thread(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: tuple[str, int] | str,
    ) -> None:
        """Admit the connection (or close it), then hand it on.

        Args:
            request: the client socket.
            client_address: the peer's address.
        """
        limits = self.admission
        if limits is None or not isinstance(request, socket.socket):
            super().process_request_thread(request, client_address)
            return
        peer = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        peers, waiting, evicted = self._state()
        oldest: socket.socket | None = None
        with self._admission_lock:
            refused = peers[peer] >= limits.per_peer
            if not refused:
                peers[peer] += 1
                if len(waiting) >= max(1, limits.max_associations - limits.reserved):
                    oldest = waiting.pop(0)  # the longest-silent connection makes room
                    evicted.add(id(oldest))
                waiting.append(request)
        if refused:
            logger.warning(
                "connection refused",
                extra={"peer": peer, "reason": "too many connections from this address"},
            )
            self.shutdown_request(request)
            return
        if oldest is not None:
            logger.warning(
                "silent connection closed to make room",
                extra={"reason": "too many connections without an association request"},
            )
            with contextlib.suppress(OSError):
                oldest.shutdown(socket.SHUT_RDWR)
        try:
            spoke = _wait_for_data(request, limits.request_timeout)
            with self._admission_lock:
                was_evicted = id(request) in evicted
                evicted.discard(id(request))
                if request in waiting:
                    waiting.remove(request)
            if was_evicted or not spoke:
                if not was_evicted:
                    logger.warning(
                        "connection closed: no association request in time",
                        extra={"peer": peer, "reason": f"{limits.request_timeout:g} s"},
                    )
                self.shutdown_request(request)
                return
            # the TLS handshake (if any) is done: straight to pynetdicom
            ThreadedAssociationServer.process_request_thread(self, request, client_address)
        finally:
            with self._admission_lock:
                peers[peer] -= 1
                if peers[peer] <= 0:
                    del peers[peer]


def _wait_for_data(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer sends something within ``timeout`` (for TLS: handshake, then data).

    A failed or silent TLS handshake is logged as `dicom_node.tls` logs it and counts as
    silence.
    """
    try:
        if isinstance(sock, ssl.SSLSocket):
            sock.settimeout(timeout)
            sock.do_handshake()
            sock.settimeout(None)
            if sock.pending():
                return True
        readable, _, _ = select.select([sock], [], [], timeout)
    except (OSError, ValueError, AttributeError) as exc:
        logger.warning(
            "TLS handshake failed; connection closed",
            extra={"error_type": type(exc).__name__, "reason": getattr(exc, "reason", "") or ""},
        )
        return False
    return bool(readable)
