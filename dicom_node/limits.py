"""Receive-time limits on a data set's structure, checked before the SCP acknowledges it.

The SCP must never answer success for an instance the node then cannot process (PS3.4
B.2.3: success hands the responsibility to us). A peer controls the structure of what it
sends, so before an instance is spooled `check_dataset` walks its encoded bytes once,
iteratively (no recursion, no `Dataset` is built, pixel data is skipped, not copied) and
refuses:

* a sequence nesting deeper than ``max_depth`` (a data set nested thousands deep made the
  router raise `RecursionError` at every pass),
* more than ``max_elements`` data elements in all,
* a deflated data set that inflates to more than ``max_inflated_bytes`` (a 345 KB deflated
  data set once took 0.6 GB of the node's memory),
* a value, item or sequence that runs past the end of the data (e.g. PixelData that claims
  0x7FFFFFF0 bytes and carries 64 KiB),
* native PixelData whose length is not Rows x Columns x SamplesPerPixel x NumberOfFrames x
  BitsAllocated / 8 (rounded up to a byte, then to an even length).

Every refusal is a `DatasetRefusedError` with a ``status`` (the DIMSE failure status the SCP
answers) and a reason without values from the data set (no PHI).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from mmap import mmap

from pydicom.datadict import dictionary_VR

#: What `walk` reads: bytes, or a memory-mapped file (slicing gives bytes, struct reads it).
Buffer = bytes | mmap

#: DIMSE C-STORE failure statuses (PS3.4 B.2.3) used for refusals.
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_EXCEEDS_LIMITS = 0xC211
STATUS_DOES_NOT_MATCH_SOP_CLASS = 0xA900

#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
#: Top-level attributes the pixel-length check reads (tag -> keyword).
_PIXEL_DESCRIPTION = {
    0x00280002: "SamplesPerPixel",
    0x00280004: "PhotometricInterpretation",
    0x00280008: "NumberOfFrames",
    0x00280010: "Rows",
    0x00280011: "Columns",
    0x00280100: "BitsAllocated",
}
#: Top-level text attributes the walk hands back (tag -> keyword): what the SCP files an
#: instance under and how it knows its own outputs.
HEADER_TEXTS = {
    0x00080070: "Manufacturer",
    0x0020000D: "StudyInstanceUID",
}


class DatasetRefusedError(Exception):
    """The data set is refused at receive time.

    Args:
        status: the DIMSE failure status to answer.
        reason: why, without any value from the data set.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class DatasetLimits:
    """Limits on one received data set.

    Attributes:
        max_depth: deepest sequence nesting accepted (1 = sequences of plain items).
        max_elements: data elements in all (nested ones included).
        max_inflated_bytes: size of a deflated data set once inflated.
    """

    max_depth: int = 32
    max_elements: int = 1_000_000
    max_inflated_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class DatasetShape:
    """What the walk found.

    Attributes:
        elements: data elements in all.
        depth: deepest sequence nesting.
        pixel_data_length: the defined length of top-level PixelData (None: absent or
            encapsulated).
        texts: the top-level values of `HEADER_TEXTS` that are present, as text (decoded
            as Latin-1, so any bytes decode; spaces and NULs stripped; empty ones left out):
            what the SCP needs of the header, read in the same pass.
    """

    elements: int
    depth: int
    pixel_data_length: int | None
    texts: dict[str, str] = field(default_factory=dict)


