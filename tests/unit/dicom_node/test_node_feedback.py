"""Readers' judgements: stored durably with every version, delivered as review SRs, counted.

A real node on ephemeral ports, an engine stand-in that writes the node's real SR
(`ai_engine.dicom_io.sr_writer.write_sr`) with chosen scores, and a real pynetdicom SCP as the
PACS; the review SR that arrives there is parsed back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from pydantic import SecretStr
from pydicom.uid import generate_uid

from ai_engine import checkpoints
from ai_engine.dicom_io.convert import save
from ai_engine.dicom_io.reader import read_header
from ai_engine.dicom_io.sr_writer import read_review_sr, write_sr
from ai_engine.types import AlgorithmInfo, ImageResult, StudyResult
from dicom_node.config import NodeSettings
from dicom_node.feedback import DriftSettings, FeedbackRecord, ks_statistic, summarise
from dicom_node.queue import utcnow
from dicom_node.service import NodeService

READ = "read-token-0123456789"
ADMIN = "admin-token-0123456789"
CARD = checkpoints.read_card("default-cxr")


class ReportingEngine:
    """Stands in for the engine: the node's real SR per study, with the score asked for."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.scores: dict[str, float] = {}  # study -> score (default 0.2)

    def __call__(self, input_dir: Path, output_dir: Path, ckpts) -> list[dict]:
        studies: dict[str, list[pydicom.Dataset]] = {}
        for path in sorted(input_dir.rglob("*.dcm")):
            header = read_header(path)
            studies.setdefault(str(header.StudyInstanceUID), []).append(header)
        algorithm = AlgorithmInfo(CARD.model_id, CARD.name, CARD.version, CARD.weights_sha256)
        results = []
        for study_uid, headers in studies.items():
            score = self.scores.get(study_uid, 0.2)
            flagged = score >= self.threshold
            images = tuple(
                ImageResult(
                    str(h.SOPInstanceUID), str(h.SeriesInstanceUID), score,
                    self.threshold, flagged, 50.0,
                )
                for h in headers
            )  # fmt: skip
            study = StudyResult(study_uid, algorithm, images, score, flagged)
            target = save(write_sr(headers, study), output_dir / f"sr-{study_uid}.dcm")
            results.append(
                {
                    "study_instance_uid": study_uid,
                    "algorithm": {"name": CARD.name, "version": CARD.version},
                    "images": [
                        {"sop_instance_uid": i.sop_instance_uid, "score": score,
                         "threshold": self.threshold}
                        for i in images
                    ],
                    "study_score": score,
                    "is_abnormal": flagged,
                    "files": [str(target)],
                }
            )  # fmt: skip
        return results


@pytest.fixture
def make_node(kit, settings: NodeSettings, destination) -> Iterator[Callable[..., NodeService]]:
    started: list[NodeService] = []

    def make(engine, **changes: object) -> NodeService:
        s = NodeSettings(
            **{
                **settings.model_dump(),
                "destination": "cstore",
                "cstore_port": destination.port,
                "http_port": kit.free_port(),
                "api_token": SecretStr(READ),
                "api_admin_token": SecretStr(ADMIN),
                **changes,
            }
        )
        node = NodeService(s, engine)
        node.start()
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()


def call(node: NodeService, method: str, path: str, token: str | None = READ, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kw.pop("headers", {}))
    url = f"http://127.0.0.1:{node.http_port}{path}"
    return requests.request(method, url, headers=headers, timeout=10, **kw)


def analysed_study(kit, node, engine, ct_path: Path, folder: Path, score: float) -> str:
    study = generate_uid()
    engine.scores[study] = score
    assert kit.send_files(node.scp_port, [kit.new_instance(ct_path, study, folder)]) == [0]
    assert node.wait_until_idle(timeout=30)
    return study


