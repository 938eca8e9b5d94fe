"""``python -m training manifest``: a manifest from a hospital's own folder of DICOM files.

Patient id, age, sex and view come from the headers; labels (and optionally the split) from
an optional CSV keyed by SOPInstanceUID or by file path relative to the DICOM folder. Rows
without a label get label 0 and split ``train`` only if the labels file says so; otherwise
they are written with an empty split so they cannot leak into an evaluation by accident.
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

from ai_engine.dicom_io.reader import read_header
from ai_engine.errors import UnsupportedInputError

COLUMNS = [
    "path",
    "split",
    "label",
    "finding",
    "patient_id",
    "age",
    "sex",
    "view",
    "bbox",
    "mask_path",
    "source_id",
]


def _labels(path: Path | None) -> dict[str, dict[str, str]]:
    if path is None:
        return {}
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for row in rows:
        key = row.get("SOPInstanceUID") or row.get("path") or ""
        out[key] = row
    return out


def _age_years(age: str) -> str:
    """DICOM AS ("033Y", "006M", "010W", "003D") -> years as in the data manifests ("33")."""
    per_year = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}
    age = age.strip().upper()
    if len(age) < 2 or age[-1] not in per_year or not age[:-1].isdigit():
        return ""
    years = int(age[:-1]) / per_year[age[-1]]
    return str(int(years)) if age[-1] == "Y" else f"{years:.2f}"


def build_manifest(dicom_dir: Path, out: Path, labels_csv: Path | None = None) -> int:
    """Write ``out`` for every readable DICOM image under ``dicom_dir``; return the row count.

    The patient id is written as a short hash (patient-level splitting needs identity, not the
    identifier itself).
    """
    labels = _labels(labels_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for path in sorted(p for p in dicom_dir.rglob("*") if p.is_file()):
            try:
                ds = read_header(path)
            except UnsupportedInputError:
                continue
            rel = path.relative_to(dicom_dir).as_posix()
            sop = str(ds.get("SOPInstanceUID", ""))
            row = labels.get(sop) or labels.get(rel) or {}
            pid = str(ds.get("PatientID", ""))
            writer.writerow(
                {
                    "path": os.path.relpath(path.resolve(), out.resolve().parent),
                    "split": row.get("split", ""),
                    "label": row.get("label", ""),
                    "finding": row.get("finding", ""),
                    "patient_id": hashlib.sha256(pid.encode()).hexdigest()[:12] if pid else "",
                    "age": _age_years(str(ds.get("PatientAge", "") or "")),
                    "sex": str(ds.get("PatientSex", "") or ""),
                    "view": str(ds.get("ViewPosition", "") or ""),
                    "bbox": "",
                    "mask_path": "",
                    "source_id": sop,
                }
            )
            n += 1
    return n
