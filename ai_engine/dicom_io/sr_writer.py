"""Comprehensive SR (TID 1500) with the anomaly scores of one study and one model.

Layout, as docs/CONTRACTS.md prescribes (what the OHIF extension parses), read as IHE AI
Results (AIR) asks: standard concepts where DICOM has them, private ones (99AINODE) only for
the score, threshold, percentile and "not analysed".

- Root CONTAINER (126000, DCM, "Imaging Measurement Report") built by highdicom
  `MeasurementReport`; observer = the device (name and model = model name, manufacturer =
  `markers.OUTPUT_MANUFACTURER`, serial number = first 16 hex digits of the weights sha256);
  procedure reported from the sources (`procedures_reported`: "Plain chest X-ray" for a chest
  CR/DX, "MR Brain", else the modality's "unspecified body region" code); the model also in
  ContributingEquipmentSequence (109102, DCM, "Processing Equipment"), with model id and the
  weights' sha256.
- One TID 1501 `MeasurementsAndQualitativeEvaluations` group per source image (in the order of
  ``study.images``): tracking identifier "anomaly <SOPInstanceUID>" with a new tracking UID,
  Finding (121071, DCM) = (263654008, SCT, "Abnormal"), (17621005, SCT, "Normal") or
  (NOT_ANALYSED, 99AINODE, "Not analysed"), the source image referenced first, then the
  Parametric Map its score came from (MR/CT), algorithm identification (model name, version,
  parameters ``model_id=...`` and ``weights_sha256=...``), then

  - NUM (ANOMALY_SCORE, 99AINODE, "Anomaly score"), unit ({score}, UCUM, "score")
  - NUM (ANOMALY_THRESHOLD, 99AINODE, "Anomaly score threshold"), unit ({score}, UCUM, "score")
  - NUM (HEALTHY_PERCENTILE, 99AINODE, "Healthy reference percentile"), unit (%, UCUM,
    "percent")

  A value that is unknown (not analysed, or a NaN percentile when the model card has no
  healthy scores) is left out rather than written as a made-up number. SRs written before
  issue 24 had the status as CODE (ANOMALY_STATUS, 99AINODE); `read_sr_scores` reads both.
- **Images that were not analysed** get status "Not analysed", no NUMs, and the reason as a
  TEXT item (121106, DCM, "Comment") = "Not analysed: <reason>", inside their group, so any
  SR viewer shows it and `read_sr_scores` returns it as ``reason``.
- One more group with tracking identifier "anomaly study": NUM "Anomaly score" = the study
  score (maximum over the analysed images), NUM threshold, Finding of the study ("Not
  analysed" when no image was analysed).
- **The regions** (``derived``: the SEGs and maps written for the study): per SEG segment a
  group with the segment's own Tracking ID and Tracking UID, finding type and category the
  segment's; TID 1410 with the Referenced Segmentation Frame for a SEG of one image, TID
  1411 with the Referenced Segment (and the source series) for a volume SEG. For a binary
  SEG of one image, the outlines of segment 1 (the calibrated threshold): one TID 1410 group
  per connected component (the largest `MAX_OUTLINES`), SCOORD POLYLINE = the convex hull of
  its pixels on the source image, same Tracking UID as the segment.
- A "Qualitative Evaluations" container with TEXT "Comment" = `RESEARCH_NOTICE_TEXT`.
- Evidence (CurrentRequestedProcedureEvidenceSequence): the sources and every derived object.

The private coding scheme 99AINODE is declared in CodingSchemeIdentificationSequence.
SeriesDescription "RESEARCH USE ONLY: AI anomaly report (not for clinical use)", series
number 9003, Manufacturer / ManufacturerModelName / SoftwareVersions as for the SEGs.
dciodvfy passes it with warnings only (it does not know the private scheme 99AINODE).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from ai_engine.dicom_io import _iod_lookup, markers
from ai_engine.dicom_io._common import new_uid, output_identity, prepare_source, series_description
from ai_engine.types import AlgorithmInfo, ImageResult, StudyResult

__all__ = [
    "ANOMALY_SCORE",
    "ANOMALY_STATUS",
    "ANOMALY_THRESHOLD",
    "CODING_SCHEME",
    "HEALTHY_PERCENTILE",
    "SR_SERIES_NUMBER",
    "STATUS_ABNORMAL",
    "STATUS_NORMAL",
    "STATUS_NOT_ANALYSED",
    "STUDY_TRACKING_ID",
    "read_sr_scores",
    "write_sr",
]

_iod_lookup.install()  # highdicom's IOD table scans, cached (see the module)
logger = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9003
CODING_SCHEME = markers.PRIVATE_CODING_SCHEME
STUDY_TRACKING_ID = "anomaly study"
_IMAGE_TRACKING_PREFIX = "anomaly "

ANOMALY_SCORE = hd.sr.CodedConcept("ANOMALY_SCORE", CODING_SCHEME, "Anomaly score")
ANOMALY_THRESHOLD = hd.sr.CodedConcept(
    "ANOMALY_THRESHOLD", CODING_SCHEME, "Anomaly score threshold"
)
HEALTHY_PERCENTILE = hd.sr.CodedConcept(
    "HEALTHY_PERCENTILE", CODING_SCHEME, "Healthy reference percentile"
)
#: Legacy status concept (SRs written before issue 24); read, no longer written: the status is
#: now the value of the standard Finding (`FINDING`).
ANOMALY_STATUS = hd.sr.CodedConcept("ANOMALY_STATUS", CODING_SCHEME, "Anomaly status")
#: TID 1501/1410/1411 row "Finding" (DCM 121071), the concept AIR consumers look for.
FINDING = hd.sr.CodedConcept("121071", "DCM", "Finding")
STATUS_ABNORMAL = hd.sr.CodedConcept("263654008", "SCT", "Abnormal")
STATUS_NORMAL = hd.sr.CodedConcept("17621005", "SCT", "Normal")
STATUS_NOT_ANALYSED = hd.sr.CodedConcept("NOT_ANALYSED", CODING_SCHEME, "Not analysed")

_SCORE_UNIT = hd.sr.CodedConcept("{score}", "UCUM", "score")
_PERCENT_UNIT = hd.sr.CodedConcept("%", "UCUM", "percent")
_COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
_IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
#: Procedure Reported (TID 1500 row 4) from the sources' Modality and BodyPartExamined:
#: specific codes where one fits, else the CID 100 "<modality> unspecified body region" codes.
_CHEST_RADIOGRAPH = hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray")
_MR_BRAIN = hd.sr.CodedConcept("24590-2", "LN", "MR Brain")
_PROCEDURE_BY_MODALITY = {
    "CR": hd.sr.CodedConcept("43468-8", "LN", "XR unspecified body region"),
    "DX": hd.sr.CodedConcept("43468-8", "LN", "XR unspecified body region"),
    "MR": hd.sr.CodedConcept("25056-3", "LN", "MRI unspecified body region"),
    "CT": hd.sr.CodedConcept("25045-6", "LN", "CT unspecified body region"),
}
#: CID 7005 purpose of reference of the contributing equipment (the model).
PROCESSING_EQUIPMENT = hd.sr.CodedConcept("109102", "DCM", "Processing Equipment")
#: TID 1500 row 12 root container of document-level qualitative evaluations, where the
#: research-use notice goes (TEXT "Comment").
_QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
RESEARCH_NOTICE_TEXT = (
    f"{markers.RESEARCH_USE_NOTICE.capitalize()}. Unsupervised anomaly detection: scores and "
    "regions say where an image differs from the healthy training images; they are not a "
    "diagnosis."
)
#: Connected components of a region outlined as SCOORD (largest first); the SEG holds all.
MAX_OUTLINES = 10
_REFERENCED_SEGMENT_CONCEPTS = frozenset({("DCM", "121214"), ("DCM", "121191")})
_NOT_ANALYSED_PREFIX = "Not analysed: "

_STATUS_BY_CODE = {
    (STATUS_ABNORMAL.scheme_designator, STATUS_ABNORMAL.value): STATUS_ABNORMAL.meaning,
    (STATUS_NORMAL.scheme_designator, STATUS_NORMAL.value): STATUS_NORMAL.meaning,
    (STATUS_NOT_ANALYSED.scheme_designator, STATUS_NOT_ANALYSED.value): (
        STATUS_NOT_ANALYSED.meaning
    ),
}
#: Concepts whose CODE value is the image's status: the Finding, and the legacy status.
_STATUS_CONCEPTS = frozenset(
    {(FINDING.scheme_designator, FINDING.value), (CODING_SCHEME, ANOMALY_STATUS.value)}
)
_NUM_KEYS = {
    ANOMALY_SCORE.value: "score",
    ANOMALY_THRESHOLD.value: "threshold",
    HEALTHY_PERCENTILE.value: "healthy_percentile",
}


def _status(is_abnormal: bool | None) -> hd.sr.CodedConcept:
    if is_abnormal is None:
        return STATUS_NOT_ANALYSED
    return STATUS_ABNORMAL if is_abnormal else STATUS_NORMAL


def _known(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _algorithm_id(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[
            f"model_id={algorithm.model_id}",
            f"weights_sha256={algorithm.weights_sha256}",
        ],
    )


def _group(
    identifier: str,
    algorithm_id: hd.sr.AlgorithmIdentification,
    *,
    score: float | None,
    threshold: float | None,
    percentile: float | None,
    status: hd.sr.CodedConcept,
    source: Dataset | None,
    reason: str | None,
    maps: Sequence[Dataset] = (),
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    measurements = [
        hd.sr.Measurement(name=name, value=float(value), unit=unit)
        for name, value, unit in (
            (ANOMALY_SCORE, score, _SCORE_UNIT),
            (ANOMALY_THRESHOLD, threshold, _SCORE_UNIT),
            (HEALTHY_PERCENTILE, percentile, _PERCENT_UNIT),
        )
        if value is not None and _known(value)
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=new_uid(), identifier=identifier),
        algorithm_id=algorithm_id,
        finding_type=status,
        measurements=measurements or None,
        # the analysed image first (readers take the first), then the Parametric Map the
        # score was computed from, if any
        source_images=(
            [
                hd.sr.SourceImageForMeasurementGroup.from_source_image(image)
                for image in (source, *maps)
            ]
            if source is not None
            else None
        ),
    )
    if reason:
        container = group[0]
        container.ContentSequence.append(
            hd.sr.TextContentItem(
                name=_COMMENT,
                value=f"{_NOT_ANALYSED_PREFIX}{reason}"[:1024],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    return group


def _image_group(
    image: ImageResult,
    source: Dataset,
    algorithm_id: hd.sr.AlgorithmIdentification,
    maps: Sequence[Dataset] = (),
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    analysed = image.score is not None
    reason = None
    if not analysed:
        reason = image.not_analysed_reason or "no reason given"
    return _group(
        f"{_IMAGE_TRACKING_PREFIX}{image.sop_instance_uid}",
        algorithm_id,
        score=image.score,
        threshold=image.threshold if analysed else None,
        percentile=image.healthy_percentile if analysed else None,
        status=_status(image.is_abnormal if analysed else None),
        # a non-image in the study (an RT Plan, a CT without pixel data) is "not analysed"
        # by its tracking identifier alone: an image reference to it would be invalid
        source=source if _is_image_source(source) else None,
        reason=reason,
        maps=maps if analysed else (),
    )


#: Modalities highdicom refuses as the source image of a measurement group.
_NON_IMAGE_MODALITIES = frozenset(
    {"SEG", "SR", "DOC", "KO", "PR", "PLAN", "RWV", "REG", "FID", "RTDOSE", "RTPLAN",
     "RTRECORD", "RTSTRUCT"}
)  # fmt: skip


def _is_image_source(source: Dataset) -> bool:
    """Whether ``source`` can be referenced as the image of a measurement group."""
    has_pixels = all(k in source for k in ("Rows", "Columns"))
    return has_pixels and str(source.get("Modality", "")) not in _NON_IMAGE_MODALITIES


def _study_group(
    study: StudyResult,
    algorithm_id: hd.sr.AlgorithmIdentification,
    prior_threshold: float | None = None,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    scored = [i for i in study.images if i.score is not None]
    top = max(scored, key=lambda i: -math.inf if i.score is None else i.score, default=None)
    analysed = study.study_score is not None
    return _group(
        STUDY_TRACKING_ID,
        algorithm_id,
        score=study.study_score,
        threshold=top.threshold if top is not None else prior_threshold,
        percentile=None,
        status=_status(study.is_abnormal if analysed else None),
        source=None,
        reason=None if analysed else "no image of the study was analysed",
    )


def procedures_reported(sources: Sequence[Dataset]) -> list[hd.sr.CodedConcept]:
    """Procedure Reported codes (TID 1500 row 4) for the image sources of a study.

    A chest radiograph (CR/DX, BodyPartExamined CHEST) is (399208008, SCT, "Plain chest
    X-ray"), an MR of the brain or head (24590-2, LN, "MR Brain"); any other CR/DX, MR or CT
    gets the CID 100 code "<modality> unspecified body region"; a study with none of these is
    the generic (363679005, SCT, "Imaging procedure").

    Args:
        sources: the study's source headers (non-images are skipped).

    Returns:
        One code per distinct procedure, in source order.
    """
    found: dict[tuple[str, str], hd.sr.CodedConcept] = {}
    for src in sources:
        if not _is_image_source(src):
            continue
        modality = str(src.get("Modality", "")).upper()
        body_part = str(src.get("BodyPartExamined", "") or "").upper()
        if modality in ("CR", "DX") and body_part == "CHEST":
            code = _CHEST_RADIOGRAPH
        elif modality == "MR" and body_part in ("BRAIN", "HEAD"):
            code = _MR_BRAIN
        else:
            code = _PROCEDURE_BY_MODALITY.get(modality, _IMAGING_PROCEDURE)
        found.setdefault((code.scheme_designator, code.value), code)
    return list(found.values()) or [_IMAGING_PROCEDURE]


def referenced_sources(ds: Dataset) -> list[str]:
    """SOP Instance UIDs of the source images a derived object (SEG, map, SC) references."""
    uids = [
        str(instance.ReferencedSOPInstanceUID)
        for series in ds.get("ReferencedSeriesSequence", [])
        for instance in series.get("ReferencedInstanceSequence", [])
    ]
    uids += [str(item.ReferencedSOPInstanceUID) for item in ds.get("SourceImageSequence", [])]
    return list(dict.fromkeys(uids))


def _frame_segments(seg: Dataset) -> list[int]:
    """The segment number of each frame of a SEG (per-frame or shared functional groups)."""
    shared = seg.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    numbers = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        identification = item.get("SegmentIdentificationSequence") or shared.get(
            "SegmentIdentificationSequence"
        )
        numbers.append(int(identification[0].ReferencedSegmentNumber))
    return numbers


def _segment_masks(seg: Dataset) -> dict[int, npt.NDArray[np.bool_]]:
    """Segment number -> (rows, cols) mask of a single-source (2D) binary SEG."""
    frames = np.asarray(seg.pixel_array).reshape(-1, int(seg.Rows), int(seg.Columns))
    masks: dict[int, npt.NDArray[np.bool_]] = {}
    for frame, number in zip(frames, _frame_segments(seg), strict=True):
        masks[number] = masks.get(number, np.zeros(frame.shape, dtype=bool)) | (frame > 0)
    return masks


def region_outlines(
    mask: npt.NDArray[np.bool_], limit: int = MAX_OUTLINES
) -> list[npt.NDArray[np.float64]]:
    """Closed outlines (convex hulls) of the connected components of a region, largest first.

    Each outline is the convex hull of the component's pixel corners, in image coordinates
    (column, row; (0, 0) is the top left corner of the top left pixel, as SCOORD wants),
    first point repeated at the end. A hull covers the component, concave parts included:
    it shows where the region is; the SEG has its exact pixels.

    Args:
        mask: (rows, cols) region.
        limit: at most this many components (the largest).

    Returns:
        (N, 2) float arrays; empty when the region is empty.
    """
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    outlines = []
    for index in np.argsort(-sizes, kind="stable")[:limit]:
        rows, cols = np.nonzero(labels == index + 1)
        # the hull of a component is the hull of each row's outer pixel corners
        points: set[tuple[float, float]] = set()
        for row in np.unique(rows):
            in_row = cols[rows == row]
            left, right = float(in_row.min()), float(in_row.max() + 1)
            points.update({(left, row), (right, row), (left, row + 1.0), (right, row + 1.0)})
        hull = _convex_hull(sorted(points))
        outlines.append(np.array([*hull, hull[0]], dtype=np.float64))
    return outlines


def _convex_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Convex hull of sorted points (Andrew's monotone chain), counter-clockwise."""

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    upper: list[tuple[float, float]] = []
    for chain, ordered in ((lower, points), (upper, points[::-1])):
        for point in ordered:
            while len(chain) >= 2 and cross(chain[-2], chain[-1], point) <= 0:
                chain.pop()
            chain.append(point)
    return lower[:-1] + upper[:-1]


ROIGroup = (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
)


def _segment_groups(
    seg: Dataset,
    by_uid: Mapping[str, Dataset],
    algorithm_id: hd.sr.AlgorithmIdentification,
) -> list[ROIGroup]:
    """TID 1410/1411 groups for every segment of a SEG, sharing the segment's tracking UID.

    A SEG of one source image gets a Planar ROI (TID 1410) per segment with the Referenced
    Segmentation Frame; a binary one also one Planar ROI per outline (`region_outlines`) of
    its first segment (the calibrated threshold), as SCOORD POLYLINE on the source image. A
    SEG of several images (a volume) gets a Volumetric ROI (TID 1411) per segment with the
    Referenced Segment.
    """
    sources = referenced_sources(seg)
    planar = len(sources) == 1 and sources[0] in by_uid
    frame_segments = _frame_segments(seg)
    # the region (binary, or its 0/255 fractional form for widths Orthanc cannot serve at 1
    # bit: `seg_writer.region_segmentation_type`), not the map
    is_region = (
        seg.get("ContentLabel") == "ANOMALY_REGION" or seg.get("SegmentationType") == "BINARY"
    )
    masks = _segment_masks(seg) if planar and is_region else {}
    groups: list[ROIGroup] = []
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        tracking = hd.sr.TrackingIdentifier(
            uid=str(item.get("TrackingUID") or new_uid()),
            identifier=str(item.get("TrackingID") or f"segment {number}"),
        )
        finding = hd.sr.CodedConcept.from_dataset(item.SegmentedPropertyTypeCodeSequence[0])
        category = hd.sr.CodedConcept.from_dataset(item.SegmentedPropertyCategoryCodeSequence[0])
        common: dict[str, Any] = {
            "tracking_identifier": tracking,
            "finding_type": finding,
            "finding_category": category,
            "algorithm_id": algorithm_id,
        }
        frames = [i + 1 for i, n in enumerate(frame_segments) if n == number]
        if planar and frames:
            reference = hd.sr.ReferencedSegmentationFrame(
                sop_class_uid=str(seg.SOPClassUID),
                sop_instance_uid=str(seg.SOPInstanceUID),
                frame_number=frames,
                segment_number=number,
                source_image=hd.sr.SourceImageForSegmentation.from_source_image(by_uid[sources[0]]),
            )
            # The Image Reference Macro allows Referenced Segment Number only without
            # Referenced Frame Number (dciodvfy error otherwise); highdicom writes both. The
            # segment number is what a consumer needs, and on a one-image SEG it names the
            # frame too, so the frame number goes.
            del reference[0].ReferencedSOPSequence[0].ReferencedFrameNumber
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    referenced_segment=reference, **common
                )
            )
        else:
            groups.append(
                hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    # built here, not by ReferencedSegment.from_segmentation: that reads
                    # the segment number of every frame from the per-frame groups, and a
                    # volume SEG of highdicom may hold it in the shared ones
                    referenced_segment=hd.sr.ReferencedSegment(
                        sop_class_uid=str(seg.SOPClassUID),
                        sop_instance_uid=str(seg.SOPInstanceUID),
                        segment_number=number,
                        source_series=hd.sr.SourceSeriesForSegmentation(
                            str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
                        ),
                    ),
                    **common,
                )
            )
        if number == 1 and number in masks:
            region_source = hd.sr.SourceImageForRegion.from_source_image(by_uid[sources[0]])
            groups.extend(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    referenced_region=hd.sr.ImageRegion(
                        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                        graphic_data=outline,
                        source_image=region_source,
                    ),
                    **common,
                )
                for outline in region_outlines(masks[number])
            )
    return groups


