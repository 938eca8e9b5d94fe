"""HTTP API: roles, re-run, latency histograms, readiness (a real node on ephemeral ports)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from pydantic import SecretStr
from pydicom.uid import generate_uid

from dicom_node.config import NodeSettings, load_settings
from dicom_node.errors import ConfigError
from dicom_node.index import StateIndex
from dicom_node.jobs import JobLifecycle, RerunConflictError
from dicom_node.metrics import ENGINE_STAGES, HISTOGRAMS, Metrics, render_prometheus
from dicom_node.queue import Job, JobQueue, JobStateValues, new_job_id
from dicom_node.service import NodeService

READ = "read-token-0123456789"
ADMIN = "admin-token-0123456789"


@pytest.fixture
def make_node(kit, settings: NodeSettings, destination) -> Iterator[Callable[..., NodeService]]:
    started: list[NodeService] = []

    def make(engine=None, **changes: object) -> NodeService:
        s = NodeSettings(
            **{
                **settings.model_dump(),
                "destination": "cstore",
                "cstore_port": destination.port,
                "http_port": kit.free_port(),
                **changes,
            }
        )
        node = NodeService(s, engine or kit.FakeEngine())
        node.start()
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()


def api(node: NodeService, path: str, token: str | None = None, method: str = "GET"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(
        method, f"http://127.0.0.1:{node.http_port}{path}", headers=headers, timeout=5
    )


def test_roles_read_token_reads_admin_token_changes_state(kit, make_node) -> None:
    node = make_node(api_token=SecretStr(READ), api_admin_token=SecretStr(ADMIN))
    for path in ("/ready", "/metrics", "/jobs", "/studies/scores"):
        assert api(node, path).status_code == 401, path
        assert api(node, path, READ).status_code == 200, path
        assert api(node, path, ADMIN).status_code == 200, path
    for path in ("/studies/1.2.3/process-now", "/jobs/x/rerun"):
        assert api(node, path, method="POST").status_code == 401
        r = api(node, path, READ, "POST")
        assert r.status_code == 403
        assert "admin" in r.json()["error"]
        assert api(node, path, ADMIN, "POST").status_code == 404  # allowed; nothing there
    # "Bearer" is required; a bare token or another scheme is no credential
    bare = requests.get(
        f"http://127.0.0.1:{node.http_port}/jobs", headers={"Authorization": ADMIN}, timeout=5
    )
    assert bare.status_code == 401


def test_read_token_only_refuses_every_state_change(make_node) -> None:
    node = make_node(api_token=SecretStr(READ))
    assert api(node, "/jobs", READ).status_code == 200
    assert api(node, "/jobs/x/rerun", READ, "POST").status_code == 403


def test_admin_token_only_protects_reads_too(make_node) -> None:
    node = make_node(api_admin_token=SecretStr(ADMIN))
    assert api(node, "/jobs").status_code == 401
    assert api(node, "/jobs", ADMIN).status_code == 200
    assert api(node, "/health").status_code == 200


def test_rerun_failed_job_then_done_job(kit, make_node, ct_path: Path, instances_dir: Path) -> None:
    engine = kit.FakeEngine()
    engine.fail_with = MemoryError("pretend OOM")
    node = make_node(engine, api_admin_token=SecretStr(ADMIN), process_max_attempts=1)
    study = generate_uid()
    kit.send_files(node.scp_port, [kit.new_instance(ct_path, study, instances_dir)])
    assert node.wait_until_idle(timeout=20)
    [failed] = api(node, "/jobs?state=failed", ADMIN).json()
    assert api(node, f"/jobs/{failed['job_id']}", ADMIN).json()["error"]["type"] == "MemoryError"

    engine.fail_with = None
    r = api(node, f"/jobs/{failed['job_id']}/rerun", ADMIN, "POST")
    assert r.status_code == 202
    assert r.json()["state"] == "queued"
    assert r.json()["attempts"] == {}
    assert node.wait_until_idle(timeout=20)
    detail = api(node, f"/jobs/{failed['job_id']}", ADMIN).json()
    assert detail["state"] == "done"
    assert detail["error"] is None
    assert detail["last_error"]["type"] == "MemoryError"  # history kept in job.json
    assert len(engine.calls) == 1  # the failing run raised before recording a call
    assert "dicom_node_jobs_rerun_total 1" in api(node, "/metrics", ADMIN).text

    # a done job runs again too (e.g. after a model update)
    assert api(node, f"/jobs/{failed['job_id']}/rerun", ADMIN, "POST").status_code == 202
    assert node.wait_until_idle(timeout=20)
    assert len(engine.calls) == 2
    assert api(node, "/jobs?state=done", ADMIN).json()[0]["job_id"] == failed["job_id"]
    assert len(api(node, "/jobs", ADMIN).json()) == 1


def test_rerun_conflicts(kit, settings: NodeSettings, ct_path: Path, tmp_path: Path) -> None:
    queue = JobQueue(settings.jobs_dir)
    index = StateIndex(tmp_path / "state.sqlite3")
    metrics = Metrics()
    lifecycle = JobLifecycle(queue, index, metrics)
    try:
        job = Job(job_id=new_job_id(), study_instance_uid="1.2.3", checkpoints=["x"])
        folder = queue.stage(job)
        kit.new_instance(ct_path, "1.2.3", folder / "input")
        queue.commit(job)
        with pytest.raises(RerunConflictError, match="queued"):
            lifecycle.rerun(job.job_id)
        queue.move(job, JobStateValues.DONE)
        for f in (queue.job_dir(job) / "input").iterdir():
            f.unlink()
        with pytest.raises(RerunConflictError, match="no longer kept"):
            lifecycle.rerun(job.job_id)
        assert lifecycle.rerun("../etc") is None
        assert lifecycle.rerun("nope") is None
        assert metrics.snapshot()["jobs_rerun_total"] == 0
    finally:
        index.close()


def test_metrics_have_per_stage_latency_histograms(
    kit, make_node, ct_path: Path, instances_dir: Path
) -> None:
    node = make_node(api_token=SecretStr(READ))
    kit.send_files(node.scp_port, [kit.new_instance(ct_path, generate_uid(), instances_dir)])
    assert node.wait_until_idle(timeout=20)
    text = api(node, "/metrics", READ).text
    for name in HISTOGRAMS:  # all exported, engine stages included
        assert f"# TYPE dicom_node_{name} histogram" in text
    # the stand-in engine reports no per-stage times: those stay empty, the others saw one job
    for name in set(HISTOGRAMS) - set(ENGINE_STAGES.values()):
        full = f"dicom_node_{name}"
        assert f'{full}_bucket{{le="+Inf"}} 1' in text
        assert f"{full}_count 1" in text
        buckets = [
            (m.group(1), int(m.group(2)))
            for m in re.finditer(rf'^{full}_bucket\{{le="([^"]+)"\}} (\d+)$', text, re.M)
        ]
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), "buckets must be cumulative"
        assert buckets[-1][0] == "+Inf"
        total = float(re.search(rf"^{full}_sum (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
        assert 0 <= total < 30
    # quiet period 0.3 s: the study waited at least that long before its job was queued
    rq = float(
        re.search(r"^dicom_node_receive_to_queued_seconds_sum (\S+)$", text, re.M).group(1)  # type: ignore[union-attr]
    )
    assert rq >= 0.25
    for name in ENGINE_STAGES.values():
        assert f"dicom_node_{name}_count 0" in text


def test_histogram_rendering() -> None:
    metrics = Metrics(buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 5.0, float("nan"), -1.0):
        metrics.observe("run_seconds", value)
    text = render_prometheus({}, {}, 0, metrics.histograms())
    assert 'dicom_node_run_seconds_bucket{le="0.1"} 4' in text  # 0.05, 0.1, nan->0, -1->0
    assert 'dicom_node_run_seconds_bucket{le="1"} 5' in text
    assert 'dicom_node_run_seconds_bucket{le="+Inf"} 6' in text
    assert "dicom_node_run_seconds_count 6" in text
    assert "dicom_node_run_seconds_sum 5.650000" in text
    with pytest.raises(KeyError):
        metrics.observe("nope", 1.0)


def test_readiness_reports_each_check(kit, make_node) -> None:
    node = make_node()
    body = api(node, "/ready").json()
    assert body == {
        "ready": True,
        "checks": {
            "scp_listening": True,
            "data_dir_writable": True,
            "free_disk_above_floor": True,
            "stages_running": True,
        },
    }
    node.settings.min_free_disk_mb = 1 << 40  # more than any disk: new studies are refused
    r = api(node, "/ready")
    assert r.status_code == 503
    assert r.json()["checks"]["free_disk_above_floor"] is False
    assert api(node, "/health").status_code == 200  # alive, just not ready


def test_api_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not loopback"):
        load_settings(http_host="0.0.0.0")  # noqa: S104
    load_settings(http_host="0.0.0.0", api_token="x")  # noqa: S104
    load_settings(http_host="0.0.0.0", http_port=0)  # noqa: S104 - API off
    with pytest.raises(ConfigError, match="must differ"):
        load_settings(api_token="same", api_admin_token="same")
    secret = tmp_path / "admin"
    secret.write_text("from-a-file\n")
    s = load_settings(api_admin_token_file=secret)
    assert s.api_admin_token is not None
    assert s.api_admin_token.get_secret_value() == "from-a-file"
    with pytest.raises(ConfigError, match="not both"):
        load_settings(api_admin_token_file=secret, api_admin_token="x")
    token = tmp_path / "orthanc"
    token.write_text("bearer-secret")
    s = load_settings(orthanc_token_file=token)
    assert s.orthanc_token is not None
    assert s.orthanc_token.get_secret_value() == "bearer-secret"
    assert "bearer-secret" not in repr(s)
    with pytest.raises(ConfigError, match="not both"):
        load_settings(orthanc_token_file=token, orthanc_username="u", orthanc_password="p")


def test_not_routed_instances_of_a_study_are_listed_with_a_reason(make_node) -> None:
    """Issue 21: an acknowledged instance no model analyses (e.g. another system's SEG) is
    not in any SR; the API says which ones and why."""
    node = make_node()
    assert node.index is not None
    study = "1.2.826.0.1.3680043.8.498.1"
    node.index.record_not_routed(study, ["1.2.3.4", "1.2.3.5"], None)
    node.index.record_not_routed(study, ["1.2.3.6"], "ct-only")
    body = api(node, f"/studies/{study}/not-routed").json()
    assert body["study_instance_uid"] == study
    reasons = {i["sop_instance_uid"]: i["reason"] for i in body["instances"]}
    assert reasons["1.2.3.4"].startswith("a result object (SEG, SR or Parametric Map)")
    assert reasons["1.2.3.6"] == "routing rule 'ct-only' sends it to no model"
    assert api(node, "/studies/1.2.999/not-routed").json()["instances"] == []
    assert api(node, "/studies/not-a-uid/not-routed").status_code == 400
