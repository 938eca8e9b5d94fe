from __future__ import annotations

import math

import highdicom as hd
import pydicom
import pytest

from ai_engine.dicom_io import markers
from ai_engine.dicom_io.convert import png_to_dicom, save
from ai_engine.dicom_io.reader import read_header
from ai_engine.dicom_io.sr_writer import read_sr_scores, write_sr
from ai_engine.types import AlgorithmInfo, ImageResult, StudyResult

ALGORITHM = AlgorithmInfo(
    model_id="conv_ae", name="default-cxr", version="1.2.3", weights_sha256="cd34" * 16
)
REASON = "ViewPosition LL not in (AP, PA)"


@pytest.fixture
def sources(synthetic_png, tmp_path) -> list[pydicom.Dataset]:
    """Three source headers of one study, as the pipeline reads them (read_header)."""
    png_path, _ = synthetic_png
    first = png_to_dicom(png_path, patient_id="SR-TEST")
    others = [
        png_to_dicom(
            png_path,
            patient_id="SR-TEST",
            study_instance_uid=first.StudyInstanceUID,
            view_position=view,
            instance_number=n,
        )
        for n, view in ((2, "PA"), (3, "LL"))
    ]
    return [read_header(save(ds, tmp_path / f"{i}.dcm")) for i, ds in enumerate([first, *others])]


def _image(src: pydicom.Dataset, score: float | None, percentile: float | None = 50.0):
    if score is None:
        return ImageResult(
            str(src.SOPInstanceUID), str(src.SeriesInstanceUID), None, None, None, None, REASON
        )
    return ImageResult(
        str(src.SOPInstanceUID),
        str(src.SeriesInstanceUID),
        score,
        0.5,
        score >= 0.5,
        percentile,
    )


def _study(sources, images) -> StudyResult:
    scores = [i.score for i in images if i.score is not None]
    top = max(scores, default=None)
    return StudyResult(
        str(sources[0].StudyInstanceUID),
        ALGORITHM,
        tuple(images),
        top,
        None if top is None else top >= 0.5,
    )


