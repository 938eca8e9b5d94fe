"""Hostile input through real associations to a real node with the real engine (issue 21).

The corpus (``bench/hostile_corpus.py``) is sent one input per association to a running
`NodeService` (``default-cxr``, the engine in its own process, results by C-STORE to a real
pynetdicom SCP). Per input: the status is right (refused inputs never get 0x0000), the node
still answers C-ECHO; at the end every acknowledged instance is in exactly one current SR,
with a score or a reasoned "not analysed" (no internal path in the reason), and no delivered
result nests sequences deeper than its IOD needs. A summary table is printed (``-s``); the
README's Reliability section quotes it.

A second test sends a poison instance the router cannot parse (the nesting limit raised so
the SCP accepts it): it is quarantined at once with a reason and a metric, and the study
sent after it still gets its result.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from ai_engine.dicom_io.sr_writer import read_sr_scores
from dicom_node.config import NodeSettings
from dicom_node.service import NodeService

HARNESS = Path(__file__).resolve().parents[3] / "bench" / "hostile_corpus.py"
CALLING_AE = "HOSTILE"


@pytest.fixture(scope="module")
def hc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hostile_corpus", HARNESS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["hostile_corpus"] = module
    spec.loader.exec_module(module)
    return module


def _settings(tmp_path: Path, port: int, **overrides: object) -> NodeSettings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "node",
        "port": 0,
        "http_port": 0,
        "allowed_calling_aes": [CALLING_AE],
        "study_quiet_seconds": 0.5,
        "study_max_wait_seconds": 60,
        "poll_interval_seconds": 0.05,
        "min_free_disk_mb": 0,
        "max_inflated_mb": 1,
        "max_dataset_elements": 10_000,
        "destination": "cstore",
        "cstore_port": port,
        "send_backoff_seconds": 0.2,
        "send_backoff_max_seconds": 1,
        "checkpoints": ["default-cxr"],
        **overrides,
    }
    return NodeSettings(**values)  # type: ignore[arg-type]


def _wait(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return bool(predicate())


def test_hostile_corpus_every_accepted_instance_ends_in_a_result_or_a_reason(
    hc: ModuleType, tmp_path: Path
) -> None:
    recorder = hc.Recorder().start()
    settings = _settings(tmp_path, recorder.port)
    node = NodeService(settings)
    node.start()
    try:
        inputs = hc.corpus(settings.max_inflated_mb * 1024 * 1024, settings.max_dataset_elements)
        rows, acked, wrong_status, result_objects = [], [], [], []
        for item in inputs:
            status = hc.send(node.scp_port, item, CALLING_AE)
            ok = status not in (0, None) if item.expected == hc.REFUSED else status == 0
            if not ok:
                wrong_status.append(item.name)
            if status == 0 and item.expected != hc.RESULT_OBJECT:
                acked.append(item)
            elif status == 0:
                result_objects.append(item)
            assert hc.echo(node.scp_port, CALLING_AE), f"no C-ECHO after {item.name}"
            rows.append((item.name, item.expected, status))

        def srs() -> list:
            """The current SRs: a study that arrived in parts has a new SR version covering
            all of them, which names the one it replaces as predecessor (issue 21)."""
            all_srs = [d for d in recorder.received if str(d.get("Modality", "")) == "SR"]
            replaced = {
                str(item.ReferencedSOPInstanceUID)
                for sr in all_srs
                for study in sr.get("PredecessorDocumentsSequence", [])
                for series in study.ReferencedSeriesSequence
                for item in series.ReferencedSOPSequence
            }
            return [sr for sr in all_srs if str(sr.SOPInstanceUID) not in replaced]

        def covered() -> Counter[str]:
            seen: Counter[str] = Counter()
            for sr in srs():
                seen.update(read_sr_scores(sr)["images"].keys())
            return seen

        _wait(lambda: all(covered()[i.sop_uid] for i in acked), 240)
        seen = covered()
        reasons: dict[str, str] = {}
        for sr in srs():
            for sop, image in read_sr_scores(sr)["images"].items():
                reasons[sop] = "score" if image["score"] is not None else str(image["reason"])
        lost = [i.name for i in acked if not seen[i.sop_uid]]
        duplicated = [i.name for i in acked if seen[i.sop_uid] > 1]
        print(f"\n{'input':52} {'expected':9} {'status':>7}  outcome")
        for name, expected, status in rows:
            item = next(i for i in inputs if i.name == name)
            outcome = reasons.get(item.sop_uid, "-") if status == 0 else "-"
            if item.expected == hc.RESULT_OBJECT:
                outcome = "another system's result object: not analysed, no SR entry"
            shown = "none" if status is None else f"0x{status:04X}"
            print(f"{name[:52]:52} {expected:9} {shown:>7}  {outcome[:70]}")
        summary = {
            "inputs_tried": len(inputs),
            "acknowledged": len(acked) + len(result_objects),
            "result_objects_not_analysed": len(result_objects),
            "lost": len(lost),
            "duplicated": len(duplicated),
            "wrong_status": len(wrong_status),
        }
        print("hostile corpus:", json.dumps(summary))
        assert not wrong_status, wrong_status
        assert not lost, lost
        assert not duplicated, duplicated
        for sop, reason in reasons.items():
            assert "/" not in reason, f"a path in the reason of {sop}: {reason}"
        # nothing of the source's arbitrary structures reaches the results
        depths = {str(d.SOPInstanceUID): hc.max_sequence_depth(d) for d in recorder.received}
        assert max(depths.values()) <= hc.MAX_RESULT_DEPTH, depths
        for ds in recorder.received:
            assert "ProcedureCodeSequence" not in ds
        # others' result objects are in no SR, but the node records them as not routed
        # (GET /studies/<uid>/not-routed says why)
        assert node.index is not None
        index = node.index
        assert _wait(
            lambda: all(i.sop_uid in index.not_routed(i.study_uid) for i in result_objects), 30
        ), [i.name for i in result_objects]
        # the node kept working: the failed folder holds no job
        assert not list((settings.jobs_dir / "failed").glob("*"))
    finally:
        node.stop()
        recorder.stop()


def test_poison_instance_is_quarantined_and_never_blocks_other_studies(
    hc: ModuleType, tmp_path: Path, kit
) -> None:
    recorder = hc.Recorder().start()
    # the nesting limit raised so far that the SCP accepts what the router cannot parse
    settings = _settings(tmp_path, recorder.port, max_dataset_depth=100_000)
    engine = kit.FakeEngine()
    node = NodeService(settings, engine)
    node.start()
    try:
        [poison] = [i for i in hc.corpus(1024 * 1024) if i.name == "sequence nested 3000 deep"]
        assert hc.send(node.scp_port, poison, CALLING_AE) == 0
        good = next(i for i in hc.corpus(1024 * 1024) if i.name == "plain radiograph")
        assert hc.send(node.scp_port, good, CALLING_AE) == 0
        quarantine = settings.data_dir / "quarantine"
        assert _wait(lambda: list(quarantine.glob("*.dcm")), 30)
        assert _wait(lambda: any(good.sop_uid in sops for sops, _ in engine.calls), 30)
        assert node.metrics.snapshot().get("instances_quarantined_total") == 1
        [kept] = list(quarantine.glob("*.dcm"))
        reason = json.loads(Path(f"{kept}.reason.json").read_text())
        assert reason["error_type"] == "RecursionError"
        assert poison.sop_uid in kept.name  # kept, not lost
    finally:
        node.stop()
        recorder.stop()