def test_judgement_stored_versioned_delivered_and_kept_across_restart(
    kit, make_node, destination, ct_path: Path, instances_dir: Path
) -> None:
    engine = ReportingEngine()
    node = make_node(engine)
    study = analysed_study(kit, node, engine, ct_path, instances_dir, 0.9)  # flagged
    body = {"judgement": "agree", "reader": "Dr Reader", "comment": "right upper lobe"}
    r = call(node, "POST", f"/studies/{study}/feedback", json=body)
    assert r.status_code == 201, r.text
    first = r.json()
    assert (first["version"], first["judgement"], first["is_abnormal"]) == (1, "agree", True)
    assert first["confirmed_abnormal"]
    assert not first["confirmed_normal"]
    folder = node.settings.feedback_dir / study / "default-cxr"
    assert json.loads((folder / "0001.json").read_text())["reader"] == "Dr Reader"
    assert node.wait_until_idle(timeout=20)

    # the reader changes their mind: version 2, version 1 kept, v2 names v1 as predecessor
    change = {"judgement": "false_alarm", "reader": "Dr Other"}
    r = call(node, "POST", f"/studies/{study}/feedback", json=change)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 2
    assert node.wait_until_idle(timeout=20)

    listing = call(node, "GET", f"/studies/{study}/feedback").json()
    assert [v["judgement"] for v in listing["versions"]] == ["agree", "false_alarm"]
    assert [c["judgement"] for c in listing["current"]] == ["false_alarm"]
    assert all(v["delivered"] for v in listing["versions"])
    # both review SRs reached the PACS, as the node's own objects
    sops = [v["sop_instance_uid"] for v in listing["versions"]]
    assert [(s, "AI Anomaly Node") for s in sops] == [
        item for item in destination.received if item[0] in sops
    ]
    v1 = read_review_sr(pydicom.dcmread(folder / "0001.dcm"))
    v2 = read_review_sr(pydicom.dcmread(folder / "0002.dcm"))
    assert (v1["judgement"], v1["reader"]) == ("agree", "Dr Reader")
    assert v1["comment"] == "right upper lobe"
    assert v2["predecessors"] == [sops[0]]
    assert v1["judged_sr_uid"] == v2["judged_sr_uid"] == listing["versions"][0]["judged_sr_uid"]
    # feedback jobs do not count as analysed studies
    jobs = call(node, "GET", "/jobs").json()
    assert sorted(j["kind"] for j in jobs) == ["analysis", "feedback", "feedback"]
    assert all(j["state"] == "done" for j in jobs)
    metrics = call(node, "GET", "/metrics").text
    assert "dicom_node_jobs_sent_total 1\n" in metrics
    assert "dicom_node_feedback_received_total 2\n" in metrics
    assert "dicom_node_feedback_sent_total 2\n" in metrics
    [summary] = call(node, "GET", "/feedback/summary").json()
    assert (summary["studies"], summary["false_alarm"], summary["false_alarm_rate"]) == (1, 1, 1.0)

    node.stop()
    again = make_node(engine)
    after = call(again, "GET", f"/studies/{study}/feedback").json()
    assert after == listing


