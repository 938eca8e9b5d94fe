from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image

from ai_engine.dicom_io import markers
from ai_engine.dicom_io.convert import png_to_dicom, save
from ai_engine.dicom_io.reader import read_image
from ai_engine.dicom_io.seg_writer import (
    region_segmentation_type,
    write_binary_seg,
    write_fractional_seg,
)
from ai_engine.types import AlgorithmInfo

ALGORITHM = AlgorithmInfo(
    model_id="conv_ae", name="default-cxr", version="1.2.3", weights_sha256="ab12" * 16
)
LABELS = ("Anomaly > p99 healthy", "Anomaly > p99.9 healthy", "Anomaly > max healthy")


def _levels(rows: int, cols: int) -> list[tuple[str, np.ndarray]]:
    masks = []
    for i in range(3):
        mask = np.zeros((rows, cols), dtype=bool)
        mask[2 + 3 * i : rows // 2, 5 + 4 * i : cols // 2] = True
        masks.append(mask)
    masks[2][:] = False  # an empty level must survive too
    return list(zip(LABELS, masks, strict=True))


def _probability(rows: int, cols: int) -> np.ndarray:
    return np.random.default_rng(1).random((rows, cols)).astype(np.float32)


@pytest.fixture(
    params=[
        {"modality": "DX"},  # ImagerPixelSpacing only
        {"modality": "CR", "photometric": "MONOCHROME1"},  # no spacing at all
        {"modality": "CR", "imager_pixel_spacing": (0.15, 0.15)},
        {"modality": "CR", "pixel_spacing": (0.14, 0.14)},
    ],
    ids=["dx", "cr-mono1-nospacing", "cr-imager-spacing", "cr-pixel-spacing"],
)
def source(request, synthetic_png, tmp_path) -> pydicom.Dataset:
    """A source image header as the pipeline has it (read_image(...).dataset)."""
    png_path, _ = synthetic_png
    kwargs = dict(request.param)
    pixel_spacing = kwargs.pop("pixel_spacing", None)
    ds = png_to_dicom(png_path, patient_id="SEG-TEST", **kwargs)
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    return read_image(save(ds, tmp_path / "source.dcm")).dataset


def _roundtrip(seg: pydicom.Dataset, path: Path) -> hd.seg.Segmentation:
    save(seg, path)
    return hd.seg.Segmentation.from_dataset(pydicom.dcmread(path))


def _check_provenance(ds: pydicom.Dataset, source: pydicom.Dataset, series_number: int) -> None:
    assert ds.Modality == "SEG"
    assert ds.Manufacturer == markers.OUTPUT_MANUFACTURER
    assert ds.ManufacturerModelName == ALGORITHM.name
    assert ds.SoftwareVersions == ALGORITHM.version
    # "RESEARCH" first, so a series list that cuts the description short still shows it
    assert ds.SeriesDescription.startswith("RESEARCH USE ONLY: AI anomaly ")
    assert ds.SeriesDescription.endswith("(not for clinical use)")
    assert ds.SeriesNumber == series_number
    assert markers.is_own_output(ds.Manufacturer, ds.SOPClassUID)
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.PatientID == source.PatientID
    assert ds.PatientOrientation == source.PatientOrientation
    referenced = ds.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert referenced.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == (
        source.SOPInstanceUID
    )
    declared = [i.CodingSchemeDesignator for i in ds.CodingSchemeIdentificationSequence]
    assert markers.PRIVATE_CODING_SCHEME in declared
    for item in ds.SegmentSequence:
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        # an anomaly region, not a lesion: SNOMED "Abnormal", the counterpart of CID 7159's
        # "Normal"; the description says it is unsupervised and not a diagnosis
        segment_type = item.SegmentedPropertyTypeCodeSequence[0]
        assert (segment_type.CodeValue, segment_type.CodingSchemeDesignator) == (
            "263654008",
            "SCT",
        )
        assert "lesion" not in segment_type.CodeMeaning.lower()
        assert "not a diagnosis" in item.SegmentDescription
        # the SR's region groups carry the same tracking UID (test_sr_writer)
        assert item.TrackingID
        assert pydicom.uid.UID(item.TrackingUID).is_valid
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algo.AlgorithmName == ALGORITHM.name
        assert algo.AlgorithmVersion == ALGORITHM.version
        assert algo.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
        assert ALGORITHM.weights_sha256 in algo.AlgorithmParameters


def test_binary_seg_round_trip(source, tmp_path, dciodvfy, strict_pydicom):
    levels = _levels(source.Rows, source.Columns)
    seg = write_binary_seg(source, levels, ALGORITHM, instance_number=3)
    path = tmp_path / "seg.dcm"
    back = _roundtrip(seg, path)
    dciodvfy(path)

    assert back.SegmentationType == "BINARY"
    assert back.InstanceNumber == 3
    assert [s.SegmentLabel for s in back.SegmentSequence] == list(LABELS)
    _check_provenance(back, source, 9001)
    pixels = back.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], combine_segments=False
    )
    assert pixels.shape == (1, source.Rows, source.Columns, 3)
    for i, (_, mask) in enumerate(levels):
        np.testing.assert_array_equal(pixels[0, :, :, i].astype(bool), mask)
    _check_pixel_measures(back, source)


