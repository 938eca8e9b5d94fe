"""Colour Secondary Capture with the anomaly map burned in."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ai_engine.dicom_io import markers
from ai_engine.dicom_io.convert import png_to_dicom, save
from ai_engine.dicom_io.reader import read_image
from ai_engine.dicom_io.sc_writer import (
    OVERLAY_LABEL,
    colour_table,
    render_overlay,
    write_overlay_sc,
)
from ai_engine.types import AlgorithmInfo

ALGORITHM = AlgorithmInfo(
    model_id="conv_ae", name="default-cxr", version="1.2.3", weights_sha256="ab12" * 16
)


def _anomaly(rows: int, cols: int) -> np.ndarray:
    amap = np.zeros((rows, cols), np.float32)
    amap[rows // 2 :, cols // 2 :] = np.linspace(0.5, 1.0, cols - cols // 2, dtype=np.float32)
    return amap


@pytest.fixture(params=["ct", "dx", "mr"])
def analysed(request, tmp_path, synthetic_png, ct_small, mr_small):
    """(source header, pixels as read) of a CT slice, a synthetic DX and an MR slice."""
    if request.param == "dx":
        ds = png_to_dicom(synthetic_png[0], patient_id="SC-TEST")
    else:
        ds = ct_small if request.param == "ct" else mr_small
    image = read_image(save(ds, tmp_path / "source.dcm"))
    return image.dataset, image.pixels


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.2126, 0.7152, 0.0722])


def test_overlay_sc_round_trip(analysed, tmp_path, dciodvfy, strict_pydicom):
    source, pixels = analysed
    rows, cols = pixels.shape
    anomaly = _anomaly(rows, cols)
    path = save(write_overlay_sc(source, pixels, anomaly, ALGORITHM), tmp_path / "sc.dcm")
    dciodvfy(path)

    back = pydicom.dcmread(path)
    assert hd.imread(path).SOPInstanceUID == back.SOPInstanceUID  # highdicom reads it
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert markers.is_own_output(back.Manufacturer, back.SOPClassUID)
    assert back.SeriesDescription == "RESEARCH USE ONLY: AI anomaly overlay (not for clinical use)"
    assert back.SeriesNumber == 9005
    assert back.BurnedInAnnotation == "YES"
    assert back.PhotometricInterpretation == "RGB"
    assert (back.ManufacturerModelName, back.SoftwareVersions) == (
        ALGORITHM.name,
        ALGORITHM.version,
    )
    assert ALGORITHM.weights_sha256 in back.DerivationDescription
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    assert back.PatientID == source.PatientID
    ref = back.SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == source.SOPClassUID

    rgb = back.pixel_array
    factor = rgb.shape[1] // cols
    assert rgb.shape == (rows * factor, cols * factor, 3)
    assert rgb.shape[1] >= 384
    np.testing.assert_array_equal(rgb, render_overlay(pixels, anomaly))
    # below the threshold (and away from the label) the image stays grey and unchanged
    grey = rgb[rows * factor // 2 :, : cols * factor // 2]
    assert np.array_equal(grey[..., 0], grey[..., 1])
    assert np.array_equal(grey[..., 1], grey[..., 2])
    expected = np.rint(pixels[rows // 2 :, : cols // 2] * 255)
    np.testing.assert_array_equal(grey[::factor, ::factor, 0], expected)
    # above it the map is coloured
    coloured = rgb[rows * factor // 2 :, cols * factor // 2 :].astype(int)
    assert ((coloured.max(axis=-1) - coloured.min(axis=-1)) > 10).all()


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [
        ("source", ["L", "P"]),  # axial: rows run to the left, columns to posterior
        ([0.7071, 0.7071, 0.0, 0.0, 0.0, -1.0], ["LP", "F"]),  # oblique
        (None, []),  # unknown: empty (Type 2C)
    ],
)
def test_patient_orientation(ct_small, tmp_path, dciodvfy, orientation, expected):
    if orientation is None:
        del ct_small.ImageOrientationPatient
    elif orientation != "source":
        ct_small.ImageOrientationPatient = orientation
    pixels = np.zeros((128, 128), np.float32)
    sc = write_overlay_sc(ct_small, pixels, pixels, ALGORITHM)
    assert list(sc.PatientOrientation or []) == expected
    dciodvfy(save(sc, tmp_path / "sc.dcm"))


def test_label_is_burned_in_with_ascii_substitutes():
    pixels = np.full((64, 64), 0.5, np.float32)
    anomaly = np.zeros((64, 64), np.float32)
    plain = render_overlay(pixels, anomaly, label="")
    labelled = render_overlay(pixels, anomaly)
    corner = labelled[:40, :300]
    assert (corner == 0).all(axis=-1).any()  # the black box
    assert (corner == 255).all(axis=-1).any()  # white text
    assert np.array_equal(labelled[100:], plain[100:])
    # Pillow's default font has no en dash; it is drawn as "-" rather than an empty box
    ascii_label = OVERLAY_LABEL.replace("\u2013", "-")
    assert np.array_equal(labelled, render_overlay(pixels, anomaly, label=ascii_label))


def test_colour_table_is_perceptually_ordered():
    rgb = colour_table(np.linspace(0.0, 1.0, 101))
    assert rgb.shape == (101, 3)
    assert np.all(np.diff(_luminance(rgb)) > 0)  # luminance rises monotonically


def test_wide_images_are_not_enlarged():
    pixels = np.random.default_rng(0).random((40, 500)).astype(np.float32)
    assert render_overlay(pixels, np.zeros_like(pixels)).shape == (40, 500, 3)


@pytest.mark.parametrize(
    ("anomaly", "threshold", "match"),
    [
        (np.zeros((3, 3), np.float32), 0.5, "shape"),
        (np.full((128, 128), 2.0, np.float32), 0.5, r"\[0, 1\]"),
        (np.zeros((128, 128), np.float32), 1.0, "threshold"),
        (np.zeros((128, 128), int), 0.5, "float"),
    ],
)
def test_bad_input_is_refused(ct_small, anomaly, threshold, match):
    pixels = np.zeros((128, 128), np.float32)
    with pytest.raises(ValueError, match=match):
        write_overlay_sc(ct_small, pixels, anomaly, ALGORITHM, threshold_fraction=threshold)
