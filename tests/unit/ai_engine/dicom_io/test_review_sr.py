"""The reader's review SR: dciodvfy-valid, parsed back, versions chained, refuses bad input."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from ai_engine.dicom_io import markers
from ai_engine.dicom_io.convert import save
from ai_engine.dicom_io.reader import read_header
from ai_engine.dicom_io.sr_writer import (
    REVIEW_SERIES_NUMBER,
    read_review_sr,
    read_sr_scores,
    write_review_sr,
    write_sr,
)
from ai_engine.types import AlgorithmInfo, ImageResult, StudyResult

REPO = Path(__file__).resolve().parents[4]
REPO_SAMPLE = "tests/data/dicom/kermany_normal_mono2/kermany_normal_mono2.dcm"
ALGORITHM = AlgorithmInfo(
    model_id="reversed_ae", name="default-cxr", version="0.5.0", weights_sha256="ab12" * 16
)


@pytest.fixture
def ai_sr(tmp_path) -> pydicom.Dataset:
    """The node's SR of a real committed sample (written by write_sr), read back from disk."""
    source = read_header(REPO / REPO_SAMPLE)
    image = ImageResult(
        str(source.SOPInstanceUID), str(source.SeriesInstanceUID), 0.02, 0.05, False, 40.0
    )
    study = StudyResult(str(source.StudyInstanceUID), ALGORITHM, (image,), 0.02, False)
    return pydicom.dcmread(save(write_sr([source], study), tmp_path / "ai.dcm"))


def test_review_round_trip_and_dciodvfy(ai_sr, tmp_path, dciodvfy, strict_pydicom) -> None:
    review = write_review_sr(ai_sr, "agree", "Dr Reader", comment="clear lungs\nno effusion")
    path = save(review, tmp_path / "review.dcm")
    assert "ComprehensiveSR" in dciodvfy(path)
    back = pydicom.dcmread(path)
    assert back.SeriesNumber == REVIEW_SERIES_NUMBER
    assert back.Manufacturer == markers.OUTPUT_MANUFACTURER
    assert markers.is_own_output(back.Manufacturer, back.SOPClassUID)
    assert back.StudyInstanceUID == ai_sr.StudyInstanceUID
    assert back.PatientID == ai_sr.PatientID
    assert back.SeriesDescription.startswith("RESEARCH USE ONLY: AI anomaly review")
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0]
    refs = [
        r.ReferencedSOPInstanceUID
        for s in evidence.ReferencedSeriesSequence
        for r in s.ReferencedSOPSequence
    ]
    assert refs == [ai_sr.SOPInstanceUID]
    parsed = read_review_sr(back)
    assert parsed == {
        "judgement": "agree",
        "reader": "Dr Reader",
        "comment": "clear lungs\nno effusion",
        "judged_sr_uid": ai_sr.SOPInstanceUID,
        "predecessors": [],
    }
    # the anomaly SR parser does not mistake a review for scores
    assert read_sr_scores(back)["images"] == {}
    with pytest.raises(ValueError, match="review"):
        read_review_sr(ai_sr)


def test_changed_judgement_references_the_earlier_version(ai_sr, tmp_path, dciodvfy) -> None:
    first = write_review_sr(ai_sr, "agree", "Dr Reader")
    second = write_review_sr(
        ai_sr,
        "missed_finding",
        "Dr Reader",
        previous=[first],
        series_instance_uid=first.SeriesInstanceUID,
        instance_number=2,
    )
    path = save(second, tmp_path / "v2.dcm")
    assert "ComprehensiveSR" in dciodvfy(path)
    parsed = read_review_sr(pydicom.dcmread(path))
    assert parsed["judgement"] == "missed_finding"
    assert parsed["comment"] is None
    assert parsed["predecessors"] == [first.SOPInstanceUID]


@pytest.mark.parametrize(
    ("judgement", "reader", "message"),
    [("maybe", "Dr Reader", "unknown judgement"), ("agree", "  ", "reader")],
)
def test_refuses_bad_input(ai_sr, judgement, reader, message) -> None:
    with pytest.raises(ValueError, match=message):
        write_review_sr(ai_sr, judgement, reader)
