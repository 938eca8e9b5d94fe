"""Colour Secondary Capture with the anomaly map burned in (for PACS that show no SEG/PM/SR).

`write_overlay_sc` renders the analysed image in grey with the anomaly map on top and the
label `OVERLAY_LABEL` ("AI anomaly map", en dash, "research use only") burned into the
top-left corner, and wraps it in a Secondary Capture Image (SOP class
1.2.840.10008.5.1.4.1.1.7, RGB, 8 bits) of the source's study (highdicom
``SCImage.from_ref_dataset``, so patient and study attributes come from the source).

Rendering:

- Grey: the image as read (`reader.read_image(...).pixels`, [0, 1], MONOCHROME2 sense).
- Map: pixels with ``anomaly >= threshold_fraction`` (0.5 = the first calibrated pixel
  threshold, as in the fractional SEG) are blended with a colour from a perceptual colour
  table (the *inferno* map of matplotlib / viridisLite, 10 samples, interpolated in sRGB;
  no matplotlib dependency). The colour runs from dark purple (at the threshold) to pale
  yellow (1.0); opacity rises from 45 % to 75 %. Pixels below the threshold stay grey, so
  the anatomy remains readable.
- Small images are enlarged by an integer factor (nearest neighbour) to at least 384 columns
  so the label is legible; the SC therefore need not have the source's matrix size and
  carries no pixel spacing (a Secondary Capture is not for measurement).
- The label uses Pillow's default font (``ImageFont.load_default(size=...)``, Aileron). That
  font has no en dash: characters it lacks would be drawn as empty boxes, so they are
  replaced by ASCII look-alikes (the en dash becomes "-") before drawing.

DICOM attributes beyond highdicom's: BurnedInAnnotation YES; ImageType (DERIVED, SECONDARY);
SourceImageSequence (the source, purpose (121322, DCM, "Source image for image processing
operation")); DerivationDescription with model id, name, version and the full weights
sha256; Manufacturer = `markers.OUTPUT_MANUFACTURER` (also SecondaryCaptureDevice...),
ManufacturerModelName = model name, SoftwareVersions = model version; ConversionType WSD;
SeriesDescription "RESEARCH USE ONLY: AI anomaly overlay (not for clinical use)", series
number 9005; PatientOrientation from the source (or derived from its
ImageOrientationPatient for CT/MR; empty when unknown, Type 2C); Laterality as the source,
else empty (Type 2C; highdicom leaves it out, which dciodvfy reports as an error).
"""

from __future__ import annotations

import logging
import math
import warnings

import highdicom as hd
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from ai_engine.dicom_io import _iod_lookup, markers
from ai_engine.dicom_io._common import (
    check_unit_interval,
    laterality_from_sources,
    new_uid,
    prepare_source,
    series_description,
)
from ai_engine.types import AlgorithmInfo

__all__ = ["OVERLAY_LABEL", "OVERLAY_SERIES_NUMBER", "render_overlay", "write_overlay_sc"]

_iod_lookup.install()  # highdicom's IOD table scans, cached (see the module)
logger = logging.getLogger(__name__)

OVERLAY_SERIES_NUMBER = 9005
#: The label burned into every overlay (drawn with ASCII substitutes where the font lacks a
#: glyph).
OVERLAY_LABEL = "AI anomaly map \u2013 research use only"
#: Smallest number of columns of the rendered image (small images are enlarged).
MIN_COLUMNS = 384

#: The inferno colour map at 0, 1/9, ..., 1 (sRGB, 0..255).
_INFERNO = np.array(
    [
        (0x00, 0x00, 0x04),
        (0x1B, 0x0C, 0x42),
        (0x4B, 0x0C, 0x6B),
        (0x78, 0x1C, 0x6D),
        (0xA5, 0x2C, 0x60),
        (0xCF, 0x44, 0x46),
        (0xED, 0x69, 0x25),
        (0xFB, 0x9A, 0x06),
        (0xF7, 0xD0, 0x3C),
        (0xFC, 0xFF, 0xA4),
    ],
    dtype=np.float64,
)
#: Part of the colour table used for the map (the darkest tenth vanishes on grey).
_TABLE_START = 0.2
_ALPHA_MIN, _ALPHA_MAX = 0.45, 0.75
_ASCII_SUBSTITUTES = {"\u2013": "-", "\u2014": "-", "\u2018": "'", "\u2019": "'"}

_SOURCE_PURPOSE = hd.sr.CodedConcept("121322", "DCM", "Source image for image processing operation")


