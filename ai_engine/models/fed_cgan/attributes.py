"""Patient attributes that condition the generator: demographics (PD) and clinical data (CD).

An attribute vector is a float vector (A,) with entries in about [-1.5, 1.5], 0 = unknown:

- ``age``: ``(years - 50) / 30``, clipped to [-1.5, 1.5];
- ``sex``: +1 male, -1 female, 0 unknown;
- optional clinical entries, e.g. ``view``: +1 AP, -1 PA, 0 unknown.

The signs make the vector direction meaningful, which the cosine-similarity conditional loss
needs (see `ai_engine.models.fed_cgan.loss`). Values come from a manifest's ``age``/``sex``/
``view`` columns or, for DICOM, from PatientAge/PatientSex/ViewPosition (`from_dicom`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

DEMOGRAPHICS = ("age", "sex")
CLINICAL = ("view",)
AGE_CENTRE = 50.0
AGE_SCALE = 30.0


def attribute_names(clinical: Sequence[str] = ()) -> tuple[str, ...]:
    """Names of the vector entries: demographics then the chosen clinical entries.

    Raises:
        ValueError: an unknown clinical entry.
    """
    unknown = [c for c in clinical if c not in CLINICAL]
    if unknown:
        raise ValueError(f"unknown clinical attribute(s) {unknown}; valid: {list(CLINICAL)}")
    return (*DEMOGRAPHICS, *clinical)


def _age(value: str) -> float:
    try:
        years = float(value.strip().rstrip("Yy"))
    except ValueError:
        return 0.0
    return float(np.clip((years - AGE_CENTRE) / AGE_SCALE, -1.5, 1.5))


def _signed(value: str, positive: str, negative: str) -> float:
    value = value.strip().upper()
    if value == positive:
        return 1.0
    if value == negative:
        return -1.0
    return 0.0


def encode(age: str, sex: str, view: str = "", clinical: Sequence[str] = ()) -> list[float]:
    """Attribute vector (A,) from manifest strings (age in years, sex M/F, view AP/PA)."""
    out = [_age(age), _signed(sex, "M", "F")]
    for name in clinical:
        if name == "view":
            out.append(_signed(view, "AP", "PA"))
        else:
            raise ValueError(f"unknown clinical attribute {name!r}; valid: {list(CLINICAL)}")
    return out


def from_dicom(ds: Any, clinical: Sequence[str] = ()) -> list[float]:
    """Attribute vector from a pydicom dataset (PatientAge "045Y", PatientSex, ViewPosition)."""
    age = str(ds.get("PatientAge", "") or "").strip().upper()
    years = ""
    per_year = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}
    if len(age) >= 2 and age[-1] in per_year and age[:-1].isdigit():
        years = str(int(age[:-1]) / per_year[age[-1]])
    return encode(
        years,
        str(ds.get("PatientSex", "") or ""),
        str(ds.get("ViewPosition", "") or ""),
        clinical,
    )


def sample_prior(
    n: int, dim: int, rng: np.random.Generator, age_range: tuple[float, float] = (20.0, 80.0)
) -> npt.NDArray[np.float32]:
    """Attributes (n, dim) from a public prior, using no patient data.

    Age is uniform in ``age_range``; sex and clinical entries are +-1 with probability 1/2. A
    generator update driven by these attributes adds no privacy cost.
    """
    ages = (rng.uniform(*age_range, size=n) - AGE_CENTRE) / AGE_SCALE
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n, dim - 1))
    return np.concatenate([ages[:, None], signs], axis=1).astype(np.float32)
