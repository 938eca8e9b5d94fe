"""Orthanc Python plugin: route each new stable study's source images to the AI node.

Runs inside Orthanc (Debian's orthanc-python, system Python 3.11, not the project's venv), so it
imports nothing from the project. It repeats the own-output rule of
``ai_engine/dicom_io/markers.py``; ``tests/unit/orthanc_plugin`` checks that both agree.

On ``STABLE_STUDY`` it looks at every instance of the study and C-STOREs the source images
(never SEG/SR/Parametric Map, nor anything whose Manufacturer is the node's) that were **not
routed before** to the modality named by ``AiNodeRouting.TargetModality``; after a successful
C-STORE each of them gets the user metadata ``AiNodeRouted`` (declared in Orthanc's
``UserMetadata``, see ``orthanc.template.json``). So a study that arrives in parts has each part
analysed once its part is stable, a study that becomes stable again because the node's results
were stored back sends nothing, and the metadata lives and dies with the instance in Orthanc's
own database. (A crash between the C-STORE and the mark re-sends those instances; the node
drops what it processed before.) Where ``UserMetadata`` does not declare ``AiNodeRouted`` the
plugin falls back to the older rule, logged at start-up: a study that holds the node's results is
not routed again, so its late parts are not analysed.

The C-STORE runs on a worker thread, never in Orthanc's change callback. A study whose C-STORE
fails (the node down, restarting or refusing associations) stays **waiting** and is tried again
with exponential backoff (``RetryDelaySeconds`` doubling up to ``MaxRetryDelaySeconds``) until
it is delivered; ``Retries`` >= 0 gives up after that many retries instead (-1, the default:
never). The waiting studies are kept in ``StateFile`` (JSON, written atomically: temp file,
fsync, rename), so they are sent after an Orthanc restart too; a study deleted from Orthanc
meanwhile is dropped. ``GET /ai-node/routing`` (Orthanc's REST API, same authentication) lists
the waiting studies with their attempts, and the totals delivered and given up. Log lines carry
UIDs and counts only, never patient data.

Configuration (Orthanc's JSON)::

    "AiNodeRouting": {"Enabled": true, "TargetModality": "ainode", "Retries": -1,
                      "RetryDelaySeconds": 2, "MaxRetryDelaySeconds": 300,
                      "StateFile": "<StorageDirectory>/ai-node-routing.json"}
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
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
        "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection (flagged images)
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
    routed: bool = False  # carries the AiNodeRouted mark: sent to the node before


@dataclass(frozen=True)
class RoutingPlan:
    """Decision for one stable study: which instances to send, or why none."""

    to_send: tuple[str, ...]
    reason: str


#: Orthanc user metadata set on an instance once it was C-STOREd to the node.
ROUTED_METADATA = "AiNodeRouted"


def plan_study(instances: Iterable[InstanceInfo], marks: bool = True) -> RoutingPlan:
    """Decide what to route for a stable study.

    Args:
        instances: every instance of the study.
        marks: whether Orthanc keeps the ``AiNodeRouted`` mark; without it, a study that holds
            the node's results is not routed again (late parts are then not analysed).

    Returns:
        The Orthanc ids of the source images to send, or an empty plan with the reason: every
        source image was routed before, the study holds no source image, or (without marks)
        the study already contains the node's results.
    """
    items = list(instances)
    sources = [i for i in items if is_routable(i.manufacturer, i.sop_class_uid)]
    if not sources:
        return RoutingPlan((), "no source images")
    if not marks:
        if any((i.manufacturer or "").strip() == OUTPUT_MANUFACTURER for i in items):
            return RoutingPlan((), "study already contains AI node results")
        return RoutingPlan(tuple(i.orthanc_id for i in sources), "source images")
    to_send = tuple(i.orthanc_id for i in sources if not i.routed)
    if not to_send:
        return RoutingPlan((), "every source image was routed before")
    earlier = len(sources) - len(to_send)
    return RoutingPlan(
        to_send, "source images" + (f" (a later part; {earlier} routed before)" if earlier else "")
    )


@dataclass(frozen=True)
class RoutingConfig:
    """The ``AiNodeRouting`` section of Orthanc's configuration."""

    enabled: bool = True
    target_modality: str = "ainode"
    retries: int = -1  # -1: until delivered
    retry_delay_seconds: float = 2.0
    max_retry_delay_seconds: float = 300.0
    state_file: str = ""  # "": waiting studies are kept in memory only
    marks: bool = True  # Orthanc's UserMetadata declares AiNodeRouted

    @classmethod
    def from_orthanc_config(cls, config: Mapping[str, Any]) -> RoutingConfig:
        """Read the section (missing keys keep their defaults).

        Args:
            config: Orthanc's whole configuration as parsed JSON.

        Returns:
            The routing configuration; ``StateFile`` defaults to ``ai-node-routing.json`` in
            Orthanc's ``StorageDirectory``.
        """
        section = config.get("AiNodeRouting", {}) or {}
        storage = str(config.get("StorageDirectory", "OrthancStorage"))
        return cls(
            enabled=bool(section.get("Enabled", True)),
            target_modality=str(section.get("TargetModality", "ainode")),
            retries=int(section.get("Retries", -1)),
            retry_delay_seconds=float(section.get("RetryDelaySeconds", 2.0)),
            max_retry_delay_seconds=float(section.get("MaxRetryDelaySeconds", 300.0)),
            state_file=str(section.get("StateFile", Path(storage) / "ai-node-routing.json")),
            marks=ROUTED_METADATA in (config.get("UserMetadata") or {}),
        )

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (doubling, capped)."""
        return min(self.max_retry_delay_seconds, self.retry_delay_seconds * 2 ** (attempts - 1))


class StudyGoneError(Exception):
    """The study is no longer in Orthanc (deleted while it was waiting)."""


class PendingFile:
    """The waiting studies (Orthanc id -> failed attempts so far), durable in one JSON file.

    Args:
        path: the file; "" keeps them in memory only.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> dict[str, int]:
        """The studies saved by the last run (an unreadable file counts as none)."""
        if not self.path:
            return {}
        try:
            data = json.loads(Path(self.path).read_text(encoding="utf-8"))
            return {str(k): int(v) for k, v in dict(data.get("waiting", {})).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            return {}

    def save(self, waiting: Mapping[str, int]) -> None:
        """Replace the file atomically (temp file, fsync, rename, fsync of the folder)."""
        if not self.path:
            return
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump({"waiting": dict(waiting)}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


# --- Orthanc REST helpers (only called inside Orthanc). ---


def _get_json(uri: str) -> Any:
    return json.loads(orthanc.RestApiGet(uri))


def _metadata(instance_id: str, name: str) -> str | None:
    try:
        value: bytes = orthanc.RestApiGet(f"/instances/{instance_id}/metadata/{name}")
    except Exception:  # noqa: BLE001 - orthanc.OrthancException when the metadata is absent
        return None
    return value.decode("ascii", "replace").strip()


def _collect_instances(study_id: str) -> tuple[str, list[InstanceInfo]]:
    """Return the StudyInstanceUID and the instances of an Orthanc study.

    Raises:
        StudyGoneError: the study is not in Orthanc (any more).
    """
    try:
        study = _get_json(f"/studies/{study_id}")
    except Exception as exc:  # orthanc.OrthancException (unknown resource)
        raise StudyGoneError(study_id) from exc
    study_uid = study.get("MainDicomTags", {}).get("StudyInstanceUID", "?")
    infos: list[InstanceInfo] = []
    for series_id in study.get("Series", []):
        series = _get_json(f"/series/{series_id}")
        manufacturer = series.get("MainDicomTags", {}).get("Manufacturer")
        for instance_id in series.get("Instances", []):
            sop_class_uid = _metadata(instance_id, "SopClassUid")
            routed = _metadata(instance_id, ROUTED_METADATA) is not None
            infos.append(InstanceInfo(instance_id, manufacturer, sop_class_uid, routed))
    return study_uid, infos


def _mark_routed(instance_ids: Sequence[str]) -> None:
    for instance_id in instance_ids:
        orthanc.RestApiPut(f"/instances/{instance_id}/metadata/{ROUTED_METADATA}", "1")


class StudyRouter:
    """Routes stable studies on a worker thread, so Orthanc's change callback never blocks.

    A study stays waiting until its C-STORE succeeds (see the module docstring); the worker
    tries the study whose retry time has come, so one unreachable study never delays others
    for longer than one attempt.

    Args:
        config: routing configuration.
        store: sends a list of Orthanc instance ids to a modality; raises on failure.
        collect: returns (StudyInstanceUID, instances) for an Orthanc study id; raises
            `StudyGoneError` when the study was deleted.
        log: writes one log line.
        clock: monotonic seconds (injectable for tests).
        pending: where waiting studies are kept (default: ``config.state_file``).
        mark: records that instances were sent (``AiNodeRouted``), called after a successful
            C-STORE when ``config.marks``; a failure is logged (the node drops re-sent
            instances it processed before).
    """

    def __init__(
        self,
        config: RoutingConfig,
        store: Callable[[str, Sequence[str]], None],
        collect: Callable[[str], tuple[str, list[InstanceInfo]]],
        log: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        pending: PendingFile | None = None,
        mark: Callable[[Sequence[str]], None] | None = None,
    ) -> None:
        self.config = config
        self._store = store
        self._mark = mark
        self._collect = collect
        self._log = log
        self._clock = clock
        self._pending = pending or PendingFile(config.state_file)
        self._cond = threading.Condition()
        # Orthanc study id -> [failed attempts, monotonic time of the next attempt]
        self._waiting: dict[str, list[float]] = {
            sid: [attempts, 0.0] for sid, attempts in self._pending.load().items()
        }
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.given_up = 0

    def start(self) -> None:
        """Start the worker thread (studies saved by the last run are tried first)."""
        if self._waiting:
            self._log(f"ai-node routing: {len(self._waiting)} studies waiting from the last run")
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="ai-node-routing", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker thread after the attempt in progress (waiting studies stay saved)."""
        if self._thread is not None:
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            self._thread.join(timeout)
            self._thread = None

    def submit(self, study_id: str) -> None:
        """Queue an Orthanc study id for routing now (again, if it is waiting already)."""
        with self._cond:
            attempts = int(self._waiting.get(study_id, [0, 0.0])[0])
            self._waiting[study_id] = [attempts, 0.0]
            self._save()
            self._cond.notify_all()

    def status(self) -> dict[str, Any]:
        """What ``GET /ai-node/routing`` answers: waiting studies and totals."""
        now = self._clock()
        with self._cond:
            waiting = [
                {"study": sid, "attempts": int(a), "next_attempt_in_s": round(max(0.0, t - now), 1)}
                for sid, (a, t) in sorted(self._waiting.items(), key=lambda kv: kv[1][1])
            ]
        return {"waiting": waiting, "delivered": self.delivered, "given_up": self.given_up}

    def drain(self) -> None:
        """Try every study that is due now, once, on the caller's thread (tests, shutdown)."""
        while (study_id := self._next_due()) is not None:
            self._attempt(study_id)

    def _save(self) -> None:
        try:
            self._pending.save({sid: int(v[0]) for sid, v in self._waiting.items()})
        except OSError as exc:
            self._log(f"ai-node routing: cannot save the waiting studies: {type(exc).__name__}")

    def _next_due(self) -> str | None:
        now = self._clock()
        with self._cond:
            due = [(t, sid) for sid, (_, t) in self._waiting.items() if t <= now]
            return min(due)[1] if due else None

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = self._clock()
                times = [t for _, t in self._waiting.values()]
                if not times or min(times) > now:
                    wait = None if not times else min(times) - now
                    self._cond.wait(timeout=wait)
                    continue
            study_id = self._next_due()
            if study_id is not None:
                try:
                    self._attempt(study_id)
                except Exception as exc:  # noqa: BLE001 - the worker must survive any one study
                    self._log(f"ai-node routing: study {study_id} failed: {type(exc).__name__}")

    def _attempt(self, study_id: str) -> None:
        """One attempt at a waiting study; it leaves the waiting set when done or given up."""
        try:
            plan = self.route(study_id)
        except StudyGoneError:
            self._log(f"ai-node routing: study {study_id} is no longer in Orthanc; dropped")
            self._finish(study_id)
            return
        except Exception as exc:  # noqa: BLE001 - orthanc.OrthancException of the C-STORE: retried
            with self._cond:
                entry = self._waiting.get(study_id)
                if entry is None:
                    return
                entry[0] += 1
                attempts = int(entry[0])
                limit = self.config.retries
                if limit >= 0 and attempts > limit:
                    del self._waiting[study_id]
                    self.given_up += 1
                    self._save()
                    self._log(
                        f"ai-node routing: giving up on study {study_id} after {attempts} "
                        f"attempts: {type(exc).__name__}"
                    )
                    return
                delay = self.config.delay(attempts)
                entry[1] = self._clock() + delay
                waiting = len(self._waiting)
                self._save()
            self._log(
                f"ai-node routing: C-STORE of study {study_id} to "
                f"'{self.config.target_modality}' failed (attempt {attempts}, "
                f"{type(exc).__name__}); next try in {delay:g} s; {waiting} studies waiting"
            )
            return
        if plan.to_send:
            self.delivered += 1
        self._finish(study_id)

    def _finish(self, study_id: str) -> None:
        with self._cond:
            if self._waiting.pop(study_id, None) is not None:
                self._save()

    def route(self, study_id: str) -> RoutingPlan:
        """Plan one stable study and C-STORE its source images (one attempt).

        Args:
            study_id: Orthanc's id of the study.

        Returns:
            The plan that was carried out.

        Raises:
            StudyGoneError: the study is not in Orthanc.
            Exception: whatever the C-STORE raised (the caller retries).
        """
        study_uid, instances = self._collect(study_id)
        plan = plan_study(instances, marks=self.config.marks)
        if not plan.to_send:
            self._log(f"ai-node routing: not routing study {study_uid}: {plan.reason}")
            return plan
        target = self.config.target_modality
        self._store(target, plan.to_send)
        if self.config.marks and self._mark is not None:
            try:
                self._mark(plan.to_send)
            except Exception as exc:  # noqa: BLE001 - the study was delivered; marks are a shortcut
                self._log(
                    f"ai-node routing: study {study_uid} sent but not marked routed "
                    f"({type(exc).__name__}); a later stable event sends it again"
                )
        self._log(
            f"ai-node routing: routed study {study_uid}: {len(plan.to_send)} of "
            f"{len(instances)} instances to '{target}' ({plan.reason})"
        )
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


def on_status_request(output: Any, uri: str, **request: Any) -> None:
    """``GET /ai-node/routing``: the waiting studies and the totals, as JSON."""
    if request.get("method") != "GET":
        output.SendMethodNotAllowed("GET")
        return
    body = json.dumps(_router.status() if _router is not None else {"enabled": False})
    output.AnswerBuffer(body, "application/json")


def _register() -> None:
    global _router
    config = RoutingConfig.from_orthanc_config(json.loads(orthanc.GetConfiguration()))
    if not config.enabled:
        orthanc.LogWarning("ai-node routing: disabled by AiNodeRouting.Enabled")
        return
    _router = StudyRouter(
        config, _orthanc_store, _collect_instances, orthanc.LogWarning, mark=_mark_routed
    )
    if not config.marks:
        orthanc.LogWarning(
            f"ai-node routing: UserMetadata does not declare {ROUTED_METADATA}; a study that "
            "holds the node's results is not routed again, so parts arriving later are not analysed"
        )
    _router.start()
    orthanc.RegisterOnChangeCallback(on_change)
    orthanc.RegisterRestCallback("/ai-node/routing", on_status_request)
    orthanc.LogWarning(f"ai-node routing: stable studies go to '{config.target_modality}'")


if IN_ORTHANC:
    _register()