def colour_table(t: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Inferno colours of values in [0, 1] (linear interpolation between the 10 samples).

    Args:
        t: values in [0, 1], any shape.

    Returns:
        RGB in 0..255, shape ``t.shape + (3,)``.
    """
    positions = np.linspace(0.0, 1.0, len(_INFERNO))
    flat = np.clip(np.asarray(t, dtype=np.float64).ravel(), 0.0, 1.0)
    channels = [np.interp(flat, positions, _INFERNO[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).reshape(*np.shape(t), 3)


def _drawable(text: str, font: ImageFont.FreeTypeFont) -> str:
    """``text`` with characters the font has no glyph for replaced by ASCII look-alikes."""
    missing = np.asarray(font.getmask("\U000f0000"))  # private use plane: the .notdef box
    out = []
    for char in text:
        if not char.isascii() and np.array_equal(np.asarray(font.getmask(char)), missing):
            char = _ASCII_SUBSTITUTES.get(char, "?")
        out.append(char)
    return "".join(out)


def _draw_label(image: Image.Image, text: str) -> None:
    width = image.width
    size = max(9, round(width / 36))
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):  # Pillow without FreeType
        logger.warning("Pillow has no FreeType; the overlay label uses the bitmap font")
        label = text.encode("ascii", "replace").decode()
        ImageDraw.Draw(image).text((4, 4), label, fill=(255, 255, 255))
        return
    label = _drawable(text, font)
    while size > 9 and font.getlength(label) > 0.9 * width:
        size -= 1
        font = ImageFont.load_default(size=size)
    pad = max(2, size // 4)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((pad * 2, pad * 2), label, font=font)
    draw.rectangle((left - pad, top - pad, right + pad, bottom + pad), fill=(0, 0, 0))
    draw.text((pad * 2, pad * 2), label, font=font, fill=(255, 255, 255))


def render_overlay(
    pixels: npt.NDArray[np.floating],
    anomaly: npt.NDArray[np.floating],
    *,
    threshold_fraction: float = 0.5,
    label: str = OVERLAY_LABEL,
) -> npt.NDArray[np.uint8]:
    """The image in grey with the map blended on top and the label burned in.

    Args:
        pixels: (rows, cols) float in [0, 1], the image as read.
        anomaly: (rows, cols) float in [0, 1], the scaled anomaly map (0.5 = first threshold).
        threshold_fraction: map values at or above it are coloured.
        label: text burned into the top-left corner.

    Returns:
        (rows * k, cols * k, 3) uint8 RGB, k = the smallest integer factor that gives at
        least `MIN_COLUMNS` columns (1 for images that are wide enough).

    Raises:
        ValueError: shapes differ or are not 2D, values not finite or outside [0, 1], or a
            threshold outside (0, 1).
    """
    grey = check_unit_interval("pixels", np.asarray(pixels))
    amap = check_unit_interval("anomaly map", np.asarray(anomaly))
    if grey.ndim != 2 or grey.shape != amap.shape:
        raise ValueError(
            f"pixels {grey.shape} and anomaly map {amap.shape} must be the same (rows, cols)"
        )
    if not 0.0 < threshold_fraction < 1.0:
        raise ValueError(f"threshold_fraction must lie in (0, 1), not {threshold_fraction}")
    base = np.repeat(grey.astype(np.float64)[..., np.newaxis] * 255.0, 3, axis=-1)
    t = np.clip((amap - threshold_fraction) / (1.0 - threshold_fraction), 0.0, 1.0)
    colour = colour_table(_TABLE_START + (1.0 - _TABLE_START) * t)
    alpha = np.where(amap >= threshold_fraction, _ALPHA_MIN + (_ALPHA_MAX - _ALPHA_MIN) * t, 0.0)
    blended = (1.0 - alpha[..., np.newaxis]) * base + alpha[..., np.newaxis] * colour
    rgb = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    factor = max(1, math.ceil(MIN_COLUMNS / rgb.shape[1]))
    if factor > 1:
        rgb = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)
    image = Image.fromarray(rgb, mode="RGB")
    _draw_label(image, label)
    out: npt.NDArray[np.uint8] = np.asarray(image, dtype=np.uint8).copy()
    return out


def _orientation_letter(vector: npt.NDArray[np.float64]) -> str:
    """PatientOrientation letters of a direction in LPS patient coordinates (PS3.3 C.7.6.1.1.1).

    Components smaller than 0.25 of the largest are ignored (oblique directions get up to
    three letters, the main one first).
    """
    letters = (("L", "R"), ("P", "A"), ("H", "F"))
    order = np.argsort(-np.abs(vector))
    biggest = float(np.abs(vector).max())
    text = ""
    for axis in order:
        value = float(vector[axis])
        if abs(value) >= 0.25 * biggest and abs(value) > 1e-6:
            text += letters[axis][0] if value > 0 else letters[axis][1]
    return text


def _patient_orientation(source: Dataset) -> tuple[str, str] | None:
    values = [str(v) for v in source.get("PatientOrientation") or []]
    if len(values) == 2 and all(values):
        return values[0], values[1]
    iop = source.get("ImageOrientationPatient")
    if iop is not None and len(iop) == 6:
        cosines = np.asarray([float(v) for v in iop], dtype=np.float64)
        row, col = _orientation_letter(cosines[:3]), _orientation_letter(cosines[3:])
        if row and col:
            return row, col
    return None


def write_overlay_sc(
    source: Dataset,
    pixels: npt.NDArray[np.floating],
    anomaly: npt.NDArray[np.floating],
    algorithm: AlgorithmInfo,
    *,
    threshold_fraction: float = 0.5,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
    series_number: int = OVERLAY_SERIES_NUMBER,
) -> hd.sc.SCImage:
    """A colour Secondary Capture of the image with the anomaly map burned in.

    Args:
        source: the analysed image (header is enough, e.g. `SourceImage.dataset`).
        pixels: (rows, cols) float32 in [0, 1] on the source grid: the image as read.
        anomaly: (rows, cols) float32 in [0, 1] on the source grid: the scaled map
            (0.5 = the first pixel threshold).
        algorithm: the model that made the map.
        threshold_fraction: map values at or above it are coloured (default 0.5).
        series_instance_uid: series to put the SC into; new if None.
        instance_number: InstanceNumber.
        series_number: SeriesNumber (default 9005).

    Returns:
        The SCImage (a pydicom Dataset with file meta; write it with `convert.save`).

    Raises:
        ValueError: arrays of the wrong shape or outside [0, 1], a bad threshold, or a source
            without the UIDs a reference needs.
    """
    expected = (int(source.Rows), int(source.Columns))
    for name, array in (("pixels", pixels), ("anomaly map", anomaly)):
        if np.shape(array) != expected:
            raise ValueError(
                f"{name} has shape {np.shape(array)}; the source image has (rows, cols) {expected}"
            )
    rgb = render_overlay(pixels, anomaly, threshold_fraction=threshold_fraction)
    src = prepare_source(source)
    orientation = _patient_orientation(src)
    laterality = laterality_from_sources([src]) or None
    with warnings.catch_warnings():
        # The source's PatientName is copied as it is; its form is not ours to judge.
        warnings.filterwarnings("ignore", message=".*intended person name", category=UserWarning)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=src,
            pixel_array=rgb,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_instance_uid or new_uid(),
            series_number=series_number,
            sop_instance_uid=new_uid(),
            instance_number=instance_number,
            manufacturer=markers.OUTPUT_MANUFACTURER,
            # highdicom accepts single letters only; the real value is set below.
            patient_orientation=("A", "F"),
            laterality=laterality,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=series_description("overlay"),
        )
    # Type 2C: the source's (oblique ones have several letters each), or empty = unknown.
    sc.PatientOrientation = list(orientation) if orientation else []
    # General Series Laterality is Type 2C; highdicom leaves it out when the source states no
    # side, and dciodvfy reports an error (as for the PM). Empty = unknown.
    sc.Laterality = laterality or ""
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = "WSD"
    sc.ManufacturerModelName = algorithm.name
    sc.SoftwareVersions = algorithm.version
    sc.DeviceSerialNumber = algorithm.weights_sha256[:16] or "unknown"
    sc.SecondaryCaptureDeviceManufacturer = markers.OUTPUT_MANUFACTURER
    sc.SecondaryCaptureDeviceManufacturerModelName = algorithm.name
    sc.SecondaryCaptureDeviceSoftwareVersions = algorithm.version
    sc.DerivationDescription = (
        f"Anomaly map of {algorithm.name} {algorithm.version} burned into the source image "
        f"(values >= {threshold_fraction:g} coloured; model_id {algorithm.model_id}; "
        f"weights sha256 {algorithm.weights_sha256 or 'unknown'})"
    )
    if "RecognizableVisualFeatures" in src:  # it shows the source image itself
        sc.RecognizableVisualFeatures = src.RecognizableVisualFeatures
    reference = Dataset()
    reference.ReferencedSOPClassUID = src.SOPClassUID
    reference.ReferencedSOPInstanceUID = src.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = [_SOURCE_PURPOSE]
    sc.SourceImageSequence = [reference]
    logger.debug("built overlay SC %s for source %s", sc.SOPInstanceUID, src.SOPInstanceUID)
    return sc
