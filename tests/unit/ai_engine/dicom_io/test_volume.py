"""Reading CT/MR series as volumes, and NIfTI files."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ai_engine.dicom_io.pmap_writer import write_parametric_map
from ai_engine.dicom_io.reader import read_image
from ai_engine.dicom_io.volume import read_nifti, read_series
from ai_engine.errors import UnsupportedInputError
from ai_engine.types import AlgorithmInfo


def _modality_values(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_series_is_sorted_by_position(ct_series):
    datasets, paths = ct_series
    on_disk = sorted(paths[0].parent.glob("*.dcm"))  # shuffled relative to the anatomy
    assert on_disk != paths
    volume = read_series(on_disk)

    assert [d.SOPInstanceUID for d in volume.datasets] == [d.SOPInstanceUID for d in datasets]
    assert list(volume.paths) == paths
    z = [float(d.ImagePositionPatient[2]) for d in volume.datasets]
    assert z == sorted(z)
    assert [int(d.InstanceNumber) for d in volume.datasets] == [5, 4, 3, 2, 1]
    assert volume.pixels.shape == (5, 128, 128)
    assert volume.pixels.dtype == np.float32
    assert volume.spacing == pytest.approx((2.5, 0.661468, 0.661468))
    assert all("PixelData" not in d for d in volume.datasets)


def test_volume_min_max_not_per_slice(ct_series):
    """CT_small has no window: one min/max over the stack keeps slices comparable."""
    datasets, paths = ct_series
    volume = read_series(paths)
    values = np.stack([_modality_values(d) for d in datasets])
    expected = (values - values.min()) / (values.max() - values.min())
    np.testing.assert_allclose(volume.pixels, expected, atol=1e-6)
    assert volume.pixels.min() == 0.0
    assert volume.pixels.max() == 1.0
    # per slice, read_image's own min/max hides the +7 offsets between slices entirely
    np.testing.assert_array_equal(read_image(paths[0]).pixels, read_image(paths[4]).pixels)
    assert np.mean(volume.pixels[4] - volume.pixels[0]) > 0


def test_slices_with_a_window_keep_it(ct_series):
    _, paths = ct_series
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.save_as(path)
    volume = read_series(paths)
    for k, path in enumerate(paths):
        np.testing.assert_array_equal(volume.pixels[k], read_image(path).pixels)


def test_fallback_to_instance_number(ct_series, caplog):
    _, paths = ct_series
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    volume = read_series(paths)
    assert [int(d.InstanceNumber) for d in volume.datasets] == [1, 2, 3, 4, 5]
    assert list(volume.paths) == paths[::-1]
    assert volume.spacing[0] == 2.5  # SpacingBetweenSlices
    assert "InstanceNumber" in caplog.text


def test_volume_feeds_the_parametric_map(ct_series):
    _, paths = ct_series
    volume = read_series(paths)
    algorithm = AlgorithmInfo("conv_ae", "default-brain", "0.4.0", "ef56" * 16)
    pm = write_parametric_map(volume.datasets, volume.pixels, algorithm)
    assert pm.NumberOfFrames == 5


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"SeriesInstanceUID": "1.2.3.4"}, "SeriesInstanceUID"),
        ({"ImageOrientationPatient": [0, 1, 0, 0, 0, -1]}, "ImageOrientationPatient"),
        ({"ImagePositionPatient": "same-as-slice-0"}, "same position"),
        ({"InstanceNumber": None, "ImagePositionPatient": None}, "cannot order"),
    ],
)
def test_inconsistent_series_are_refused(ct_series, change, match):
    datasets, paths = ct_series
    change = dict(change)
    if change.get("ImagePositionPatient") == "same-as-slice-0":
        change["ImagePositionPatient"] = datasets[0].ImagePositionPatient
    ds = pydicom.dcmread(paths[2])
    for keyword, value in change.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    ds.save_as(paths[2])
    with pytest.raises(UnsupportedInputError, match=match):
        read_series(paths)


def test_other_refusals(ct_series, tmp_path):
    _, paths = ct_series
    with pytest.raises(UnsupportedInputError, match="at least one"):
        read_series([])
    multi = pydicom.dcmread(paths[0])
    multi.NumberOfFrames = 2
    multi.PixelData = multi.PixelData * 2
    multi.save_as(tmp_path / "multi.dcm")
    with pytest.raises(UnsupportedInputError, match="multi-frame"):
        read_series([tmp_path / "multi.dcm"])
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(UnsupportedInputError):
        read_series([paths[0], tmp_path / "junk.dcm"])


def test_single_slice_series(ct_series):
    _, paths = ct_series
    volume = read_series(paths[:1])
    assert volume.pixels.shape == (1, 128, 128)
    assert volume.spacing[0] == 2.5  # no neighbour: SpacingBetweenSlices


# ---------------------------------------------------------------- NIfTI


@pytest.fixture
def nifti(tmp_path):
    """``nifti(name, data, affine)`` writes a NIfTI-1 file into tmp_path (needs nibabel)."""
    nib = pytest.importorskip("nibabel")

    def write(name, data, affine):
        path = tmp_path / name
        nib.save(nib.Nifti1Image(data, affine), path)
        return path

    return write


def test_nifti_orientation_ras(nifti):
    data = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)  # (i: R, j: A, k: S)
    out = read_nifti(nifti("ras.nii.gz", data, np.eye(4)))
    assert out.shape == (3, 5, 4)
    assert out.dtype == np.float32
    # slice k (inferior first), row r (anterior first), column c (patient's right first)
    lo, hi = np.percentile(data, (0.5, 99.5))
    for k, r, c in [(0, 0, 0), (2, 4, 3), (1, 2, 0), (0, 3, 2)]:
        expected = np.clip((data[3 - c, 4 - r, k] - lo) / (hi - lo), 0, 1)
        assert out[k, r, c] == pytest.approx(expected, abs=1e-6)


def test_nifti_other_storage_orientation_gives_the_same_volume(nifti):
    data = np.random.default_rng(0).random((4, 5, 3)).astype(np.float32)
    ras = read_nifti(nifti("ras.nii", data, np.eye(4)))
    # the same anatomy stored LPS-wise (i towards L, j towards P): flipped array, flipped axes
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [3.0, 4.0, 0.0]
    lps = read_nifti(nifti("lps.nii", data[::-1, ::-1, :].copy(), affine))
    np.testing.assert_array_equal(ras, lps)
    # and with the slice axis stored first (k, i, j)
    permuted = np.transpose(data, (2, 0, 1)).copy()
    affine = np.zeros((4, 4))
    affine[2, 0] = affine[0, 1] = affine[1, 2] = affine[3, 3] = 1.0
    np.testing.assert_array_equal(ras, read_nifti(nifti("kij.nii", permuted, affine)))


def test_nifti_robust_scaling(nifti):
    data = np.random.default_rng(1).normal(100.0, 10.0, (20, 20, 10)).astype(np.float32)
    data[0, 0, 0] = 1e6  # an outlier does not squash the rest
    data[1, 1, 1] = np.nan
    out = read_nifti(nifti("x.nii", data, np.eye(4)))
    assert out.min() == 0.0
    assert out.max() == 1.0
    assert np.isfinite(out).all()
    assert 0.3 < float(np.median(out)) < 0.7
    assert np.mean(out == 1.0) == pytest.approx(0.005, abs=0.003)
    assert read_nifti(nifti("c.nii", np.ones((3, 3, 3), np.float32), np.eye(4))).max() == 0


def test_nifti_dimensions(nifti):
    image2d = read_nifti(nifti("2d.nii", np.ones((4, 5), np.float32), np.eye(4)))
    assert image2d.shape == (1, 5, 4)
    single = np.random.default_rng(2).random((4, 5, 3, 1)).astype(np.float32)
    assert read_nifti(nifti("t1.nii", single, np.eye(4))).shape == (3, 5, 4)
    series = np.zeros((4, 5, 3, 2), np.float32)
    with pytest.raises(UnsupportedInputError, match="2D or 3D"):
        read_nifti(nifti("t2.nii", series, np.eye(4)))


def test_nifti_bad_file(nifti, tmp_path):
    bad = tmp_path / "bad.nii"
    bad.write_bytes(b"\0" * 400)
    with pytest.raises(UnsupportedInputError, match="not a readable NIfTI"):
        read_nifti(bad)


def test_nifti_without_nibabel(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)  # import nibabel raises ImportError
    with pytest.raises(UnsupportedInputError, match="pip install nibabel"):
        read_nifti(tmp_path / "any.nii")


def test_nifti_matches_an_axial_dicom_series(ct_series, nifti):
    """The same voxels as NIfTI and as DICOM series come out in the same layout."""
    datasets, paths = ct_series
    volume = read_series(paths)
    # DICOM (slice, row, col) with LPS axes -> NIfTI RAS array (i: R, j: A, k: S)
    values = np.stack([_modality_values(d) for d in datasets]).astype(np.float32)
    ras = values.transpose(2, 1, 0)[::-1, ::-1, :].copy()
    out = read_nifti(nifti("ct.nii.gz", ras, np.eye(4)))
    assert out.shape == volume.pixels.shape
    lo, hi = np.percentile(values, (0.5, 99.5))
    np.testing.assert_allclose(out, np.clip((values - lo) / (hi - lo), 0, 1), atol=1e-6)


def test_an_enhanced_multi_frame_mr_is_assembled_like_its_slices(tmp_path):
    """A real enhanced multi-frame MR (highdicom's Legacy Converted Enhanced MR of the committed
    LGG series, frames in shuffled order): one volume, per-frame positions, the same pixels
    and spacing as the single-frame slices read as a series."""
    import highdicom as hd

    folder = Path(__file__).resolve().parents[3] / "data" / "dicom" / "lgg_flair_mr"
    paths = sorted(folder.glob("*.dcm"))
    slices = [pydicom.dcmread(p) for p in paths]
    shuffled = [slices[k] for k in np.random.default_rng(1).permutation(len(slices))]
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(
        shuffled,
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=2,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    assert int(ds.NumberOfFrames) == len(slices)
    assert "PlanePositionSequence" in ds.PerFrameFunctionalGroupsSequence[0]

    volume = read_series([path])
    reference = read_series(paths)
    assert volume.pixels.shape == reference.pixels.shape
    np.testing.assert_allclose(volume.pixels, reference.pixels, atol=1e-6)
    assert volume.spacing == pytest.approx(reference.spacing, abs=1e-4)
    assert volume.paths == (path,) * len(slices)
