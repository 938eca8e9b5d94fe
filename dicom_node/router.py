"""Study completion and routing: spooled studies become jobs, each instance exactly once.

A spooled study is complete when

* an operator asked for it (``POST /studies/<uid>/process-now`` writes a marker), or
* its first instance arrived more than ``study_max_wait_seconds`` ago (forced), or
* nothing arrived for its quiet period and no association that sent it is open. The quiet
  period is ``study_quiet_seconds``, or, when routing rules give routes their own, the
  longest of the routes its instances take.

Its instances are then routed: the `RoutingRules` decide the checkpoints and destinations
of each instance (`RouteDecision`), the `StateIndex` says which (instance, checkpoint,
version) were already claimed by an earlier job. Already-processed instances are dropped
from the spool (a study Orthanc sends again produces no second result set); instances no
rule routes are dropped and recorded in the index as not routed; the others are moved
(renamed) into a new job's ``input/``. Instances with the same checkpoints and destinations
share one job. Instances of a study arriving after it was routed form a new spool folder
and, once complete, a new job for just those instances.

Crash safety: a job is built in ``jobs/staging/`` (job.json first, then the files, then the
index claims) and renamed into ``jobs/ready/``. `Router.recover` rolls back whatever is
left in staging: files go back to the spool, claims are released, and the study is routed
again.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset

from ai_engine.dicom_io.markers import is_derived_object
from dicom_node.engine import read_node_sr
from dicom_node.errors import JobError
from dicom_node.fsutil import ensure_dir, move_durable, write_durable
from dicom_node.index import StateIndex
from dicom_node.logutil import error_context, log_failure
from dicom_node.metrics import Metrics
from dicom_node.queue import INPUT_DIR, PRIOR_DIR, Job, JobQueue, new_job_id
from dicom_node.spool import Spool, SpooledStudy

if TYPE_CHECKING:
    from ai_engine.types import ModelCard

logger = logging.getLogger(__name__)

#: Header attributes the router reads (and the rules may match on).
HEADER_KEYWORDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "Manufacturer",
    "BodyPartExamined",
    "SeriesDescription",
    "ViewPosition",
)

UNKNOWN_VERSION = "unknown"
#: Suffix of the file beside a quarantined instance that says why it is there.
QUARANTINE_REASON_SUFFIX = ".reason.json"


@dataclass(frozen=True)
class RouteDecision:
    """Where one instance goes.

    Attributes:
        checkpoints: checkpoint names to run; empty means "not routed" (the instance is
            dropped from the spool and recorded as not routed).
        destinations: names of the destinations for the results; empty means the node's
            configured destination (``default``).
        rule: name of the rule that decided (None for the built-in default).
        quiet_seconds: quiet period of this route (None: the node's ``study_quiet_seconds``).
    """

    checkpoints: tuple[str, ...]
    destinations: tuple[str, ...] = ()
    rule: str | None = None
    quiet_seconds: float | None = None


#: The decision for the node's own outputs and other derived objects (SEG, SR, PM).
NOT_ROUTED = RouteDecision(checkpoints=(), rule="derived-object")


class RoutingRules(Protocol):
    """Decides where each instance goes (`DefaultRules`, or `dicom_node.rules.RulesFile`)."""

    @property
    def has_route_quiet_periods(self) -> bool:
        """Whether some route has its own quiet period (the router then reads headers early)."""
        ...

    def decide(self, header: Dataset, calling_ae: str | None = None) -> RouteDecision:
        """The route of one instance.

        Args:
            header: the instance's header (at least `HEADER_KEYWORDS` when present).
            calling_ae: AE title of the peer that sent it (None when unknown).

        Returns:
            The decision.
        """
        ...


class DefaultRules:
    """Without a rules file: each image goes to the configured checkpoints made for it.

    A checkpoint is made for an image when its model card accepts the image's header
    (modality, body part, view, greyscale: `ai_engine.suitability`), so by default chest
    radiographs go to ``default-cxr`` and brain MR to ``default-brain``. An image that no
    card accepts goes to the first checkpoint, whose engine reports it *not analysed* with the
    reason, so it is never silently dropped. A checkpoint whose card cannot be read here (a
    stand-in engine's name) takes every image. Result objects (SEG, SR, PM) go nowhere.

    Args:
        checkpoints: the configured checkpoint names.
    """

    has_route_quiet_periods = False

    def __init__(self, checkpoints: Sequence[str]) -> None:
        from ai_engine.checkpoints import read_card
        from ai_engine.errors import AiEngineError

        self._checkpoints = tuple(checkpoints)
        self._cards: dict[str, ModelCard] = {}
        for name in self._checkpoints:
            try:
                self._cards[name] = read_card(name)
            except AiEngineError:
                continue

    def decide(self, header: Dataset, calling_ae: str | None = None) -> RouteDecision:
        """The checkpoints made for an image (see the class docstring); none for derived objects.

        Args:
            header: the instance header.
            calling_ae: ignored.

        Returns:
            The decision.
        """
        from ai_engine.suitability import reason_not_suitable

        if is_derived_object(str(header.get("SOPClassUID", "")) or None):
            return NOT_ROUTED
        made_for = (
            tuple(
                name
                for name in self._checkpoints
                if name not in self._cards or reason_not_suitable(header, self._cards[name]) is None
            )
            or self._checkpoints[:1]
        )
        return RouteDecision(checkpoints=made_for)

    def checkpoints_for(self, header: Dataset) -> Sequence[str]:
        """The checkpoint names of `decide` (kept for callers of the first interface).

        Args:
            header: the instance header.

        Returns:
            The checkpoint names.
        """
        return self.decide(header).checkpoints


def checkpoint_version(name: str) -> str:
    """The version of a shipped checkpoint, read from its ``card.json`` (no torch import).

    Args:
        name: checkpoint name.

    Returns:
        ``card.json``'s ``version``, or ``"unknown"`` when it cannot be read.
    """
    spec = find_spec("ai_engine")
    if spec is None or not spec.submodule_search_locations:
        return UNKNOWN_VERSION
    card = Path(next(iter(spec.submodule_search_locations))) / "checkpoints" / name / "card.json"
    try:
        version = json.loads(card.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError, AttributeError):
        return UNKNOWN_VERSION
    return str(version) if version else UNKNOWN_VERSION


def read_instance_header(path: Path) -> Dataset:
    """Read the routing header of a spooled instance (no pixel data).

    Args:
        path: the Part 10 file.

    Returns:
        The header.
    """
    return dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_KEYWORDS))


def sending_ae(header: Dataset) -> str | None:
    """The AE title that sent a spooled instance, from its file meta (PS3.10 (0002,0017)).

    Args:
        header: a header read by `read_instance_header`.

    Returns:
        The Sending Application Entity Title, or None if the file does not record it.
    """
    meta = getattr(header, "file_meta", None)
    value = meta.get("SendingApplicationEntityTitle") if meta is not None else None
    text = str(value or "").strip()
    return text or None


class Router:
    """Turns complete spooled studies into jobs.

    Args:
        spool: the spool.
        queue: the job queue.
        index: the processed-instance index.
        metrics: counters.
        quiet_seconds: quiet period.
        max_wait_seconds: forced completion.
        rules: routing rules.
        version_of: checkpoint name -> version (default: `checkpoint_version`).
        quarantine_dir: where unreadable spooled files are moved.
    """

    def __init__(
        self,
        spool: Spool,
        queue: JobQueue,
        index: StateIndex,
        metrics: Metrics,
        *,
        quiet_seconds: float,
        max_wait_seconds: float,
        rules: RoutingRules,
        quarantine_dir: Path,
        version_of: Callable[[str], str] = checkpoint_version,
    ) -> None:
        self._spool = spool
        self._queue = queue
        self._index = index
        self._metrics = metrics
        self._quiet = quiet_seconds
        self._max_wait = max_wait_seconds
        self._rules = rules
        self._version_of = version_of
        self._quarantine = quarantine_dir
        #: POSIX time the earliest incomplete study becomes due (set by `run_once`).
        self.next_due: float | None = None
        # per-route quiet periods: study folder -> {file name: quiet seconds of its route}
        self._route_quiet: dict[str, dict[str, float]] = {}

    def completion_reason(self, study: SpooledStudy, now: float) -> str | None:
        """Why a study is complete now, or None if it is not.

        Args:
            study: the spooled study.
            now: POSIX time.

        Returns:
            ``"process-now"``, ``"max-wait"``, ``"quiet"`` or None.
        """
        if study.process_now:
            return "process-now"
        if now - study.first_arrival >= self._max_wait:
            return "max-wait"
        if study.open_associations == 0 and now - study.last_activity >= self.quiet_seconds(study):
            return "quiet"
        return None

    def quiet_seconds(self, study: SpooledStudy) -> float:
        """The quiet period of a spooled study.

        Without per-route quiet periods this is ``quiet_seconds``. Otherwise it is the
        longest quiet period of the routes of the instances seen so far (each header is
        read once), so a study whose series go to different routes waits for the slowest.

        Args:
            study: the spooled study.

        Returns:
            Seconds.
        """
        if not self._rules.has_route_quiet_periods or not study.files:
            return self._quiet
        known = self._route_quiet.setdefault(study.name, {})
        for path in study.files:
            if path.name in known:
                continue
            try:
                header = read_instance_header(path)
                decision = self._rules.decide(header, sending_ae(header))
            except Exception:  # noqa: BLE001 - route_study quarantines it
                known[path.name] = self._quiet
                continue
            quiet = decision.quiet_seconds
            known[path.name] = self._quiet if quiet is None else quiet
        return max(known.values(), default=self._quiet)

    def run_once(self, now: float | None = None) -> int:
        """Route every complete study once.

        Args:
            now: POSIX time (default: now).

        Returns:
            Number of jobs created.
        """
        now = Spool.now() if now is None else now
        created = 0
        next_due: float | None = None
        for study in self._spool.scan():
            reason = self.completion_reason(study, now)
            if reason is None:
                due = self.due_at(study)
                next_due = due if next_due is None else min(next_due, due)
                continue
            try:
                created += len(self.route_study(study, reason))
            except Exception as exc:  # noqa: BLE001 - one study's failure never blocks the others
                log_failure(logger, "routing a study failed; retried next pass", exc)
        self.next_due = next_due
        return created

    def due_at(self, study: SpooledStudy) -> float:
        """POSIX time at which a study still spooling becomes complete if nothing else comes.

        While an association is still sending it, only the forced-completion maximum counts.
        """
        due = study.first_arrival + self._max_wait
        if study.open_associations == 0:
            due = min(due, study.last_activity + self.quiet_seconds(study))
        return due

    def seconds_until_due(self, now: float | None = None) -> float | None:
        """Seconds until the earliest spooled study is due (as of the last `run_once`)."""
        if self.next_due is None:
            return None
        return self.next_due - (Spool.now() if now is None else now)

    def route_study(self, study: SpooledStudy, reason: str) -> list[Job]:
        """Create the jobs for a complete study and clear it from the spool.

        Args:
            study: the study (its file list as scanned).
            reason: why it is complete (for the log).

        Returns:
            The jobs created (none if every instance was processed before).
        """
        self._route_quiet.pop(study.name, None)
        groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[tuple[Path, str]]] = {}
        study_uid = ""
        versions: dict[str, str] = {}
        entries: list[tuple[Path, str, RouteDecision]] = []
        for path in study.files:
            try:
                header = read_instance_header(path)
                sop = str(header.SOPInstanceUID)
                study_uid = study_uid or str(header.StudyInstanceUID)
                decision = self._rules.decide(header, sending_ae(header))
            except FileNotFoundError:
                continue  # replaced concurrently; the new copy is routed next time
            except Exception as exc:  # noqa: BLE001 - a poison instance must never block others
                # (RecursionError from a data set nested thousands deep, bad values the
                # rules cannot read, ...): quarantined at once, kept, counted and logged
                self._quarantine_file(path, exc)
                continue
            for name in decision.checkpoints:
                if name not in versions:
                    versions[name] = self._version_of(name)
            entries.append((path, sop, decision))

        claimed: dict[str, set[str]] = {
            name: self._index.claimed(
                [sop for _, sop, _ in entries], name, version, study_instance_uid=study_uid
            )
            for name, version in versions.items()
        }
        not_routed: dict[str | None, list[str]] = {}
        for path, sop, decision in entries:
            needed = tuple(c for c in decision.checkpoints if sop not in claimed[c])
            if needed:
                groups.setdefault((needed, decision.destinations), []).append((path, sop))
                continue
            if decision.checkpoints:
                why = "already processed"
                self._metrics.inc("duplicates_skipped_total")
            else:
                why = "not routed"
                not_routed.setdefault(decision.rule, []).append(sop)
                self._metrics.inc("instances_not_routed_total")
            logger.info(
                f"instance dropped from spool: {why}",
                extra={"study_uid": study_uid, "sop_uid": sop, "rule": decision.rule},
            )
            path.unlink(missing_ok=True)
        for rule, sops in not_routed.items():
            self._index.record_not_routed(study_uid, sops, rule)

        jobs = [
            self._create_job(study_uid, list(ckpts), versions, items, reason, list(dests))
            for (ckpts, dests), items in groups.items()
        ]
        self._spool.clear_process_now(study.path)
        self._spool.remove_if_empty(study.path)
        return jobs

    def _create_job(
        self,
        study_uid: str,
        checkpoints: list[str],
        versions: dict[str, str],
        items: list[tuple[Path, str]],
        reason: str,
        destinations: list[str] | None = None,
    ) -> Job:
        job = Job(
            job_id=new_job_id(),
            study_instance_uid=study_uid,
            checkpoints=checkpoints,
            model_versions={c: versions[c] for c in checkpoints},
            sop_instance_uids=[sop for _, sop in items],
            destinations=destinations or [],
        )
        folder = self._queue.stage(job)
        try:
            self._queue.save(job, folder)  # first, so an interrupted staging can be undone
            input_dir = folder / INPUT_DIR
            for path, _ in items:
                path.replace(input_dir / path.name)
            self._carry_prior_results(study_uid, folder / PRIOR_DIR)
            self._index.claim(
                job.job_id,
                study_uid,
                ((sop, c, versions[c]) for _, sop in items for c in checkpoints),
            )
            self._queue.commit(job)
        except BaseException:
            self._rollback(folder)
            raise
        self._metrics.inc("jobs_queued_total")
        logger.info(
            "job queued",
            extra={
                "job_id": job.job_id,
                "study_uid": study_uid,
                "instances": len(items),
                "model_id": ",".join(checkpoints),
                "reason": reason,
            },
        )
        return job

    def _carry_prior_results(self, study_uid: str, prior_dir: Path) -> None:
        """Copy the study's current SRs (one per model, from the index) into a new job.

        The engine carries them into the job's SR, so a study that arrives in parts gets one
        current SR covering all of them (issue 21). An SR whose job is gone (retention) is
        not there to copy: the new SR then covers the new part only.
        """
        copied = 0
        for row in self._index.scores([study_uid]):
            for path in self._queue.result_files(row.job_id, study_uid, row.model):
                if read_node_sr(path) is None:
                    continue
                if not copied:
                    ensure_dir(prior_dir)
                write_durable(prior_dir / f"{row.job_id}-{path.name}", path.read_bytes())
                copied += 1
        if copied:
            logger.info(
                "earlier results carried into the new job",
                extra={"study_uid": study_uid, "results": copied},
            )

    def _quarantine_file(self, path: Path, exc: BaseException) -> None:
        """Move a spooled file the router cannot read into ``quarantine/``, with its reason.

        The reason (``<file>.reason.json``: exception type and code location, never the
        message, which may quote header values) is written first, then the file is moved.
        """
        ensure_dir(self._quarantine)
        target = self._quarantine / f"{path.parent.name}-{path.name}"
        context = error_context(exc)
        log_failure(
            logger,
            "unreadable spooled instance moved to quarantine",
            exc,
            level=logging.WARNING,
            file=target.name,
        )
        reason = {"reason": "the router cannot read this instance's header", **context}
        write_durable(
            target.with_name(target.name + QUARANTINE_REASON_SUFFIX),
            json.dumps(reason).encode(),
        )
        move_durable(path, target)
        self._metrics.inc("instances_quarantined_total")

    def recover(self) -> int:
        """At startup: roll back jobs left half-created in ``jobs/staging/``.

        Their files go back to the spool and their index claims are released; the study
        is then routed again as usual.

        Returns:
            Number of staged jobs rolled back.
        """
        count = 0
        for folder in self._queue.staged_jobs():
            self._rollback(folder)
            count += 1
        return count

    def _rollback(self, folder: Path) -> None:
        """Undo a staged job: files back to the spool, claims released, folder removed."""
        try:
            job: Job | None = self._queue.read_job(folder)
        except JobError:
            job = None
        inputs = sorted((folder / INPUT_DIR).glob("*.dcm"))
        if inputs:
            if job is None:
                # cannot happen (job.json is written before any file moves); keep the data
                target = self._quarantine / folder.name
            else:
                target = self._spool.study_dir(job.study_instance_uid)
            ensure_dir(target)
            for path in inputs:
                move_durable(path, target / path.name)
        if job is not None:
            self._index.release(job.job_id)
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("half-created job rolled back", extra={"job_id": folder.name})