def test_hostile_and_contradicting_requests_get_a_clear_4xx(
    kit, make_node, ct_path: Path, instances_dir: Path
) -> None:
    engine = ReportingEngine()
    node = make_node(engine, feedback_comment_max_chars=100)
    normal = analysed_study(kit, node, engine, ct_path, instances_dir, 0.1)
    ok = {"judgement": "agree", "reader": "Dr Reader"}
    path = f"/studies/{normal}/feedback"
    cases: list[tuple[int, str, dict]] = [
        (401, path, {"json": ok, "token": None}),
        (401, path, {"json": ok, "token": "wrong"}),
        (403, path, {"json": ok, "headers": {"Origin": "http://evil.example"}}),
        (403, path, {"json": ok, "headers": {"Host": "evil.example"}}),
        (400, "/studies/1.2.x/feedback", {"json": ok}),
        (400, f"/studies/{'1.' * 40}1/feedback", {"json": ok}),
        (404, f"/studies/{generate_uid()}/feedback", {"json": ok}),
        (415, path, {"data": "judgement=agree"}),
        (400, path, {"data": "{not json", "headers": {"Content-Type": "application/json"}}),
        (400, path, {"json": ["agree"]}),
        (400, path, {"json": {**ok, "judgement": "maybe"}}),
        (400, path, {"json": {"judgement": "agree"}}),
        (400, path, {"json": {**ok, "reader": "x" * 65}}),
        (400, path, {"json": {**ok, "reader": "Dr\\Evil"}}),
        (400, path, {"json": {**ok, "is_abnormal": False}}),
        (400, path, {"json": {**ok, "comment": "bell\x07"}}),
        (413, path, {"json": {**ok, "comment": "x" * 101}}),
        (413, path, {"json": {**ok, "comment": "x" * 40_000}}),
        (409, path, {"json": {**ok, "judgement": "false_alarm"}}),  # not flagged
        (404, path, {"json": {**ok, "model": "another-model"}}),
    ]
    for status, where, kw in cases:
        token = kw.pop("token", READ)
        r = call(node, "POST", where, token, **kw)
        assert r.status_code == status, (where, kw, r.status_code, r.text)
        assert r.json()["error"], r.text
    assert call(node, "GET", f"/studies/{normal}/feedback").json()["versions"] == []
    assert call(node, "GET", "/feedback?since=yesterday").status_code == 400
    assert call(node, "GET", "/feedback?confirmed=maybe").status_code == 400
    assert call(node, "GET", "/studies/1.2.x/feedback").status_code == 400
    # the node still takes a good one afterwards, from the admin token too
    assert call(node, "POST", path, ADMIN, json=ok).status_code == 201
    flagged = analysed_study(kit, node, engine, ct_path, instances_dir, 0.8)
    missed = {**ok, "judgement": "missed_finding"}
    assert call(node, "POST", f"/studies/{flagged}/feedback", json=missed).status_code == 409


def test_agreement_rates_and_drift_in_api_and_prometheus(
    kit, make_node, ct_path: Path, instances_dir: Path
) -> None:
    engine = ReportingEngine(threshold=CARD.calibration.threshold)
    node = make_node(engine, feedback_drift_min_normals=2, feedback_drift_alert_ks=0.5)
    high = max(CARD.calibration.healthy_scores) * 2  # far above every calibration normal
    judged = [
        (high, "false_alarm"),  # flagged, reader: normal
        (high, "agree"),  # flagged, reader: abnormal
        (0.0, "agree"),  # not flagged, reader: normal (below every calibration score)
        (0.0, "missed_finding"),  # not flagged, reader: abnormal
    ]
    for score, judgement in judged:
        study = analysed_study(kit, node, engine, ct_path, instances_dir, score)
        body = {"judgement": judgement, "reader": "Dr Reader"}
        assert call(node, "POST", f"/studies/{study}/feedback", json=body).status_code == 201
    [s] = call(node, "GET", "/feedback/summary").json()
    assert (s["model"], s["model_version"]) == (CARD.name, CARD.version)
    assert (s["studies"], s["agree"], s["false_alarm"], s["missed_finding"]) == (4, 2, 1, 1)
    assert (s["agreement_rate"], s["false_alarm_rate"], s["missed_finding_rate"]) == (
        0.5, 0.5, 0.5,
    )  # fmt: skip
    assert (s["confirmed_normals"], s["confirmed_abnormals"]) == (2, 2)
    drift = s["drift"]
    # one normal above every calibration score, one below: the ECDFs differ by 0.5
    assert drift["ks"] == pytest.approx(0.5)
    assert drift["normals_above_threshold"] == 0.5
    assert drift["n_calibration"] == len(CARD.calibration.healthy_scores)
    assert drift["alert"] is False  # D must be above the threshold, not equal to it
    normals = call(node, "GET", "/feedback?confirmed=normal").json()
    assert sorted(r["score"] for r in normals) == [0.0, high]
    labels = f'model="{CARD.name}",version="{CARD.version}"'
    metrics = call(node, "GET", "/metrics").text
    for line in (
        f"dicom_node_feedback_studies{{{labels}}} 4",
        f"dicom_node_feedback_agreement_rate{{{labels}}} 0.5",
        f"dicom_node_feedback_false_alarm_rate{{{labels}}} 0.5",
        f"dicom_node_feedback_missed_findings{{{labels}}} 1",
        f"dicom_node_feedback_confirmed_normals{{{labels}}} 2",
        f"dicom_node_feedback_drift_ks{{{labels}}} 0.5",
        f"dicom_node_feedback_drift_alert{{{labels}}} 0",
    ):
        assert line in metrics.splitlines(), line


