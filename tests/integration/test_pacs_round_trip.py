"""A study goes scanner -> Orthanc -> (stable, routed) -> node -> STOW-RS -> Orthanc.

Everything is real: the Debian Orthanc with its DICOMweb and Python plugins, the node's
Storage SCP, the engine, dcmtk's storescu. Results are found by QIDO and read back by WADO-RS.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset

from ai_engine.dicom_io.sc_writer import MIN_COLUMNS, OVERLAY_SERIES_NUMBER
from ai_engine.dicom_io.sr_writer import read_sr_scores
from devstack.demo import discover_samples, send_files, send_samples_and_report
from devstack.demo import main as embedded_main
from devstack.orthanc import ORTHANC_AET
from devstack.processes import free_port
from devstack.stack import EmbeddedStack
from dicom_node.errors import SendError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "tests" / "data" / "dicom"
STORESCU_AET = "STORESCU"  # allowed by the stack fixture (conftest.py)
#: Generous: the first job loads torch and the model on a busy 2-core machine.
RESULT_TIMEOUT = 240.0
#: The node's overlay Secondary Capture (OT, series 9005): a result, never a source image.
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
RESULT_MODALITIES = ("SEG", "SR", "KO")


@dataclass
class Results:
    study_uid: str
    source_sop_uids: list[str]
    seconds: float
    series: dict[str, list[dict]]  # Modality -> QIDO series records


def series_by_modality(client: DICOMwebClient, study_uid: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in client.search_for_series(study_uid):
        modality = record.get("00080060", {}).get("Value", ["?"])[0]
        out.setdefault(modality, []).append(record)
    return out


def wait_for_results(
    client: DICOMwebClient,
    study_uid: str,
    *,
    seg: int = 2,
    sr: int = 1,
    sc: int = 1,
    since: float,
) -> Results:
    """Poll QIDO until the study has ``seg`` SEG series, ``sr`` SR series and ``sc`` overlay
    Secondary Capture series (radiographs get one by default, DICOM_NODE_OVERLAY_SC)."""
    deadline = time.monotonic() + RESULT_TIMEOUT
    while True:
        found = series_by_modality(client, study_uid)
        overlays = [r for r in found.get("OT", []) if is_overlay_series(r)]
        if (
            len(found.get("SEG", [])) >= seg
            and len(found.get("SR", [])) >= sr
            and len(overlays) >= sc
        ):
            sources = [
                i["00080018"]["Value"][0]
                for i in client.search_for_instances(study_uid)
                if i.get("00080060", {}).get("Value", [""])[0] not in RESULT_MODALITIES
                and i.get("00080016", {}).get("Value", [""])[0] != SC_CLASS
            ]
            return Results(study_uid, sources, time.monotonic() - since, found)
        if time.monotonic() > deadline:
            pytest.fail(
                f"no results for study {study_uid} within {RESULT_TIMEOUT:.0f} s "
                f"(series so far: { {k: len(v) for k, v in found.items()} })"
            )
        time.sleep(0.5)


def is_overlay_series(record: dict) -> bool:
    return record.get("00200011", {}).get("Value", [None])[0] == OVERLAY_SERIES_NUMBER


def sample_files(study: str) -> list[Path]:
    return sorted((SAMPLES / study).glob("*.dcm"))


def sample_file(study: str) -> Path:
    (path,) = sample_files(study)
    return path


@cache
def engine_scores(study: str, checkpoint: str) -> dict[str, float]:
    """The engine's own scores for a sample study (ai_engine.pipeline, no network)."""
    from ai_engine import pipeline

    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"engine-{os.getpid()}-{study}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "in").mkdir(parents=True)
    for path in sample_files(study):
        shutil.copy(path, work / "in")
    try:
        results = pipeline.run(work / "in", work / "out", (checkpoint,))
        return {
            image.sop_instance_uid: float(image.score)
            for result in results
            for image in result.images
            if image.score is not None
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def referenced_uids(ds: Dataset) -> set[str]:
    """Every ReferencedSOPInstanceUID anywhere in a dataset."""
    found: set[str] = set()

    def visit(item: Dataset) -> None:
        for element in item:
            if element.keyword == "ReferencedSOPInstanceUID":
                found.add(str(element.value))
            elif element.VR == "SQ":
                for child in element.value:
                    visit(child)

    visit(ds)
    return found


def retrieve_series(client: DICOMwebClient, study_uid: str, record: dict) -> list[Dataset]:
    series_uid = record["0020000E"]["Value"][0]
    return list(client.retrieve_series(study_uid, series_uid))


def check_results(client: DICOMwebClient, results: Results, study: str, checkpoint: str) -> None:
    """Per source image one region SEG (BINARY; pseudo-binary FRACTIONAL OCCUPANCY where the
    width is not a multiple of 8) and one map SEG (FRACTIONAL) and a TID 1501 group in the one
    SR, all referencing it; the SR's scores are the engine's own for the same files."""
    sources = {
        str(ds.SOPInstanceUID): ds
        for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in sample_files(study))
    }
    assert sorted(results.source_sop_uids) == sorted(sources)
    segs = [
        ds
        for record in results.series["SEG"]
        for ds in retrieve_series(client, results.study_uid, record)
    ]
    for source_uid, source in sources.items():
        mine = [seg for seg in segs if source_uid in referenced_uids(seg)]
        by_label = {str(seg.ContentLabel): seg for seg in mine}
        assert sorted(by_label) == ["ANOMALY_MAP", "ANOMALY_REGION"]
        assert by_label["ANOMALY_MAP"].SegmentationType == "FRACTIONAL"
        region = by_label["ANOMALY_REGION"]
        if source.Columns % 8 == 0:
            assert region.SegmentationType == "BINARY"
        else:
            assert (region.SegmentationType, region.SegmentationFractionalType) == (
                "FRACTIONAL",
                "OCCUPANCY",
            )
        for seg in mine:
            assert seg.Manufacturer == "AI Anomaly Node"
            assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
            assert seg.pixel_array.shape[-2:] == (source.Rows, source.Columns)
    assert len(segs) == 2 * len(sources)

    # a radiograph also gets the map burnt into a Secondary Capture (any viewer shows it)
    overlays = [
        ds
        for record in results.series.get("OT", [])
        if is_overlay_series(record)
        for ds in retrieve_series(client, results.study_uid, record)
    ]
    assert len(overlays) == len(sources)
    for overlay in overlays:
        assert overlay.SOPClassUID == SC_CLASS
        assert overlay.Manufacturer == "AI Anomaly Node"
        (reference,) = overlay.SourceImageSequence
        source = sources[str(reference.ReferencedSOPInstanceUID)]
        # the source's matrix, enlarged by an integer factor when small (a legible label)
        factor = overlay.Columns // source.Columns
        assert factor >= 1
        assert overlay.Columns >= min(source.Columns, MIN_COLUMNS)
        assert (overlay.Rows, overlay.Columns) == (source.Rows * factor, source.Columns * factor)
        assert str(overlay.StudyInstanceUID) == str(source.StudyInstanceUID)

    (sr_record,) = results.series["SR"]
    (sr,) = retrieve_series(client, results.study_uid, sr_record)
    report = hd.sr.ComprehensiveSR.from_dataset(sr)  # highdicom reads it back
    assert report.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert sr.Manufacturer == "AI Anomaly Node"
    scores = read_sr_scores(sr)
    images = scores["images"]
    expected = engine_scores(study, checkpoint)
    assert sorted(expected) == sorted(sources)
    for source_uid in sources:
        assert source_uid in referenced_uids(sr)
        group = images[source_uid]
        assert group["score"] == pytest.approx(expected[source_uid], rel=1e-5, abs=1e-9)
        assert group["threshold"] is not None
        assert (group["status"] == "Abnormal") == (group["score"] >= group["threshold"])
    study_group = scores["study"]
    assert study_group["score"] == pytest.approx(max(expected.values()), rel=1e-5, abs=1e-9)
    assert (study_group["status"] == "Abnormal") == any(
        g["status"] == "Abnormal" for g in images.values()
    )
    # a flagged study also gets a Key Object Selection of its flagged images (worklists)
    flagged = {uid for uid in sources if images[uid]["status"] == "Abnormal"}
    kos_records = results.series.get("KO", [])
    assert len(kos_records) == (1 if flagged else 0)
    for record in kos_records:
        (kos,) = retrieve_series(client, results.study_uid, record)
        assert kos.Manufacturer == "AI Anomaly Node"
        assert referenced_uids(kos) >= flagged | {str(sr.SOPInstanceUID)}
        assert not (referenced_uids(kos) & (set(sources) - flagged))