_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"


def _contributing_equipment(algorithm: AlgorithmInfo) -> hd.ContributingEquipment:
    """The model as Contributing Equipment (CID 7005 "Processing Equipment"), as AIR asks."""
    return hd.ContributingEquipment(
        manufacturer=markers.OUTPUT_MANUFACTURER,
        purpose_of_reference=PROCESSING_EQUIPMENT,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        contribution_description=(
            f"AI anomaly detection, model_id={algorithm.model_id}, "
            f"weights sha256 {algorithm.weights_sha256}"
        )[:1024],
    )


def _research_notice() -> hd.sr.ContainerContentItem:
    """TID 1500 "Qualitative Evaluations" container holding the research-use notice."""
    container = hd.sr.ContainerContentItem(
        name=_QUALITATIVE_EVALUATIONS,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=_COMMENT,
                value=RESEARCH_NOTICE_TEXT,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        ]
    )
    return container


@dataclass(frozen=True)
class PriorReport:
    """What stays current of a study's earlier SR when more of its images are analysed.

    Attributes:
        sr: the earlier SR (the predecessor of the new one).
        groups: its measurement groups of images not analysed again (image groups and the
            region groups of their SEGs), carried into the new SR unchanged.
        images: the values of those images (`read_sr_scores`'s ``images`` entries).
        threshold: the earlier study threshold.
        evidence: minimal references (study, series, class, instance) of the earlier
            evidence that the carried groups rely on.
    """

    sr: Dataset
    groups: tuple[Dataset, ...]
    images: Mapping[str, Mapping[str, Any]]
    threshold: float | None
    evidence: tuple[Dataset, ...]

    def scores(self) -> list[float]:
        """The analysed scores among the carried images."""
        return [float(v["score"]) for v in self.images.values() if v.get("score") is not None]