def inflate(data: bytes, limit: int) -> bytes:
    """Inflate a Deflated Explicit VR Little Endian data set, at most ``limit`` bytes.

    Args:
        data: the deflated bytes as received.
        limit: the largest inflated size accepted.

    Returns:
        The inflated data set.

    Raises:
        DatasetRefusedError: it inflates to more than ``limit`` bytes, or is not deflate data.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise DatasetRefusedError(
            STATUS_CANNOT_UNDERSTAND, "deflated data set cannot be inflated"
        ) from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise DatasetRefusedError(
            STATUS_EXCEEDS_LIMITS, f"deflated data set inflates to more than {limit} bytes"
        )
    return out


@dataclass
class _Context:
    kind: str  # "dataset" (top level or an item), "sequence" or "fragments"
    end: int | None  # absolute end offset; None = undefined length
    implicit: bool


def _malformed(what: str) -> DatasetRefusedError:
    return DatasetRefusedError(STATUS_CANNOT_UNDERSTAND, f"malformed data set: {what}")


def walk(
    data: Buffer,
    *,
    start: int = 0,
    implicit: bool,
    little_endian: bool,
    limits: DatasetLimits,
    native_pixels: bool = True,
) -> DatasetShape:
    """Walk an encoded data set's elements and items without building a `Dataset`.

    Args:
        data: the data set bytes (no file meta; inflated), or a buffer holding them from
            ``start`` on (e.g. a memory-mapped Part 10 file: nothing is copied but the
            element headers and the few pixel-description values).
        start: offset of the data set in ``data``.
        implicit: Implicit VR encoding.
        little_endian: byte order.
        limits: the limits.
        native_pixels: the transfer syntax is native (not encapsulated): check PixelData's
            length against the pixel description.

    Returns:
        Its shape.

    Raises:
        DatasetRefusedError: a limit is exceeded or the structure is broken.
    """
    order = "<" if little_endian else ">"
    u16, u32 = struct.Struct(order + "H"), struct.Struct(order + "I")
    le16, le32 = struct.Struct("<H"), struct.Struct("<I")
    if not implicit and len(data) >= start + 6 and not data[start + 4 : start + 6].isalpha():
        implicit = True  # explicit VR announced, implicit VR sent: pydicom reads it so too
    stack = [_Context("dataset", len(data), implicit)]
    pos, elements, depth, max_depth = start, 0, 0, 0
    values: dict[str, int] = {}
    texts: dict[str, str] = {}
    pixel_length: int | None = None
    while True:
        ctx = stack[-1]
        limit = len(data) if ctx.end is None else ctx.end
        if pos >= limit:
            if pos > limit:
                raise _malformed("an element runs past the end of its item or sequence")
            if len(stack) == 1:
                break
            if ctx.end is None:  # data ended inside undefined lengths: tolerated as pydicom
                break
            stack.pop()
            depth -= ctx.kind == "sequence"
            continue
        if pos + 8 > limit:
            raise _malformed("truncated element header")
        # item tags and delimiters are little endian in implicit contexts (nested UN)
        g16, g32 = (le16, le32) if ctx.implicit and not little_endian else (u16, u32)
        tag = (g16.unpack_from(data, pos)[0] << 16) | g16.unpack_from(data, pos + 2)[0]
        if ctx.kind in ("sequence", "fragments"):
            length = g32.unpack_from(data, pos + 4)[0]
            pos += 8
            if tag == _SEQUENCE_DELIMITER:
                if ctx.end is not None:
                    raise _malformed("sequence delimiter in a sequence of defined length")
                stack.pop()
                depth -= ctx.kind == "sequence"
                continue
            if tag != _ITEM:
                raise _malformed("an element where an item was expected")
            if ctx.kind == "fragments" or length != _UNDEFINED:
                if length == _UNDEFINED:
                    raise _malformed("pixel data fragment of undefined length")
                if pos + length > limit:
                    raise _malformed("an item runs past the end of the data")
                if ctx.kind == "fragments":
                    pos += length
                    continue
                stack.append(_Context("dataset", pos + length, ctx.implicit))
            else:
                stack.append(_Context("dataset", None, ctx.implicit))
            continue
        if tag == _ITEM_DELIMITER:
            pos += 8
            if len(stack) == 1 or ctx.end is not None:
                raise _malformed("item delimiter outside an item of undefined length")
            stack.pop()
            continue
        elements += 1
        if elements > limits.max_elements:
            raise DatasetRefusedError(
                STATUS_EXCEEDS_LIMITS, f"more than {limits.max_elements} data elements"
            )
        if ctx.implicit:
            length = g32.unpack_from(data, pos + 4)[0]
            header = 8
            try:
                vr = dictionary_VR(tag).encode() if tag >> 16 & 1 == 0 else b"UN"
            except KeyError:
                vr = b"UN"
            if length == _UNDEFINED and vr not in (b"OB", b"OW", b"OB or OW"):
                vr = b"SQ"  # implicit VR: an undefined length is a sequence (as pydicom reads)
        else:
            vr = data[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                if pos + 12 > limit:
                    raise _malformed("truncated element header")
                length = u32.unpack_from(data, pos + 8)[0]
                header = 12
            else:
                length = u16.unpack_from(data, pos + 6)[0]
                header = 8
        pos += header
        nested_implicit = ctx.implicit or (vr == b"UN" and length == _UNDEFINED)
        if vr == b"SQ" or (vr == b"UN" and length == _UNDEFINED):
            depth += 1
            max_depth = max(max_depth, depth)
            if depth > limits.max_depth:
                raise DatasetRefusedError(
                    STATUS_EXCEEDS_LIMITS, f"sequences nested deeper than {limits.max_depth}"
                )
            if length == _UNDEFINED:
                stack.append(_Context("sequence", None, nested_implicit))
            else:
                if pos + length > limit:
                    raise _malformed("a sequence runs past the end of the data")
                stack.append(_Context("sequence", pos + length, nested_implicit))
            continue
        if length == _UNDEFINED:
            if tag != _PIXEL_DATA:
                raise _malformed("a value of undefined length that is not pixel data")
            stack.append(_Context("fragments", None, ctx.implicit))
            continue
        if pos + length > limit:
            raise _malformed("a value runs past the end of the data")
        if len(stack) == 1:
            if tag == _PIXEL_DATA:
                pixel_length = length
            elif tag in _PIXEL_DESCRIPTION:
                raw = data[pos : pos + length]
                if tag == 0x00280004:  # PhotometricInterpretation (CS)
                    values["Subsampled422"] = int(raw.strip(b" \x00") == b"YBR_FULL_422")
                elif tag == 0x00280008:  # IS
                    text = raw.decode("ascii", "replace").strip(" \x00")
                    if text.isdigit():
                        values["NumberOfFrames"] = int(text)
                elif length >= 2:
                    values[_PIXEL_DESCRIPTION[tag]] = u16.unpack_from(raw)[0]
            elif tag in HEADER_TEXTS:
                text = data[pos : pos + length].decode("latin-1").strip(" \x00")
                if text:
                    texts[HEADER_TEXTS[tag]] = text
        pos += length
    if native_pixels:
        _check_pixel_length(values, pixel_length)
    return DatasetShape(elements, max_depth, pixel_length, texts)


def expected_pixel_bytes(values: dict[str, int]) -> int | None:
    """Bytes of native PixelData the pixel description asks for (None: not described).

    Args:
        values: Rows, Columns, SamplesPerPixel, NumberOfFrames, BitsAllocated (ints).

    Returns:
        Rows x Columns x SamplesPerPixel x NumberOfFrames x BitsAllocated / 8, rounded up.
    """
    if "Rows" not in values or "Columns" not in values or "BitsAllocated" not in values:
        return None
    samples = values.get("SamplesPerPixel", 1)
    bits = values["Rows"] * values["Columns"] * max(1, values.get("NumberOfFrames", 1))
    bits *= values["BitsAllocated"]
    if values.get("Subsampled422"):  # YBR_FULL_422: two samples per pixel on average
        return (bits * 2 + 7) // 8
    return (bits * samples + 7) // 8


def _check_pixel_length(values: dict[str, int], length: int | None) -> None:
    if length is None:
        return
    expected = expected_pixel_bytes(values)
    if expected is None:
        return
    if length < expected:  # trailing padding beyond the frames is tolerated, as pydicom does
        raise DatasetRefusedError(
            STATUS_DOES_NOT_MATCH_SOP_CLASS,
            f"PixelData has {length} bytes; the pixel description needs {expected}",
        )


def check_dataset(
    data: Buffer,
    *,
    start: int = 0,
    implicit: bool,
    little_endian: bool,
    deflated: bool,
    limits: DatasetLimits,
    native_pixels: bool = True,
) -> DatasetShape:
    """Check a received data set against ``limits`` (a deflated one is inflated first).

    Args:
        data: the data set as received (no file meta), or a buffer holding it from
            ``start`` on (see `walk`).
        start: offset of the data set in ``data``.
        implicit: Implicit VR.
        little_endian: byte order.
        deflated: Deflated Explicit VR Little Endian.
        limits: the limits.
        native_pixels: the transfer syntax is native (PixelData's length is checked).

    Returns:
        What the walk found, with the header values the SCP needs.

    Raises:
        DatasetRefusedError: refused, with the status to answer.
    """
    plain = inflate(data[start:], limits.max_inflated_bytes) if deflated else data
    try:
        shape = walk(
            plain,
            start=0 if deflated else start,
            implicit=implicit,
            little_endian=little_endian,
            limits=limits,
            native_pixels=native_pixels,
        )
    except (struct.error, IndexError, UnicodeError) as exc:  # a structure the walk missed
        raise _malformed("unreadable element") from exc
    return shape
