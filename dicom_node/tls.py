"""TLS for DIMSE (PS3.15 Annex B "secure transport connection profiles").

`server_context` builds the `ssl.SSLContext` of the Storage SCP and `client_context` the one of
the C-STORE sender. Both require TLS 1.2 or newer (the BCP 195 profile of PS3.15 B.9). The SCP
asks for a client certificate and refuses peers without a valid one when a CA bundle is
given (``tls_ca_file``); the sender always verifies the destination's certificate, against
``cstore_tls_ca_file`` or the system store, and checks its host name unless told not to.

`HandshakeInThreadServer` is the association server the SCP uses: pynetdicom's own server
runs the TLS handshake in its accept loop, so one client that opens a TCP connection and sends
nothing would stop every other association from being accepted. Here the handshake runs in
the association's own thread, bounded by the ACSE timeout.
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path
from typing import cast

from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.errors import ConfigError

logger = logging.getLogger(__name__)


def _load_chain(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    try:
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS certificate {cert_file} with key {key_file}: "
            f"{getattr(exc, 'strerror', None) or exc}"
        ) from exc


def _load_ca(context: ssl.SSLContext, ca_file: Path) -> None:
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS CA bundle {ca_file}: {getattr(exc, 'strerror', None) or exc}"
        ) from exc


#: TLS 1.2 suites the SCP offers: AEAD only with forward secrecy, as RFC 9325 (BCP 195)
#: section 4.2 recommends (no CBC suites). TLS 1.3 suites are not affected by this list.
TLS12_SERVER_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL"


def server_context(cert_file: Path, key_file: Path, ca_file: Path | None = None) -> ssl.SSLContext:
    """The SCP's TLS context.

    Args:
        cert_file: PEM certificate (chain) of the node.
        key_file: PEM private key of that certificate.
        ca_file: PEM CA bundle; when given, clients must present a certificate it signed
            (mutual TLS), otherwise no client certificate is asked for.

    Returns:
        A server-side context, TLS 1.2 minimum, TLS 1.2 suites `TLS12_SERVER_CIPHERS`.

    Raises:
        ConfigError: a file is missing or not a valid certificate, key or CA bundle.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_SERVER_CIPHERS)
    _load_chain(context, cert_file, key_file)
    if ca_file is not None:
        _load_ca(context, ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    *,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """The C-STORE sender's TLS context (the destination's certificate is always verified).

    Args:
        ca_file: PEM CA bundle that signed the destination's certificate (None: the system's
            default trust store).
        cert_file: our client certificate, for destinations that require one.
        key_file: its private key (with ``cert_file``).
        check_hostname: check that the certificate names the host we connect to.

    Returns:
        A client-side context, TLS 1.2 minimum.

    Raises:
        ConfigError: a file is missing or invalid, or only one of cert/key is given.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        _load_ca(context, ca_file)
    if (cert_file is None) != (key_file is None):
        raise ConfigError("a TLS client certificate needs both the certificate and its key")
    if cert_file is not None and key_file is not None:
        _load_chain(context, cert_file, key_file)
    context.check_hostname = check_hostname
    return context


class HandshakeInThreadServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake moved out of the accept loop.

    The accepted socket is wrapped without handshaking; the handshake runs in the
    association's thread with the ACSE timeout. A peer that fails it (no or untrusted
    certificate, plain DICOM on a TLS port, silence) is logged and disconnected without
    affecting other associations.
    """

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection; wrap it for TLS but do not handshake yet.

        Returns:
            The (possibly TLS-wrapped) client socket and the peer address.
        """
        listener = cast(socket.socket, self.socket)
        client_socket, address = listener.accept()
        if self.ssl_context:
            client_socket = self.ssl_context.wrap_socket(
                client_socket, server_side=True, do_handshake_on_connect=False
            )
        return client_socket, address

    def process_request_thread(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: tuple[str, int] | str,
    ) -> None:
        """Handshake (TLS only), then hand the connection to pynetdicom.

        Args:
            request: the client socket.
            client_address: the peer's address.
        """
        if isinstance(request, ssl.SSLSocket):
            timeout = self.ae.acse_timeout
            try:
                request.settimeout(timeout)
                request.do_handshake()
                request.settimeout(None)
            except Exception as exc:  # noqa: BLE001 - a failed handshake only ends this peer
                # SSLError and timeouts are OSErrors; a socket closed by a concurrent server
                # shutdown raises AttributeError/ValueError inside ssl. No PHI in any of them.
                logger.warning(
                    "TLS handshake failed; connection closed",
                    extra={
                        "peer": str(client_address),
                        "error_type": type(exc).__name__,
                        "reason": getattr(exc, "reason", None) or "",
                    },
                )
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)
