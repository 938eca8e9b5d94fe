"""NodeSettings: environment names, secure defaults, fail-fast validation, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.__main__ import main
from dicom_node.config import NodeSettings, load_settings
from dicom_node.errors import ConfigError


def test_secure_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("DICOM_NODE_"):
            monkeypatch.delenv(key)
    s = load_settings()
    assert s.ae_title == "AINODE"
    assert s.host == "127.0.0.1"
    assert s.port == 11112
    assert s.allowed_calling_aes == ["ORTHANC"]
    assert s.allow_any_calling_ae is False
    assert s.require_called_ae is True
    assert s.http_host == "127.0.0.1"
    assert s.http_port == 8099
    assert s.checkpoints == ["default-cxr", "default-brain"]  # each image to the one made for it
    assert s.calling_ae_allowed("ORTHANC")
    assert not s.calling_ae_allowed("OTHER")


def test_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("DICOM_NODE_AE_TITLE", "MYNODE")
    monkeypatch.setenv("DICOM_NODE_ALLOWED_CALLING_AES", "ORTHANC, CT1")
    monkeypatch.setenv("DICOM_NODE_CHECKPOINTS", '["default-cxr", "default-brain"]')
    monkeypatch.setenv("DICOM_NODE_ORTHANC_USERNAME", "ainode")
    monkeypatch.setenv("DICOM_NODE_ORTHANC_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("DICOM_NODE_STUDY_QUIET_SECONDS", "2.5")
    monkeypatch.setenv("DICOM_NODE_DATA_DIR", str(tmp_path / "d"))
    s = load_settings()
    assert s.ae_title == "MYNODE"
    assert s.allowed_calling_aes == ["ORTHANC", "CT1"]
    assert s.checkpoints == ["default-cxr", "default-brain"]
    assert s.orthanc_password is not None
    assert s.orthanc_password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    assert s.study_quiet_seconds == 2.5
    assert s.spool_dir == tmp_path / "d" / "spool"


def test_empty_allow_list_refuses_unless_any() -> None:
    s = NodeSettings(allowed_calling_aes=[])
    assert not s.calling_ae_allowed("ORTHANC")
    s = NodeSettings(allowed_calling_aes=[], allow_any_calling_ae=True)
    assert s.calling_ae_allowed("ANYONE")


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"ae_title": "THIS_TITLE_IS_TOO_LONG"}, "DICOM_NODE_AE_TITLE"),
        ({"ae_title": "BAD\\AE"}, "invalid AE title"),
        ({"allowed_calling_aes": ["OK", ""]}, "DICOM_NODE_ALLOWED_CALLING_AES"),
        ({"port": 70000}, "DICOM_NODE_PORT"),
        ({"checkpoints": []}, "at least one checkpoint"),
        ({"checkpoints": ["../evil"]}, "invalid checkpoint name"),
        ({"orthanc_url": "ftp://x"}, "not an http(s) URL"),
        ({"study_quiet_seconds": 20, "study_max_wait_seconds": 10}, "study_max_wait_seconds"),
        ({"orthanc_username": "u"}, "go together"),
        ({"orthanc_password_file": "/nonexistent/secret"}, "cannot read secret file"),
        ({"orthanc_token": "t", "orthanc_username": "u", "orthanc_password": "p"}, "not both"),
        ({"unknown_setting": 1}, "unknown_setting"),
    ],
)
def test_invalid_settings_fail_fast(overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match="invalid dicom_node settings") as info:
        load_settings(**overrides)
    assert needle in str(info.value)


def test_serve_with_invalid_settings_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DICOM_NODE_PORT", "not-a-port")
    assert main(["serve"]) == 2
    assert "DICOM_NODE_PORT" in capsys.readouterr().err


def test_demo_forwards_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    seen: list[list[str]] = []
    fake = types.ModuleType("devstack.demo")
    fake.main = lambda argv: seen.append(list(argv)) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "devstack.demo", fake)
    assert main(["demo", "--quiet-seconds", "1"]) == 0
    assert seen == [["--quiet-seconds", "1"]]


def test_node_does_not_import_torch_or_pipeline() -> None:
    import subprocess
    import sys

    code = (
        "import sys, dicom_node.service, dicom_node.__main__;"
        "heavy = ('torch', 'ai_engine.pipeline', 'highdicom', 'monai');"
        "bad = [m for m in heavy if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
