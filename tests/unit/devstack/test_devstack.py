"""Unit tests of the development stack's pieces (no Orthanc, no network)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence

from ai_engine.dicom_io.sr_writer import read_sr_scores
from devstack import demo, processes
from devstack.demo import SampleStudy, summary_line
from devstack.orthanc import DicomPeer, render_orthanc_config
from devstack.processes import ManagedProcess
from dicom_node.credentials import load_or_create_secrets
from dicom_node.errors import ConfigError
from dicom_node.index import StudyScore


def test_secrets_are_private_and_stable(tmp_path: Path) -> None:
    first = load_or_create_secrets(tmp_path)
    path = tmp_path / "secrets.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(first.orthanc_password) >= 24
    assert load_or_create_secrets(tmp_path) == first


def test_secrets_missing_keys_are_added(tmp_path: Path) -> None:
    (tmp_path / "secrets.json").write_text(
        json.dumps({"orthanc_user": "u", "orthanc_password": "p", "api_token": "t"})
    )
    got = load_or_create_secrets(tmp_path)
    assert (got.orthanc_user, got.orthanc_password, got.api_token) == ("u", "p", "t")
    assert got.viewer_password
    assert json.loads((tmp_path / "secrets.json").read_text())["viewer_password"]


def test_broken_secrets_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "secrets.json").write_text("{not json")
    with pytest.raises(ConfigError, match="delete it"):
        load_or_create_secrets(tmp_path)


def _config(**kw: object) -> dict:
    args: dict = {
        "storage_dir": Path("/x/db"),
        "http_port": 8042,
        "dicom_port": 4242,
        "users": {"u": "p"},
        "node": DicomPeer("ainode", "AINODE", "127.0.0.1", 11112),
        "scanners": [DicomPeer("scanner", "SAMPLESCU")],
        "stable_age": 2,
    }
    args.update(kw)
    return render_orthanc_config(**args)


def test_config_is_locked_down() -> None:
    cfg = _config()
    assert cfg["RemoteAccessAllowed"] is False
    assert cfg["AuthenticationEnabled"] is True
    assert cfg["RegisteredUsers"] == {"u": "p"}
    assert cfg["DicomAlwaysAllowStore"] is False
    assert cfg["DicomCheckModalityHost"] is True
    assert cfg["DicomCheckCalledAet"] is True
    assert cfg["StableAge"] == 2
    assert cfg["DicomWeb"]["Enable"] is True
    assert cfg["PythonScript"].endswith("orthanc/route_stable_studies.py")
    assert cfg["AiNodeRouting"]["TargetModality"] == "ainode"
    assert cfg["DicomModalities"]["ainode"]["AllowStore"] is False  # results come by STOW-RS
    assert cfg["DicomModalities"]["scanner"]["AllowStore"] is True
    assert not any(k.startswith("_comment") for k in cfg)
    assert all(Path(p).exists() for p in cfg["Plugins"]) or not Path("/usr/sbin/Orthanc").exists()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"stable_age": 0}, "stable_age"),
        ({"users": {}}, "user"),
        ({"scanners": [DicomPeer("ainode", "X")]}, "unique"),
    ],
)
def test_config_rejects_bad_values(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _config(**kw)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    ds = Dataset()
    if len(value) > 16:  # SH limit: highdicom writes LongCodeValue
        ds.LongCodeValue = value
    else:
        ds.CodeValue = value
    ds.CodingSchemeDesignator, ds.CodeMeaning = scheme, meaning
    return ds


def _item(value_type: str, concept: Dataset, **attrs: object) -> Dataset:
    ds = Dataset()
    ds.ValueType = value_type
    ds.ConceptNameCodeSequence = Sequence([concept])
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _num(code: str, value: float) -> Dataset:
    measured = Dataset()
    measured.NumericValue = value
    return _item("NUM", _code(code, "99AINODE", code), MeasuredValueSequence=Sequence([measured]))


def _group(tracking: str, score: float, threshold: float, abnormal: bool) -> Dataset:
    status = (
        _code("263654008", "SCT", "Abnormal") if abnormal else _code("17621005", "SCT", "Normal")
    )
    return _item(
        "CONTAINER",
        _code("125007", "DCM", "Measurement Group"),
        ContentSequence=Sequence(
            [
                _item("TEXT", _code("112039", "DCM", "Tracking Identifier"), TextValue=tracking),
                _num("ANOMALY_SCORE", score),
                _num("ANOMALY_THRESHOLD", threshold),
                _item(
                    "CODE",
                    _code("ANOMALY_STATUS", "99AINODE", "Anomaly status"),
                    ConceptCodeSequence=Sequence([status]),
                ),
            ]
        ),
    )


def test_sr_scores_and_summary() -> None:
    measurements = _item(
        "CONTAINER",
        _code("126010", "DCM", "Imaging Measurements"),
        ContentSequence=Sequence(
            [_group("anomaly 1.2.3", 0.5, 0.25, True), _group("anomaly study", 0.5, 0.25, True)]
        ),
    )
    sr = Dataset()
    sr.ConceptNameCodeSequence = Sequence([_code("126000", "DCM", "Imaging Measurement Report")])
    sr.ContentSequence = Sequence([measurements])
    scores = read_sr_scores(sr)  # the product's SR reader reads the node's group layout
    assert scores["images"]["1.2.3"]["score"] == pytest.approx(0.5)
    assert scores["study"]["status"] == "Abnormal"
    assert scores["study"]["threshold"] == pytest.approx(0.25)
    study = SampleStudy("demo", (), "1.2.3.4.5.6.7.8.9.10.11", "d", "abnormal")
    row = StudyScore(study.study_uid, "default-cxr", "1", 0.5, True, 0.25, datetime.now(UTC), "job")
    line = summary_line(study, row, 12.3)
    assert "ABNORMAL" in line
    assert "score 0.5" in line
    assert "12.3 s" in line


def test_parse_peer() -> None:
    peer = demo._parse_peer("CT1@10.0.0.5:104")
    assert (peer.aet, peer.host, peer.port) == ("CT1", "10.0.0.5", 104)
    with pytest.raises(argparse.ArgumentTypeError):
        demo._parse_peer("nohost")


def test_managed_process_stops_its_whole_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time; "
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(60)"
    )
    proc = ManagedProcess("sleeper", [sys.executable, "-c", script], tmp_path / "log.txt")
    with proc:
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child):
        assert time.monotonic() < deadline, "the grandchild survived the group kill"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_loopback_detection_matches_interfaces() -> None:
    assert processes.loopback_only_namespace() == (processes.network_interfaces() == ["lo"])


def test_discover_samples_reads_the_committed_studies() -> None:
    studies = demo.discover_samples()
    names = {s.name for s in studies}
    assert {"kermany_normal_mono2", "kermany_pneumonia_jpeg", "original_rg1_cr"} <= names
    rg1 = next(s for s in studies if s.name == "original_rg1_cr")
    assert len(rg1.files) == 2
    assert next(s for s in studies if s.name == "kermany_normal_mono1").label == "normal"
