"""DICOM Segmentations of the anomaly map of one source image (highdicom, strict writing).

Two objects per analysed image (see docs/CONTRACTS.md):

- `write_binary_seg`: the region, a BINARY SEG with one segment per threshold level (nested
  levels, segment 1 = the calibrated pixel threshold "Anomaly > p99 healthy", further segments
  stricter). Viewers that only overlay binary SEGs (OHIF 3.13) show the levels as a coarse
  heat map; segment colours go from yellow (level 1) to red (last level). For a source whose
  Columns is not a multiple of 8 the same masks are written as a FRACTIONAL SEG (OCCUPANCY,
  MaximumFractionalValue 255, pixels only 0 or 255; `region_segmentation_type`): Orthanc 1.10
  cannot serve 1-bit frames of such a width (DICOM allows them), and OHIF 3.13 shows this
  "pseudo-binary" SEG like a binary one. ContentLabel "ANOMALY_REGION" tells it from the map.
- `write_fractional_seg`: a FRACTIONAL SEG (MaximumFractionalValue 255) with one segment
  holding the anomaly map scaled to [0, 1] (0.5 = the first pixel threshold). Its fractional
  type is PROBABILITY because DICOM has only PROBABILITY and OCCUPANCY, and the values are
  not an occupancy; they are not a probability either, which the segment label and
  SegmentDescription say (`MAP_LABEL`, `MAP_DESCRIPTION`).

A Parametric Map is not used: it is not a valid IOD for a 2D radiograph without a Frame of
Reference (stack-notes section 4).

Codes: segmented property category (49755003, SCT, "Morphologically abnormal structure",
CID 7150), type (263654008, SCT, "Abnormal"): the region is where the image differs from the
healthy training images, not a lesion; "Abnormal" is the counterpart of (17621005, SCT,
"Normal"), which CID 7159 already lists as a segment type, and says no more than the model
knows. Every segment's SegmentDescription says "Anomaly region (unsupervised, not a
diagnosis)" and which threshold it is. Each segment has a Tracking ID and a Tracking UID; the
SR's region groups (`sr_writer`) carry the same, so a consumer ties the SR to the segment.
The private scheme stays declared in CodingSchemeIdentificationSequence (the volume SEG
writer shares the list); algorithm type AUTOMATIC;
algorithm identification with family (CID 7162) "Artificial Intelligence", name = model
name, version = model version, and parameters ``model_id`` and ``weights_sha256`` (the full
sha256 of the weights file; it does not fit the 64 characters of ContentDescription, which
holds model name and version).
DeviceSerialNumber holds the first 16 hex digits of the sha256.

Provenance on every object: Manufacturer = `markers.OUTPUT_MANUFACTURER`,
ManufacturerModelName = model name, SoftwareVersions = model version, SeriesDescription
"RESEARCH USE ONLY: AI anomaly region|map (not for clinical use)", ContentLabel
"ANOMALY_REGION" / "ANOMALY_MAP", the source image referenced (ReferencedSeriesSequence and
per-frame DerivationImageSequence / SourceImageSequence).

highdicom pitfalls handled here (highdicom 0.28.2, 2D projection sources):

- PatientOrientation is Type 2C in the SEG but highdicom omits it; it is copied from the source
  (empty if the source has none), otherwise dciodvfy reports an error.
- Pixel Measures: the source's PixelSpacing, else its ImagerPixelSpacing (a DX's detector
  spacing, what a viewer of the DX itself uses), copied; a source with neither gets no Pixel
  Measures at all (the SEG IOD allows it for a projection image, dciodvfy and highdicom accept
  it), never an invented spacing. `Segmentation.from_dataset` needs SliceThickness whenever
  Pixel Measures are present, so they carry SliceThickness 1.0, a placeholder that means
  nothing for a projection image.
- An invalid source PixelSpacing (0 and 0, as in RG1) is dropped before highdicom copies it.
- Missing Type 2 patient/study attributes of the source (highdicom raises AttributeError)
  are written empty.
- ``omit_empty_frames=False``: every segment has its frame even when empty, so a viewer always
  finds all levels and an all-clear image still gets a valid SEG.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from itertools import pairwise

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from ai_engine.dicom_io import _iod_lookup, markers
from ai_engine.dicom_io._common import (
    new_uid,
    output_identity,
    prepare_source,
    valid_spacing,
)
from ai_engine.types import AlgorithmInfo

__all__ = [
    "BINARY_SERIES_NUMBER",
    "FRACTIONAL_SERIES_NUMBER",
    "region_segmentation_type",
    "write_binary_seg",
    "write_fractional_seg",
]

_iod_lookup.install()  # highdicom's IOD table scans, cached (see the module)
logger = logging.getLogger(__name__)

BINARY_SERIES_NUMBER = 9001
FRACTIONAL_SERIES_NUMBER = 9002

#: Placeholder slice thickness (mm) so highdicom can read the Pixel Measures back.
_SLICE_THICKNESS_PLACEHOLDER = 1.0

#: CIELab colours from yellow (first, widest level) to red (strictest level).
_YELLOW = (97.1, -21.6, 94.5)
_RED = (53.2, 80.1, 67.2)

_CATEGORY = hd.sr.CodedConcept("49755003", "SCT", "Morphologically abnormal structure")
_TYPE = hd.sr.CodedConcept("263654008", "SCT", "Abnormal")
#: Start of every segment's SegmentDescription: what the region is, and what it is not.
REGION_DESCRIPTION = "Anomaly region (unsupervised, not a diagnosis)"
MAP_LABEL = "Anomaly map (scaled, not a probability)"
MAP_DESCRIPTION = (
    "Anomaly map (unsupervised, not a diagnosis), scaled to 0..1: 0.5 = the calibrated pixel "
    "threshold of healthy images. Fractional type PROBABILITY is DICOM's only choice for "
    "graded values; they are not probabilities."
)
CODING_SCHEMES = [
    hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=markers.PRIVATE_CODING_SCHEME,
        name=markers.PRIVATE_CODING_SCHEME_NAME,
        responsible_organization=markers.OUTPUT_MANUFACTURER,
    )
]


def _algorithm_identification(algorithm: AlgorithmInfo) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm.version,
        source=markers.OUTPUT_MANUFACTURER,
        parameters={
            "model_id": algorithm.model_id,
            "weights_sha256": algorithm.weights_sha256,
        },
    )


def _colour(index: int, count: int) -> hd.color.CIELabColor:
    t = 0.0 if count <= 1 else index / (count - 1)
    lab = [y + t * (r - y) for y, r in zip(_YELLOW, _RED, strict=True)]
    return hd.color.CIELabColor(lab[0], lab[1], lab[2])


def _pixel_measures(source: Dataset) -> hd.PixelMeasuresSequence | None:
    """Pixel measures for the SEG: the source's own spacing, or none.

    PixelSpacing when the source has a valid one, else ImagerPixelSpacing (a projection
    radiograph's detector plane); a source with neither gets None (no Pixel Measures), never
    an invented spacing. highdicom needs SliceThickness to read Pixel Measures back, hence
    the placeholder.
    """
    spacing = valid_spacing(source.get("PixelSpacing")) or valid_spacing(
        source.get("ImagerPixelSpacing")
    )
    if spacing is None:
        return None
    return hd.PixelMeasuresSequence(
        pixel_spacing=list(spacing),
        slice_thickness=_SLICE_THICKNESS_PLACEHOLDER,
    )


def _check_shape(name: str, array: npt.NDArray[np.generic], source: Dataset) -> None:
    expected = (int(source.Rows), int(source.Columns))
    if array.shape != expected:
        raise ValueError(
            f"{name} has shape {array.shape}; the source image has (rows, cols) {expected}"
        )


def _content_description(kind: str, algorithm: AlgorithmInfo) -> str:
    return f"{kind} by {algorithm.name} {algorithm.version}"[:64]


def _segmentation(
    source: Dataset,
    pixel_array: npt.NDArray[np.generic],
    segmentation_type: hd.seg.SegmentationTypeValues,
    descriptions: list[hd.seg.SegmentDescription],
    algorithm: AlgorithmInfo,
    *,
    kind: str,
    content_label: str,
    series_instance_uid: str | None,
    series_number: int,
    instance_number: int,
) -> hd.seg.Segmentation:
    src = prepare_source(source)
    with warnings.catch_warnings():
        # The source's PatientName is copied as it is; its form is not ours to judge.
        warnings.filterwarnings("ignore", message=".*intended person name", category=UserWarning)
        seg = hd.seg.Segmentation(
            source_images=[src],
            pixel_array=pixel_array,
            segmentation_type=segmentation_type,
            segment_descriptions=descriptions,
            **output_identity(
                algorithm,
                kind,
                series_instance_uid=series_instance_uid,
                series_number=series_number,
                instance_number=instance_number,
            ),
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
            max_fractional_value=255,
            content_description=_content_description(kind, algorithm),
            content_label=content_label,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            pixel_measures=_pixel_measures(src),
            omit_empty_frames=False,
            coding_schemes=CODING_SCHEMES,
        )
    # Type 2C that highdicom leaves out for sources without an orientation (dciodvfy error).
    if "ImageOrientationPatient" not in seg:
        seg.PatientOrientation = src.get("PatientOrientation", "")
    logger.debug(
        "built %s SEG %s for source %s",
        segmentation_type.value,
        seg.SOPInstanceUID,
        src.SOPInstanceUID,
    )
    return seg


def binary_mask(label: str, mask: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """``mask`` as a boolean array; 0/1 integers are accepted, anything else is refused.

    Raises:
        ValueError: values other than 0 and 1.
    """
    array = np.asarray(mask)
    if array.dtype != np.bool_:
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"mask of level {label!r} is not binary (dtype {array.dtype})")
        array = array.astype(np.bool_)
    return array


def level_segments(
    levels: Sequence[tuple[str, npt.ArrayLike]],
    algorithm: AlgorithmInfo,
    as_mask: Callable[[str, npt.ArrayLike], npt.NDArray[np.bool_]],
) -> tuple[list[npt.NDArray[np.bool_]], list[hd.seg.SegmentDescription]]:
    """Masks and segment descriptions of nested binary levels (one segment per level).

    Shared by the 2D and the volume binary SEG writers.

    Args:
        levels: (segment label, mask) pairs, widest level first.
        algorithm: the model that made the masks.
        as_mask: checks one level's mask and returns it as a boolean array (raises
            ValueError when it does not fit the source).

    Returns:
        The boolean masks and the segment descriptions, in level order; a warning is
        logged when the levels are not nested.

    Raises:
        ValueError: a label that is empty or longer than 64 characters, or a bad mask.
    """
    masks = []
    descriptions = []
    for index, (label, mask) in enumerate(levels):
        if not label or len(label) > 64:
            raise ValueError(f"segment label must be 1 to 64 characters: {label!r}")
        masks.append(as_mask(label, mask))
        description = hd.seg.SegmentDescription(
            segment_number=index + 1,
            segment_label=label,
            segmented_property_category=_CATEGORY,
            segmented_property_type=_TYPE,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=_algorithm_identification(algorithm),
            tracking_id=f"anomaly level {index + 1}",
            tracking_uid=new_uid(),
            display_color=_colour(index, len(levels)),
        )
        description.SegmentDescription = f"{REGION_DESCRIPTION}: {label}"
        descriptions.append(description)
    for wider, stricter in pairwise(masks):
        if np.any(stricter & ~wider):
            logger.warning("binary SEG levels are not nested")
            break
    return masks, descriptions


def write_binary_seg(
    source: Dataset,
    levels: Sequence[tuple[str, npt.NDArray[np.bool_]]],
    algorithm: AlgorithmInfo,
    *,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
    series_number: int = BINARY_SERIES_NUMBER,
) -> hd.seg.Segmentation:
    """A BINARY SEG with one segment per threshold level.

    Args:
        source: the analysed image (header is enough, e.g. `SourceImage.dataset`).
        levels: (segment label, mask) pairs, widest level first; each mask is boolean
            (rows, cols) on the source image grid. Labels are at most 64 characters,
            e.g. "Anomaly > p99 healthy".
        algorithm: the model that made the masks.
        series_instance_uid: series to put the SEG into (one per study and model); new if None.
        instance_number: InstanceNumber.
        series_number: SeriesNumber (default 9001).

    Returns:
        The Segmentation (a pydicom Dataset with file meta; write it with `convert.save`).

    Raises:
        ValueError: no level, a mask of the wrong shape or not boolean, a bad label, or a
            source without the UIDs a reference needs.
    """
    if not levels:
        raise ValueError("at least one level is needed for a binary SEG")

    def as_mask(label: str, mask: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        array = binary_mask(label, mask)
        _check_shape(f"mask of level {label!r}", array, source)
        return array

    masks, descriptions = level_segments(levels, algorithm, as_mask)
    pixel_array = np.stack(masks, axis=-1)[np.newaxis]  # (1 frame, rows, cols, segments)
    segmentation_type = region_segmentation_type(int(source.Columns))
    if segmentation_type is hd.seg.SegmentationTypeValues.FRACTIONAL:
        pixel_array = pixel_array.astype(np.float32)  # 0 or 1: stored as 0 or 255
    seg = _segmentation(
        source,
        pixel_array,
        segmentation_type,
        descriptions,
        algorithm,
        kind="region",
        content_label="ANOMALY_REGION",
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        instance_number=instance_number,
    )
    if segmentation_type is hd.seg.SegmentationTypeValues.FRACTIONAL:
        # each pixel is wholly in the level or not: an occupancy of 0 or 1, not a probability
        seg.SegmentationFractionalType = hd.seg.SegmentationFractionalTypeValues.OCCUPANCY.value
    return seg


def region_segmentation_type(columns: int) -> hd.seg.SegmentationTypeValues:
    """The SEG type of the region (nested levels) of an image ``columns`` pixels wide.

    BINARY (1 bit per pixel) when ``columns`` is a multiple of 8. Otherwise FRACTIONAL
    (OCCUPANCY, MaximumFractionalValue 255) holding only 0 and 255, i.e. the same masks with
    8 bits per pixel: Orthanc 1.10 (the bundled PACS) refuses to serve any frame of a 1-bit
    image whose Columns is not a multiple of 8 ("Bad number of columns for a black-and-white
    image", HTTP 400 on WADO-RS /frames, whatever the transfer syntax), although DICOM packs
    binary SEG bits across rows and allows any width. OHIF 3.13 shows such a "pseudo-binary"
    FRACTIONAL SEG like a binary one; a LABELMAP SEG is not used because dciodvfy
    (dicom3tools 2022) does not know its SOP class.
    """
    if columns % 8 == 0:
        return hd.seg.SegmentationTypeValues.BINARY
    return hd.seg.SegmentationTypeValues.FRACTIONAL


def write_fractional_seg(
    source: Dataset,
    probability: npt.NDArray[np.floating],
    algorithm: AlgorithmInfo,
    *,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
    series_number: int = FRACTIONAL_SERIES_NUMBER,
) -> hd.seg.Segmentation:
    """A FRACTIONAL SEG (PROBABILITY, max value 255) holding the scaled anomaly map.

    Args:
        source: the analysed image (header is enough).
        probability: float (rows, cols) in [0, 1] on the source grid; 0.5 = the first pixel
            threshold. Values within 1e-6 outside [0, 1] are clipped.
        algorithm: the model that made the map.
        series_instance_uid: series to put the SEG into; new if None.
        instance_number: InstanceNumber.
        series_number: SeriesNumber (default 9002).

    Returns:
        The Segmentation (quantised to 1/255 steps).

    Raises:
        ValueError: wrong shape, not finite, or values outside [0, 1].
    """
    array = np.asarray(probability)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"probability must be a float array, not {array.dtype}")
    _check_shape("probability map", array, source)
    if not np.isfinite(array).all():
        raise ValueError("probability map has NaN or infinite values")
    tolerance = 1e-6
    if array.size and (array.min() < -tolerance or array.max() > 1 + tolerance):
        raise ValueError(
            f"probability map must lie in [0, 1]; found [{array.min()}, {array.max()}]"
        )
    array = np.clip(array, 0.0, 1.0).astype(np.float32)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=MAP_LABEL,
        segmented_property_category=_CATEGORY,
        segmented_property_type=_TYPE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm_identification(algorithm),
        tracking_id="anomaly map",
        tracking_uid=new_uid(),
        display_color=_colour(1, 2),  # red
    )
    description.SegmentDescription = MAP_DESCRIPTION
    return _segmentation(
        source,
        array[np.newaxis, :, :, np.newaxis],
        hd.seg.SegmentationTypeValues.FRACTIONAL,
        [description],
        algorithm,
        kind="map",
        content_label="ANOMALY_MAP",
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        instance_number=instance_number,
    )
