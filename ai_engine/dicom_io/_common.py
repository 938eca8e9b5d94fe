"""Small helpers shared by the DICOM readers and writers of this package (internal)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import UID, generate_uid

from ai_engine.dicom_io import markers

logger = logging.getLogger(__name__)

#: Text appended to every output SeriesDescription.
RESEARCH_SUFFIX = f"({markers.RESEARCH_USE_NOTICE})"


def new_uid() -> UID:
    """A new, globally unique UID (pydicom's root + random suffix).

    Returns:
        The UID.
    """
    return generate_uid()


def save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file (preamble + file meta), atomically.

    The file is written to a temporary name beside ``path`` and renamed, so a reader that
    watches the folder never sees half a file. Parent folders are created.

    Args:
        ds: dataset with ``file_meta.TransferSyntaxUID`` set (all datasets made by this
            package have it; highdicom objects too).
        path: destination file.

    Returns:
        ``path``.

    Raises:
        ValueError: when ``ds`` has no file meta transfer syntax.
    """
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is None or "TransferSyntaxUID" not in file_meta:
        raise ValueError("dataset has no file_meta.TransferSyntaxUID; cannot write a DICOM file")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.debug("wrote %s", ds.get("SOPInstanceUID", "?"))
    return path


def series_description(kind: str) -> str:
    """SeriesDescription of an output, as CONTRACTS.md prescribes.

    The model name and version are not in it (SeriesDescription is LO, at most 64 characters);
    they are in ManufacturerModelName and SoftwareVersions.

    Args:
        kind: "region", "map" or "report".

    Returns:
        e.g. "AI anomaly region (research use only, not for clinical use)".

    Raises:
        ValueError: when the result would not fit in 64 characters.
    """
    text = f"{markers.OUTPUT_SERIES_PREFIX} {kind} {RESEARCH_SUFFIX}"
    if len(text) > 64:
        raise ValueError(f"SeriesDescription longer than 64 characters: {text!r}")
    return text
