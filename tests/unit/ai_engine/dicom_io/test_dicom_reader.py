from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    MPEG2MPML,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from ai_engine.dicom_io.convert import png_to_dicom, save
from ai_engine.dicom_io.reader import (
    SourceImage,
    read_frames,
    read_header,
    read_image,
    read_png,
)
from ai_engine.errors import UnsupportedInputError

LOSSLESS = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEGLSLossless,
            JPEG2000Lossless]  # fmt: skip


def _converted(png_path: Path, out: Path, **kwargs) -> Path:
    return save(png_to_dicom(png_path, patient_id="TEST", **kwargs), out)


def _grey_dataset(
    arr: np.ndarray, *, bits_stored: int = 12, photometric: str = "MONOCHROME2", **attrs
) -> Dataset:
    """A minimal CR dataset around ``arr`` (uint16/int16, (rows, cols) or (frames, rows, cols))."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientID = "TEST"
    ds.set_pixel_data(arr, photometric, bits_stored)
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


# --- PNG -> DICOM -> read_image parity (core, synthetic) --------------------------------------


@pytest.mark.parametrize("modality", ["DX", "CR"])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("transfer_syntax", LOSSLESS)
def test_png_dicom_reads_exactly_as_png(
    synthetic_png, tmp_path, modality, photometric, transfer_syntax
):
    png_path, png = synthetic_png
    path = _converted(
        png_path,
        tmp_path / "x.dcm",
        modality=modality,
        photometric=photometric,
        transfer_syntax=transfer_syntax,
    )
    image = read_image(path)
    expected = png.astype(np.float32) / 255.0
    assert image.pixels.dtype == np.float32
    assert image.pixels.shape == png.shape
    np.testing.assert_array_equal(image.pixels, expected)
    np.testing.assert_array_equal(image.pixels, read_png(png_path))


def test_png_dicom_without_window_reads_value_over_255(synthetic_png, tmp_path):
    png_path, png = synthetic_png
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        ds = png_to_dicom(png_path, modality="CR", patient_id="T", photometric=photometric)
        del ds.WindowCenter, ds.WindowWidth
        image = read_image(save(ds, tmp_path / f"{photometric}.dcm"))
        np.testing.assert_array_equal(image.pixels, png.astype(np.float32) / 255.0)


def test_jpeg_baseline_reads_close_to_png(synthetic_png, tmp_path):
    png_path, png = synthetic_png
    path = _converted(png_path, tmp_path / "j.dcm", transfer_syntax=JPEGBaseline8Bit)
    diff = np.abs(read_image(path).pixels - png / 255.0)
    assert diff.mean() < 2 / 255


def test_source_image_is_frozen_and_header_only(synthetic_png, tmp_path):
    png_path, _ = synthetic_png
    path = _converted(png_path, tmp_path / "x.dcm")
    image = read_image(path)
    assert isinstance(image, SourceImage)
    assert image.path == path
    assert "PixelData" not in image.dataset
    assert image.dataset.SOPInstanceUID == pydicom.dcmread(path).SOPInstanceUID
    assert (image.frame, image.number_of_frames) == (0, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        image.path = Path("other")  # type: ignore[misc]


def test_read_header_has_no_pixels(synthetic_png, tmp_path):
    png_path, _ = synthetic_png
    header = read_header(_converted(png_path, tmp_path / "x.dcm"))
    assert "PixelData" not in header
    assert header.Modality == "DX"


def test_reads_a_bare_dataset_without_part10_header(synthetic_png, tmp_path):
    png_path, png = synthetic_png
    ds = png_to_dicom(png_path, patient_id="T", transfer_syntax=ImplicitVRLittleEndian)
    path = tmp_path / "bare.dcm"
    del ds.file_meta
    ds.save_as(path, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_image(path).pixels, png / np.float32(255))


# --- grey-level pipeline (core, synthetic 12/16-bit) ------------------------------------------


def test_no_voi_uses_min_max_for_12_bit(tmp_path):
    arr = np.array([[100, 200], [300, 1100]], dtype=np.uint16)
    image = read_image(_write(_grey_dataset(arr), tmp_path / "a.dcm"))
    np.testing.assert_allclose(image.pixels, [[0, 0.1], [0.2, 1.0]], atol=1e-6)


def test_monochrome1_is_inverted(tmp_path):
    arr = np.array([[100, 200], [300, 1100]], dtype=np.uint16)
    mono1 = read_image(_write(_grey_dataset(arr, photometric="MONOCHROME1"), tmp_path / "1.dcm"))
    np.testing.assert_allclose(mono1.pixels, [[1.0, 0.9], [0.8, 0.0]], atol=1e-6)


def test_linear_window_after_rescale(tmp_path):
    arr = np.array([[0, 1000], [1024, 4095]], dtype=np.uint16)
    ds = _grey_dataset(
        arr,
        RescaleSlope=1,
        RescaleIntercept=-1024,
        RescaleType="HU",
        WindowCenter=[40.5, 400],  # the first window is used
        WindowWidth=[401, 1500],
    )
    image = read_image(_write(ds, tmp_path / "w.dcm"))
    # HU: -1024, -24, 0, 3071; window 40.5/401 maps [-160, 240] to [0, 1].
    np.testing.assert_allclose(image.pixels, [[0, 136 / 400], [160 / 400, 1.0]], atol=1e-6)


def test_linear_exact_and_sigmoid_windows(tmp_path):
    arr = np.array([[0, 50], [100, 200]], dtype=np.uint16)
    exact = _grey_dataset(arr, WindowCenter=100, WindowWidth=100, VOILUTFunction="LINEAR_EXACT")
    np.testing.assert_allclose(
        read_image(_write(exact, tmp_path / "e.dcm")).pixels, [[0, 0], [0.5, 1]], atol=1e-6
    )
    sigmoid = _grey_dataset(arr, WindowCenter=100, WindowWidth=100, VOILUTFunction="SIGMOID")
    pixels = read_image(_write(sigmoid, tmp_path / "s.dcm")).pixels
    assert pixels[1, 0] == pytest.approx(0.5)
    assert pixels[0, 0] < pixels[0, 1] < 0.5 < pixels[1, 1] <= 1.0


def test_voi_lut_sequence_is_normalised_by_its_output_range(tmp_path):
    arr = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 8]
    lut.LUTData = [0, 51, 102, 255]
    ds = _grey_dataset(arr, bits_stored=8)
    ds.VOILUTSequence = Sequence([lut])
    ds["VOILUTSequence"][0]["LUTDescriptor"].VR = "US"
    ds["VOILUTSequence"][0]["LUTData"].VR = "US"
    image = read_image(_write(ds, tmp_path / "lut.dcm"))
    np.testing.assert_allclose(image.pixels, [[0, 0.2], [0.4, 1.0]], atol=1e-6)


def test_invalid_window_is_ignored(tmp_path):
    arr = np.array([[0, 10], [20, 40]], dtype=np.uint16)
    ds = _grey_dataset(arr, WindowCenter=10, WindowWidth=0)
    np.testing.assert_allclose(
        read_image(_write(ds, tmp_path / "x.dcm")).pixels, [[0, 0.25], [0.5, 1]], atol=1e-6
    )


def test_constant_image_gives_zeros(tmp_path):
    arr = np.full((4, 4), 7, dtype=np.uint16)
    assert not read_image(_write(_grey_dataset(arr), tmp_path / "c.dcm")).pixels.any()


def test_multi_frame(tmp_path):
    frames = np.stack([np.full((3, 4), v, dtype=np.uint16) for v in (0, 1000, 2000)])
    frames[:, 0, 0] = 4000
    path = _write(_grey_dataset(frames, WindowCenter=2000.5, WindowWidth=4001), tmp_path / "m.dcm")
    all_frames = read_frames(path)
    assert [f.frame for f in all_frames] == [0, 1, 2]
    assert all(f.number_of_frames == 3 for f in all_frames)
    assert all_frames[1].pixels[1, 1] == pytest.approx(0.25)
    np.testing.assert_array_equal(read_image(path, frame=2).pixels, all_frames[2].pixels)
    np.testing.assert_array_equal(read_image(path).pixels, all_frames[0].pixels)
    with pytest.raises(UnsupportedInputError, match="frame 3"):
        read_image(path, frame=3)


# --- read_png ---------------------------------------------------------------------------------


def test_read_png_8_and_16_bit(tmp_path):
    img8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(img8).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_png(tmp_path / "a.png"), img8.astype(np.float32) / 255)
    img16 = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    Image.fromarray(img16).save(tmp_path / "b.png")
    out = read_png(tmp_path / "b.png")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, img16.astype(np.float32) / 65535)


def test_read_png_rejects_colour(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.raises(UnsupportedInputError, match="colour"):
        read_png(tmp_path / "c.png")


# --- errors -----------------------------------------------------------------------------------


def test_not_dicom(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not a DICOM file\n" * 20)
    for reader in (read_image, read_header):
        with pytest.raises(UnsupportedInputError, match=r"notes\.txt.*not a DICOM file"):
            reader(path)


def test_no_pixel_data(synthetic_png, tmp_path):
    png_path, _ = synthetic_png
    ds = png_to_dicom(png_path, patient_id="T")
    del ds.PixelData
    with pytest.raises(UnsupportedInputError, match=r"nopix\.dcm: no PixelData"):
        read_image(save(ds, tmp_path / "nopix.dcm"))


def test_colour_image(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    ds = _grey_dataset(np.zeros((4, 4), np.uint16))
    ds.set_pixel_data(rgb, "RGB", 8)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    with pytest.raises(UnsupportedInputError, match=r"rgb\.dcm: colour image .*RGB"):
        read_image(_write(ds, tmp_path / "rgb.dcm"))


def test_transfer_syntax_without_decoder(synthetic_png, tmp_path):
    png_path, _ = synthetic_png
    ds = png_to_dicom(png_path, patient_id="T", transfer_syntax=JPEG2000Lossless)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    path = save(ds, tmp_path / "mpeg.dcm")
    with pytest.raises(UnsupportedInputError, match=r"mpeg\.dcm: no decoder .*MPEG2"):
        read_image(path)


def test_corrupt_compressed_pixels(synthetic_png, tmp_path):
    png_path, _ = synthetic_png
    ds = png_to_dicom(png_path, patient_id="T", transfer_syntax=JPEG2000Lossless)
    ds.PixelData = ds.PixelData[:40] + b"\x00" * 64
    with pytest.raises(UnsupportedInputError, match=r"bad\.dcm: pixel data could not be decoded"):
        read_image(save(ds, tmp_path / "bad.dcm"))


@pytest.mark.parametrize(
    ("sop_class", "kind"),
    [
        ("1.2.840.10008.5.1.4.1.1.88.33", "structured report"),
        ("1.2.840.10008.5.1.4.1.1.66.4", "segmentation"),
        ("1.2.840.10008.5.1.4.1.1.11.1", "presentation state"),
        ("1.2.840.10008.1.3.10", "not an image"),
    ],
)
def test_non_image_sop_class(synthetic_png, tmp_path, sop_class, kind):
    png_path, _ = synthetic_png
    ds = png_to_dicom(png_path, patient_id="T")
    ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    path = save(ds, tmp_path / "other.dcm")
    with pytest.raises(UnsupportedInputError, match=rf"other\.dcm: SOP class .*{kind}"):
        read_image(path)
    assert read_header(path).SOPClassUID == sop_class  # headers of any class are readable


def test_missing_instance_uids(synthetic_png, tmp_path):
    png_path, _ = synthetic_png
    ds = png_to_dicom(png_path, patient_id="T")
    del ds.StudyInstanceUID
    with pytest.raises(UnsupportedInputError, match="StudyInstanceUID"):
        read_header(save(ds, tmp_path / "nostudy.dcm"))


# --- the real samples (../shared/data) --------------------------------------------------------


@pytest.mark.data
@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("RG1_UNCR.dcm", (1955, 1841)),
        ("RG1_J2KI.dcm", (1955, 1841)),
        ("nih_cxr14_nofinding_sc_dx.dcm", (1024, 1024)),
        ("siim_acr_ptx_negative_cr_jpeg.dcm", (1024, 1024)),
    ],
)
def test_real_samples_read(dicom_samples, name, shape):
    image = read_image(dicom_samples / name)
    assert image.pixels.shape == shape
    assert image.pixels.dtype == np.float32
    assert 0.0 <= float(image.pixels.min()) < 0.2
    assert 0.9 < float(image.pixels.max()) <= 1.0
    # a chest radiograph shown the right way round: the mediastinum (centre column band)
    # is brighter than the lungs either side of it
    rows, cols = shape
    centre = image.pixels[rows // 3 : rows // 2, cols * 9 // 20 : cols * 11 // 20].mean()
    lungs = image.pixels[rows // 3 : rows // 2, cols // 5 : cols * 2 // 5].mean()
    assert centre > lungs


@pytest.mark.data
def test_rg1_j2k_and_uncompressed_read_nearly_identical(dicom_samples):
    a = read_image(dicom_samples / "RG1_UNCR.dcm").pixels
    b = read_image(dicom_samples / "RG1_J2KI.dcm").pixels
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    assert np.abs(a - b).mean() < 0.01


@pytest.mark.data
def test_rg1_monochrome1_and_its_inversion_read_the_same(dicom_samples, tmp_path):
    original = pydicom.dcmread(dicom_samples / "RG1_UNCR.dcm")
    assert original.PhotometricInterpretation == "MONOCHROME1"
    top = 2**original.BitsStored - 1
    inverted = pydicom.dcmread(dicom_samples / "RG1_UNCR.dcm")
    inverted.PixelData = (top - original.pixel_array).astype(np.uint16).tobytes()
    inverted.PhotometricInterpretation = "MONOCHROME2"
    # the LINEAR window [c - 0.5 -/+ (w - 1) / 2] mirrored around top / 2
    inverted.WindowCenter = top - float(original.WindowCenter) + 1
    path = tmp_path / "rg1_mono2.dcm"
    inverted.save_as(path)
    a = read_image(dicom_samples / "RG1_UNCR.dcm").pixels
    b = read_image(path).pixels
    np.testing.assert_allclose(a, b, atol=1e-6)
    # and without any window (min/max normalisation)
    for ds in (original, inverted):
        del ds.WindowCenter, ds.WindowWidth
    original.save_as(tmp_path / "o.dcm")
    inverted.save_as(tmp_path / "i.dcm")
    np.testing.assert_allclose(
        read_image(tmp_path / "o.dcm").pixels, read_image(tmp_path / "i.dcm").pixels, atol=1e-6
    )


@pytest.mark.data
@pytest.mark.parametrize(
    "name", ["nih_cxr14_nofinding_sc_dx.dcm", "siim_acr_ptx_negative_cr_jpeg.dcm"]
)
def test_8_bit_samples_are_value_over_255(dicom_samples, name):
    stored = pydicom.dcmread(dicom_samples / name).pixel_array
    np.testing.assert_array_equal(
        read_image(dicom_samples / name).pixels, stored.astype(np.float32) / 255
    )


@pytest.mark.data
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_kermany_png_dicom_parity(kermany_png, tmp_path, photometric):
    path = _converted(kermany_png, tmp_path / "k.dcm", photometric=photometric)
    np.testing.assert_array_equal(read_image(path).pixels, read_png(kermany_png))
