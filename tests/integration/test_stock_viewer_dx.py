"""A flagged chest radiograph through the real stack: the overlay Secondary Capture in Orthanc,
and shown by the STOCK OHIF 3.13.2 viewer (issue 24).

Stock OHIF cannot display a DICOM SEG on a projection radiograph (docs/CONFORMANCE.md, "Stock
OHIF 3.13.2 and radiographs"), so the node writes by default (``overlay_sc = "projection"``) a
colour Secondary Capture per analysed radiograph with the map and the label burned in
(``ai_engine/dicom_io/sc_writer.py``). scanner (pynetdicom SCU) -> Orthanc -> node (default
routing: DX -> default-cxr) -> STOW-RS -> Orthanc; then headless Chromium on a second viewer
server that serves the stock app config (``ohif-extension/tests/stock-app-config.js``: no
anomaly extension) shows the radiograph in grey and the SC in colour
(``ohif-extension/tests/e2e_stock_dx.mjs``).

The SEGs of the same study are not tried here: put into a viewport, stock OHIF 3.13.2 stays on
"Loading SEG..." (the fractional SEG: "Fractional segmentations are not yet supported"; the
binary SEG: a TypeError reading ImageOrientationPatient, which a DX has not, in
cornerstone's checkOrientation), with no page error to wait for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from ai_engine.dicom_io.sc_writer import OVERLAY_SERIES_NUMBER
from devstack.demo import send_files
from devstack.stack import EmbeddedStack

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "data" / "dicom" / "kermany_pneumonia_mono2"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
#: One radiograph through default-cxr (lung field model + classifier) on 2 busy cores.
RESULT_TIMEOUT = 300.0
SCREENSHOT = REPO / "test-artifacts" / "e2e" / "dx_overlay_stock.png"  # git-ignored


def _header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def _source() -> pydicom.Dataset:
    return _header(next(SAMPLE.glob("*.dcm")))


def _series_number(record: dict) -> int | None:
    value = record.get("00200011", {}).get("Value")
    return int(value[0]) if value else None


@pytest.fixture(scope="module")
def dx_study(stack: EmbeddedStack, dicomweb: DICOMwebClient) -> list[dict]:
    """The DX sample sent by C-STORE; waits for its SR (delivered after the SEG, map and SC)
    and returns the study's series records (QIDO)."""
    assert "default-cxr" in stack.options.checkpoints
    files = sorted(SAMPLE.glob("*.dcm"))
    study_uid = str(_header(files[0]).StudyInstanceUID)
    send_files(files, "127.0.0.1", stack.options.dicom_port)
    deadline = time.monotonic() + RESULT_TIMEOUT
    while True:
        series = dicomweb.search_for_series(study_uid)
        if any(s["00080060"]["Value"][0] == "SR" for s in series):
            return series
        if time.monotonic() > deadline:
            modalities = [s["00080060"]["Value"][0] for s in series]
            pytest.fail(f"no SR for the DX study within {RESULT_TIMEOUT:.0f} s: {modalities}")
        time.sleep(1.0)


@pytest.fixture(scope="module")
def overlay_sc(dicomweb: DICOMwebClient, dx_study: list[dict]) -> pydicom.Dataset:
    """The overlay SC instance of the DX study (the newest, should the study have been
    analysed before in this session)."""
    source = _source()
    records = [s for s in dx_study if _series_number(s) == OVERLAY_SERIES_NUMBER]
    assert records, f"no series {OVERLAY_SERIES_NUMBER} in {[_series_number(s) for s in dx_study]}"
    instances = [
        ds
        for record in records
        for ds in dicomweb.retrieve_series(
            str(source.StudyInstanceUID), record["0020000E"]["Value"][0]
        )
    ]
    assert instances
    return max(
        instances, key=lambda ds: (str(ds.get("ContentDate", "")), str(ds.get("ContentTime", "")))
    )


def test_the_flagged_radiograph_gets_an_overlay_secondary_capture(
    overlay_sc: pydicom.Dataset,
) -> None:
    source = _source()
    sc = overlay_sc
    assert sc.SOPClassUID == SC_CLASS
    assert sc.Modality == "OT"  # highdicom's SCImage
    assert sc.SeriesNumber == OVERLAY_SERIES_NUMBER
    assert "AI anomaly overlay" in sc.SeriesDescription
    assert sc.BurnedInAnnotation == "YES"
    assert sc.PhotometricInterpretation == "RGB"
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    [reference] = sc.SourceImageSequence
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    rgb = sc.pixel_array
    spread = rgb.max(axis=-1).astype(int) - rgb.min(axis=-1).astype(int)
    assert int((spread > 40).sum()) > 0  # the map is burned in, in colour


@pytest.mark.browser
def test_stock_ohif_shows_the_overlay_sc_of_the_radiograph(
    overlay_sc: pydicom.Dataset,
    stock_viewer_url: str,
    browser_script: Callable[..., str],
) -> None:
    """Stock OHIF 3.13.2 (no extension) shows the DX in grey and the overlay SC in colour."""
    source = _source()
    stdout = browser_script(
        "e2e_stock_dx.mjs",
        "--url", stock_viewer_url,
        "--study", str(source.StudyInstanceUID),
        "--source", str(source.SOPInstanceUID),
        "--sc", str(overlay_sc.SOPInstanceUID),
        "--screenshot", str(SCREENSHOT),
        "--timeout", "120",
        passed="E2E STOCK DX PASS",
    )  # fmt: skip
    print(next(line for line in stdout.splitlines() if "E2E STOCK DX PASS" in line))
    # the README's docs/screenshots/dx_overlay_stock.png is a copy of this file, committed by
    # hand: a test never writes into the source tree