@pytest.fixture(scope="module")
def pynetdicom_results(stack: EmbeddedStack, dicomweb: DICOMwebClient) -> Results:
    """kermany_normal_mono2 sent by a pynetdicom SCU; waits for its SEGs and SR."""
    path = sample_file("kermany_normal_mono2")
    study_uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    t0 = time.monotonic()
    send_files([path], "127.0.0.1", stack.options.dicom_port)  # raises unless all stored
    return wait_for_results(dicomweb, study_uid, since=t0)


def test_pynetdicom_study_gets_segs_and_sr(
    stack: EmbeddedStack, dicomweb: DICOMwebClient, pynetdicom_results: Results
) -> None:
    check_results(
        dicomweb, pynetdicom_results, "kermany_normal_mono2", stack.options.checkpoints[0]
    )


@pytest.mark.parametrize(
    ("study", "propose"),
    [
        ("kermany_pneumonia_jpeg", ["-xy"]),  # JPEG baseline (8-bit lossy)
        ("kermany_normal_mono1", []),  # MONOCHROME1, uncompressed
        ("original_rg1_cr", ["-xw"]),  # real CR, MONOCHROME1 15-bit: uncompressed + JPEG 2000
    ],
)
def test_dcmtk_storescu_study_gets_segs_and_sr(
    stack: EmbeddedStack, dicomweb: DICOMwebClient, study: str, propose: list[str]
) -> None:
    paths = sample_files(study)
    study_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    t0 = time.monotonic()
    subprocess.run(
        [
            "storescu",
            *propose,
            "-aet",
            STORESCU_AET,
            "-aec",
            ORTHANC_AET,
            "127.0.0.1",
            str(stack.options.dicom_port),
            *map(str, paths),
        ],
        check=True,
        env={**os.environ, "TCP_NODELAY": "1"},  # Debian's dcmtk leaves Nagle on otherwise
        capture_output=True,
        timeout=60,
    )
    results = wait_for_results(dicomweb, study_uid, since=t0)
    check_results(dicomweb, results, study, stack.options.checkpoints[0])