def prior_report(prior: Dataset, analysed_now: set[str]) -> PriorReport:
    """The part of ``prior`` (an SR of `write_sr`) to carry into the study's next SR.

    A group is carried unless it references an image of ``analysed_now`` (that image's new
    result replaces it); the study group is never carried (the new SR computes it again).

    Args:
        prior: the study's current SR of the same model and version.
        analysed_now: SOP Instance UIDs of the images of the new run.

    Raises:
        ValueError: ``prior`` is not an imaging measurement report.
    """
    parsed = read_sr_scores(prior)
    groups: list[Dataset] = []
    referenced: set[str] = set()
    for container in prior.get("ContentSequence", []):
        if _code_key(container, "ConceptNameCodeSequence") != ("DCM", "126010"):
            continue
        for group in container.get("ContentSequence", []):
            if _code_key(group, "ConceptNameCodeSequence") != ("DCM", "125007"):
                continue
            uids = _referenced_uids(group)
            identifier = _tracking_identifier(group)
            if identifier == STUDY_TRACKING_ID:
                continue
            image_uid = (identifier or "").removeprefix(_IMAGE_TRACKING_PREFIX)
            if uids & analysed_now or image_uid in analysed_now:
                continue
            groups.append(group)
            referenced |= uids
    evidence = [
        _reference(study.StudyInstanceUID, series.SeriesInstanceUID, item)
        for study in prior.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study.get("ReferencedSeriesSequence", [])
        for item in series.get("ReferencedSOPSequence", [])
        if str(item.ReferencedSOPInstanceUID) in referenced
    ]
    carried_images = {
        uid: values for uid, values in parsed["images"].items() if uid not in analysed_now
    }
    return PriorReport(
        sr=prior,
        groups=tuple(groups),
        images=carried_images,
        threshold=parsed["study"]["threshold"],
        evidence=tuple(evidence),
    )


