from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ai_engine.dicom_io import markers
from ai_engine.dicom_io.convert import png_to_dicom, save
from ai_engine.dicom_io.pmap_writer import (
    STORED_SCALE,
    frame_sources,
    stored_to_map,
    write_parametric_map,
)
from ai_engine.errors import UnsupportedInputError
from ai_engine.types import AlgorithmInfo

ALGORITHM = AlgorithmInfo(
    model_id="conv_ae", name="default-brain", version="0.4.0", weights_sha256="ef56" * 16
)


def _values(frames: int, rows: int, cols: int) -> np.ndarray:
    return np.random.default_rng(5).random((frames, rows, cols)).astype(np.float32)


def _roundtrip(pm: pydicom.Dataset, path: Path) -> hd.pm.ParametricMap:
    save(pm, path)
    return hd.pm.ParametricMap.from_dataset(pydicom.dcmread(path))


def _check_provenance(ds: pydicom.Dataset, source: pydicom.Dataset) -> None:
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    assert markers.is_own_output(ds.Manufacturer, ds.SOPClassUID)
    assert ds.ManufacturerModelName == ALGORITHM.name
    assert ds.SoftwareVersions == ALGORITHM.version
    assert ds.SeriesDescription == "RESEARCH USE ONLY: AI anomaly map (not for clinical use)"
    assert ds.SeriesNumber == 9004
    assert ds.ContentQualification == "RESEARCH"
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert ds.PatientID == source.PatientID
    shared = ds.SharedFunctionalGroupsSequence[0]
    mapping = shared.RealWorldValueMappingSequence[0]
    assert mapping.LUTExplanation == "scaled anomaly map, 0.5 = pixel threshold"
    assert mapping.LUTLabel == "ANOMALY"
    assert "probab" not in str(ds).lower()  # a scaled anomaly map, not a probability
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    # 16-bit integers (Orthanc 1.10 serves no FloatPixelData frames), mapped to 0..1
    assert "FloatPixelData" not in ds
    assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 16, 0)
    assert (
        mapping.RealWorldValueFirstValueMapped,
        mapping.RealWorldValueLastValueMapped,
    ) == (0, STORED_SCALE)
    assert mapping.RealWorldValueSlope == pytest.approx(1.0 / STORED_SCALE)
    assert mapping.RealWorldValueIntercept == 0.0
    if "PixelSpacing" in source:  # the source's spacing, not an invented one
        measures = shared.PixelMeasuresSequence[0]
        assert [float(v) for v in measures.PixelSpacing] == pytest.approx(
            [float(v) for v in source.PixelSpacing]
        )
    for item in ds.PerFrameFunctionalGroupsSequence:
        description = item.DerivationImageSequence[0].DerivationDescription
        assert ALGORITHM.weights_sha256 in description
        assert ALGORITHM.model_id in description


@pytest.mark.parametrize("name", ["ct_small", "mr_small"])
def test_single_slice_round_trip(name, request, tmp_path, dciodvfy, strict_pydicom):
    source = request.getfixturevalue(name)
    values = _values(1, source.Rows, source.Columns)[0]  # (rows, cols) is accepted
    path = tmp_path / "pm.dcm"
    back = _roundtrip(write_parametric_map([source], values, ALGORITHM), path)
    output = dciodvfy(path)
    assert "Laterality" in output  # the empty Type 2C value is only a warning

    _check_provenance(back, source)
    assert back.NumberOfFrames == 1
    assert back.Laterality == ""
    # stored with a step of 1e-4: within half a step of the map
    np.testing.assert_allclose(stored_to_map(back.pixel_array), values, atol=0.5 / STORED_SCALE)
    ref = back.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert ref.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def _check_frames(pm: pydicom.Dataset, sources: list, values: np.ndarray) -> list[int]:
    """Each frame holds the values of the slice it references, at that slice's position."""
    uids = [str(s.SOPInstanceUID) for s in sources]
    order = [uids.index(uid) for uid in frame_sources(pm)]
    assert sorted(order) == list(range(len(sources)))
    pixels = pm.pixel_array.reshape(len(sources), *values.shape[1:])
    for frame, k in enumerate(order):
        np.testing.assert_allclose(stored_to_map(pixels[frame]), values[k], atol=0.5 / STORED_SCALE)
        item = pm.PerFrameFunctionalGroupsSequence[frame]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert position == pytest.approx([float(v) for v in sources[k].ImagePositionPatient])
    return order


