"""DIMSE over TLS: real handshakes with certificates made here by the openssl CLI."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicom_node.config import NodeSettings, load_settings
from dicom_node.errors import ConfigError, SendError
from dicom_node.metrics import Metrics
from dicom_node.scp import StorageSCP
from dicom_node.sender import build_sender
from dicom_node.spool import Spool, safe_name

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


@dataclass(frozen=True)
class Pki:
    """A CA with a server and a client certificate, and a rogue CA with its own client."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_client_cert: Path
    rogue_client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def _make_leaf(d: Path, name: str, ca: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        f"subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n{ext}\n"
    )
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _make_ca(d, "ca")
    _make_ca(d, "rogue")
    _make_leaf(
        d, "server", "ca", "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1"
    )
    _make_leaf(d, "client", "ca", "extendedKeyUsage=clientAuth")
    _make_leaf(d, "rogueclient", "rogue", "extendedKeyUsage=clientAuth")
    return Pki(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        rogue_ca=d / "rogue.pem",
        rogue_client_cert=d / "rogueclient.pem",
        rogue_client_key=d / "rogueclient.key",
    )


def _with(settings: NodeSettings, **changes: object) -> NodeSettings:
    """The settings with ``changes``, validated together (fields that go in pairs)."""
    return NodeSettings(**{**settings.model_dump(), **changes})


@pytest.fixture
def tls_scp(settings: NodeSettings, pki: Pki) -> Iterator[StorageSCP]:
    settings = _with(
        settings,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_ca_file=pki.ca,
        acse_timeout_seconds=2,
    )
    server = StorageSCP(settings, Spool(settings.spool_dir), Metrics())
    server.start()
    yield server
    server.stop()


def _client_context(pki: Pki, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _tls_associate(port: int, ctx: ssl.SSLContext | None, calling: str = "TESTSCU") -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    tls_args = (ctx, "localhost") if ctx is not None else None
    return ae.associate("127.0.0.1", port, ae_title="AINODE", tls_args=tls_args)


def _echo_ok(port: int, ctx: ssl.SSLContext) -> bool:
    assoc = _tls_associate(port, ctx)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


def test_tls_scp_accepts_trusted_client_and_stores(
    tls_scp: StorageSCP, pki: Pki, settings: NodeSettings, ct_path: Path
) -> None:
    ctx = _client_context(pki, pki.client_cert, pki.client_key)
    assoc = _tls_associate(tls_scp.port, ctx)
    assert assoc.is_established
    assert isinstance(assoc.dul.socket.socket, ssl.SSLSocket)  # type: ignore[union-attr]
    assert assoc.send_c_echo().Status == 0
    assert assoc.send_c_store(ct_path).Status == 0
    assoc.release()
    ds = dcmread(ct_path, stop_before_pixels=True)
    assert (
        settings.spool_dir / safe_name(ds.StudyInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
    ).is_file()


@pytest.mark.parametrize("who", ["untrusted-certificate", "no-certificate", "plain-tcp"])
def test_tls_scp_refuses_untrusted_peers_and_keeps_serving(
    tls_scp: StorageSCP, pki: Pki, who: str
) -> None:
    if who == "untrusted-certificate":
        bad: ssl.SSLContext | None = _client_context(
            pki, pki.rogue_client_cert, pki.rogue_client_key
        )
    elif who == "no-certificate":
        bad = _client_context(pki, None, None)
    else:
        bad = None
    assoc = _tls_associate(tls_scp.port, bad)
    assert not assoc.is_established
    if assoc.is_established:  # pragma: no cover - only to leave no association behind
        assoc.release()
    assert _echo_ok(tls_scp.port, _client_context(pki, pki.client_cert, pki.client_key))


def test_client_refuses_scp_with_untrusted_server_certificate(
    tls_scp: StorageSCP, pki: Pki
) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.rogue_ca))
    ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    assert not _tls_associate(tls_scp.port, ctx).is_established


