"""Orthanc Python plugin: route each new stable study's source images to the AI node.

Runs inside Orthanc (Debian's orthanc-python, system Python 3.11, not the project's venv), so it
imports nothing from the project. It repeats the own-output rule of
``ai_engine/dicom_io/markers.py``; ``tests/unit/orthanc_plugin`` checks that both agree.

On ``STABLE_STUDY`` it looks at every instance of the study and:

- skips the whole study when it already holds results written by the node (belt and braces: the
  node deduplicates too), so a study that becomes stable again after the results were stored
  back is never sent twice;
- otherwise C-STOREs the source images only (never SEG/SR/Parametric Map, nor anything whose
  Manufacturer is the node's) to the modality named by ``AiNodeRouting.TargetModality``.

The C-STORE runs on a worker thread (bounded retries with backoff), never in Orthanc's change
callback. Log lines carry UIDs and counts only, never patient data.

Configuration (Orthanc's JSON)::

    "AiNodeRouting": {"Enabled": true, "TargetModality": "ainode",
                      "Retries": 3, "RetryDelaySeconds": 2}
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

try:  # Only the real module inside Orthanc; elsewhere "orthanc" may be this folder.
    import orthanc

    IN_ORTHANC = hasattr(orthanc, "RegisterOnChangeCallback")
except ImportError:  # pragma: no cover - depends on sys.path
    IN_ORTHANC = False

# --- The own-output rule, mirrored from ai_engine/dicom_io/markers.py (a unit test compares). ---

#: Manufacturer written into every object the engine creates.
OUTPUT_MANUFACTURER = "AI Anomaly Node"
#: SOP classes the engine writes.
OUTPUT_SOP_CLASS_UIDS = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
        "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map Storage
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (burned-in map)
    }
)
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def is_own_output(manufacturer: str | None, sop_class_uid: str | None) -> bool:
    """True when an instance was written by the node (same rule as markers.is_own_output)."""
    return (manufacturer or "").strip() == OUTPUT_MANUFACTURER and (
        sop_class_uid in OUTPUT_SOP_CLASS_UIDS
    )


def is_derived_object(sop_class_uid: str | None) -> bool:
    """True for SEG/SR/PM classes, whoever wrote them (same rule as markers.is_derived_object)."""
    return sop_class_uid in OUTPUT_SOP_CLASS_UIDS - {_SECONDARY_CAPTURE}


def is_routable(manufacturer: str | None, sop_class_uid: str | None) -> bool:
    """Whether an instance is a source image the node should analyse.

    Args:
        manufacturer: Manufacturer (0008,0070) of the instance's series, if any.
        sop_class_uid: the instance's SOP Class UID, if known.

    Returns:
        False for the node's own outputs and for any SEG/SR/Parametric Map.
    """
    return not (is_own_output(manufacturer, sop_class_uid) or is_derived_object(sop_class_uid))


@dataclass(frozen=True)
class InstanceInfo:
    """What the routing decision needs to know about one instance."""

    orthanc_id: str
    manufacturer: str | None
    sop_class_uid: str | None


@dataclass(frozen=True)
class RoutingPlan:
    """Decision for one stable study: which instances to send, or why none."""

    to_send: tuple[str, ...]
    reason: str


def plan_study(instances: Iterable[InstanceInfo]) -> RoutingPlan:
    """Decide what to route for a stable study.

    Args:
        instances: every instance of the study.

    Returns:
        The Orthanc ids of the source images to send, or an empty plan with the reason: the
        study already contains the node's results, or it holds no source image.
    """
    items = list(instances)
    if any((i.manufacturer or "").strip() == OUTPUT_MANUFACTURER for i in items) or any(
        is_own_output(i.manufacturer, i.sop_class_uid) for i in items
    ):
        return RoutingPlan((), "study already contains AI node results")
    to_send = tuple(i.orthanc_id for i in items if is_routable(i.manufacturer, i.sop_class_uid))
    if not to_send:
        return RoutingPlan((), "no source images")
    return RoutingPlan(to_send, "source images")


@dataclass(frozen=True)
class RoutingConfig:
    """The ``AiNodeRouting`` section of Orthanc's configuration."""

    enabled: bool = True
    target_modality: str = "ainode"
    retries: int = 3
    retry_delay_seconds: float = 2.0

    @classmethod
    def from_orthanc_config(cls, config: Mapping[str, Any]) -> RoutingConfig:
        """Read the section (missing keys keep their defaults).

        Args:
            config: Orthanc's whole configuration as parsed JSON.

        Returns:
            The routing configuration.
        """
        section = config.get("AiNodeRouting", {}) or {}
        return cls(
            enabled=bool(section.get("Enabled", True)),
            target_modality=str(section.get("TargetModality", "ainode")),
            retries=int(section.get("Retries", 3)),
            retry_delay_seconds=float(section.get("RetryDelaySeconds", 2.0)),
        )