def test_exactly_one_result_set_after_restabilising(
    stack: EmbeddedStack, dicomweb: DICOMwebClient, pynetdicom_results: Results
) -> None:
    # The results made the study change, so it becomes stable again: Orthanc's plugin must
    # not route it again (and the node would drop a re-send anyway).
    time.sleep(stack.options.stable_age + stack.options.quiet_seconds + 8)
    found = series_by_modality(dicomweb, pynetdicom_results.study_uid)
    assert len(found.get("SR", [])) == 1
    assert len(found.get("SEG", [])) == 2
    instances = dicomweb.search_for_instances(pynetdicom_results.study_uid)
    kos = len(found.get("KO", []))
    assert len(instances) == 1 + 2 + 1 + 1 + kos  # source, two SEGs, SR, overlay SC, [KOS]
    assert stack.orthanc is not None
    log = stack.orthanc.log_path.read_text(encoding="utf-8", errors="replace")
    assert (
        f"not routing study {pynetdicom_results.study_uid}: every source image was routed "
        "before" in log
    )
    # the plugin's status endpoint (Orthanc's REST API, same password): nothing left waiting,
    # and its state file (kept for a restart) is in Orthanc's storage folder
    status = requests.get(f"{stack.orthanc_url}/ai-node/routing", auth=stack.auth, timeout=5)
    assert status.ok, status.text
    assert status.json()["waiting"] == []
    assert status.json()["delivered"] >= 1
    assert requests.get(f"{stack.orthanc_url}/ai-node/routing", timeout=5).status_code == 401


def sr_images(client: DICOMwebClient, study_uid: str) -> dict[str, dict]:
    """Per-image results of every SR of a study (SOP Instance UID -> its SR group)."""
    images: dict[str, dict] = {}
    for record in series_by_modality(client, study_uid).get("SR", []):
        for sr in retrieve_series(client, study_uid, record):
            images.update(read_sr_scores(sr)["images"])
    return images


