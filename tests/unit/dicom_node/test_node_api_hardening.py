"""API and file hardening of issue 21: token by default, Host/Origin on state changes, 0600
files, log lines that a UID cannot forge, error messages without dates or paths."""

from __future__ import annotations

import io
import logging
import stat
from pathlib import Path

import requests
from pydantic import SecretStr

from dicom_node.__main__ import ContextFormatter, with_api_token
from dicom_node.config import NodeSettings
from dicom_node.queue import redact
from dicom_node.service import NodeService

ADMIN = "admin-token-for-tests"


def _post(port: int, path: str, headers: dict[str, str]) -> requests.Response:
    return requests.post(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=5)


def test_state_changes_check_host_and_origin(settings: NodeSettings, kit) -> None:
    s = NodeSettings(
        **{**settings.model_dump(), "http_port": kit.free_port(), "api_admin_token": ADMIN}
    )
    node = NodeService(s, kit.FakeEngine())
    node.start()
    try:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        path = "/studies/1.2.3/process-now"
        # our own origin: allowed through to the route (404: nothing spooled)
        assert _post(node.http_port, path, auth).status_code == 404
        own = f"http://127.0.0.1:{node.http_port}"
        assert _post(node.http_port, path, {**auth, "Origin": own}).status_code == 404
        # a cross-origin form POST, and DNS rebinding (a foreign name in Host)
        evil = {**auth, "Origin": "http://evil.example"}
        assert _post(node.http_port, path, evil).status_code == 403
        rebound = {**auth, "Host": f"evil.example:{node.http_port}"}
        assert _post(node.http_port, path, rebound).status_code == 403
        # reads are not affected
        got = requests.get(f"{own}/jobs", headers=auth, timeout=5)
        assert got.status_code == 200
    finally:
        node.stop()


def test_serve_generates_a_private_token_on_first_run(tmp_path: Path) -> None:
    s = NodeSettings(data_dir=tmp_path / "node")
    assert s.api_token is None
    assert s.api_admin_token is None
    first = with_api_token(s)
    assert first.api_admin_token is not None
    secrets = tmp_path / "node" / "secrets.json"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    again = with_api_token(NodeSettings(data_dir=tmp_path / "node"))
    assert again.api_admin_token == first.api_admin_token  # kept across restarts
    configured = NodeSettings(data_dir=tmp_path / "n2", api_token=SecretStr("x"))
    assert with_api_token(configured) is configured


def test_spooled_instances_are_private(settings: NodeSettings, kit, ct_path, instances_dir) -> None:
    node = NodeService(settings, kit.FakeEngine())
    node.start()
    try:
        path = kit.new_instance(ct_path, out_dir=instances_dir)
        assert kit.send_files(node.scp_port, [path]) == [0]
        [spooled] = list(settings.spool_dir.rglob("*.dcm"))
        assert stat.S_IMODE(spooled.stat().st_mode) == 0o600
        assert stat.S_IMODE(spooled.parent.stat().st_mode) == 0o700
    finally:
        node.stop()


def test_a_uid_with_a_newline_cannot_forge_a_log_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ContextFormatter("%(levelname)s %(message)s"))
    log = logging.getLogger("test.forge")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("x", extra={"sop_uid": "1.2\nCRITICAL forged line"})
    finally:
        log.removeHandler(handler)
    assert stream.getvalue().count("\n") == 1
    assert "\\x0a" in stream.getvalue()


def test_error_messages_lose_dates_and_paths() -> None:
    text = redact("/srv/node/jobs/j/input/1.2.dcm: Unable to convert '1961-07-04' to 'DA'")
    assert "1961" not in text
    assert "/srv" not in text