def _reference(study_uid: str, series_uid: str, item: Dataset) -> Dataset:
    ref = Dataset()
    ref.StudyInstanceUID = study_uid
    ref.SeriesInstanceUID = series_uid
    ref.SOPClassUID = item.ReferencedSOPClassUID
    ref.SOPInstanceUID = item.ReferencedSOPInstanceUID
    return ref


def _referenced_uids(item: Dataset) -> set[str]:
    """Every ReferencedSOPInstanceUID under a content item."""
    uids: set[str] = set()
    for child in item.get("ContentSequence", []):
        for ref in child.get("ReferencedSOPSequence", []):
            uids.add(str(ref.ReferencedSOPInstanceUID))
        uids |= _referenced_uids(child)
    return uids


def _tracking_identifier(group: Dataset) -> str | None:
    for item in group.get("ContentSequence", []):
        if item.get("ValueType") == "TEXT" and _code_key(item, "ConceptNameCodeSequence") == (
            "DCM",
            "112039",
        ):
            return str(item.TextValue)
    return None


def write_sr(
    sources: Sequence[Dataset],
    study: StudyResult,
    *,
    derived: Sequence[Dataset] = (),
    prior: PriorReport | None = None,
    series_instance_uid: str | None = None,
    series_number: int = SR_SERIES_NUMBER,
) -> hd.sr.ComprehensiveSR:
    """The study's anomaly report as a Comprehensive SR (TID 1500; see the module docstring).

    Args:
        sources: headers of the study's source images (at least every image in
            ``study.images``); they become the SR's evidence and are referenced by the groups.
        study: the engine's result for this study and model.
        derived: the result objects written for this study and model (binary and fractional
            SEGs, Parametric Maps, overlay SCs): every one is in the evidence; each SEG
            segment gets a TID 1410/1411 group sharing its Tracking UID, each Parametric Map
            is a source of its image's group.
        prior: the study's earlier SR of this model, when the images of ``study`` are a
            later part of it (`prior_report`): its carried groups are kept, its evidence
            too, and it becomes the predecessor (PredecessorDocumentsSequence); the study
            score of ``study`` must already cover the carried images.
        series_instance_uid: series of the SR; new if None.
        series_number: SeriesNumber (default 9003).

    Returns:
        The SR (a pydicom Dataset with file meta; write it with `convert.save`).

    Raises:
        ValueError: no source, an image result whose source is missing, or sources or
            derived objects of another study.
    """
    if not sources:
        raise ValueError("write_sr needs at least one source image")
    prepared = [prepare_source(s) for s in sources]
    by_uid = {str(s.SOPInstanceUID): s for s in prepared}
    other_studies = {str(s.StudyInstanceUID) for s in prepared} - {study.study_instance_uid}
    if other_studies:
        raise ValueError(
            f"sources of other studies than {study.study_instance_uid}: {sorted(other_studies)}"
        )
    missing = [i.sop_instance_uid for i in study.images if i.sop_instance_uid not in by_uid]
    if missing:
        raise ValueError(f"no source header for image results {missing}")
    foreign = [
        str(d.SOPInstanceUID) for d in derived if d.StudyInstanceUID != study.study_instance_uid
    ]
    if foreign:
        raise ValueError(f"derived objects of another study: {foreign}")
    maps_by_source: dict[str, list[Dataset]] = {}
    for ds in derived:
        if ds.SOPClassUID == _PARAMETRIC_MAP_STORAGE:
            for uid in referenced_sources(ds):
                maps_by_source.setdefault(uid, []).append(ds)

    algorithm = study.algorithm
    # one algorithm identification for all groups: its items are only read, never changed
    algorithm_id = _algorithm_id(algorithm)
    groups: list[Any] = [
        _image_group(
            i,
            by_uid[i.sop_instance_uid],
            algorithm_id,
            maps_by_source.get(i.sop_instance_uid, ()),
        )
        for i in study.images
    ]
    groups.append(_study_group(study, algorithm_id, prior.threshold if prior else None))
    for ds in derived:
        if ds.SOPClassUID == _SEGMENTATION_STORAGE:
            groups.extend(_segment_groups(ds, by_uid, algorithm_id))

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[algorithm.model_id, algorithm.weights_sha256]),
        name=algorithm.name,
        manufacturer_name=markers.OUTPUT_MANUFACTURER,
        model_name=algorithm.name,
        serial_number=algorithm.weights_sha256[:16] or None,
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=procedures_reported(prepared),
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    root = cast(hd.sr.ContainerContentItem, report[0])
    root.ContentSequence.append(_research_notice())
    with warnings.catch_warnings():
        # The sources' PatientName is copied as it is; its form is not ours to judge.
        warnings.filterwarnings("ignore", message=".*intended person name", category=UserWarning)
        sr = hd.sr.ComprehensiveSR(
            evidence=[*prepared, *derived, *(prior.evidence if prior else ())],
            content=_empty_root(root),
            **output_identity(
                algorithm,
                "report",
                series_instance_uid=series_instance_uid,
                series_number=series_number,
                instance_number=1,
            ),
            is_complete=True,
            is_final=False,
            is_verified=False,
            coding_schemes=[
                hd.coding_schemes.CodingSchemeIdentificationItem(
                    designator=CODING_SCHEME,
                    name=markers.PRIVATE_CODING_SCHEME_NAME,
                    responsible_organization=markers.OUTPUT_MANUFACTURER,
                )
            ],
            contributing_equipment=[_contributing_equipment(algorithm)],
            previous_versions=[prior.sr] if prior else None,
        )
    if prior:
        # the carried groups go in after the new ones, as they were written (the copy keeps
        # ``prior`` as it is)
        [measurements] = [
            item
            for item in root.ContentSequence
            if _code_key(item, "ConceptNameCodeSequence") == ("DCM", "126010")
        ]
        measurements.ContentSequence.extend(
            hd.sr.ContainerContentItem.from_dataset(g, copy=True) for g in prior.groups
        )
    _attach_tree(sr, root)
    logger.debug("built SR %s with %d image groups", sr.SOPInstanceUID, len(study.images))
    return sr


