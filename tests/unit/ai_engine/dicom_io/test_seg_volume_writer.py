"""Binary SEG of a CT/MR series, and the single-image SEG/SR writers on CT/MR sources."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ai_engine.dicom_io import markers
from ai_engine.dicom_io.convert import png_to_dicom, save
from ai_engine.dicom_io.pmap_writer import frame_sources
from ai_engine.dicom_io.seg_volume_writer import write_binary_seg_volume
from ai_engine.dicom_io.seg_writer import write_binary_seg, write_fractional_seg
from ai_engine.dicom_io.sr_writer import read_sr_scores, write_sr
from ai_engine.errors import UnsupportedInputError
from ai_engine.types import AlgorithmInfo, ImageResult, StudyResult

ALGORITHM = AlgorithmInfo(
    model_id="conv_ae", name="default-brain", version="0.4.0", weights_sha256="ef56" * 16
)
LABELS = ("Anomaly > p99 healthy", "Anomaly > p99.9 healthy")


def _levels(slices: int, rows: int, cols: int) -> list[tuple[str, np.ndarray]]:
    wide = np.zeros((slices, rows, cols), dtype=bool)
    for k in range(slices):
        wide[k, 10 + k : 40 + 2 * k, 20 : 50 + k] = True
    strict = wide.copy()
    strict[:, :, :35] = False
    strict[0] = False  # an empty frame must survive
    return list(zip(LABELS, [wide, strict], strict=True))


def _roundtrip(seg: pydicom.Dataset, path: Path) -> hd.seg.Segmentation:
    save(seg, path)
    return hd.seg.Segmentation.from_dataset(pydicom.dcmread(path))


def test_volume_seg_round_trip(ct_series, tmp_path, dciodvfy, strict_pydicom):
    datasets, _ = ct_series
    rows, cols = datasets[0].Rows, datasets[0].Columns
    levels = _levels(len(datasets), rows, cols)
    path = tmp_path / "seg.dcm"
    back = _roundtrip(write_binary_seg_volume(datasets, levels, ALGORITHM), path)
    dciodvfy(path)

    assert back.SegmentationType == "BINARY"
    assert back.SeriesNumber == 9001
    assert markers.is_own_output(back.Manufacturer, back.SOPClassUID)
    assert (back.ManufacturerModelName, back.SoftwareVersions) == (
        ALGORITHM.name,
        ALGORITHM.version,
    )
    assert back.SeriesDescription == "RESEARCH USE ONLY: AI anomaly region (not for clinical use)"
    assert back.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    assert [s.SegmentLabel for s in back.SegmentSequence] == list(LABELS)
    for item in back.SegmentSequence:
        algo = item.SegmentationAlgorithmIdentificationSequence[0]
        assert ALGORITHM.weights_sha256 in algo.AlgorithmParameters
    assert back.NumberOfFrames == len(datasets) * len(LABELS)  # empty frames kept
    measures = back.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == float(datasets[0].SliceThickness)  # no placeholder
    referenced = {
        item.ReferencedSOPInstanceUID
        for item in back.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == {d.SOPInstanceUID for d in datasets}

    uids = [d.SOPInstanceUID for d in datasets]
    pixels = back.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=False
    )
    assert pixels.shape == (len(datasets), rows, cols, len(LABELS))
    for i, (_, mask) in enumerate(levels):
        np.testing.assert_array_equal(pixels[..., i].astype(bool), mask)
    assert set(frame_sources(back)) == set(uids)


def test_volume_seg_rejects(ct_series, synthetic_png):
    datasets, _ = ct_series
    rows, cols = datasets[0].Rows, datasets[0].Columns
    levels = _levels(len(datasets), rows, cols)
    with pytest.raises(ValueError, match="shape"):
        write_binary_seg_volume(datasets[:3], levels, ALGORITHM)
    with pytest.raises(ValueError, match="not binary"):
        write_binary_seg_volume(datasets, [("x", levels[0][1] * 2)], ALGORITHM)
    with pytest.raises(ValueError, match="at least one level"):
        write_binary_seg_volume(datasets, [], ALGORITHM)
    with pytest.raises(ValueError, match="label"):
        write_binary_seg_volume(datasets, [("", levels[0][1])], ALGORITHM)
    png_path, img = synthetic_png
    radiograph = png_to_dicom(png_path, patient_id="SEG-TEST")
    with pytest.raises(UnsupportedInputError, match="Frame of Reference"):
        write_binary_seg_volume([radiograph], [("x", np.zeros((1, *img.shape), bool))], ALGORITHM)


def test_volume_seg_accepts_0_1_masks(ct_series):
    datasets, _ = ct_series
    mask = np.zeros((len(datasets), datasets[0].Rows, datasets[0].Columns), np.uint8)
    mask[2, :4, :4] = 1
    seg = write_binary_seg_volume(datasets, [("Anomaly > p99 healthy", mask)], ALGORITHM)
    assert seg.NumberOfFrames == len(datasets)


@pytest.mark.parametrize("name", ["ct_small", "mr_small"])
def test_single_image_segs_of_a_slice(name, request, tmp_path, dciodvfy, strict_pydicom):
    """The 2D writers are valid for one CT/MR slice and keep the slice's own thickness."""
    source = request.getfixturevalue(name)
    rows, cols = source.Rows, source.Columns
    mask = np.zeros((rows, cols), bool)
    mask[5:20, 5:30] = True
    probability = np.random.default_rng(2).random((rows, cols)).astype(np.float32)
    for kind, seg in (
        ("bin", write_binary_seg(source, [(LABELS[0], mask)], ALGORITHM)),
        ("frac", write_fractional_seg(source, probability, ALGORITHM)),
    ):
        path = tmp_path / f"{kind}.dcm"
        back = _roundtrip(seg, path)
        dciodvfy(path)
        measures = back.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        assert float(measures.SliceThickness) == float(source.SliceThickness)
        assert back.FrameOfReferenceUID == source.FrameOfReferenceUID
        pixels = back.get_pixels_by_source_instance(
            source_sop_instance_uids=[source.SOPInstanceUID], combine_segments=False
        )
        if kind == "bin":
            np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), mask)
        else:
            assert np.abs(pixels[0, :, :, 0] - probability).max() <= 0.5 / 255 + 1e-6


