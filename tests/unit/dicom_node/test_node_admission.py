"""Association admission (issue 21): idle TCP connections cannot lock the SCP out."""

from __future__ import annotations

import socket
import time

from dicom_node.config import NodeSettings
from dicom_node.service import NodeService


def _idle(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_idle_connections_cannot_take_every_slot(settings: NodeSettings, kit) -> None:
    s = NodeSettings(
        **{
            **settings.model_dump(),
            "max_associations": 4,
            "max_associations_per_peer": 100,  # all tests connect from 127.0.0.1
            "reserved_associations": 2,
            "association_request_timeout_seconds": 30,
        }
    )
    node = NodeService(s, kit.FakeEngine())
    node.start()
    idle = [_idle(node.scp_port) for _ in range(6)]
    try:
        time.sleep(0.5)
        # the SCP keeps only max_associations - reserved silent connections (the newest)
        closed = [_closed_by_peer(sock, 2) for sock in idle]
        assert closed == [True, True, True, True, False, False], closed
        # and an allowed AE still associates while the others stay idle
        assoc = kit.associate(node.scp_port)
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == 0
        assoc.release()
    finally:
        for sock in idle:
            sock.close()
        node.stop()


def test_silent_connections_are_closed_after_the_request_timeout(
    settings: NodeSettings, kit
) -> None:
    s = NodeSettings(**{**settings.model_dump(), "association_request_timeout_seconds": 0.5})
    node = NodeService(s, kit.FakeEngine())
    node.start()
    sock = _idle(node.scp_port)
    try:
        assert _closed_by_peer(sock, 10)  # not the 30 s ACSE timeout
    finally:
        sock.close()
        node.stop()


def test_per_peer_limit(settings: NodeSettings, kit) -> None:
    s = NodeSettings(
        **{
            **settings.model_dump(),
            "max_associations_per_peer": 2,
            "association_request_timeout_seconds": 30,
        }
    )
    node = NodeService(s, kit.FakeEngine())
    node.start()
    socks = [_idle(node.scp_port) for _ in range(3)]
    try:
        time.sleep(0.5)
        closed = [_closed_by_peer(sock, 2) for sock in socks]
        assert closed == [False, False, True]
    finally:
        for sock in socks:
            sock.close()
        node.stop()