def test_series_one_frame_per_slice(ct_series, tmp_path, dciodvfy, strict_pydicom):
    datasets, _ = ct_series
    values = _values(len(datasets), datasets[0].Rows, datasets[0].Columns)
    path = tmp_path / "pm.dcm"
    back = _roundtrip(write_parametric_map(datasets, values, ALGORITHM), path)
    dciodvfy(path)

    _check_provenance(back, datasets[0])
    assert back.NumberOfFrames == len(datasets)
    order = _check_frames(back, datasets, values)
    # highdicom 0.28.2 stores frames in its own spatial order (here: z descending)
    assert order == [4, 3, 2, 1, 0]
    volume = back.get_volume()
    assert volume.spatial_shape == (len(datasets), datasets[0].Rows, datasets[0].Columns)


def test_frame_order_does_not_depend_on_source_order(ct_series):
    datasets, _ = ct_series
    values = _values(len(datasets), datasets[0].Rows, datasets[0].Columns)
    forward = write_parametric_map(datasets, values, ALGORITHM)
    shuffled = [2, 0, 4, 1, 3]
    other = write_parametric_map([datasets[k] for k in shuffled], values[shuffled], ALGORITHM)
    assert frame_sources(forward) == frame_sources(other)
    np.testing.assert_array_equal(forward.pixel_array, other.pixel_array)
    _check_frames(other, [datasets[k] for k in shuffled], values[shuffled])


def test_laterality_is_copied(ct_small, tmp_path, dciodvfy):
    ct_small.Laterality = "L"
    pm = write_parametric_map([ct_small], _values(1, 128, 128), ALGORITHM)
    assert pm.Laterality == "L"
    path = tmp_path / "pm.dcm"
    save(pm, path)
    assert "Laterality" not in dciodvfy(path)


def test_radiograph_is_refused(synthetic_png):
    png_path, img = synthetic_png
    source = png_to_dicom(png_path, patient_id="PM-TEST")
    with pytest.raises(UnsupportedInputError, match=r"no Frame of Reference.*FRACTIONAL SEG"):
        write_parametric_map([source], np.zeros(img.shape, np.float32), ALGORITHM)


def test_source_is_not_modified(ct_small):
    before = pydicom.Dataset(ct_small)
    write_parametric_map([ct_small], _values(1, 128, 128), ALGORITHM)
    assert ct_small == before


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (np.zeros((2, 128, 128), np.float32), "one per source slice"),
        (np.zeros((1, 64, 128), np.float32), "rows, cols"),
        (np.zeros((128, 128), np.int16), "float"),
        (np.full((128, 128), np.nan, np.float32), "NaN"),
        (np.full((128, 128), 1.5, np.float32), r"\[0, 1\]"),
        (np.zeros((1, 1, 128, 128), np.float32), "frames, rows, cols"),
    ],
)
def test_bad_values_are_refused(ct_small, values, match):
    with pytest.raises(ValueError, match=match):
        write_parametric_map([ct_small], values, ALGORITHM)


def test_mixed_series_are_refused(ct_small, mr_small):
    with pytest.raises(UnsupportedInputError, match="differ in"):
        write_parametric_map([ct_small, mr_small], _values(2, 128, 128), ALGORITHM)
    with pytest.raises(ValueError, match="at least one"):
        write_parametric_map([], _values(1, 128, 128), ALGORITHM)
