"""How the node's own outputs are recognised, without importing highdicom or torch.

The Orthanc routing script (orthanc/route_stable_studies.py) repeats these values because it
runs in Orthanc's own Python; a unit test checks that both agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Manufacturer written into every object the engine creates.
OUTPUT_MANUFACTURER = "AI Anomaly Node"
#: SeriesDescription prefix of every output series: the research-use marking first, so a
#: series list that cuts descriptions short (OHIF's) still shows it. Outputs written before
#: issue 24 began with "AI anomaly"; readers (the viewer's sr.js) accept both.
OUTPUT_SERIES_PREFIX = "RESEARCH USE ONLY: AI anomaly"
#: Marking on every output: the results are not for clinical use.
RESEARCH_USE_NOTICE = "research use only, not for clinical use"
#: The private coding scheme of concepts DICOM has no code for (declared in every object that
#: uses it, in CodingSchemeIdentificationSequence).
PRIVATE_CODING_SCHEME = "99AINODE"
PRIVATE_CODING_SCHEME_NAME = "AI Anomaly Node private codes"

#: SOP classes the engine writes: never inputs.
OUTPUT_SOP_CLASS_UIDS = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
        "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection (flagged images)
        "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map Storage
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (burned-in map)
    }
)


def is_own_output(manufacturer: str | None, sop_class_uid: str | None) -> bool:
    """True when an instance was written by this engine and must never start a job.

    Args:
        manufacturer: the instance's Manufacturer (0008,0070), if any.
        sop_class_uid: its SOP Class UID.

    Returns:
        Whether it is one of our outputs.
    """
    return (manufacturer or "").strip() == OUTPUT_MANUFACTURER and (
        sop_class_uid in OUTPUT_SOP_CLASS_UIDS
    )


def is_derived_object(sop_class_uid: str | None) -> bool:
    """True for SEG/SR/PM classes that are results, not images to analyse, whoever wrote them."""
    return sop_class_uid in OUTPUT_SOP_CLASS_UIDS - {"1.2.840.10008.5.1.4.1.1.7"}


def header_is_own_output(header: Mapping[str, Any]) -> bool:
    """`is_own_output` on a mapping with keys Manufacturer and SOPClassUID."""
    return is_own_output(header.get("Manufacturer"), header.get("SOPClassUID"))
