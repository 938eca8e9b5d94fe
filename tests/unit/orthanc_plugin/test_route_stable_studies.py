"""The Orthanc routing plugin, outside Orthanc: rule parity with markers.py and routing plans."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from ai_engine.dicom_io import markers

PLUGIN = Path(__file__).resolve().parents[3] / "orthanc" / "route_stable_studies.py"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
CR = "1.2.840.10008.5.1.4.1.1.1"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR = "1.2.840.10008.5.1.4.1.1.88.33"
SC = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("route_stable_studies", PLUGIN)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


def test_constants_match_markers(plugin: ModuleType) -> None:
    assert plugin.OUTPUT_MANUFACTURER == markers.OUTPUT_MANUFACTURER
    assert plugin.OUTPUT_SOP_CLASS_UIDS == markers.OUTPUT_SOP_CLASS_UIDS


MANUFACTURERS = [None, "", "Philips Medical Systems", "AI Anomaly Node", " AI Anomaly Node "]
SOP_CLASSES = [None, DX, CR, SC, *sorted(markers.OUTPUT_SOP_CLASS_UIDS)]


@pytest.mark.parametrize(
    ("manufacturer", "sop_class_uid"), list(itertools.product(MANUFACTURERS, SOP_CLASSES))
)
def test_rules_agree_with_markers(
    plugin: ModuleType, manufacturer: str | None, sop_class_uid: str | None
) -> None:
    assert plugin.is_own_output(manufacturer, sop_class_uid) == markers.is_own_output(
        manufacturer, sop_class_uid
    )
    assert plugin.is_derived_object(sop_class_uid) == markers.is_derived_object(sop_class_uid)
    expected = not (
        markers.is_own_output(manufacturer, sop_class_uid)
        or markers.is_derived_object(sop_class_uid)
    )
    assert plugin.is_routable(manufacturer, sop_class_uid) == expected


def test_source_images_are_routed_and_foreign_sc_too(plugin: ModuleType) -> None:
    info = plugin.InstanceInfo
    plan = plugin.plan_study(
        [info("a", "Philips", CR), info("b", None, SC), info("c", "Other AI", SEG)]
    )
    assert plan.to_send == ("a", "b")


def test_a_late_part_of_an_analysed_study_is_routed_alone(plugin: ModuleType) -> None:
    """Orthanc sends what it has not sent before: a part arriving after the results is analysed."""
    info = plugin.InstanceInfo
    ours = [info("s", "AI Anomaly Node", SR), info("g", "AI Anomaly Node", SEG)]
    plan = plugin.plan_study([info("a", None, DX, routed=True), *ours, info("b", None, DX)])
    assert plan.to_send == ("b",)
    assert "1 routed before" in plan.reason
    # stable again once the node's results for "b" are stored back: nothing to send
    again = plugin.plan_study([info("a", None, DX, True), *ours, info("b", None, DX, True)])
    assert again.to_send == ()
    assert "routed before" in again.reason


def test_without_marks_a_study_with_our_results_is_not_routed_again(plugin: ModuleType) -> None:
    info = plugin.InstanceInfo
    ours = "AI Anomaly Node"
    study = [info("a", None, DX), info("s", ours, SR), info("g", ours, SEG)]
    plan = plugin.plan_study(study, marks=False)
    assert plan.to_send == ()
    assert "already" in plan.reason
    assert plugin.plan_study(study[:1], marks=False).to_send == ("a",)


def test_marks_need_the_user_metadata_declared(plugin: ModuleType) -> None:
    config = plugin.RoutingConfig.from_orthanc_config
    assert config({"UserMetadata": {"AiNodeRouted": 4201}}).marks
    assert not config({}).marks
    template = json.loads((PLUGIN.parent / "orthanc.template.json").read_text(encoding="utf-8"))
    assert config(template).marks  # the bundled Orthanc keeps the marks


def test_instances_are_marked_only_after_a_successful_store(
    plugin: ModuleType, tmp_path: Path
) -> None:
    up, marked, logs = {"node": False}, [], []

    def store(target: str, ids: tuple[str, ...]) -> None:
        if not up["node"]:
            raise RuntimeError("association rejected")

    cfg = plugin.RoutingConfig(state_file=str(tmp_path / "routing.json"))
    router = plugin.StudyRouter(
        cfg,
        store,
        lambda sid: ("uid", [plugin.InstanceInfo(i, None, DX) for i in ("i1", "i2")]),
        logs.append,
        mark=lambda ids: marked.append(tuple(ids)),
    )
    with pytest.raises(RuntimeError):
        router.route("s1")
    assert marked == []
    up["node"] = True
    router.route("s1")
    assert marked == [("i1", "i2")]

    def broken_mark(ids: tuple[str, ...]) -> None:
        raise OSError("metadata refused")

    router._mark = broken_mark
    plan = router.route("s1")  # delivered all the same; the node drops what it processed
    assert plan.to_send == ("i1", "i2")
    assert "not marked routed" in logs[-2]


def test_study_without_images_is_not_routed(plugin: ModuleType) -> None:
    plan = plugin.plan_study([plugin.InstanceInfo("g", "Other AI", SEG)])
    assert plan.to_send == ()


def test_config_defaults_and_overrides(plugin: ModuleType) -> None:
    default = plugin.RoutingConfig.from_orthanc_config({"StorageDirectory": "/var/lib/orthanc/db"})
    assert default.target_modality == "ainode"
    assert default.retries == -1  # until delivered
    assert default.state_file == "/var/lib/orthanc/db/ai-node-routing.json"
    cfg = plugin.RoutingConfig.from_orthanc_config(
        {"AiNodeRouting": {"TargetModality": "node2", "Enabled": False, "Retries": 1}}
    )
    assert (cfg.target_modality, cfg.enabled, cfg.retries) == ("node2", False, 1)
    assert [cfg.delay(n) for n in (1, 2, 3, 10)] == [2.0, 4.0, 8.0, 300.0]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _router(plugin: ModuleType, store, tmp_path: Path, clock: Clock, **config):  # type: ignore[no-untyped-def]
    logs: list[str] = []
    cfg = plugin.RoutingConfig(state_file=str(tmp_path / "routing.json"), **config)
    router = plugin.StudyRouter(
        cfg,
        store,
        lambda study_id: (f"uid-{study_id}", [plugin.InstanceInfo(f"{study_id}-i", None, DX)]),
        logs.append,
        clock=clock,
    )
    return router, logs


def test_a_study_waits_with_backoff_until_the_node_takes_it(
    plugin: ModuleType, tmp_path: Path
) -> None:
    """Orthanc's own routing gives up after a few attempts; a study must not be lost that way."""
    clock, calls = Clock(), []
    up = {"node": False}

    def store(target: str, ids: tuple[str, ...]) -> None:
        calls.append(tuple(ids))
        if not up["node"]:
            raise RuntimeError("association rejected")

    router, logs = _router(plugin, store, tmp_path, clock)
    router.submit("s1")
    for expected_delay in (2, 4, 8, 16, 32, 64, 128, 256, 300, 300):
        router.drain()
        waiting = router.status()["waiting"]
        assert [w["study"] for w in waiting] == ["s1"]
        assert waiting[0]["next_attempt_in_s"] == expected_delay
        router.drain()  # not due yet: no attempt
        clock.now += expected_delay
    assert len(calls) == 10
    assert "next try in 300 s; 1 studies waiting" in logs[-1]
    up["node"] = True
    router.drain()
    assert router.status() == {"waiting": [], "delivered": 1, "given_up": 0}
    assert "routed study uid-s1: 1 of 1 instances" in logs[-1]


