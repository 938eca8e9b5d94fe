"""Job queue, spool names and study-completion rules in isolation."""

from __future__ import annotations

import threading
from pathlib import Path

from pydicom.uid import generate_uid

from dicom_node.index import StateIndex
from dicom_node.metrics import Metrics
from dicom_node.queue import Job, JobQueue, JobStateValues, backoff_delay, new_job_id
from dicom_node.router import DefaultRules, Router, checkpoint_version
from dicom_node.spool import Spool, SpooledStudy, safe_name


def _router(tmp_path: Path, quiet: float = 1.0, max_wait: float = 10.0) -> Router:
    return Router(
        Spool(tmp_path / "spool"),
        JobQueue(tmp_path / "jobs"),
        StateIndex(tmp_path / "state.sqlite3"),
        Metrics(),
        quiet_seconds=quiet,
        max_wait_seconds=max_wait,
        rules=DefaultRules(["default-cxr"]),
        quarantine_dir=tmp_path / "quarantine",
    )


def _study(last: float, first: float, open_assocs: int = 0, now_marker: bool = False):
    return SpooledStudy("s", Path("/nonexistent"), (), last, first, open_assocs, now_marker)


def test_completion_rules(tmp_path: Path) -> None:
    router = _router(tmp_path, quiet=1.0, max_wait=10.0)
    assert router.completion_reason(_study(last=100.0, first=99.0), now=100.5) is None
    assert router.completion_reason(_study(last=100.0, first=99.0), now=101.1) == "quiet"
    # an open association holds the study back during the quiet period ...
    assert router.completion_reason(_study(100.0, 99.0, open_assocs=1), now=105.0) is None
    # ... but not beyond the forced maximum
    assert router.completion_reason(_study(100.0, 94.0, open_assocs=1), now=105.0) == "max-wait"
    assert router.completion_reason(_study(100.0, 99.0, now_marker=True), 100.0) == "process-now"


def test_safe_name() -> None:
    assert safe_name("1.2.840.113619.2.1") == "1.2.840.113619.2.1"
    for hostile in ("../../etc", "..", "1.2/3", "", "x" * 100, "1..2"):
        name = safe_name(hostile)
        assert name.startswith("h")
        assert "/" not in name
        assert ".." not in name


def test_claim_is_exclusive(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs")
    for _ in range(20):
        job = Job(job_id=new_job_id(), study_instance_uid=generate_uid(), checkpoints=["c"])
        queue.stage(job)
        queue.commit(job)
    claimed: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while (job := queue.claim()) is not None:
            with lock:
                claimed.append(job.job_id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 20
    assert len(set(claimed)) == 20
    assert queue.counts()["running"] == 20


def test_recover_moves_running_back_to_ready(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "jobs")
    job = Job(job_id=new_job_id(), study_instance_uid=generate_uid(), checkpoints=["c"])
    queue.stage(job)
    queue.commit(job)
    running = queue.claim()
    assert running is not None
    assert queue.recover() == [job.job_id]
    again = queue.load(JobStateValues.QUEUED, job.job_id)
    assert again.attempts["process"] == 1
    assert queue.find("../jobs") is None


def test_backoff() -> None:
    assert [backoff_delay(n, 5, 30) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 30, 30]


def test_checkpoint_version_without_card() -> None:
    assert checkpoint_version("no-such-checkpoint") == "unknown"


def test_without_a_rules_file_each_image_goes_to_the_shipped_model_made_for_it() -> None:
    """Chest radiographs to default-cxr, brain MR to default-brain, by their model cards;
    an image neither accepts to the first checkpoint (its engine says why it is not analysed);
    a name without a readable card (a stand-in engine) takes every image."""
    import subprocess
    import sys

    from pydicom import Dataset

    rules = DefaultRules(["default-cxr", "default-brain"])

    def routed(modality: str, body_part: str, view: str = "") -> tuple[str, ...]:
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        ds.Modality, ds.BodyPartExamined = modality, body_part
        if view:
            ds.ViewPosition = view
        return tuple(rules.decide(ds).checkpoints)

    assert routed("DX", "CHEST", "PA") == ("default-cxr",)
    assert routed("CR", "") == ("default-cxr",)
    assert routed("MR", "BRAIN") == ("default-brain",)
    assert routed("MR", "") == ("default-brain",)
    assert routed("MR", "KNEE") == ("default-cxr",)  # neither: reported not analysed
    assert routed("DX", "CHEST", "LL") == ("default-cxr",)
    seg = Dataset()
    seg.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    assert tuple(rules.decide(seg).checkpoints) == ()
    assert tuple(DefaultRules(["stand-in"]).decide(seg).checkpoints) == ()
    ds = Dataset()
    ds.SOPClassUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.2", "CT"
    assert tuple(DefaultRules(["stand-in"]).decide(ds).checkpoints) == ("stand-in",)
    # the node's router reads model cards without importing torch (the node process stays small)
    probe = (
        "import sys; from pydicom import Dataset; from dicom_node.router import DefaultRules; "
        "ds = Dataset(); ds.SOPClassUID = '1.2.840.10008.5.1.4.1.1.1'; ds.Modality = 'DX'; "
        "assert DefaultRules(['default-cxr', 'default-brain']).decide(ds).checkpoints; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