def _check_pixel_measures(seg: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """The source's own spacing (PixelSpacing, else ImagerPixelSpacing), or no Pixel Measures."""
    spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing")
    shared = seg.SharedFunctionalGroupsSequence[0]
    if spacing is None:
        assert "PixelMeasuresSequence" not in shared  # nothing invented
        return
    measures = shared.PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [float(v) for v in spacing]


def test_fractional_seg_round_trip(source, tmp_path, dciodvfy, strict_pydicom):
    probability = _probability(source.Rows, source.Columns)
    seg = write_fractional_seg(source, probability, ALGORITHM)
    path = tmp_path / "frac.dcm"
    back = _roundtrip(seg, path)
    dciodvfy(path)

    assert back.SegmentationType == "FRACTIONAL"
    assert back.SegmentationFractionalType == "PROBABILITY"
    assert back.MaximumFractionalValue == 255
    # DICOM's only fractional types are PROBABILITY and OCCUPANCY: the segment says what the
    # values really are
    segment = back.SegmentSequence[0]
    assert "not a probability" in segment.SegmentLabel
    assert "not probabilities" in segment.SegmentDescription
    _check_provenance(back, source, 9002)
    _check_pixel_measures(back, source)
    pixels = back.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], combine_segments=False
    )
    assert pixels.shape == (1, source.Rows, source.Columns, 1)
    assert np.abs(pixels[0, :, :, 0] - probability).max() <= 0.5 / 255 + 1e-6
    # what a plain pydicom reader does
    raw = pydicom.dcmread(path)
    scaled = raw.pixel_array / raw.MaximumFractionalValue
    assert np.abs(scaled - probability).max() <= 0.5 / 255 + 1e-6


def test_same_series_for_several_images(source):
    series = pydicom.uid.generate_uid()
    levels = _levels(source.Rows, source.Columns)
    a = write_binary_seg(source, levels, ALGORITHM, series_instance_uid=series)
    b = write_binary_seg(source, levels, ALGORITHM, series_instance_uid=series, instance_number=2)
    assert a.SeriesInstanceUID == b.SeriesInstanceUID == series
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.SeriesInstanceUID != write_binary_seg(source, levels, ALGORITHM).SeriesInstanceUID


def test_source_is_not_modified(source):
    before = pydicom.Dataset(source)
    write_fractional_seg(source, _probability(source.Rows, source.Columns), ALGORITHM)
    assert source == before


@pytest.mark.parametrize(
    ("levels", "match"),
    [
        ([], "at least one level"),
        ([("x", np.zeros((3, 3), bool))], "shape"),
        ([("x", "wrong-type")], "not binary"),
        ([("", None)], "label"),
        ([("x" * 65, None)], "label"),
        ([("x", 2)], "not binary"),
    ],
)
def test_binary_seg_rejects(source, levels, match):
    full = np.zeros((source.Rows, source.Columns), np.uint8)
    levels = [(label, full + mask if isinstance(mask, int) else mask) for label, mask in levels]
    levels = [(label, full.astype(bool) if mask is None else mask) for label, mask in levels]
    with pytest.raises(ValueError, match=match):
        write_binary_seg(source, levels, ALGORITHM)


