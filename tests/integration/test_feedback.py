"""A reader's judgement goes from a click in the viewer to Orthanc and to the node's API.

Everything is real: the embedded stack (Debian Orthanc, the node with the real engine and
`default-cxr`, the viewer server), headless Chromium clicking the panel's button
(``ohif-extension/tests/e2e.mjs --judge``), the review SR read back from Orthanc by DICOMweb.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from ai_engine.dicom_io.sr_writer import REVIEW_SERIES_NUMBER, read_review_sr
from devstack.demo import send_files
from devstack.stack import EmbeddedStack

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests/data/dicom/kermany_pneumonia_mono2/kermany_pneumonia_mono2.dcm"
RESULT_TIMEOUT = 240.0
COMMENT = "consolidation, right lower lobe"


def node_api(stack: EmbeddedStack, path: str) -> requests.Response:
    assert stack.secrets is not None
    return requests.get(
        f"http://127.0.0.1:{stack.options.node_http_port}{path}",
        headers={"Authorization": f"Bearer {stack.secrets.api_token}"},
        timeout=10,
    )


def wait_for(what: str, check, timeout: float = RESULT_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f} s")
        time.sleep(0.25)


def review_series(client: DICOMwebClient, study_uid: str) -> list[dict]:
    return [
        s
        for s in client.search_for_series(study_uid, search_filters={"Modality": "SR"})
        if s.get("00200011", {}).get("Value", [None])[0] == REVIEW_SERIES_NUMBER
    ]


@pytest.mark.browser
def test_judgement_clicked_in_the_viewer_reaches_orthanc_and_the_api(
    stack: EmbeddedStack, dicomweb: DICOMwebClient, browser_script: Callable[..., str]
) -> None:
    study_uid = str(pydicom.dcmread(SAMPLE, stop_before_pixels=True).StudyInstanceUID)
    send_files([SAMPLE], "127.0.0.1", stack.options.dicom_port)  # raises on any failure
    [row] = wait_for(
        "no score for the study",
        lambda: node_api(stack, f"/studies/scores?study_instance_uid={study_uid}").json(),
    )
    assert row["is_abnormal"] is True  # this sample is flagged by default-cxr 0.5.0
    assert review_series(dicomweb, study_uid) == []
    assert stack.viewer_url is not None, "the viewer server did not start"
    shots = REPO / "test-artifacts" / "e2e-feedback"
    stdout = browser_script(
        "e2e.mjs",
        "--url", stack.viewer_url, "--study", study_uid, "--screenshots", str(shots),
        "--timeout", "120", "--judge", "agree", "--comment", COMMENT,
        passed="E2E FEEDBACK", screenshots=shots,
    )  # fmt: skip
    print(next(line for line in stdout.splitlines() if "E2E FEEDBACK" in line))

    # the node's API lists it: the latest version counts, from the viewer's reader
    listing = node_api(stack, f"/studies/{study_uid}/feedback").json()
    [current] = listing["current"]
    assert (current["judgement"], current["comment"], current["version"]) == (
        "agree", COMMENT, 1,
    )  # fmt: skip
    assert current["reader"] == "Dr E2E Reader"  # loopback viewer: the name typed in the panel
    assert current["model"] == row["model"]
    assert current["model_version"] == row["model_version"]
    # ... and Orthanc has its review SR, referencing the node's SR of the study
    [series] = wait_for("no review SR in Orthanc", lambda: review_series(dicomweb, study_uid))
    [review] = dicomweb.retrieve_series(study_uid, series["0020000E"]["Value"][0])
    assert str(review.SOPInstanceUID) == current["sop_instance_uid"]
    parsed = read_review_sr(review)
    assert (parsed["judgement"], parsed["reader"], parsed["comment"]) == (
        "agree", "Dr E2E Reader", COMMENT,
    )  # fmt: skip
    ai_srs = [
        s["0020000E"]["Value"][0]
        for s in dicomweb.search_for_series(study_uid, search_filters={"Modality": "SR"})
        if s not in [series]
    ]
    [ai_sr] = [ds for uid in ai_srs for ds in dicomweb.retrieve_series(study_uid, uid)]
    assert parsed["judged_sr_uid"] == str(ai_sr.SOPInstanceUID)
    delivered = wait_for(
        "the review not marked delivered",
        lambda: node_api(stack, f"/studies/{study_uid}/feedback").json()["current"][0]["delivered"],
        timeout=30,
    )
    assert delivered
    [summary] = [
        s
        for s in node_api(stack, "/feedback/summary").json()
        if s["model_version"] == row["model_version"]
    ]
    assert summary["agree"] >= 1
    metrics = node_api(stack, "/metrics").text
    assert "dicom_node_feedback_agreement_rate{" in metrics