def test_undelivered_judgement_without_its_job_is_queued_again_at_start(
    kit, make_node, destination, ct_path: Path, instances_dir: Path
) -> None:
    engine = ReportingEngine()
    node = make_node(engine)
    study = analysed_study(kit, node, engine, ct_path, instances_dir, 0.1)
    body = {"judgement": "agree", "reader": "Dr Reader"}
    record = call(node, "POST", f"/studies/{study}/feedback", json=body).json()
    assert node.wait_until_idle(timeout=20)
    node.stop()
    # a crash after the record was written and before its job was: no job, not delivered
    path = node.settings.feedback_dir / study / "default-cxr" / "0001.json"
    stored = FeedbackRecord.model_validate_json(path.read_bytes())
    stored.delivered_at = None
    stored.job_id = "20260101T000000-000000000000"
    path.write_text(stored.model_dump_json())
    destination.received.clear()
    again = make_node(engine)
    assert again.wait_until_idle(timeout=20)
    assert [s for s, _ in destination.received] == [record["sop_instance_uid"]]
    assert call(again, "GET", f"/studies/{study}/feedback").json()["versions"][0]["delivered"]


def _record(judgement: str, flagged: bool, score: float) -> FeedbackRecord:
    return FeedbackRecord(
        study_instance_uid=generate_uid(), model="m", model_version="1", version=1,
        judgement=judgement, reader="r", created_at=utcnow(), score=score, threshold=0.5,
        is_abnormal=flagged, judged_sr_uid="1.2", sop_instance_uid="1.3",
        series_instance_uid="1.4", job_id="j",
    )  # fmt: skip


def test_summary_and_ks_by_hand() -> None:
    assert ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0
    assert ks_statistic([10, 11], [1, 2, 3]) == 1.0
    assert ks_statistic([1, 2, 3, 4], [3, 4, 5, 6]) == pytest.approx(0.5)
    records = [_record("agree", False, s) for s in (0.1, 0.2, 0.3, 0.4)]
    records += [_record("false_alarm", True, 0.9)]
    healthy = [0.1, 0.2, 0.3, 0.4]
    [s] = summarise(records, lambda m, v: healthy, DriftSettings(alert_ks=0.1, min_normals=5))
    assert (s["agreement_rate"], s["false_alarm_rate"], s["missed_finding_rate"]) == (
        0.8, 1.0, 0.0,
    )  # fmt: skip
    # normals 0.1..0.4 and 0.9 vs 0.1..0.4: the ECDFs differ by 1/5 just below 0.9
    assert s["drift"]["ks"] == pytest.approx(0.2)
    assert s["drift"]["alert"] is True
    assert s["drift"]["normals_above_threshold"] == pytest.approx(0.2)
    assert s["drift"]["calibration_above_threshold"] == 0.0
    [unknown] = summarise(records[:1], lambda m, v: None, DriftSettings())
    assert unknown["drift"]["ks"] is None
    assert unknown["false_alarm_rate"] is None