def test_binary_seg_accepts_0_1_integer_masks(source):
    mask = np.zeros((source.Rows, source.Columns), np.uint8)
    mask[:4, :4] = 1
    seg = write_binary_seg(source, [("Anomaly > p99 healthy", mask)], ALGORITHM)
    assert seg.NumberOfFrames == 1


@pytest.mark.parametrize(
    ("value", "match"),
    [(np.nan, "NaN"), (1.5, r"\[0, 1\]"), (-0.1, r"\[0, 1\]")],
)
def test_fractional_seg_rejects(source, value, match):
    probability = _probability(source.Rows, source.Columns)
    probability[0, 0] = value
    with pytest.raises(ValueError, match=match):
        write_fractional_seg(source, probability, ALGORITHM)


def test_fractional_seg_rejects_wrong_shape_and_dtype(source):
    with pytest.raises(ValueError, match="shape"):
        write_fractional_seg(source, np.zeros((2, 2), np.float32), ALGORITHM)
    with pytest.raises(ValueError, match="float"):
        write_fractional_seg(source, np.zeros((source.Rows, source.Columns), int), ALGORITHM)


@pytest.mark.data
@pytest.mark.parametrize(
    "name",
    [
        "RG1_UNCR.dcm",  # PixelSpacing 0\0, MONOCHROME1
        "nih_cxr14_nofinding_sc_dx.dcm",  # no PatientBirthDate, PatientAge "81"
        "siim_acr_ptx_negative_cr_jpeg.dcm",  # PixelSpacing, empty PatientOrientation
    ],
)
def test_segs_of_real_samples_are_valid(dicom_samples, tmp_path, dciodvfy, name):
    source = read_image(dicom_samples / name).dataset
    rows, cols = source.Rows, source.Columns
    for kind, seg in (
        ("bin", write_binary_seg(source, _levels(rows, cols), ALGORITHM)),
        ("frac", write_fractional_seg(source, _probability(rows, cols), ALGORITHM)),
    ):
        path = tmp_path / f"{kind}.dcm"
        back = _roundtrip(seg, path)
        dciodvfy(path)
        assert back.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID


@pytest.mark.parametrize(
    ("cols", "expected"), [(64, "BINARY"), (61, "FRACTIONAL"), (1841, "FRACTIONAL")]
)
def test_region_segmentation_type_follows_the_width(cols, expected):
    assert region_segmentation_type(cols).value == expected


def test_region_of_an_image_whose_width_is_not_a_multiple_of_8(tmp_path, dciodvfy, strict_pydicom):
    """Orthanc 1.10 cannot serve 1-bit frames 61 pixels wide: the same masks, 0 or 255, 8 bits."""
    png = tmp_path / "odd.png"
    Image.fromarray(np.arange(48 * 61, dtype=np.uint32).reshape(48, 61).astype(np.uint8)).save(png)
    source = read_image(save(png_to_dicom(png, patient_id="SEG-ODD"), tmp_path / "src.dcm")).dataset
    levels = _levels(source.Rows, source.Columns)
    path = tmp_path / "seg.dcm"
    back = _roundtrip(write_binary_seg(source, levels, ALGORITHM), path)
    dciodvfy(path)

    assert (back.SegmentationType, back.SegmentationFractionalType) == ("FRACTIONAL", "OCCUPANCY")
    assert back.MaximumFractionalValue == 255
    assert back.BitsAllocated == 8
    assert back.ContentLabel == "ANOMALY_REGION"
    assert [s.SegmentLabel for s in back.SegmentSequence] == list(LABELS)
    _check_provenance(back, source, 9001)
    raw = pydicom.dcmread(path).pixel_array
    assert set(np.unique(raw).tolist()) <= {0, 255}
    pixels = back.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], combine_segments=False
    )
    for i, (_, mask) in enumerate(levels):
        np.testing.assert_array_equal(pixels[0, :, :, i] > 0.5, mask)
