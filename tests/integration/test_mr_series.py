"""The committed MR FLAIR series through the real stack: one SEG and one map in Orthanc, served
by its DICOMweb, and the region on the right slices of the STOCK OHIF 3.13.2 viewer.

scanner (pynetdicom SCU) -> Orthanc -> node (default routing: MR -> default-brain) -> STOW-RS
-> Orthanc; then QIDO/WADO-RS as a viewer reads it, and headless Chromium on a second viewer
server that serves the stock app config (``ohif-extension/tests/stock-app-config.js``: no
anomaly extension).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from ai_engine.dicom_io.pmap_writer import STORED_SCALE, frame_sources
from devstack.demo import send_files
from devstack.stack import EmbeddedStack

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "data" / "dicom" / "lgg_flair_mr"
PM_CLASS = "1.2.840.10008.5.1.4.1.1.30"
#: Brain extraction (HD-BET) of 20 slices takes about 45 s on 2 busy cores, plus model loading.
RESULT_TIMEOUT = 400.0


def _modality_series(client: DICOMwebClient, study_uid: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in client.search_for_series(study_uid):
        out.setdefault(record["00080060"]["Value"][0], []).append(record)
    return out


@pytest.fixture(scope="module")
def mr_study(stack: EmbeddedStack, dicomweb: DICOMwebClient) -> dict[str, list[dict]]:
    """The MR sample sent by C-STORE; waits for its SR (delivered after the SEG and map)."""
    assert "default-brain" in stack.options.checkpoints
    files = sorted(SAMPLE.glob("*.dcm"))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    send_files(files, "127.0.0.1", stack.options.dicom_port)
    deadline = time.monotonic() + RESULT_TIMEOUT
    while True:
        found = _modality_series(dicomweb, study_uid)
        if found.get("SR"):
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"no SR for the MR study within {RESULT_TIMEOUT:.0f} s: {list(found)}")
        time.sleep(1.0)


def _study_uid() -> str:
    return str(
        pydicom.dcmread(next(SAMPLE.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID
    )


def _only_instance(client: DICOMwebClient, record: dict) -> pydicom.Dataset:
    [ds] = client.retrieve_series(_study_uid(), record["0020000E"]["Value"][0])
    return ds


def test_mr_series_gets_one_seg_and_one_map_that_orthanc_serves(
    stack: EmbeddedStack, dicomweb: DICOMwebClient, mr_study: dict[str, list[dict]]
) -> None:
    """One SEG and one PM for the 20-slice series; the PM's metadata and frames come back 200
    from Orthanc 1.10 / DICOMweb 1.7 (a float PM's frames are HTTP 400 there)."""
    sources = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in SAMPLE.glob("*.dcm")
    }
    [seg_record] = mr_study["SEG"]
    seg = _only_instance(dicomweb, seg_record)
    assert seg.SegmentationType == "BINARY"
    assert set(frame_sources(seg)) <= sources
    [map_record] = mr_study["OT"]  # highdicom writes a Parametric Map with Modality OT
    pm = _only_instance(dicomweb, map_record)
    assert pm.SOPClassUID == PM_CLASS
    assert set(frame_sources(pm)) == set(frame_sources(seg))
    assert pm.NumberOfFrames * len(seg.SegmentSequence) == seg.NumberOfFrames
    # the map as a viewer reads it: metadata + frames over WADO-RS
    session = requests.Session()
    session.auth = stack.auth
    base = (
        f"{stack.orthanc_url}/dicom-web/studies/{_study_uid()}/series/"
        f"{pm.SeriesInstanceUID}/instances/{pm.SOPInstanceUID}"
    )
    meta = session.get(f"{base}/metadata", timeout=30)
    assert meta.status_code == 200
    [attrs] = meta.json()
    assert "BulkDataURI" in attrs["7FE00010"]  # PixelData, not a one-float FloatPixelData
    assert "7FE00008" not in attrs
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    for frame in (1, int(pm.NumberOfFrames)):
        reply = session.get(f"{base}/frames/{frame}", headers={"Accept": accept}, timeout=30)
        assert reply.status_code == 200, reply.text[:300]
        assert len(reply.content) >= pm.Rows * pm.Columns * 2
    values = pm.pixel_array
    assert values.dtype == np.uint16
    assert int(values.max()) <= STORED_SCALE


def _region_slices(seg: pydicom.Dataset, sources: list[str]) -> tuple[list[str], list[str]]:
    """Source slices with region pixels in the SEG, and those without (no frame or empty)."""
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    counts: dict[str, int] = {}
    for k, uid in enumerate(frame_sources(seg)):
        counts[uid] = counts.get(uid, 0) + int(pixels[k].sum())
    return (
        [u for u in sources if counts.get(u, 0) > 0],
        [u for u in sources if counts.get(u, 0) == 0],
    )


@pytest.mark.browser
def test_stock_ohif_shows_the_region_on_the_slices_of_the_seg(
    dicomweb: DICOMwebClient,
    mr_study: dict[str, list[dict]],
    stock_viewer_url: str,
    browser_script: Callable[..., str],
) -> None:
    """Stock OHIF 3.13.2 (no extension) loads the SEG onto the MR series; overlay pixels are
    drawn on every slice where the SEG has region and on none of the others."""
    sources = [
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in sorted(SAMPLE.glob("*.dcm"))
    ]
    region, empty = _region_slices(_only_instance(dicomweb, mr_study["SEG"][0]), sources)
    assert region
    assert empty
    screenshot = REPO / "test-artifacts" / "e2e" / "mr_overlay_stock.png"  # git-ignored
    browser_script(
        "e2e_stock_mr.mjs",
        "--url", stock_viewer_url,
        "--study", _study_uid(),
        "--region", ",".join(region),
        "--empty", ",".join(empty),
        "--screenshot", str(screenshot),
        "--timeout", "120",
        passed="E2E STOCK PASS",
    )  # fmt: skip


@pytest.mark.browser
def test_our_extension_e2e_on_the_mr_study(
    stack: EmbeddedStack, mr_study: dict[str, list[dict]], browser_script: Callable[..., str]
) -> None:
    """The extension's own e2e (panel, score, SEG overlay) on the MR study."""
    assert stack.viewer_url is not None
    browser_script(
        "e2e.mjs",
        "--url",
        stack.viewer_url,
        "--study",
        _study_uid(),
        "--screenshots",
        str(REPO / "test-artifacts" / "e2e-mr"),
        "--timeout",
        "120",
        passed="E2E PASS",
    )