def test_silent_connection_does_not_block_tls_accept(tls_scp: StorageSCP, pki: Pki) -> None:
    # pynetdicom's own server handshakes in its accept loop: one silent peer would block
    # everyone. Ours handshakes in the association's thread.
    silent = [socket.create_connection(("127.0.0.1", tls_scp.port)) for _ in range(3)]
    try:
        t0 = time.monotonic()
        assert _echo_ok(tls_scp.port, _client_context(pki, pki.client_cert, pki.client_key))
        assert time.monotonic() - t0 < 2
    finally:
        for sock in silent:
            sock.close()


def test_tls_without_client_certificates(settings: NodeSettings, pki: Pki) -> None:
    settings = _with(settings, tls_cert_file=pki.server_cert, tls_key_file=pki.server_key)
    server = StorageSCP(settings, Spool(settings.spool_dir), Metrics())
    server.start()
    try:
        assert _echo_ok(server.port, _client_context(pki, None, None))
    finally:
        server.stop()


class TlsDestination:
    """A pynetdicom Storage SCP on TLS that requires a client certificate of our CA."""

    def __init__(self, pki: Pki) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        ctx.load_verify_locations(str(pki.ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.received: list[str] = []
        self.ae = AE(ae_title="ORTHANC")
        for cx in AllStoragePresentationContexts:
            self.ae.add_supported_context(
                cx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
            )
        self.server = self.ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            ssl_context=ctx,
            evt_handlers=[(evt.EVT_C_STORE, self._store)],
        )

    def _store(self, event: evt.Event) -> int:
        self.received.append(str(event.dataset.SOPInstanceUID))
        return 0

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


@pytest.fixture
def tls_destination(pki: Pki) -> Iterator[TlsDestination]:
    dest = TlsDestination(pki)
    yield dest
    dest.server.shutdown()


def test_cstore_sender_over_tls(
    settings: NodeSettings, pki: Pki, tls_destination: TlsDestination, ct_path: Path
) -> None:
    settings = _with(
        settings,
        destination="cstore",
        cstore_port=tls_destination.port,
        cstore_tls=True,
        cstore_tls_ca_file=pki.ca,
        cstore_tls_cert_file=pki.client_cert,
        cstore_tls_key_file=pki.client_key,
        cstore_tls_server_name="localhost",
    )
    build_sender(settings).send([ct_path])
    assert tls_destination.received == [str(dcmread(ct_path).SOPInstanceUID)]


@pytest.mark.parametrize("problem", ["untrusted-server", "no-client-certificate", "plain"])
def test_cstore_sender_tls_failures_are_send_errors(
    settings: NodeSettings,
    pki: Pki,
    tls_destination: TlsDestination,
    ct_path: Path,
    problem: str,
) -> None:
    changes: dict[str, object] = {
        "destination": "cstore",
        "cstore_port": tls_destination.port,
        "dimse_timeout_seconds": 3,
    }
    if problem != "plain":
        changes |= {"cstore_tls": True, "cstore_tls_server_name": "localhost"}
    if problem == "untrusted-server":
        changes |= {
            "cstore_tls_ca_file": pki.rogue_ca,
            "cstore_tls_cert_file": pki.client_cert,
            "cstore_tls_key_file": pki.client_key,
        }
    elif problem == "no-client-certificate":
        changes["cstore_tls_ca_file"] = pki.ca
    settings = _with(settings, **changes)
    with pytest.raises(SendError) as info:
        build_sender(settings).send([ct_path])
    assert info.value.retryable
    assert tls_destination.received == []


def test_tls_settings_are_validated(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file go together"):
        load_settings(tls_cert_file=pki.server_cert)
    with pytest.raises(ConfigError, match="tls_ca_file"):
        load_settings(tls_ca_file=pki.ca)
    with pytest.raises(ConfigError, match="cstore_tls is false"):
        load_settings(cstore_tls_ca_file=pki.ca)
    with pytest.raises(ConfigError, match="go together"):
        load_settings(cstore_tls=True, cstore_tls_cert_file=pki.client_cert)


def test_unloadable_certificate_fails_at_start(settings: NodeSettings, pki: Pki) -> None:
    # the key is not the certificate's
    settings = _with(settings, tls_cert_file=pki.server_cert, tls_key_file=pki.client_key)
    server = StorageSCP(settings, Spool(settings.spool_dir), Metrics())
    with pytest.raises(ConfigError, match="cannot load TLS certificate"):
        server.start()
    server.stop()


def test_tls12_cbc_suites_are_not_offered(tls_scp: StorageSCP, pki: Pki) -> None:
    """RFC 9325: a TLS 1.2 client that offers only CBC suites gets no handshake."""
    ctx = _client_context(pki, pki.client_cert, pki.client_key)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA")
    assert not _echo_ok(tls_scp.port, ctx)
    good = _client_context(pki, pki.client_cert, pki.client_key)
    good.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _echo_ok(tls_scp.port, good)


def _rules_destination(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\n"
        f"destinations:\n  research: {body}\n"
        "rules:\n  - {name: all, match: {}, checkpoints: [default-cxr], "
        "destinations: [research]}\n"
        "fallback: {checkpoints: []}\n"
    )
    return path


def test_a_routing_rules_destination_sends_over_tls_like_the_default_one(
    settings: NodeSettings, pki: Pki, tls_destination: TlsDestination, ct_path: Path, tmp_path: Path
) -> None:
    from dicom_node.rules_file import load_rules

    port = tls_destination.port
    secure = load_rules(
        _rules_destination(
            tmp_path,
            f"{{type: cstore, host: 127.0.0.1, port: {port}, ae_title: ORTHANC, tls: true, "
            f"tls_ca_file: {pki.ca}, tls_cert_file: {pki.client_cert}, "
            f"tls_key_file: {pki.client_key}, tls_server_name: localhost}}",
        )
    )
    secure.senders(settings)["research"].send([ct_path])
    assert tls_destination.received == [str(dcmread(ct_path).SOPInstanceUID)]
    plain = load_rules(
        _rules_destination(
            tmp_path, f"{{type: cstore, host: 127.0.0.1, port: {port}, ae_title: ORTHANC}}"
        )
    )
    with pytest.raises(SendError):
        plain.senders(_with(settings, dimse_timeout_seconds=3))["research"].send([ct_path])
    assert len(tls_destination.received) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("tls_ca_file: /x.pem", "needs tls: true"),
        ("tls: yes please", "tls must be true or false"),
        ("tls: true, tls_cert_file: /c.pem", "tls_cert_file and tls_key_file go together"),
    ],
)
def test_routing_rules_tls_keys_are_validated(tmp_path: Path, extra: str, message: str) -> None:
    from dicom_node.rules import RulesError
    from dicom_node.rules_file import load_rules

    path = _rules_destination(
        tmp_path, f"{{type: cstore, host: 127.0.0.1, port: 104, ae_title: PACS, {extra}}}"
    )
    with pytest.raises(RulesError, match=message):
        load_rules(path)


def test_tls_through_scp_processes(
    kit, settings: NodeSettings, pki: Pki, ct_path: Path, tmp_path: Path
) -> None:
    """``scp_processes=2``: each SCP process loads the certificates and checks clients."""
    from dicom_node.scp_pool import ScpPool

    settings = _with(
        settings,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_ca_file=pki.ca,
        scp_processes=2,
    )
    pool = ScpPool(settings, Metrics())
    pool.start()
    try:
        trusted = _client_context(pki, pki.client_cert, pki.client_key)
        for _ in range(4):  # new connections each, spread over both processes by the kernel
            path = kit.new_instance(ct_path, None, tmp_path / "in")
            assoc = _tls_associate(pool.port, trusted)
            assert assoc.is_established
            status = assoc.send_c_store(path)
            assoc.release()
            assert int(status.Status) == 0
        rogue = _client_context(pki, pki.rogue_client_cert, pki.rogue_client_key)
        assert not _tls_associate(pool.port, rogue).is_established
        assert not _tls_associate(pool.port, None).is_established  # plain DICOM on TLS port
    finally:
        pool.stop()
    assert len(list(settings.spool_dir.rglob("*.dcm"))) == 4