# --- Orthanc REST helpers (only called inside Orthanc). ---


def _get_json(uri: str) -> Any:
    return json.loads(orthanc.RestApiGet(uri))


def _collect_instances(study_id: str) -> tuple[str, list[InstanceInfo]]:
    """Return the StudyInstanceUID and the instances of an Orthanc study."""
    study = _get_json(f"/studies/{study_id}")
    study_uid = study.get("MainDicomTags", {}).get("StudyInstanceUID", "?")
    infos: list[InstanceInfo] = []
    for series_id in study.get("Series", []):
        series = _get_json(f"/series/{series_id}")
        manufacturer = series.get("MainDicomTags", {}).get("Manufacturer")
        for instance_id in series.get("Instances", []):
            try:
                sop_class = orthanc.RestApiGet(f"/instances/{instance_id}/metadata/SopClassUid")
                sop_class_uid: str | None = sop_class.decode("ascii", "replace").strip()
            except Exception:  # noqa: BLE001 - orthanc.OrthancException when metadata is absent
                sop_class_uid = None
            infos.append(InstanceInfo(instance_id, manufacturer, sop_class_uid))
    return study_uid, infos


class StudyRouter:
    """Routes stable studies on a worker thread, so Orthanc's change callback never blocks.

    Args:
        config: routing configuration.
        store: sends a list of Orthanc instance ids to a modality; raises on failure.
        collect: returns (StudyInstanceUID, instances) for an Orthanc study id.
        log: writes one log line.
        sleep: waits between retries (injectable for tests).
    """

    def __init__(
        self,
        config: RoutingConfig,
        store: Callable[[str, Sequence[str]], None],
        collect: Callable[[str], tuple[str, list[InstanceInfo]]],
        log: Callable[[str], None],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self._store = store
        self._collect = collect
        self._log = log
        self._sleep = sleep
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._run, name="ai-node-routing", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker thread after the study being routed, if any."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, study_id: str) -> None:
        """Queue an Orthanc study id for routing."""
        self._queue.put(study_id)

    def _run(self) -> None:
        while True:
            study_id = self._queue.get()
            if study_id is None:
                return
            try:
                self.route(study_id)
            except Exception as exc:  # noqa: BLE001 - the worker must survive any one study
                self._log(f"ai-node routing: study {study_id} failed: {type(exc).__name__}")

    def route(self, study_id: str) -> RoutingPlan:
        """Route one stable study now (used by the worker thread).

        Args:
            study_id: Orthanc's id of the study.

        Returns:
            The plan that was carried out.
        """
        study_uid, instances = self._collect(study_id)
        plan = plan_study(instances)
        if not plan.to_send:
            self._log(f"ai-node routing: not routing study {study_uid}: {plan.reason}")
            return plan
        target = self.config.target_modality
        for attempt in range(1, self.config.retries + 2):
            try:
                self._store(target, plan.to_send)
            except Exception as exc:  # orthanc.OrthancException: retried
                if attempt > self.config.retries:
                    self._log(
                        f"ai-node routing: giving up on study {study_uid} after {attempt} "
                        f"attempts: {type(exc).__name__}"
                    )
                    raise
                self._log(
                    f"ai-node routing: C-STORE of study {study_uid} to '{target}' failed "
                    f"(attempt {attempt}), retrying"
                )
                self._sleep(self.config.retry_delay_seconds * attempt)
            else:
                self._log(
                    f"ai-node routing: routed study {study_uid}: {len(plan.to_send)} of "
                    f"{len(instances)} instances to '{target}'"
                )
                break
        return plan


def _orthanc_store(target: str, instance_ids: Sequence[str]) -> None:
    body = json.dumps({"Resources": list(instance_ids), "Synchronous": True})
    orthanc.RestApiPost(f"/modalities/{target}/store", body)


_router: StudyRouter | None = None


def on_change(change_type: int, level: int, resource_id: str) -> None:
    """Orthanc change callback: queue stable studies, stop the worker when Orthanc stops."""
    if _router is None:
        return
    if change_type == orthanc.ChangeType.STABLE_STUDY:
        _router.submit(resource_id)
    elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
        _router.stop()


def _register() -> None:
    global _router
    config = RoutingConfig.from_orthanc_config(json.loads(orthanc.GetConfiguration()))
    if not config.enabled:
        orthanc.LogWarning("ai-node routing: disabled by AiNodeRouting.Enabled")
        return
    _router = StudyRouter(config, _orthanc_store, _collect_instances, orthanc.LogWarning)
    _router.start()
    orthanc.RegisterOnChangeCallback(on_change)
    orthanc.LogWarning(f"ai-node routing: stable studies go to '{config.target_modality}'")


if IN_ORTHANC:
    _register()
