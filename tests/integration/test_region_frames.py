"""The region SEG of a radiograph whose width is not a multiple of 8 is served by Orthanc.

Orthanc 1.10 refuses every WADO-RS frame of a 1-bit image whose Columns is not a multiple of 8
("Bad number of columns for a black-and-white image"), so a BINARY SEG of the RG1 CR sample
(1841 columns) could never be shown by the viewer. The node writes the region of such an image
as a pseudo-binary FRACTIONAL SEG (see `seg_writer.region_segmentation_type`); here the real
stack analyses a copy of the RG1 study and every region frame is fetched by DICOMweb as OHIF
3.13 asks for it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from devstack.demo import send_files
from devstack.stack import EmbeddedStack

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "dicom" / "original_rg1_cr"
#: Generous: the first job loads torch and the model on a busy 2-core machine.
RESULT_TIMEOUT = 240.0
#: What OHIF 3.13.2's WADO-RS image loader sends for SEG frames (omitQuotationForMultipartRequest).
OHIF_FRAME_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"
#: What the extension's own loader sends (uncompressed, for its heat map).
UNCOMPRESSED_FRAME_ACCEPT = (
    'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
)


def _copy_study(tmp_path: Path) -> tuple[str, list[Path]]:
    """The RG1 study with new UIDs (other tests send the original)."""
    study, series = generate_uid(), generate_uid()
    paths = []
    for path in sorted(SAMPLE.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out = tmp_path / path.name
        ds.save_as(out, enforce_file_format=True)
        paths.append(out)
    return study, paths


def _region_segs(client: DICOMwebClient, study: str) -> list[pydicom.Dataset]:
    """The study's region SEGs (metadata only), once its SR is in (sent after the SEGs)."""
    deadline = time.monotonic() + RESULT_TIMEOUT
    while True:
        modalities = [
            r.get("00080060", {}).get("Value", [""])[0] for r in client.search_for_series(study)
        ]
        if "SR" in modalities:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"no results for study {study} within {RESULT_TIMEOUT:.0f} s")
        time.sleep(0.5)
    segs = []
    for record in client.search_for_series(study, search_filters={"Modality": "SEG"}):
        series = record["0020000E"]["Value"][0]
        for meta in client.retrieve_series_metadata(study, series):
            ds = pydicom.Dataset.from_json(meta, lambda *_: b"")  # no pixel data needed
            if ds.get("ContentLabel") == "ANOMALY_REGION":
                segs.append(ds)
    return segs


def _parts(response: requests.Response) -> list[bytes]:
    """The bodies of a multipart/related response."""
    boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    chunks = response.content.split(b"--" + boundary.encode())[1:-1]
    return [chunk.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") for chunk in chunks]


def test_every_region_frame_of_the_rg1_cr_is_served(
    stack: EmbeddedStack, dicomweb: DICOMwebClient, tmp_path: Path
) -> None:
    study, paths = _copy_study(tmp_path)
    send_files(paths, "127.0.0.1", stack.options.dicom_port)
    segs = _region_segs(dicomweb, study)
    assert len(segs) == len(paths)  # one region SEG per image

    session = requests.Session()
    session.auth = stack.auth
    for seg in segs:
        assert int(seg.Columns) % 8 != 0  # the case Orthanc cannot serve as 1 bit per pixel
        frames = int(seg.NumberOfFrames)
        assert frames == len(seg.SegmentSequence)  # every level has its frame
        url = (
            f"{stack.orthanc_url}/dicom-web/studies/{study}/series/{seg.SeriesInstanceUID}"
            f"/instances/{seg.SOPInstanceUID}/frames/{','.join(map(str, range(1, frames + 1)))}"
        )
        for accept in (OHIF_FRAME_ACCEPT, UNCOMPRESSED_FRAME_ACCEPT):
            response = session.get(url, headers={"Accept": accept}, timeout=60)
            assert response.status_code == 200, f"{accept}: {response.text[:300]}"
            parts = _parts(response)
            assert len(parts) == frames
            for part in parts:
                assert len(part) == int(seg.Rows) * int(seg.Columns)  # 8 bits per pixel
                assert set(np.unique(np.frombuffer(part, np.uint8)).tolist()) <= {0, 255}
        # the levels as a pseudo-binary FRACTIONAL SEG: each pixel wholly in a level or not
        assert seg.SegmentationType == "FRACTIONAL"
        assert seg.SegmentationFractionalType == "OCCUPANCY"
        assert int(seg.MaximumFractionalValue) == 255
