"""Fixtures for the DICOM I/O tests: dciodvfy, shared data, synthetic PNGs, strict pydicom."""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom.config
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

REPO_ROOT = Path(__file__).resolve().parents[4]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()
DCIODVFY = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"


def dciodvfy_report(path: Path) -> tuple[list[str], str]:
    """Run dciodvfy on a file; return (lines starting with "Error", full output)."""
    proc = subprocess.run(
        [DCIODVFY, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    output = proc.stderr + proc.stdout
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    return errors, output


@pytest.fixture
def dciodvfy() -> Callable[[Path], str]:
    """A checker that fails the test on any dciodvfy line starting with "Error".

    Returns the full dciodvfy output (warnings included) for further assertions.
    """
    if not Path(DCIODVFY).exists():
        pytest.skip("dciodvfy (dicom3tools) is not installed")

    def check(path: Path) -> str:
        errors, output = dciodvfy_report(path)
        assert not errors, f"dciodvfy errors for {path.name}:\n{output}"
        return output

    return check


@pytest.fixture
def shared_data() -> Path:
    """<repo>/../shared/data, or skip when this checkout has no shared data beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def dicom_samples(shared_data: Path) -> Path:
    """The folder with the four real radiograph DICOM samples."""
    folder = shared_data / "dicom_samples" / "dicom"
    if not folder.is_dir():
        pytest.skip(f"DICOM samples not found at {folder}")
    return folder


@pytest.fixture
def kermany_png(shared_data: Path) -> Path:
    """A real pediatric chest radiograph PNG (Kermany, test split, normal)."""
    pngs = sorted((shared_data / "cxr_kermany_pediatric" / "test" / "normal").glob("*.png"))
    if not pngs:
        pytest.skip("no Kermany PNG in the shared data")
    return pngs[0]


def make_png(path: Path, rows: int = 48, cols: int = 64, seed: int = 0) -> np.ndarray:
    """Write a synthetic 8-bit greyscale PNG with every value 0..255 present; return it."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, rows * cols).reshape(rows, cols)
    noise = rng.integers(-20, 21, size=(rows, cols))
    img = np.clip(ramp + noise, 0, 255).astype(np.uint8)
    img.flat[:256] = np.arange(256, dtype=np.uint8)
    Image.fromarray(img).save(path)
    return img


@pytest.fixture
def synthetic_png(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A small synthetic 8-bit greyscale PNG and its values."""
    path = tmp_path / "synthetic.png"
    return path, make_png(path)


@pytest.fixture
def strict_pydicom() -> Iterator[None]:
    """Make pydicom raise on invalid values while reading and writing (strict writing)."""
    settings = pydicom.config.settings
    old = (settings.reading_validation_mode, settings.writing_validation_mode)
    settings.reading_validation_mode = pydicom.config.RAISE
    settings.writing_validation_mode = pydicom.config.RAISE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = old


@pytest.fixture
def png_factory(tmp_path: Path) -> Callable[..., tuple[Path, np.ndarray]]:
    """Make synthetic PNGs in tmp_path: ``png_factory(name, rows=.., cols=.., seed=..)``."""

    def make(name: str = "img.png", **kwargs: int) -> tuple[Path, np.ndarray]:
        path = tmp_path / name
        return path, make_png(path, **kwargs)

    return make


#: Slices of the synthetic CT series (`ct_series`); slice k has pixel values raw + 7 * k.
CT_SERIES_SLICES = 5
CT_SERIES_PIXEL_STEP = 7
CT_SERIES_SLICE_STEP_MM = 2.5


def _ct_series(folder: Path, n: int) -> tuple[list[pydicom.Dataset], list[Path]]:
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid = generate_uid()
    x, y, z = (float(v) for v in template.ImagePositionPatient)
    raw = template.pixel_array
    datasets = []
    for k in range(n):
        ds = copy.deepcopy(template)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImagePositionPatient = [x, y, z + CT_SERIES_SLICE_STEP_MM * k]
        ds.SliceLocation = z + CT_SERIES_SLICE_STEP_MM * k
        ds.InstanceNumber = n - k  # instance order is the reverse of the position order
        ds.SpacingBetweenSlices = CT_SERIES_SLICE_STEP_MM
        ds.PixelData = (raw + CT_SERIES_PIXEL_STEP * k).astype(raw.dtype).tobytes()
        datasets.append(ds)
    folder.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(3).permutation(n)
    paths: list[Path] = [folder] * n
    for name_index, k in enumerate(order):  # file names do not follow the slice order
        path = folder / f"slice{name_index:02d}.dcm"
        datasets[k].save_as(path, enforce_file_format=True)
        paths[k] = path
    return datasets, paths


@pytest.fixture
def ct_series(tmp_path: Path) -> tuple[list[pydicom.Dataset], list[Path]]:
    """A 5-slice CT series made from pydicom's CT_small, written to disk in shuffled order.

    Returns (datasets, paths), both in anatomical order (ImagePositionPatient z ascending by
    2.5 mm). InstanceNumber runs the other way (5..1), file names are shuffled, and slice k
    stores CT_small's pixels + 7 * k.
    """
    return _ct_series(tmp_path / "ct_series", CT_SERIES_SLICES)


@pytest.fixture
def ct_small() -> pydicom.Dataset:
    """pydicom's CT_small.dcm (offline test file), read fresh for each test."""
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


@pytest.fixture
def mr_small() -> pydicom.Dataset:
    """pydicom's MR_small.dcm (offline test file), read fresh for each test."""
    return pydicom.dcmread(get_testdata_file("MR_small.dcm"))