# Why the SR is built around an empty root container (it halves write_sr, ~35 -> ~15 ms for
# one image): `ComprehensiveSR` deep-copies the content tree, parses the copy into content
# items and searches the whole tree three times (IMAGE and COMPOSITE references, to check that
# each has its evidence, and SCOORD3D, which a Comprehensive SR may not hold). None of that
# changes the document: the evidence sequences are made from ``evidence`` alone, every
# reference in this tree is to a prepared source that is in the evidence (`write_sr` checks
# that first), and the tree has no SCOORD3D. The tree itself is still built and validated by
# highdicom's TID 1500 template classes; `_attach_tree` then puts it where the constructor
# would have (the written file is the same, element for element).


def _empty_root(root: Dataset) -> Dataset:
    """The root CONTAINER item of the report with an empty ContentSequence."""
    empty = Dataset()
    for elem in root:
        if elem.keyword != "ContentSequence":
            empty.add(elem)
    empty.ContentSequence = []
    return empty


def _attach_tree(sr: hd.sr.ComprehensiveSR, root: hd.sr.ContainerContentItem) -> None:
    """Give ``sr`` the content tree under ``root``, in the dataset and as ``sr.content``."""
    sr.ContentSequence = root.ContentSequence
    # ``sr.content`` as the constructor makes it: a root ContentSequence holding the root item
    # (tests/unit/ai_engine/dicom_io/test_sr_writer.py checks that it holds the whole tree).
    sr._content = hd.sr.ContentSequence([root], is_root=True)


