"""Tolerant read, strict write (issue 21): sources with legal or common header values that
strict writers refuse, or with arbitrary structures, still give valid results that carry
only the allow-listed source attributes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ai_engine.dicom_io._common import (
    SOURCE_ALLOW_LIST,
    prepare_source,
    sanitise_date,
    sanitise_sex,
    sanitise_time,
)
from ai_engine.dicom_io.convert import save
from ai_engine.dicom_io.reader import read_image
from ai_engine.dicom_io.seg_writer import write_binary_seg
from ai_engine.dicom_io.sr_writer import read_sr_scores, write_sr
from ai_engine.types import AlgorithmInfo, ImageResult, StudyResult

CXR = (
    Path(__file__).resolve().parents[3]
    / "data"
    / "dicom"
    / "kermany_normal_mono2"
    / "kermany_normal_mono2.dcm"
)
ALGORITHM = AlgorithmInfo(
    model_id="reversed_ae", name="default-cxr", version="1.0.0", weights_sha256="ab" * 32
)


def _nested(depth: int) -> Sequence:
    inner = Dataset()
    inner.CodeValue = "1"
    for _ in range(depth - 1):
        outer = Dataset()
        outer.ProcedureCodeSequence = Sequence([inner])
        inner = outer
    return Sequence([inner])


def _max_depth(ds: Dataset) -> int:
    deepest, stack = 0, [(ds, 0)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        for elem in current:
            if elem.VR == "SQ":
                stack.extend((item, depth + 1) for item in elem.value)
    return deepest


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    ds = pydicom.dcmread(CXR)
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 149"]
    ds.StudyTime = "10:30:00"
    del ds.Modality
    ds.PatientBirthDate = "1961-07-04"
    ds.PatientSex = "Female"
    ds.ProcedureCodeSequence = _nested(100)
    ds.add_new(0x00091010, "LO", "private")
    ds.AccessionNumber = "A" * 20  # SH allows 16
    ds.PatientWeight = "72.1234567890123456"  # DS allows 16 characters
    path = tmp_path / "hostile.dcm"
    ds.save_as(path)
    return path


def test_sanitisers() -> None:
    assert sanitise_date("1961-07-04") == "19610704"
    assert sanitise_date("19610704") == "19610704"
    assert sanitise_date("July 4th") == ""
    assert sanitise_time("10:30:00") == "103000"
    assert sanitise_time("103000.25") == "103000.25"
    assert sanitise_time("25:00") == ""
    assert sanitise_sex("Female") == "F"
    assert sanitise_sex("m") == "M"
    assert sanitise_sex("unknown") == ""


def test_prepared_source_holds_only_allow_listed_attributes(hostile: Path) -> None:
    prepared = prepare_source(read_image(hostile).dataset)
    keywords = {elem.keyword for elem in prepared}
    assert keywords <= SOURCE_ALLOW_LIST | {"SpecificCharacterSet"}
    assert "ProcedureCodeSequence" not in prepared
    assert 0x00091010 not in prepared
    assert prepared.PatientBirthDate == "19610704"
    assert prepared.StudyTime == "103000"
    assert prepared.PatientSex == "F"
    assert prepared.Modality == "OT"
    assert prepared.SpecificCharacterSet == "ISO_IR 192"
    assert prepared.AccessionNumber in (None, "")  # Type 2: emptied
    assert "PatientWeight" not in prepared  # Type 3: removed


def test_results_of_a_hostile_source_are_valid_and_carry_no_source_structures(
    hostile: Path, tmp_path: Path, dciodvfy
) -> None:
    image = read_image(hostile)
    source = prepare_source(image.dataset)
    mask = np.zeros((source.Rows, source.Columns), dtype=bool)
    mask[10:20, 10:20] = True
    seg = write_binary_seg(source, [("Anomaly > p99 healthy", mask)], ALGORITHM)
    result = ImageResult(
        str(source.SOPInstanceUID), str(source.SeriesInstanceUID), 0.7, 0.5, True, 99.0
    )
    study = StudyResult(str(source.StudyInstanceUID), ALGORITHM, (result,), 0.7, True)
    sr = write_sr([source], study)
    for name, ds in (("seg", seg), ("sr", sr)):
        path = save(ds, tmp_path / f"{name}.dcm")
        dciodvfy(path)
        back = pydicom.dcmread(path)
        assert "ProcedureCodeSequence" not in back
        assert _max_depth(back) <= 8
        assert back.PatientBirthDate == "19610704"
    assert read_sr_scores(sr)["images"][str(source.SOPInstanceUID)]["score"] == pytest.approx(0.7)
