"""Read greyscale DICOM images (and PNGs) as float32 arrays in [0, 1], higher = brighter.

Reading is tolerant (files without a Part 10 header are accepted when they parse as a DICOM
dataset with a SOP Instance UID; pydicom's validation mode stays at WARN), but what cannot
be turned into a trustworthy greyscale image raises `UnsupportedInputError` naming the file
and the problem: not DICOM, no pixel data, a non-image SOP class (SR, SEG, presentation
state...), a colour image, or a transfer syntax no installed plugin decodes.

Pixel pipeline of `read_image` (PS3.3 C.11, in this order):

1. Decode the frame with pydicom 3 and whatever plugins are installed (native, RLE, JPEG
   baseline/extended/lossless, JPEG-LS, JPEG 2000 and HTJ2K via Pillow / pylibjpeg / pyjpegls).
2. Modality LUT: the Modality LUT Sequence, or RescaleSlope/RescaleIntercept (also read from
   the functional groups of enhanced multi-frame objects).
3. VOI: the first VOI LUT of the VOI LUT Sequence, else the *first* window
   (WindowCenter/WindowWidth with VOILUTFunction LINEAR, LINEAR_EXACT or SIGMOID, PS3.3
   C.11.2.1.2). The output is normalised by the VOI output range: the window maps to [0, 1],
   a VOI LUT is divided by its largest possible entry (2**bits - 1).
4. Without a usable VOI: 8-bit unsigned data are divided by 255 *exactly* (the value range,
   mapped through the modality transform if it is not the identity), so a DICOM made from a
   PNG reads back as exactly ``png / 255``, as in training. Other data are scaled by the
   image's own min/max (a constant image gives zeros).
5. MONOCHROME1 is inverted (``1 - y``, computed as ``(hi - x) / (hi - lo)``, so that the
   MONOCHROME1 DICOM of a PNG also reads back exactly). PresentationLUTShape is not applied
   on top: in the image IODs it only restates MONOCHROME1 (INVERSE) or MONOCHROME2 (IDENTITY).

Multi-frame: `read_image` returns one frame (``frame=0`` by default); `read_frames` returns
all. A 3D volume assembled from the single-frame slices of a CT/MR series (sorted by
ImagePositionPatient) is read by `ai_engine.dicom_io.volume.read_series`, with the same
rules except that step 4's min/max is taken over the whole volume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_modality_lut, apply_voi
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from ai_engine.errors import UnsupportedInputError
from ai_engine.types import FloatArray

__all__ = [
    "SourceImage",
    "read_frames",
    "read_header",
    "read_image",
    "read_png",
]

logger = logging.getLogger(__name__)

_STORAGE_ROOT = "1.2.840.10008.5.1.4.1.1."
#: Storage SOP classes (a UID or the root of a family) that hold no image to analyse.
_NON_IMAGE_SOP_CLASSES: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.1.88", "structured report"),
    ("1.2.840.10008.5.1.4.1.1.11", "presentation state"),
    ("1.2.840.10008.5.1.4.1.1.9", "waveform"),
    ("1.2.840.10008.5.1.4.1.1.104", "encapsulated document"),
    ("1.2.840.10008.5.1.4.1.1.66", "segmentation, registration or raw data object"),
    ("1.2.840.10008.5.1.4.1.1.67", "real world value mapping"),
    ("1.2.840.10008.5.1.4.1.1.68", "surface"),
    ("1.2.840.10008.5.1.4.1.1.30", "parametric map"),
    ("1.2.840.10008.5.1.4.1.1.481.2", "RT dose"),
    ("1.2.840.10008.5.1.4.1.1.481.3", "RT structure set"),
    ("1.2.840.10008.5.1.4.1.1.481.5", "RT plan"),
    ("1.2.840.10008.5.1.4.1.1.481.8", "RT plan"),
)


@dataclass(frozen=True)
class SourceImage:
    """One greyscale frame of a DICOM file, ready for preprocessing.

    Attributes:
        dataset: the file's dataset without its pixel data (header only), for provenance
            and to reference from SEG/SR outputs.
        pixels: (rows, cols) float32 in [0, 1], higher = brighter (MONOCHROME2 sense).
        path: the file it came from.
        frame: 0-based frame index within the file.
        number_of_frames: frames in the file.
    """

    dataset: Dataset
    pixels: FloatArray
    path: Path
    frame: int = 0
    number_of_frames: int = 1


def _looks_like_instance(ds: Dataset) -> bool:
    return "SOPInstanceUID" in ds or "PixelData" in ds


def _dcmread(path: Path, *, stop_before_pixels: bool) -> Dataset:
    """Tolerant dcmread: Part 10 first, then ``force`` for files without a preamble."""
    path = Path(path)
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        pass
    except (OSError, ValueError, EOFError) as exc:
        raise UnsupportedInputError(f"{path.name}: cannot be read as DICOM ({exc})") from exc
    # No preamble/"DICM": some archives store bare datasets. Accept only if it parses
    # into something with a SOP Instance UID or pixel data, else random bytes would "parse".
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
        ok = len(ds) > 0 and _looks_like_instance(ds)
    except Exception as exc:  # forced parsing of arbitrary bytes fails in many ways
        raise UnsupportedInputError(
            f"{path.name}: not a DICOM file ({type(exc).__name__})"
        ) from exc
    if not ok:
        raise UnsupportedInputError(f"{path.name}: not a DICOM file (no DICM header, no instance)")
    logger.debug("read a DICOM file without Part 10 header")
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:  # the pixel decoders need it
        ds.file_meta.TransferSyntaxUID = _transfer_syntax(ds)
    return ds


def read_header(path: Path) -> Dataset:
    """The dataset of a DICOM file without its pixel data (any SOP class).

    Args:
        path: the file.

    Returns:
        The dataset (``stop_before_pixels=True``), with ``file_meta`` when the file has one.

    Raises:
        UnsupportedInputError: not a DICOM file, or one without SOP Instance UID and
            Study Instance UID.
    """
    ds = _dcmread(path, stop_before_pixels=True)
    _require_uids(ds, Path(path))
    return ds


def _require_uids(ds: Dataset, path: Path) -> None:
    missing = [k for k in ("SOPInstanceUID", "StudyInstanceUID") if not ds.get(k)]
    if missing:
        raise UnsupportedInputError(
            f"{path.name}: not a DICOM composite instance (no {' or '.join(missing)})"
        )


def _check_image(ds: Dataset, path: Path) -> None:
    """Raise UnsupportedInputError unless ``ds`` is a greyscale image we can decode."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class.startswith("1.2.840.10008.") and not sop_class.startswith(_STORAGE_ROOT):
        raise UnsupportedInputError(
            f"{path.name}: SOP class {sop_class} ({UID(sop_class).name}) is not an image"
        )
    for root, kind in _NON_IMAGE_SOP_CLASSES:
        if sop_class == root or sop_class.startswith(root + "."):
            raise UnsupportedInputError(
                f"{path.name}: SOP class {sop_class} ({UID(sop_class).name}) is a {kind}, "
                "not an image"
            )
    if "PixelData" not in ds:
        other = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        detail = f" ({other[0]} is not supported)" if other else ""
        raise UnsupportedInputError(f"{path.name}: no PixelData{detail}")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedInputError(
            f"{path.name}: colour image (PhotometricInterpretation {photometric or 'missing'}, "
            f"SamplesPerPixel {samples}); a greyscale image is expected"
        )
    tsyntax = _transfer_syntax(ds)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise UnsupportedInputError(
            f"{path.name}: no decoder for transfer syntax {tsyntax} ({tsyntax.name})"
        ) from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise UnsupportedInputError(
            f"{path.name}: no installed decoder for transfer syntax {tsyntax} ({tsyntax.name}): "
            f"{missing}"
        )


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return UID(meta.TransferSyntaxUID)
    # Bare dataset read with force: pydicom knows how it parsed it.
    implicit_vr, little_endian = ds.original_encoding
    if implicit_vr:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little_endian is not False else ExplicitVRBigEndian


