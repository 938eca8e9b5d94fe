"""One region SEG for a whole CT/MR series (multi-slice sources with a Frame of Reference).

`seg_writer.write_binary_seg` / `write_fractional_seg` take one source image. They work for a
single CT/MR slice too (checked: dciodvfy clean, highdicom reads them back; highdicom copies
the slice's own PixelSpacing/SliceThickness), but a series of N slices would give N SEG
instances, which viewers show as N separate overlays. `write_binary_seg_volume` writes one SEG
for the series: segments = the nested threshold levels as in `write_binary_seg` (same codes,
labels, colours, algorithm identification and provenance, series number 9001), one frame per
source slice and segment.

Differences from the single-image writer:

- Sources must have a Frame of Reference and plane positions (`UnsupportedInputError`
  otherwise: radiographs use `write_binary_seg`).
- No Pixel Measures are passed: highdicom copies PixelSpacing, SliceThickness and
  SpacingBetweenSlices from the sources (the single-image writer's SliceThickness
  placeholder is only for projection images).
- PITFALL (highdicom 0.28.2): as for the Parametric Map, the frames are stored in
  highdicom's spatial order, not in the order of ``sources``; every frame references its
  source slice and has its plane position, so readers must map frames by reference or
  position (`pmap_writer.frame_sources`, or highdicom's
  ``get_pixels_by_source_instance``), never by frame index.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from ai_engine.dicom_io._common import (
    output_identity,
    prepare_source,
    require_frame_of_reference,
)
from ai_engine.dicom_io.seg_writer import (
    BINARY_SERIES_NUMBER,
    CODING_SCHEMES,
    _content_description,
    binary_mask,
    level_segments,
    region_segmentation_type,
)
from ai_engine.types import AlgorithmInfo

__all__ = ["write_binary_seg_volume"]

logger = logging.getLogger(__name__)


def _volume_mask(
    label: str, mask: npt.ArrayLike, shape: tuple[int, int, int]
) -> npt.NDArray[np.bool_]:
    array = binary_mask(label, mask)
    if array.shape != shape:
        raise ValueError(
            f"mask of level {label!r} has shape {array.shape}; (slices, rows, cols) of the "
            f"sources is {shape}"
        )
    return array


def write_binary_seg_volume(
    sources: Sequence[Dataset],
    levels: Sequence[tuple[str, npt.NDArray[np.bool_]]],
    algorithm: AlgorithmInfo,
    *,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
    series_number: int = BINARY_SERIES_NUMBER,
) -> hd.seg.Segmentation:
    """The region SEG of a CT/MR series with one segment per threshold level.

    BINARY, or for a width that is not a multiple of 8 the same masks as a 0/255 FRACTIONAL
    OCCUPANCY SEG (`seg_writer.region_segmentation_type`: Orthanc 1.10 cannot serve 1-bit
    frames of such a width).

    Args:
        sources: the analysed slices (headers are enough, e.g. `Volume.datasets`), single-frame
            images of one series with a Frame of Reference; ``sources[k]`` is slice ``k`` of
            every mask.
        levels: (segment label, mask) pairs, widest level first; each mask is boolean (or 0/1)
            (slices, rows, cols) on the source grid. Labels are 1 to 64 characters, e.g.
            "Anomaly > p99 healthy".
        algorithm: the model that made the masks.
        series_instance_uid: series to put the SEG into; new if None.
        instance_number: InstanceNumber.
        series_number: SeriesNumber (default 9001, as the single-image binary SEG).

    Returns:
        The Segmentation (frames in highdicom's spatial order; see the module docstring).

    Raises:
        UnsupportedInputError: a source without Frame of Reference or plane position, a
            multi-frame source, or sources of different studies, series or frames of
            reference.
        ValueError: no source or level, a bad label, or a mask of the wrong shape or not
            binary.
    """
    if not sources:
        raise ValueError("write_binary_seg_volume needs at least one source slice")
    if not levels:
        raise ValueError("at least one level is needed for a binary SEG")
    require_frame_of_reference(sources, "a volume SEG")
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if any((int(s.Rows), int(s.Columns)) != (rows, cols) for s in sources):
        raise ValueError("source slices differ in Rows/Columns")
    shape = (len(sources), rows, cols)
    masks, descriptions = level_segments(
        levels, algorithm, lambda label, mask: _volume_mask(label, mask, shape)
    )
    pixel_array: npt.NDArray[np.generic] = np.stack(masks, axis=-1)  # (slices, rows, cols, segs)
    # 1 bit per pixel, or 0/255 at 8 bits where Orthanc cannot serve 1-bit frames of this width
    segmentation_type = region_segmentation_type(cols)
    fractional = segmentation_type is hd.seg.SegmentationTypeValues.FRACTIONAL
    if fractional:
        pixel_array = pixel_array.astype(np.float32)  # 0 or 1: stored as 0 or 255
    prepared = [prepare_source(s) for s in sources]
    with warnings.catch_warnings():
        # The sources' PatientName is copied as it is; its form is not ours to judge.
        warnings.filterwarnings("ignore", message=".*intended person name", category=UserWarning)
        seg = hd.seg.Segmentation(
            source_images=prepared,
            pixel_array=pixel_array,
            segmentation_type=segmentation_type,
            # each pixel is wholly in a level or not: an occupancy of 0 or 1 (fractional form)
            fractional_type=hd.seg.SegmentationFractionalTypeValues.OCCUPANCY,
            max_fractional_value=255,
            segment_descriptions=descriptions,
            **output_identity(
                algorithm,
                "region",
                series_instance_uid=series_instance_uid,
                series_number=series_number,
                instance_number=instance_number,
            ),
            content_description=_content_description("region", algorithm),
            content_label="ANOMALY_REGION",
            transfer_syntax_uid=ExplicitVRLittleEndian,
            omit_empty_frames=False,
            coding_schemes=CODING_SCHEMES,
        )
    logger.debug(
        "built volume SEG %s: %d slices, %d levels, source series %s",
        seg.SOPInstanceUID,
        len(prepared),
        len(masks),
        prepared[0].SeriesInstanceUID,
    )
    return seg