def test_a_part_arriving_after_the_analysis_is_analysed_too(
    stack: EmbeddedStack, dicomweb: DICOMwebClient, tmp_path: Path
) -> None:
    """Orthanc's plugin skipped every study that held results, so a late part was never analysed.

    Part 1 is analysed; part 2 (same patient and study, another series) arrives after the
    results are in Orthanc. The plugin sends only part 2 (it marks what it sent with the
    ``AiNodeRouted`` user metadata), and the late image gets its score, in a new SR that
    covers both parts and names the first SR as its predecessor.
    """
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(sample_file("kermany_normal_mono1"))
    ds.StudyInstanceUID = study_uid = generate_uid()
    parts = []
    for n in (1, 2):
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesNumber = n
        path = tmp_path / f"part{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        parts.append((path, str(ds.SOPInstanceUID)))
    t0 = time.monotonic()
    send_files([parts[0][0]], "127.0.0.1", stack.options.dicom_port)
    wait_for_results(dicomweb, study_uid, since=t0)
    assert set(sr_images(dicomweb, study_uid)) == {parts[0][1]}

    send_files([parts[1][0]], "127.0.0.1", stack.options.dicom_port)
    deadline = time.monotonic() + RESULT_TIMEOUT
    while parts[1][1] not in (images := sr_images(dicomweb, study_uid)):
        if time.monotonic() > deadline:
            pytest.fail(f"the late part was not analysed: SR images {sorted(images)}")
        time.sleep(1.0)
    assert images[parts[1][1]]["score"] is not None
    # one current result set (issue 21): the new SR covers both parts and replaces the first
    srs = [
        sr
        for record in series_by_modality(dicomweb, study_uid).get("SR", [])
        for sr in retrieve_series(dicomweb, study_uid, record)
    ]
    assert len(srs) == 2
    first, latest = sorted(srs, key=lambda sr: "PredecessorDocumentsSequence" in sr)
    assert set(read_sr_scores(first)["images"]) == {parts[0][1]}
    assert set(read_sr_scores(latest)["images"]) == {parts[0][1], parts[1][1]}
    [predecessor] = latest.PredecessorDocumentsSequence
    assert predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[
        0
    ].ReferencedSOPInstanceUID == (first.SOPInstanceUID)
    # each source image was sent once: both carry the mark, and the plugin routed part 2 alone
    for _, sop in parts:
        found = requests.post(
            f"{stack.orthanc_url}/tools/lookup", data=sop, auth=stack.auth, timeout=5
        ).json()
        (instance,) = [r for r in found if r["Type"] == "Instance"]
        mark = requests.get(
            f"{stack.orthanc_url}/instances/{instance['ID']}/metadata/AiNodeRouted",
            auth=stack.auth,
            timeout=5,
        )
        assert mark.status_code == 200, mark.text
    assert stack.orthanc is not None
    log = stack.orthanc.log_path.read_text(encoding="utf-8", errors="replace")
    assert f"routed study {study_uid}: 1 of " in log
    assert "(a later part; 1 routed before)" in log


def test_unknown_scanner_is_refused(stack: EmbeddedStack) -> None:
    with pytest.raises(SendError, match="rejected"):
        send_files(
            [sample_file("kermany_normal_mono2")],
            "127.0.0.1",
            stack.options.dicom_port,
            calling_ae="INTRUDER",
        )


def test_orthanc_http_needs_the_generated_password(stack: EmbeddedStack) -> None:
    assert requests.get(f"{stack.orthanc_url}/system", timeout=5).status_code == 401
    assert requests.get(f"{stack.orthanc_url}/system", auth=stack.auth, timeout=5).ok
    for secret_file in (
        stack.data_dir / "secrets.json",
        stack.data_dir / "orthanc" / "orthanc.json",
    ):
        assert secret_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.browser
def test_ohif_shows_panel_and_overlay(
    stack: EmbeddedStack, pynetdicom_results: Results, browser_script: Callable[..., str]
) -> None:
    """The OHIF engineer's e2e script against the viewer server the stack started."""
    e2e = REPO / "ohif-extension" / "tests" / "e2e.mjs"
    if not e2e.exists():
        pytest.fail(f"{e2e.relative_to(REPO)} does not exist yet (the OHIF engineer's e2e script)")
    assert stack.viewer_url is not None, "the viewer server did not start"
    screenshots = REPO / "test-artifacts" / "e2e"  # git-ignored; kept for CI artifacts
    browser_script(
        "e2e.mjs",
        "--url",
        stack.viewer_url,
        "--study",
        pynetdicom_results.study_uid,
        "--screenshots",
        str(screenshots),
        "--timeout",
        "120",
        passed="E2E PASS",
        screenshots=screenshots,
    )


def test_demo_report_prints_one_line_per_study(stack: EmbeddedStack) -> None:
    study = next(s for s in discover_samples() if s.name == "nih_pneumonia_1")
    out = io.StringIO()
    outcomes = send_samples_and_report(stack, [study], timeout=RESULT_TIMEOUT, out=out)
    assert set(outcomes) == {study.name}
    line = next(line for line in out.getvalue().splitlines() if line.startswith(study.name))
    assert "score" in line
    assert ("ABNORMAL" in line) == outcomes[study.name].abnormal
    # A second report finds the results of the first instead of sending again.
    again = io.StringIO()
    send_samples_and_report(stack, [study], timeout=10, out=again)
    assert "earlier run" in again.getvalue()


def test_demo_command_starts_and_stops_cleanly(tmp_path: Path) -> None:
    ports = [str(free_port()) for _ in range(5)]
    argv = ["--once", "--no-samples", "--data-dir", str(tmp_path), "--http-port", ports[0]]
    argv += ["--dicom-port", ports[1], "--node-port", ports[2], "--node-http-port", ports[3]]
    argv += ["--viewer-port", ports[4]]
    assert embedded_main(argv) == 0
    assert (tmp_path / "secrets.json").stat().st_mode & 0o777 == 0o600
    assert not _processes_mentioning(str(tmp_path)), "a child outlived the demo command"


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended meanwhile
            continue
        if text in args:
            found.append(args)
    return found
