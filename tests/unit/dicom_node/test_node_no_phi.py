"""No PHI in logs: a full run over the committed sample studies, every log line checked.

The node receives every file under ``tests/data/dicom/`` by real C-STORE (each in its own
transfer syntax), routes, runs a stand-in engine (first failing with an exception whose
message quotes the patient, as a decoding error of a real engine could), re-runs, delivers
to a C-STORE destination; a few malformed requests exercise the failure paths. All log
records of every logger (pynetdicom included) at DEBUG, and the text of a log file written
by a root handler, must not contain any patient name or id found in the sample files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.config import NodeSettings
from dicom_node.service import NodeService

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "dicom"
_IDENTIFYING = ("PatientName", "PatientID", "OtherPatientIDs")


def _identifiers(ds: Dataset) -> set[str]:
    found: set[str] = set()
    for keyword in _IDENTIFYING:
        value = ds.get(keyword)
        if value is None:
            continue
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            text = str(v).strip()
            # short numbers (e.g. OtherPatientIDs 26210) could match a byte count by chance
            if len(text) >= 4 and not (text.isdigit() and len(text) < 6):
                found.add(text)
                # the parts of a person name too (family, given, ...), when distinctive
                found.update(p for p in text.replace("=", "^").split("^") if len(p) >= 4)
    return found


def _sample_files() -> list[Path]:
    return sorted(SAMPLES.rglob("*.dcm"))


class _EverythingFormatter(logging.Formatter):
    """Message, exception text and every attribute of the record (``extra`` included)."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {k: repr(v) for k, v in record.__dict__.items() if k not in ("msg", "args")}
        return base + " " + json.dumps(extras, sort_keys=True)


def _send_as_is(port: int, files: list[Path]) -> list[int]:
    """C-STORE files in their own transfer syntaxes (one association)."""
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    pairs = set()
    for f in files:
        meta = dcmread(f, stop_before_pixels=True).file_meta
        pairs.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    for sop_class, syntax in sorted(pairs):
        ae.add_requested_context(sop_class, syntax)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(f).Status) for f in files]
    finally:
        assoc.release()


def test_full_run_logs_no_patient_names_or_ids(
    kit, settings: NodeSettings, destination, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = _sample_files()
    assert len(files) >= 5
    phi: set[str] = set()
    for f in files:
        phi |= _identifiers(dcmread(f, stop_before_pixels=True))
    assert phi, "the sample files carry patient names/ids to look for"

    log_file = tmp_path / "node.log"
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(_EverythingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    caplog.set_level(logging.DEBUG)
    for name in ("pynetdicom", "dicom_node", "werkzeug", "pydicom"):
        caplog.set_level(logging.DEBUG, logger=name)

    leaky_name = sorted(phi)[0]
    fake = kit.FakeEngine()
    failed: list[bool] = []

    def engine(input_dir: Path, output_dir: Path, checkpoints: list[str]) -> list[dict]:
        # the first run fails with the patient in its message (the node must not log it)
        if not failed:
            failed.append(True)
            raise ValueError(f"cannot decode pixel data of patient {leaky_name}")
        return fake(input_dir, output_dir, checkpoints)

    s = NodeSettings(
        **{
            **settings.model_dump(),
            "destination": "cstore",
            "cstore_port": destination.port,
            "http_port": kit.free_port(),
            "process_max_attempts": 2,
        }
    )
    node = NodeService(s, engine)
    node.start()
    try:
        statuses = _send_as_is(node.scp_port, files)
        assert all(st == 0 for st in statuses), statuses
        # failure paths of the SCP with the same patient data: header without
        # StudyInstanceUID, and an association from an AE that is not allowed
        broken = dcmread(files[0])
        del broken.StudyInstanceUID
        broken.SOPInstanceUID = generate_uid()
        assert kit.send_dataset(node.scp_port, broken) != 0
        assert not kit.associate(node.scp_port, calling="INTRUDER").is_established
        assert node.wait_until_idle(timeout=60)
        assert failed
        studies = {str(dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
        assert len(destination.received) >= len(studies)
    finally:
        node.stop()
        root.removeHandler(handler)
        handler.close()

    texts = [log_file.read_text(encoding="utf-8")]
    for record in caplog.records:
        texts.append(record.getMessage())
        texts.append(repr(record.__dict__))
    assert len(caplog.records) > 20, "the run must have logged"
    everything = "\n".join(texts)
    leaks = sorted(p for p in phi if p in everything)
    assert not leaks, f"patient identifiers found in the logs: {leaks}"