def _code_key(item: Dataset, keyword: str) -> tuple[str, str] | None:
    seq = item.get(keyword)
    if not seq:
        return None
    code = seq[0]
    value = code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue")
    return str(code.get("CodingSchemeDesignator", "")), str(value or "")


def _parse_group(group: Dataset) -> tuple[str | None, str | None, dict[str, Any]]:
    """(tracking identifier, referenced SOP UID, values) of one measurement group."""
    identifier: str | None = None
    referenced: str | None = None
    values: dict[str, Any] = {
        "score": None,
        "threshold": None,
        "healthy_percentile": None,
        "status": None,
        "reason": None,
    }
    for item in group.get("ContentSequence", []):
        name = _code_key(item, "ConceptNameCodeSequence")
        value_type = item.get("ValueType")
        if value_type == "TEXT" and name == ("DCM", "112039"):  # Tracking Identifier
            identifier = str(item.TextValue)
        elif value_type == "TEXT" and name == ("DCM", "121106"):  # Comment
            text = str(item.TextValue)
            values["reason"] = text.removeprefix(_NOT_ANALYSED_PREFIX)
        elif value_type == "IMAGE" and "ReferencedSOPSequence" in item and referenced is None:
            # the analysed image is the first source; a Parametric Map may follow
            referenced = str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        elif value_type == "NUM" and name is not None and name[0] == CODING_SCHEME:
            key = _NUM_KEYS.get(name[1])
            measured = item.get("MeasuredValueSequence")
            if key and measured:
                values[key] = float(measured[0].NumericValue)
        elif value_type == "CODE" and name in _STATUS_CONCEPTS:
            # the Finding (since issue 24) or the legacy private status
            code = _code_key(item, "ConceptCodeSequence")
            values["status"] = _STATUS_BY_CODE.get(code) if code else None
    return identifier, referenced, values