def test_sr_of_a_ct_series(ct_series, tmp_path, dciodvfy, strict_pydicom):
    datasets, _ = ct_series
    images = [
        ImageResult(str(d.SOPInstanceUID), str(d.SeriesInstanceUID), 0.1 * k, 0.3, 0.1 * k >= 0.3)
        for k, d in enumerate(datasets)
    ]
    study = StudyResult(str(datasets[0].StudyInstanceUID), ALGORITHM, tuple(images), 0.4, True)
    path = save(write_sr(datasets, study), tmp_path / "sr.dcm")
    dciodvfy(path)
    scores = read_sr_scores(pydicom.dcmread(path))
    assert scores["study"]["score"] == pytest.approx(0.4)
    assert set(scores["images"]) == {d.SOPInstanceUID for d in datasets}
    assert scores["images"][datasets[4].SOPInstanceUID]["status"] == "Abnormal"


def test_volume_region_of_a_width_orthanc_cannot_serve_at_1_bit(
    ct_series, tmp_path, dciodvfy, strict_pydicom
):
    """Slices 61 pixels wide: the same nested masks as a 0/255 FRACTIONAL OCCUPANCY SEG
    (Orthanc 1.10 serves no 1-bit frame of such a width; tests/integration/test_region_frames.py
    shows it for a radiograph), valid and read back as the masks."""
    datasets, _ = ct_series
    narrow = []
    for ds in datasets:
        ds = ds.copy()
        ds.Columns = 61
        ds.PixelData = ds.pixel_array[:, :61].copy().tobytes()
        narrow.append(ds)
    levels = _levels(len(narrow), narrow[0].Rows, 61)
    path = tmp_path / "seg.dcm"
    seg = write_binary_seg_volume(narrow, levels, ALGORITHM)
    back = _roundtrip(seg, path)
    dciodvfy(path)
    assert back.SegmentationType == "FRACTIONAL"
    assert back.SegmentationFractionalType == "OCCUPANCY"
    assert back.ContentLabel == "ANOMALY_REGION"
    assert set(np.unique(pydicom.dcmread(path).pixel_array)) <= {0, 255}
    pixels = back.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in narrow], combine_segments=False
    )
    for i, (_, mask) in enumerate(levels):
        np.testing.assert_array_equal(pixels[..., i] > 0, mask)