def read_image(path: Path, *, frame: int = 0) -> SourceImage:
    """One greyscale frame of a DICOM image as float32 in [0, 1] (see the module docstring).

    Args:
        path: the DICOM file.
        frame: 0-based frame of a multi-frame file (default: the first).

    Returns:
        The frame and the header.

    Raises:
        UnsupportedInputError: not DICOM, no pixel data, not an image SOP class, colour,
            an undecodable transfer syntax or corrupt pixel data, or no such frame.
    """
    path = Path(path)
    ds = _dcmread(path, stop_before_pixels=False)
    _require_uids(ds, path)
    _check_image(ds, path)
    n_frames = _number_of_frames(ds)
    if not 0 <= frame < n_frames:
        raise UnsupportedInputError(f"{path.name}: frame {frame} requested, file has {n_frames}")
    if n_frames > 1:
        logger.info("multi-frame file: reading frame %d of %d", frame, n_frames)
    stored = _decode(ds, path, frame if n_frames > 1 else None)
    pixels = _to_display(stored, ds, frame)
    return SourceImage(_header(ds), pixels, path, frame, n_frames)


def read_frames(path: Path) -> list[SourceImage]:
    """Every frame of a (multi-frame) greyscale DICOM image, as `read_image` reads one.

    Args:
        path: the DICOM file.

    Returns:
        One SourceImage per frame, sharing the same header dataset.

    Raises:
        UnsupportedInputError: as `read_image`.
    """
    path = Path(path)
    ds = _dcmread(path, stop_before_pixels=False)
    _require_uids(ds, path)
    _check_image(ds, path)
    n_frames = _number_of_frames(ds)
    stored_all = _decode(ds, path, None)
    if n_frames == 1:
        stored_all = stored_all[np.newaxis]
    header = _header(ds)
    return [
        SourceImage(header, _to_display(stored_all[i], ds, i), path, i, n_frames)
        for i in range(n_frames)
    ]