def _is_roi_group(group: Dataset) -> bool:
    """Whether a measurement group is a region (TID 1410/1411), not an image or study group."""
    for item in group.get("ContentSequence", []):
        if item.get("ValueType") in ("SCOORD", "SCOORD3D"):
            return True
        name = _code_key(item, "ConceptNameCodeSequence")
        if item.get("ValueType") == "IMAGE" and name in _REFERENCED_SEGMENT_CONCEPTS:
            return True
    return False


def read_own_sr(path: Path) -> Dataset | None:
    """The engine's own anomaly SR at ``path``, or None for anything else (or unreadable).

    Own: our Manufacturer and SOP class, Modality SR, a TID 1500 report `read_sr_scores`
    parses. The node (feedback, the router's prior results) and the pipeline read earlier
    SRs through this.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        ds = dcmread(path)
    except (InvalidDicomError, OSError):
        return None
    if not markers.is_own_output(ds.get("Manufacturer"), ds.get("SOPClassUID")):
        return None
    if str(ds.get("Modality", "")) != "SR":
        return None
    try:
        read_sr_scores(ds)
    except (ValueError, AttributeError):
        return None
    return ds


def read_sr_scores(ds: Dataset) -> dict[str, Any]:
    """Parse the scores back from an SR written by `write_sr` (plain pydicom, tolerant).

    Args:
        ds: the SR dataset (e.g. ``pydicom.dcmread(path)``).

    Returns:
        ``{"study": {"score", "threshold", "status"}, "images": {sop_instance_uid: {"score",
        "threshold", "healthy_percentile", "status", "reason"}}, "algorithm": {"name",
        "version"}}``. Status is "Abnormal", "Normal" or "Not analysed"; a missing value is
        None.

    Raises:
        ValueError: ``ds`` is not an imaging measurement report.
    """
    if _code_key(ds, "ConceptNameCodeSequence") != ("DCM", "126000"):
        raise ValueError("not an Imaging Measurement Report (TID 1500) SR")
    study: dict[str, Any] = {"score": None, "threshold": None, "status": None}
    images: dict[str, dict[str, Any]] = {}
    for container in ds.get("ContentSequence", []):
        if _code_key(container, "ConceptNameCodeSequence") != ("DCM", "126010"):
            continue  # not "Imaging Measurements"
        for group in container.get("ContentSequence", []):
            if _code_key(group, "ConceptNameCodeSequence") != ("DCM", "125007"):
                continue  # not a "Measurement Group"
            if _is_roi_group(group):
                continue  # a SEG segment or its outline: the image's values are elsewhere
            identifier, referenced, values = _parse_group(group)
            if identifier == STUDY_TRACKING_ID:
                study = {k: values[k] for k in ("score", "threshold", "status")}
                continue
            sop_uid = referenced
            if sop_uid is None and identifier and identifier.startswith(_IMAGE_TRACKING_PREFIX):
                sop_uid = identifier.removeprefix(_IMAGE_TRACKING_PREFIX)
            if sop_uid is not None:
                images[sop_uid] = values
    return {
        "study": study,
        "images": images,
        "algorithm": {
            "name": str(ds.get("ManufacturerModelName", "")),
            "version": str(ds.get("SoftwareVersions", "")),
        },
    }


# --------------------------------------------------------------------------- reader review
#
# A radiologist's judgement of the node's result for one study ("review" SR, series 9007):
# the same TID 1500 layout, with the reader as the person observer, the node's SR of that
# study as the evidence it judges, and one measurement group:
#
# - tracking identifier "review <SOPInstanceUID of the judged SR>";
# - CODE (REVIEW_JUDGEMENT, 99AINODE, "Reader judgement of the AI result") =
#   (AGREE, 99AINODE, "Agree") | (FALSE_ALARM, 99AINODE, "Disagree: false alarm") |
#   (MISSED_FINDING, 99AINODE, "Disagree: missed finding");
# - TEXT (121106, DCM, "Comment") with the reader's comment, when there is one.
#
# A changed judgement is a new SR whose PredecessorDocumentsSequence references the earlier
# version (every version is kept; the latest counts).

REVIEW_SERIES_NUMBER = 9007
REVIEW_TRACKING_PREFIX = "review "
REVIEW_JUDGEMENT = hd.sr.CodedConcept(
    "REVIEW_JUDGEMENT", CODING_SCHEME, "Reader judgement of the AI result"
)
#: judgement key (the node's API) -> its code.
REVIEW_CODES: dict[str, hd.sr.CodedConcept] = {
    "agree": hd.sr.CodedConcept("AGREE", CODING_SCHEME, "Agree"),
    "false_alarm": hd.sr.CodedConcept("FALSE_ALARM", CODING_SCHEME, "Disagree: false alarm"),
    "missed_finding": hd.sr.CodedConcept(
        "MISSED_FINDING", CODING_SCHEME, "Disagree: missed finding"
    ),
}
_REVIEW_BY_CODE = {(c.scheme_designator, c.value): key for key, c in REVIEW_CODES.items()}
__all__ += [
    "REVIEW_CODES",
    "REVIEW_JUDGEMENT",
    "REVIEW_SERIES_NUMBER",
    "read_review_sr",
    "write_review_sr",
]


def write_review_sr(
    judged_sr: Dataset,
    judgement: str,
    reader: str,
    *,
    comment: str = "",
    previous: Sequence[Dataset] = (),
    series_instance_uid: str | None = None,
    instance_number: int = 1,
) -> hd.sr.ComprehensiveSR:
    """A reader's judgement of the node's SR of one study (see the comment above).

    Args:
        judged_sr: the node's anomaly SR (`write_sr`) the reader judged.
        judgement: a key of `REVIEW_CODES`.
        reader: the reader's name (person observer; at most 64 characters).
        comment: free text (empty: no comment item).
        previous: earlier versions of this judgement (review SRs of the same study), in
            PredecessorDocumentsSequence.
        series_instance_uid: the review series (default: a new one).
        instance_number: InstanceNumber (the version, 1 for the first).

    Returns:
        The review SR (write it with `convert.save`).

    Raises:
        ValueError: unknown judgement, empty reader, or ``judged_sr`` is not an anomaly SR.
    """
    if judgement not in REVIEW_CODES:
        raise ValueError(f"unknown judgement {judgement!r}; one of {sorted(REVIEW_CODES)}")
    if not reader.strip():
        raise ValueError("a review needs the reader's name")
    read_sr_scores(judged_sr)  # raises ValueError if it is not our report
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=new_uid(), identifier=f"{REVIEW_TRACKING_PREFIX}{judged_sr.SOPInstanceUID}"
        ),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(REVIEW_JUDGEMENT, REVIEW_CODES[judgement])
        ],
    )
    if comment:
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=_COMMENT,
                value=comment,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    with warnings.catch_warnings():
        # a reader's login ("radiologist") is a one-component name; it is kept as given
        warnings.filterwarnings("ignore", message=".*intended person name", category=UserWarning)
        person = hd.sr.PersonObserverIdentifyingAttributes(name=reader.strip()[:64])
        context = hd.sr.ObservationContext(
            observer_person_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Person, observer_identifying_attributes=person
            )
        )
        report = hd.sr.MeasurementReport(
            observation_context=context,
            procedure_reported=_IMAGING_PROCEDURE,
            imaging_measurements=[group],
            title=codes.DCM.ImagingMeasurementReport,
        )
        sr = hd.sr.ComprehensiveSR(
            evidence=[judged_sr],
            content=report[0],
            series_instance_uid=series_instance_uid or new_uid(),
            series_number=REVIEW_SERIES_NUMBER,
            sop_instance_uid=new_uid(),
            instance_number=instance_number,
            manufacturer=markers.OUTPUT_MANUFACTURER,
            is_complete=True,
            is_final=False,
            is_verified=False,
            previous_versions=list(previous) or None,
            series_description=series_description("review"),
            manufacturer_model_name=str(judged_sr.get("ManufacturerModelName", "")) or None,
            software_versions=str(judged_sr.get("SoftwareVersions", "")) or None,
            coding_schemes=[
                hd.coding_schemes.CodingSchemeIdentificationItem(
                    designator=CODING_SCHEME,
                    name=markers.PRIVATE_CODING_SCHEME_NAME,
                    responsible_organization=markers.OUTPUT_MANUFACTURER,
                )
            ],
        )
    logger.debug("built review SR %s (%s)", sr.SOPInstanceUID, judgement)
    return sr


def read_review_sr(ds: Dataset) -> dict[str, Any]:
    """Parse a review SR written by `write_review_sr` (plain pydicom, tolerant).

    Args:
        ds: the review SR.

    Returns:
        ``{"judgement", "reader", "comment", "judged_sr_uid", "predecessors"}``; a missing
        value is None (``predecessors``: a list of SOP Instance UIDs).

    Raises:
        ValueError: ``ds`` is not a review SR.
    """
    if _code_key(ds, "ConceptNameCodeSequence") != ("DCM", "126000"):
        raise ValueError("not an Imaging Measurement Report (TID 1500) SR")
    out: dict[str, Any] = {
        "judgement": None,
        "reader": None,
        "comment": None,
        "judged_sr_uid": None,
        "predecessors": [
            str(sop.ReferencedSOPInstanceUID)
            for study in ds.get("PredecessorDocumentsSequence", [])
            for series in study.get("ReferencedSeriesSequence", [])
            for sop in series.get("ReferencedSOPSequence", [])
        ],
    }
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "PNAME" and _code_key(item, "ConceptNameCodeSequence") == (
            "DCM",
            "121008",
        ):  # Person Observer Name
            out["reader"] = str(item.PersonName)
        if _code_key(item, "ConceptNameCodeSequence") != ("DCM", "126010"):
            continue
        for group in item.get("ContentSequence", []):
            for entry in group.get("ContentSequence", []):
                name = _code_key(entry, "ConceptNameCodeSequence")
                kind = entry.get("ValueType")
                if kind == "TEXT" and name == ("DCM", "112039"):
                    text = str(entry.TextValue)
                    if text.startswith(REVIEW_TRACKING_PREFIX):
                        out["judged_sr_uid"] = text.removeprefix(REVIEW_TRACKING_PREFIX)
                elif kind == "TEXT" and name == ("DCM", "121106"):
                    out["comment"] = str(entry.TextValue)
                elif kind == "CODE" and name == (CODING_SCHEME, REVIEW_JUDGEMENT.value):
                    code = _code_key(entry, "ConceptCodeSequence")
                    out["judgement"] = _REVIEW_BY_CODE.get(code) if code else None
    if out["judgement"] is None:
        raise ValueError("not a review SR (no reader judgement)")
    return out