def test_sr_round_trip(sources, tmp_path, dciodvfy, strict_pydicom):
    images = [
        _image(sources[0], 0.81, 99.0),
        _image(sources[1], 0.2, 40.0),
        _image(sources[2], None),
    ]
    study = _study(sources, images)
    sr = write_sr(sources, study)
    path = save(sr, tmp_path / "sr.dcm")
    output = dciodvfy(path)
    assert "ComprehensiveSR" in output

    back = pydicom.dcmread(path)
    assert back.Modality == "SR"
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert back.Manufacturer == markers.OUTPUT_MANUFACTURER
    assert back.ManufacturerModelName == ALGORITHM.name
    assert back.SoftwareVersions == ALGORITHM.version
    assert back.SeriesDescription == "RESEARCH USE ONLY: AI anomaly report (not for clinical use)"
    assert back.SeriesNumber == 9003
    assert markers.is_own_output(back.Manufacturer, back.SOPClassUID)
    assert back.StudyInstanceUID == sources[0].StudyInstanceUID
    assert back.ConceptNameCodeSequence[0].CodeValue == "126000"
    evidence = {
        item.ReferencedSOPInstanceUID
        for series in back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {s.SOPInstanceUID for s in sources}

    scores = read_sr_scores(back)
    assert scores["study"] == {"score": 0.81, "threshold": 0.5, "status": "Abnormal"}
    assert scores["algorithm"] == {"name": ALGORITHM.name, "version": ALGORITHM.version}
    by_uid = scores["images"]
    assert set(by_uid) == {s.SOPInstanceUID for s in sources}
    assert by_uid[sources[0].SOPInstanceUID] == {
        "score": 0.81,
        "threshold": 0.5,
        "healthy_percentile": 99.0,
        "status": "Abnormal",
        "reason": None,
    }
    assert by_uid[sources[1].SOPInstanceUID]["status"] == "Normal"
    assert by_uid[sources[2].SOPInstanceUID] == {
        "score": None,
        "threshold": None,
        "healthy_percentile": None,
        "status": "Not analysed",
        "reason": REASON,
    }

    # highdicom reads it as a TID 1500 report with one TID 1501 group per image + the study
    report = hd.sr.srread(path)
    groups = report.content.get_image_measurement_groups()
    assert len(groups) == 4
    identifiers = [g.tracking_identifier for g in groups]
    assert identifiers == [f"anomaly {s.SOPInstanceUID}" for s in sources] + ["anomaly study"]
    first = groups[0]
    assert first.source_images[0].referenced_sop_instance_uid == sources[0].SOPInstanceUID
    texts = [
        (item.ConceptNameCodeSequence[0].CodeMeaning, item.TextValue)
        for item in first[0].ContentSequence
        if item.ValueType == "TEXT"
    ]
    assert ("Algorithm Name", ALGORITHM.name) in texts
    assert ("Algorithm Version", ALGORITHM.version) in texts
    assert ("Algorithm Parameters", f"weights_sha256={ALGORITHM.weights_sha256}") in texts
    assert ("Algorithm Parameters", f"model_id={ALGORITHM.model_id}") in texts
    score = first.get_measurements(name=hd.sr.CodedConcept("ANOMALY_SCORE", "99AINODE", "x"))
    assert score[0].value == pytest.approx(0.81)
    assert score[0].unit.value == "{score}"
    # the status is the standard Finding (121071, DCM), no longer a private concept
    assert first.finding_type.value == "263654008"
    assert first.get_qualitative_evaluations() == []


def test_content_holds_the_whole_tree(sources):
    """write_sr attaches the TID 1500 tree after highdicom's constructor (it is cheaper):
    ``sr.content`` and the dataset must both hold it, as the constructor would have made them."""
    images = [_image(sources[0], 0.81, 99.0), _image(sources[1], 0.2), _image(sources[2], None)]
    sr = write_sr(sources, _study(sources, images))
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    [root] = sr.content
    assert root.name == hd.sr.CodedConcept("126000", "DCM", "Imaging Measurement Report")
    assert list(root.ContentSequence) == list(sr.ContentSequence)
    report = hd.sr.MeasurementReport.from_sequence(sr.content)
    groups = report.get_image_measurement_groups()
    assert [g.tracking_identifier for g in groups] == [
        *(f"anomaly {s.SOPInstanceUID}" for s in sources),
        "anomaly study",
    ]
    assert groups[0].source_images[0].referenced_sop_instance_uid == sources[0].SOPInstanceUID


def test_nan_percentile_is_left_out(sources):
    images = [_image(sources[0], 0.3, math.nan)]
    scores = read_sr_scores(write_sr(sources[:1], _study(sources, images)))
    image = scores["images"][sources[0].SOPInstanceUID]
    assert image["healthy_percentile"] is None
    assert image["score"] == pytest.approx(0.3)
    assert scores["study"]["status"] == "Normal"


def test_nothing_analysed(sources, tmp_path, dciodvfy):
    images = [_image(s, None) for s in sources]
    sr = write_sr(sources, _study(sources, images))
    dciodvfy(save(sr, tmp_path / "sr.dcm"))
    scores = read_sr_scores(sr)
    assert scores["study"] == {"score": None, "threshold": None, "status": "Not analysed"}
    assert all(i["status"] == "Not analysed" for i in scores["images"].values())


def test_given_series_uid(sources):
    series = pydicom.uid.generate_uid()
    sr = write_sr(sources, _study(sources, [_image(sources[0], 0.1)]), series_instance_uid=series)
    assert sr.SeriesInstanceUID == series


def test_rejects_bad_input(sources, synthetic_png, tmp_path):
    study = _study(sources, [_image(s, 0.1) for s in sources])
    with pytest.raises(ValueError, match="at least one source"):
        write_sr([], study)
    with pytest.raises(ValueError, match="no source header"):
        write_sr(sources[:1], study)
    png_path, _ = synthetic_png
    stranger = read_header(save(png_to_dicom(png_path, patient_id="X"), tmp_path / "x.dcm"))
    with pytest.raises(ValueError, match="other studies"):
        write_sr([*sources, stranger], study)


def test_read_sr_scores_rejects_other_objects(sources):
    with pytest.raises(ValueError, match="Imaging Measurement Report"):
        read_sr_scores(sources[0])


@pytest.mark.data
@pytest.mark.parametrize(
    "name",
    ["RG1_UNCR.dcm", "nih_cxr14_nofinding_sc_dx.dcm", "siim_acr_ptx_negative_cr_jpeg.dcm"],
)
def test_sr_of_real_samples_is_valid(dicom_samples, tmp_path, dciodvfy, name):
    source = read_header(dicom_samples / name)
    study = _study([source], [_image(source, 0.7, 88.0)])
    path = save(write_sr([source], study), tmp_path / "sr.dcm")
    dciodvfy(path)
    assert read_sr_scores(pydicom.dcmread(path))["images"][source.SOPInstanceUID]["score"] == 0.7
