"""Parametric Map of the anomaly map of CT/MR slices (highdicom, strict writing).

A Parametric Map (PM) carries the continuous anomaly map on the source grid, as 16-bit
unsigned integers with a Real World Value Mapping to the map value. It needs a Frame of
Reference and plane positions, so it is written for sources that have them (CT/MR slices);
a 2D radiograph (DX/CR, no Frame of Reference) gets the FRACTIONAL SEG of
`seg_writer.write_fractional_seg` instead, and `write_parametric_map` raises
`UnsupportedInputError` for it (stack-notes section 4: a PM is not a valid IOD there, and
highdicom 0.28.2 fails on it).

Why integers, not FloatPixelData: Orthanc 1.10 with DICOMweb 1.7 (the PACS bundled here)
returns FloatPixelData as one float in the WADO-RS metadata and answers its frames with
HTTP 400, so a float PM never loads in a viewer behind it. PixelData (OB/OW) is served
like any image's.

Layout:

- One frame per source slice. ``values[k]`` belongs to ``sources[k]``; highdicom takes each
  frame's plane position and orientation from its source and references the source per
  frame (DerivationImageSequence / SourceImageSequence). Pixel spacing, slice thickness and
  spacing between slices are the sources' own (copied by highdicom, never invented here).
- PITFALL: highdicom 0.28.2 *always* stores the frames in its own spatial order (sorted
  along the normal of its volume convention; for an axial series sorted feet-to-head, as
  `volume.read_series` returns it, that is head-to-feet, i.e. reversed), with
  DimensionOrganizationType 3D. Pixels, positions and references move together, so the
  object is consistent, but frame ``i`` of the file is not ``sources[i]``: a reader must map
  frames by their source reference or plane position (as viewers and highdicom's
  ``get_volume`` do), never by index. `frame_sources` lists the mapping.
- ContentQualification RESEARCH; image flavour VOLUME, derived pixel contrast QUANTITY.
- Pixels: stored value = round(map value x `STORED_SCALE`), BitsStored 16, 0..10000.
- Real World Value Mapping: map value = stored value x 1e-4 + 0 over stored 0..10000, unit
  (1, UCUM, "no units"), LUT label "ANOMALY", explanation
  "scaled anomaly map, 0.5 = pixel threshold". The value is what
  `postprocess.fractional_map` gives: the model's anomaly map divided by the calibrated map
  scale and clipped to [0, 1], so 0.5 is the first calibrated pixel threshold (as in the
  fractional SEG). It is not a probability and is not labelled as one.
- VOI window over the stored values (center 5000, width 10000), so a viewer without a
  heat-map mode shows 0..1 as black..white.
- Provenance: Manufacturer = `markers.OUTPUT_MANUFACTURER`, ManufacturerModelName = model
  name, SoftwareVersions = model version, DeviceSerialNumber = first 16 hex digits of the
  weights sha256, ContentLabel "ANOMALY_MAP", ContentDescription "map by <name> <version>",
  and every frame's derivation item has a DerivationDescription with model id, name,
  version and the full weights sha256 (a PM has no Algorithm Identification Sequence).
  SeriesDescription "RESEARCH USE ONLY: AI anomaly map (not for clinical use)", series
  number 9004.

highdicom pitfalls handled here (highdicom 0.28.2):

- General Series Laterality is Type 2C and highdicom leaves it out; dciodvfy then reports
  an error for every PM. It is copied from the source's Laterality, else from an
  ImageLaterality of R or L; otherwise it is written empty ("unknown", which dciodvfy
  accepts with a warning; "absent" would be an error, and a made-up side would be wrong).
- Missing Type 2 patient/study attributes and invalid PixelSpacing of the sources are
  repaired by `_common.prepare_source`, as for the SEGs.
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

from ai_engine.dicom_io import _iod_lookup
from ai_engine.dicom_io._common import (
    check_unit_interval,
    laterality_from_sources,
    output_identity,
    prepare_source,
    require_frame_of_reference,
)
from ai_engine.types import AlgorithmInfo

__all__ = [
    "PARAMETRIC_MAP_SERIES_NUMBER",
    "STORED_SCALE",
    "frame_sources",
    "stored_to_map",
    "write_parametric_map",
]

_iod_lookup.install()  # highdicom's IOD table scans, cached (see the module)
logger = logging.getLogger(__name__)

PARAMETRIC_MAP_SERIES_NUMBER = 9004

#: LUT label (SH, 16 characters) and explanation of the real world value mapping.
LUT_LABEL = "ANOMALY"
LUT_EXPLANATION = "scaled anomaly map, 0.5 = pixel threshold"
#: Stored value of map value 1.0 (16-bit unsigned pixels; map value = stored / STORED_SCALE).
STORED_SCALE = 10000

_NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")


def _derivation_description(algorithm: AlgorithmInfo) -> str:
    return (
        f"Anomaly map by {algorithm.name} {algorithm.version} "
        f"(model_id {algorithm.model_id}; weights sha256 {algorithm.weights_sha256 or 'unknown'})"
    )


def _as_frames(
    values: npt.NDArray[np.generic], sources: Sequence[Dataset]
) -> npt.NDArray[np.uint16]:
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"values must be a float array, not {array.dtype}")
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3:
        raise ValueError(f"values must be (frames, rows, cols) or (rows, cols); got {array.shape}")
    if array.shape[0] != len(sources):
        raise ValueError(
            f"values have {array.shape[0]} frames; one per source slice is needed "
            f"({len(sources)} sources)"
        )
    for index, src in enumerate(sources):
        expected = (int(src.Rows), int(src.Columns))
        if array.shape[1:] != expected:
            raise ValueError(
                f"values have (rows, cols) {array.shape[1:]}; source {index} has {expected}"
            )
    unit = check_unit_interval("anomaly map", array)
    stored: npt.NDArray[np.uint16] = np.rint(unit * STORED_SCALE).astype(np.uint16)
    return stored


def stored_to_map(stored: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    """Map values in [0, 1] of stored PM pixels (the Real World Value Mapping written here)."""
    out: npt.NDArray[np.float32] = np.asarray(stored, np.float32) / np.float32(STORED_SCALE)
    return out


def write_parametric_map(
    sources: Sequence[Dataset],
    values: npt.NDArray[np.floating],
    algorithm: AlgorithmInfo,
    *,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
    series_number: int = PARAMETRIC_MAP_SERIES_NUMBER,
) -> hd.pm.ParametricMap:
    """A Parametric Map (16-bit, one frame per source slice) holding the anomaly map.

    Args:
        sources: the analysed slices (headers are enough, e.g. `SourceImage.dataset` or
            `Volume.datasets`), single-frame images of one series with a Frame of
            Reference; ``sources[k]`` is the slice of ``values[k]``.
        values: float (frames, rows, cols), or (rows, cols) for one slice, in [0, 1] on the
            source grid (`postprocess.fractional_map`); 0.5 = the first pixel threshold.
            Values within 1e-6 outside [0, 1] are clipped. Stored with a step of
            1 / `STORED_SCALE`.
        algorithm: the model that made the map.
        series_instance_uid: series to put the PM into; new if None.
        instance_number: InstanceNumber.
        series_number: SeriesNumber (default 9004).

    Returns:
        The ParametricMap (a pydicom Dataset with file meta; write it with `convert.save`).
        Its frames are in highdicom's spatial order (see the module docstring and
        `frame_sources`).

    Raises:
        UnsupportedInputError: a source without Frame of Reference or plane position
            (e.g. a radiograph: write a FRACTIONAL SEG instead), a multi-frame source, or
            sources of different studies, frames of reference or series.
        ValueError: no source, values of the wrong shape or type, not finite, or outside
            [0, 1].
    """
    if not sources:
        raise ValueError("write_parametric_map needs at least one source slice")
    require_frame_of_reference(sources, "a Parametric Map")
    frames = _as_frames(values, sources)
    prepared = [prepare_source(s) for s in sources]
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=LUT_LABEL,
        lut_explanation=LUT_EXPLANATION,
        unit=_NO_UNITS,
        value_range=(0, STORED_SCALE),
        slope=1.0 / STORED_SCALE,
        intercept=0.0,
    )
    with warnings.catch_warnings():
        # The sources' PatientName is copied as it is; its form is not ours to judge.
        warnings.filterwarnings("ignore", message=".*intended person name", category=UserWarning)
        pm = hd.pm.ParametricMap(
            source_images=prepared,
            pixel_array=frames,
            **output_identity(
                algorithm,
                "map",
                series_instance_uid=series_instance_uid,
                series_number=series_number,
                instance_number=instance_number,
            ),
            contains_recognizable_visual_features=any(
                str(s.get("RecognizableVisualFeatures", "")).upper() == "YES" for s in prepared
            ),
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[
                hd.VOILUTTransformation(
                    window_center=STORED_SCALE / 2, window_width=float(STORED_SCALE)
                )
            ],
            transfer_syntax_uid=ExplicitVRLittleEndian,
            content_description=f"map by {algorithm.name} {algorithm.version}"[:64],
            content_label="ANOMALY_MAP",
            content_qualification=hd.ContentQualificationValues.RESEARCH,
        )
    # Type 2C that highdicom leaves out (dciodvfy error); see the module docstring.
    pm.Laterality = laterality_from_sources(prepared)
    description = _derivation_description(algorithm)[:1024]
    for frame_item in pm.PerFrameFunctionalGroupsSequence:
        for derivation in frame_item.get("DerivationImageSequence", []):
            derivation.DerivationDescription = description
    logger.debug(
        "built parametric map %s with %d frames for series %s",
        pm.SOPInstanceUID,
        frames.shape[0],
        prepared[0].SeriesInstanceUID,
    )
    return pm


def frame_sources(ds: Dataset) -> list[str]:
    """SOP Instance UID of the source slice of each frame of a PM or SEG, in frame order.

    Args:
        ds: an enhanced multi-frame object whose frames reference their source image in
            DerivationImageSequence / SourceImageSequence (as written by this package).

    Returns:
        One UID per frame ("" for a frame without a source reference).
    """
    uids = []
    for item in ds.get("PerFrameFunctionalGroupsSequence", []):
        uid = ""
        for derivation in item.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                uid = str(source.ReferencedSOPInstanceUID)
                break
            if uid:
                break
        uids.append(uid)
    return uids
