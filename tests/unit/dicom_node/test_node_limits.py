"""`dicom_node.limits`: the receive-time walk agrees with pydicom on real files, and refuses
what the limits and the pixel description forbid."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from dicom_node.limits import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_EXCEEDS_LIMITS,
    DatasetLimits,
    DatasetRefusedError,
    check_dataset,
    walk,
)

LIMITS = DatasetLimits()


def _body(path: Path) -> bytes:
    with path.open("rb") as fh:
        read_preamble(fh, False)
        _read_file_meta_info(fh)
        return fh.read()


def _encode(ds: Dataset, implicit: bool = False, little: bool = True) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = little, implicit
    write_dataset(buffer, ds)
    return bytes(buffer.getvalue())


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # explicit VR LE
        "MR_small_implicit.dcm",  # implicit VR LE
        "MR_small_bigendian.dcm",  # explicit VR BE
        "MR_small_RLE.dcm",  # encapsulated
        "JPEG2000.dcm",
        "SC_rgb_jpeg.dcm",  # says explicit, is implicit: read as pydicom reads it
        "SC_ybr_full_422_uncompressed.dcm",  # subsampled native pixel data
        "image_dfl.dcm",  # deflated
        "rtplan.dcm",  # nested sequences
    ],
)
def test_real_files_pass(name: str) -> None:
    path = Path(get_testdata_file(name))  # type: ignore[arg-type]
    header = dcmread(path, stop_before_pixels=True)
    syntax = header.file_meta.TransferSyntaxUID
    shape = check_dataset(
        _body(path),
        implicit=syntax.is_implicit_VR,
        little_endian=syntax.is_little_endian,
        deflated=syntax.is_deflated,
        limits=LIMITS,
        native_pixels=not syntax.is_compressed,
    )
    # the header values the SCP files the instance under, read in the same pass
    for keyword in ("StudyInstanceUID", "Manufacturer"):
        expected = str(header.get(keyword) or "").strip() or None
        assert shape.texts.get(keyword) == expected


@pytest.mark.parametrize("implicit", [False, True])
def test_header_values_are_the_top_level_ones(implicit: bool) -> None:
    """A StudyInstanceUID inside a sequence after the top-level one (Request Attributes
    Sequence, legal) does not change what the instance is filed under; an empty value
    counts as absent."""
    item = Dataset()
    item.StudyInstanceUID = "9.9.9"
    ds = Dataset()
    ds.Manufacturer = ""
    ds.StudyInstanceUID = "1.2.3"
    ds.RequestAttributesSequence = Sequence([item])
    shape = walk(_encode(ds, implicit), implicit=implicit, little_endian=True, limits=LIMITS)
    assert shape.texts == {"StudyInstanceUID": "1.2.3"}


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm"])
def test_truncated_files_are_refused(name: str) -> None:
    path = Path(get_testdata_file(name))  # type: ignore[arg-type]
    syntax = dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    with pytest.raises(DatasetRefusedError) as info:
        check_dataset(
            _body(path),
            implicit=syntax.is_implicit_VR,
            little_endian=syntax.is_little_endian,
            deflated=False,
            limits=LIMITS,
        )
    assert info.value.status == STATUS_CANNOT_UNDERSTAND


def _nested(depth: int) -> Dataset:
    inner = Dataset()
    inner.CodeValue = "1"
    for _ in range(depth - 1):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    ds = Dataset()
    ds.ContentSequence = Sequence([inner])
    return ds


@pytest.mark.parametrize("implicit", [False, True])
def test_nesting_limit(implicit: bool) -> None:
    limits = DatasetLimits(max_depth=5)
    walk(_encode(_nested(5), implicit), implicit=implicit, little_endian=True, limits=limits)
    with pytest.raises(DatasetRefusedError) as info:
        walk(_encode(_nested(6), implicit), implicit=implicit, little_endian=True, limits=limits)
    assert info.value.status == STATUS_EXCEEDS_LIMITS


def test_element_limit() -> None:
    ds = Dataset()
    for i in range(20):
        ds.add_new(0x00091000 + i, "LO", "x")
    with pytest.raises(DatasetRefusedError):
        walk(_encode(ds), implicit=False, little_endian=True, limits=DatasetLimits(max_elements=10))


def test_deflate_bomb_is_refused_without_inflating_it_all() -> None:
    ds = Dataset()
    ds.add_new(0x00091010, "OB", bytes(4 * 1024 * 1024))
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = packer.compress(_encode(ds)) + packer.flush()
    with pytest.raises(DatasetRefusedError) as info:
        check_dataset(
            bomb,
            implicit=False,
            little_endian=True,
            deflated=True,
            limits=DatasetLimits(max_inflated_bytes=1024 * 1024),
        )
    assert info.value.status == STATUS_EXCEEDS_LIMITS


def _image(rows: int, cols: int, bits: int, pixels: bytes, frames: int | None = None) -> bytes:
    ds = Dataset()
    ds.SamplesPerPixel = 1
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns, ds.BitsAllocated = rows, cols, bits
    ds.add_new(0x7FE00010, "OW" if bits > 8 else "OB", pixels)
    return _encode(ds)


def test_pixel_data_length_matches_the_description() -> None:
    walk(_image(4, 4, 16, bytes(32)), implicit=False, little_endian=True, limits=LIMITS)
    walk(_image(3, 3, 8, bytes(10)), implicit=False, little_endian=True, limits=LIMITS)
    walk(_image(4, 4, 1, bytes(2)), implicit=False, little_endian=True, limits=LIMITS)
    walk(_image(4, 4, 8, bytes(32), 2), implicit=False, little_endian=True, limits=LIMITS)
    for short in (_image(4, 4, 16, bytes(16)), _image(4, 4, 8, bytes(16), 2)):
        with pytest.raises(DatasetRefusedError) as info:
            walk(short, implicit=False, little_endian=True, limits=LIMITS)
        assert info.value.status == STATUS_DOES_NOT_MATCH_SOP_CLASS


def test_a_value_claiming_more_than_it_carries_is_refused() -> None:
    body = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 0x7FFFFFF0) + bytes(65536)
    with pytest.raises(DatasetRefusedError) as info:
        walk(body, implicit=False, little_endian=True, limits=LIMITS)
    assert info.value.status == STATUS_CANNOT_UNDERSTAND
