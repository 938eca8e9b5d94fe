"""The Orthanc routing plugin, outside Orthanc: rule parity with markers.py and routing plans."""

from __future__ import annotations

import importlib.util
import itertools
import sys
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


def test_study_with_our_results_is_not_routed_again(plugin: ModuleType) -> None:
    info = plugin.InstanceInfo
    plan = plugin.plan_study(
        [info("a", None, DX), info("s", "AI Anomaly Node", SR), info("g", "AI Anomaly Node", SEG)]
    )
    assert plan.to_send == ()
    assert "already" in plan.reason


def test_study_without_images_is_not_routed(plugin: ModuleType) -> None:
    plan = plugin.plan_study([plugin.InstanceInfo("g", "Other AI", SEG)])
    assert plan.to_send == ()


def test_config_defaults_and_overrides(plugin: ModuleType) -> None:
    assert plugin.RoutingConfig.from_orthanc_config({}).target_modality == "ainode"
    cfg = plugin.RoutingConfig.from_orthanc_config(
        {"AiNodeRouting": {"TargetModality": "node2", "Enabled": False, "Retries": 1}}
    )
    assert (cfg.target_modality, cfg.enabled, cfg.retries) == ("node2", False, 1)


def test_router_retries_then_succeeds(plugin: ModuleType) -> None:
    calls: list[tuple[str, tuple[str, ...]]] = []
    logs: list[str] = []

    def store(target: str, ids: tuple[str, ...]) -> None:
        calls.append((target, tuple(ids)))
        if len(calls) < 3:
            raise RuntimeError("association rejected")

    def collect(study_id: str) -> tuple[str, list[object]]:
        return "1.2.3", [plugin.InstanceInfo("i1", None, DX)]

    router = plugin.StudyRouter(
        plugin.RoutingConfig(retries=3), store, collect, logs.append, sleep=lambda _s: None
    )
    plan = router.route("study-id")
    assert plan.to_send == ("i1",)
    assert calls == [("ainode", ("i1",))] * 3
    assert "routed study 1.2.3" in logs[-1]


def test_router_gives_up_after_retries(plugin: ModuleType) -> None:
    def store(target: str, ids: tuple[str, ...]) -> None:
        raise RuntimeError("down")

    router = plugin.StudyRouter(
        plugin.RoutingConfig(retries=1),
        store,
        lambda _id: ("1.2.3", [plugin.InstanceInfo("i1", None, DX)]),
        lambda _line: None,
        sleep=lambda _s: None,
    )
    with pytest.raises(RuntimeError):
        router.route("study-id")


def test_router_thread_runs_queued_studies(plugin: ModuleType) -> None:
    sent: list[str] = []
    router = plugin.StudyRouter(
        plugin.RoutingConfig(),
        lambda _t, ids: sent.extend(ids),
        lambda study_id: (study_id, [plugin.InstanceInfo(f"{study_id}-i", None, DX)]),
        lambda _line: None,
    )
    router.start()
    router.submit("s1")
    router.submit("s2")
    router.stop()
    assert sent == ["s1-i", "s2-i"]