def read_png(path: Path) -> FloatArray:
    """A greyscale PNG as float32 (rows, cols) in [0, 1]: 8-bit / 255, 16-bit / 65535.

    Palette, RGB or LA images are accepted when all their colour channels are equal.

    Args:
        path: the PNG.

    Returns:
        The image.

    Raises:
        UnsupportedInputError: not a readable image, or a colour one.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(im, dtype=np.float32) / np.float32(65535.0)
            if mode == "1":
                return np.asarray(im.convert("L"), dtype=np.float32) / np.float32(255.0)
            if mode == "L":
                return np.asarray(im, dtype=np.float32) / np.float32(255.0)
            if mode in ("P", "PA", "RGB", "RGBA", "LA"):
                rgb = np.asarray(im.convert("RGB"))
                if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(
                    rgb[..., 1], rgb[..., 2]
                ):
                    return rgb[..., 0].astype(np.float32) / np.float32(255.0)
                raise UnsupportedInputError(
                    f"{path.name}: colour image (mode {mode}); grey expected"
                )
    except OSError as exc:
        raise UnsupportedInputError(f"{path.name}: not a readable image ({exc})") from exc
    raise UnsupportedInputError(f"{path.name}: unsupported image mode {mode!r}")


def _header(ds: Dataset) -> Dataset:
    """The dataset without pixel data (a new top-level Dataset; sequences are shared)."""
    header = Dataset()
    for elem in ds:
        if elem.tag.group == 0x7FE0:  # (Float/DoubleFloat) PixelData
            continue
        header.add(elem)
    if hasattr(ds, "file_meta"):
        header.file_meta = ds.file_meta
    implicit_vr, little_endian = ds.original_encoding
    header.set_original_encoding(implicit_vr, little_endian, ds.original_character_set)
    return header


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _decode(ds: Dataset, path: Path, index: int | None) -> npt.NDArray[Any]:
    try:
        arr: npt.NDArray[Any] = pixel_array(ds, index=index)
    except Exception as exc:  # decoders raise anything on corrupt data
        raise UnsupportedInputError(
            f"{path.name}: pixel data could not be decoded "
            f"({_transfer_syntax(ds).name}: {type(exc).__name__}: {exc})"
        ) from exc
    expected = (int(ds.Rows), int(ds.Columns))
    if arr.shape[-2:] != expected:
        raise UnsupportedInputError(
            f"{path.name}: decoded pixels have shape {arr.shape}, header says {expected}"
        )
    return arr


def _frame_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """Item of a functional group macro (shared, else per-frame) of an enhanced object."""
    for groups, index in (
        ("SharedFunctionalGroupsSequence", 0),
        ("PerFrameFunctionalGroupsSequence", frame),
    ):
        seq = ds.get(groups)
        if seq is None or len(seq) <= index:
            continue
        inner = seq[index].get(sequence)
        if inner:
            item: Dataset = inner[0]
            return item
    return None


def _first_float(value: Any) -> float | None:
    """First value of a possibly multi-valued DS/IS element; None if absent or not numeric."""
    if value is None or value == "":
        return None
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        candidates = [value]
    else:
        candidates = list(value)
    if not candidates:
        return None
    try:
        result = float(candidates[0])
    except (TypeError, ValueError):
        return None
    return result if np.isfinite(result) else None


def _modality(
    stored: npt.NDArray[Any], ds: Dataset, frame: int
) -> tuple[npt.NDArray[np.float64], tuple[float, float] | None]:
    """Apply the Modality LUT / rescale.

    Returns:
        The values, and the (lo, hi) image of the stored 8-bit range [0, 255] when the data
        are 8-bit unsigned and the transform is linear (else None).
    """
    eight_bit = (
        int(ds.get("BitsStored", 0) or 0) == 8 and int(ds.get("PixelRepresentation", 0) or 0) == 0
    )
    if "ModalityLUTSequence" in ds:
        values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
        return values, None
    source: Dataset = ds
    if "RescaleSlope" not in ds:
        item = _frame_item(ds, frame, "PixelValueTransformationSequence")
        if item is not None:
            source = item
    slope = _first_float(source.get("RescaleSlope"))
    intercept = _first_float(source.get("RescaleIntercept"))
    slope = 1.0 if slope is None or slope == 0.0 else slope
    intercept = 0.0 if intercept is None else intercept
    values = stored.astype(np.float64)
    if slope != 1.0 or intercept != 0.0:
        values = values * slope + intercept
    if not eight_bit:
        return values, None
    ends = sorted((intercept, 255.0 * slope + intercept))
    return values, (ends[0], ends[1])


def _window(ds: Dataset, frame: int) -> tuple[float, float, str] | None:
    """(center, width, function) of the first usable window, or None."""
    source: Dataset | None = ds
    if "WindowCenter" not in ds:
        source = _frame_item(ds, frame, "FrameVOILUTSequence")
    if source is None:
        return None
    center = _first_float(source.get("WindowCenter"))
    width = _first_float(source.get("WindowWidth"))
    function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if center is None or width is None:
        return None
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        logger.warning("unknown VOILUTFunction %s; using LINEAR", function)
        function = "LINEAR"
    if width <= 0 or (function == "LINEAR" and width < 1):
        logger.warning("ignoring an invalid window width %s", width)
        return None
    return center, width, function


def _linear(values: npt.NDArray[np.float64], lo: float, hi: float, invert: bool) -> FloatArray:
    """Map [lo, hi] to [0, 1] (clipped), or to [1, 0] when inverting."""
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    out = (hi - values) / (hi - lo) if invert else (values - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _to_display(stored: npt.NDArray[Any], ds: Dataset, frame: int) -> FloatArray:
    """Modality LUT, VOI, normalisation and MONOCHROME1 inversion of one frame."""
    invert = _is_monochrome1(ds)
    values, eight_bit_range = _modality(stored, ds, frame)
    shown = _apply_voi(values, ds, frame, invert, eight_bit_range)
    if shown is not None:
        return shown
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        logger.warning("constant image: all pixels are %s", lo)
    return _linear(values, lo, hi, invert)


def _is_monochrome1(ds: Dataset) -> bool:
    return str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"


def _apply_voi(
    values: npt.NDArray[np.float64],
    ds: Dataset,
    frame: int,
    invert: bool,
    eight_bit_range: tuple[float, float] | None,
) -> FloatArray | None:
    """Steps 3-5 of the module docstring for modality values, or None for the min/max rule.

    Returns None when the image has no usable VOI LUT or window and is not 8-bit: the caller
    then scales by a min/max of its choice (the image's own in `read_image`, the whole
    volume's in `volume.read_series`).
    """
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        item = ds.VOILUTSequence[0]
        lut_bits = int(item.LUTDescriptor[2]) if "LUTDescriptor" in item else 16
        lut_input = np.rint(values).astype(np.int64)  # LUT inputs are integers
        mapped = np.asarray(apply_voi(lut_input, ds, index=0), dtype=np.float64)
        top = float(2**lut_bits - 1)
        if mapped.size and float(mapped.max()) > top:  # descriptor lies (common quirk)
            top = float(2 ** int(np.ceil(np.log2(float(mapped.max()) + 1))) - 1)
        return _linear(mapped, 0.0, top, invert)

    window = _window(ds, frame)
    if window is not None:
        center, width, function = window
        if function == "SIGMOID":
            y = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
            y = 1.0 - y if invert else y
            return np.clip(y, 0.0, 1.0).astype(np.float32)
        if function == "LINEAR_EXACT":
            lo, hi = center - width / 2.0, center + width / 2.0
        else:  # LINEAR, PS3.3 C.11.2.1.2.1
            lo = center - 0.5 - (width - 1.0) / 2.0
            hi = center - 0.5 + (width - 1.0) / 2.0
            if hi <= lo:  # width 1: a threshold at center - 0.5
                return _linear((values > center - 0.5).astype(np.float64), 0.0, 1.0, invert)
        return _linear(values, lo, hi, invert)

    if eight_bit_range is not None:
        return _linear(values, eight_bit_range[0], eight_bit_range[1], invert)
    return None