def test_waiting_studies_survive_an_orthanc_restart(plugin: ModuleType, tmp_path: Path) -> None:
    clock, sent = Clock(), []

    def down(_t: str, _ids: tuple[str, ...]) -> None:
        raise RuntimeError("node down")

    first, _ = _router(plugin, down, tmp_path, clock)
    first.submit("s1")
    first.submit("s2")
    first.drain()
    assert json.loads((tmp_path / "routing.json").read_text()) == {"waiting": {"s1": 1, "s2": 1}}
    # a new Orthanc process: the plugin loads the file and tries both at once
    second, _ = _router(plugin, lambda _t, ids: sent.extend(ids), tmp_path, clock)
    assert {w["study"] for w in second.status()["waiting"]} == {"s1", "s2"}
    second.drain()
    assert sorted(sent) == ["s1-i", "s2-i"]
    assert json.loads((tmp_path / "routing.json").read_text()) == {"waiting": {}}


def test_one_unreachable_study_does_not_hold_up_the_others(
    plugin: ModuleType, tmp_path: Path
) -> None:
    clock, sent = Clock(), []

    def store(_t: str, ids: tuple[str, ...]) -> None:
        if ids == ("bad-i",):
            raise RuntimeError("refused")
        sent.extend(ids)

    router, _ = _router(plugin, store, tmp_path, clock)
    router.submit("bad")
    router.drain()
    router.submit("good")
    router.drain()
    assert sent == ["good-i"]
    assert [w["study"] for w in router.status()["waiting"]] == ["bad"]


def test_a_deleted_study_is_dropped_and_a_retry_limit_gives_up(
    plugin: ModuleType, tmp_path: Path
) -> None:
    clock = Clock()

    def gone(study_id: str) -> tuple[str, list[object]]:
        raise plugin.StudyGoneError(study_id)

    logs: list[str] = []
    router = plugin.StudyRouter(
        plugin.RoutingConfig(state_file=str(tmp_path / "r.json")),
        lambda _t, _ids: None,
        gone,
        logs.append,
        clock=clock,
    )
    router.submit("s1")
    router.drain()
    assert router.status()["waiting"] == []
    assert "no longer in Orthanc" in logs[-1]

    def down(_t: str, _ids: tuple[str, ...]) -> None:
        raise RuntimeError("down")

    limited, logs = _router(plugin, down, tmp_path / "b", clock, retries=1)
    limited.submit("s1")
    limited.drain()
    clock.now += 10
    limited.drain()
    assert limited.status() == {"waiting": [], "delivered": 0, "given_up": 1}
    assert "giving up on study s1 after 2 attempts" in logs[-1]


def test_router_thread_runs_queued_studies_and_retries_on_its_own(
    plugin: ModuleType, tmp_path: Path
) -> None:
    sent: list[str] = []
    failures = {"s2": 1}

    def store(_t: str, ids: tuple[str, ...]) -> None:
        study = ids[0].removesuffix("-i")
        if failures.get(study):
            failures[study] -= 1
            raise RuntimeError("busy")
        sent.extend(ids)

    router = plugin.StudyRouter(
        plugin.RoutingConfig(retry_delay_seconds=0.05, state_file=str(tmp_path / "r.json")),
        store,
        lambda study_id: (study_id, [plugin.InstanceInfo(f"{study_id}-i", None, DX)]),
        lambda _line: None,
    )
    router.start()
    router.submit("s1")
    router.submit("s2")
    deadline = time.monotonic() + 10
    while len(sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    router.stop()
    assert sorted(sent) == ["s1-i", "s2-i"]
