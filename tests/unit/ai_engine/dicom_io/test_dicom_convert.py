from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from ai_engine.dicom_io.convert import png_to_dicom, save
from ai_engine.errors import UnsupportedInputError

LOSSLESS = [ExplicitVRLittleEndian, JPEGLSLossless, JPEG2000Lossless, RLELossless]


def _displayed(ds: pydicom.Dataset) -> np.ndarray:
    """The stored pixels in the MONOCHROME2 sense, as ints."""
    arr = ds.pixel_array.astype(np.int64)
    return 255 - arr if ds.PhotometricInterpretation == "MONOCHROME1" else arr


@pytest.mark.parametrize("modality", ["DX", "CR"])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("transfer_syntax", [*LOSSLESS, JPEGBaseline8Bit])
def test_png_to_dicom_is_valid_and_keeps_pixels(
    synthetic_png, tmp_path, dciodvfy, strict_pydicom, modality, photometric, transfer_syntax
):
    png_path, png = synthetic_png
    ds = png_to_dicom(
        png_path,
        modality=modality,
        patient_id="TEST-001",
        patient_age="006Y",
        patient_sex="F",
        photometric=photometric,
        transfer_syntax=transfer_syntax,
    )
    out = save(ds, tmp_path / "out.dcm")
    dciodvfy(out)

    back = pydicom.dcmread(out)
    assert back.file_meta.TransferSyntaxUID == transfer_syntax
    assert back.SOPClassUID == (
        DigitalXRayImageStorageForPresentation
        if modality == "DX"
        else ComputedRadiographyImageStorage
    )
    assert back.Modality == modality
    assert (back.BitsAllocated, back.BitsStored, back.SamplesPerPixel) == (8, 8, 1)
    assert back.PhotometricInterpretation == photometric
    pixels = _displayed(back)
    if transfer_syntax == JPEGBaseline8Bit:
        assert back.LossyImageCompression == "01"
        assert np.abs(pixels - png).mean() < 2.0
    else:
        np.testing.assert_array_equal(pixels, png)


def test_only_given_identifiers_and_new_uids(synthetic_png):
    png_path, _ = synthetic_png
    a = png_to_dicom(png_path, patient_id="P1")
    b = png_to_dicom(png_path, patient_id="P1", study_instance_uid=a.StudyInstanceUID)
    assert a.PatientID == "P1"
    assert a.PatientName == ""
    assert a.PatientBirthDate == ""
    assert "PatientAge" not in a
    assert "InstitutionName" not in a
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert a.SeriesInstanceUID != b.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    assert a.ViewPosition == "AP"
    assert a.BodyPartExamined == "CHEST"


def test_rejects_colour_png(tmp_path):
    path = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    with pytest.raises(UnsupportedInputError, match="greyscale"):
        png_to_dicom(path, patient_id="P1")


def test_rejects_a_file_that_is_not_a_png(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"not a png at all")
    with pytest.raises(UnsupportedInputError, match=r"x\.png"):
        png_to_dicom(path, patient_id="P1")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"modality": "MR"}, "modality"),
        ({"photometric": "RGB"}, "photometric"),
        ({"transfer_syntax": "1.2.840.10008.1.2.4.51"}, "not supported"),
        ({"patient_age": "6"}, "patient_age"),
        ({"patient_sex": "X"}, "patient_sex"),
        ({"body_part": "ELBOWX"}, "body_part"),
        ({"view_position": "XX"}, "view_position"),
    ],
)
def test_rejects_invalid_arguments(synthetic_png, kwargs, match):
    png_path, _ = synthetic_png
    with pytest.raises(ValueError, match=match):
        png_to_dicom(png_path, patient_id="P1", **kwargs)


@pytest.mark.data
@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, JPEG2000Lossless])
def test_kermany_png_to_dx(kermany_png, tmp_path, dciodvfy, transfer_syntax):
    png = np.asarray(Image.open(kermany_png))
    ds = png_to_dicom(
        kermany_png,
        patient_id="KERMANY-1",
        patient_age="003Y",
        patient_sex="M",
        transfer_syntax=transfer_syntax,
    )
    out = save(ds, tmp_path / "kermany.dcm")
    dciodvfy(out)
    back = pydicom.dcmread(out)
    assert (back.Rows, back.Columns) == png.shape
    np.testing.assert_array_equal(back.pixel_array, png)


def test_save_requires_file_meta(tmp_path):
    with pytest.raises(ValueError, match="file_meta"):
        save(pydicom.Dataset(), tmp_path / "x.dcm")


def test_committed_mr_sample_is_one_valid_volume_series(dciodvfy):
    """tests/data/dicom/lgg_flair_mr (made by pngs_to_mr_series): MR Image Storage, one series
    and frame of reference, the assumed geometry, read back as one volume in slice order."""
    from pathlib import Path

    from ai_engine.anatomy.brain import assumed_spacing
    from ai_engine.dicom_io.volume import read_series

    folder = Path(__file__).resolve().parents[3] / "data" / "dicom" / "lgg_flair_mr"
    paths = sorted(folder.glob("*.dcm"))
    assert 20 <= len(paths) <= 30
    assert sum(p.stat().st_size for p in paths) <= 3_000_000
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    assert {h.SOPClassUID for h in headers} == {"1.2.840.10008.5.1.4.1.1.4"}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({h.get(keyword) for h in headers}) == 1
    spacing = assumed_spacing(len(paths))
    for k, h in enumerate(headers):  # file names follow the manifest's slice order
        assert [float(v) for v in h.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert float(h.ImagePositionPatient[2]) == pytest.approx(k * spacing[0], abs=1e-3)
        assert [float(v) for v in h.PixelSpacing] == pytest.approx(spacing[1:])
        assert float(h.SliceThickness) == float(h.SpacingBetweenSlices)
    dciodvfy(paths[len(paths) // 2])
    volume = read_series(list(reversed(paths)))
    assert volume.spacing == pytest.approx(spacing, abs=1e-3)
    assert [str(p) for p in volume.paths] == [str(p) for p in paths]
    png = np.asarray(pydicom.dcmread(paths[0]).pixel_array)
    assert png.max() <= 255
    np.testing.assert_allclose(volume.pixels[0], png / 255.0, atol=1e-6)


def test_pngs_to_mr_series_refuses_bad_arguments(png_factory):
    from pydicom.uid import generate_uid

    from ai_engine.dicom_io.convert import pngs_to_mr_series

    a, _ = png_factory("a.png")
    b, _ = png_factory("b.png", rows=32)
    uids = dict(
        study_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
        frame_of_reference_uid=generate_uid(),
    )
    with pytest.raises(ValueError, match="differ in size"):
        pngs_to_mr_series(
            [a, b], (5, 1, 1), patient_id="X", sop_instance_uids=["1.2", "1.3"], **uids
        )
    with pytest.raises(ValueError, match="one SOPInstanceUID per slice"):
        pngs_to_mr_series([a], (5, 1, 1), patient_id="X", sop_instance_uids=[], **uids)
    with pytest.raises(ValueError, match="positive"):
        pngs_to_mr_series([a], (0, 1, 1), patient_id="X", sop_instance_uids=["1.2"], **uids)
