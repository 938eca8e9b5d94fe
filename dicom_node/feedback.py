"""The radiologist in the loop: readers' judgements of the node's results, kept and counted.

A reader who sees a study's AI result in the viewer says **Agree**, **Disagree: false
alarm** (the node flagged a study the reader finds normal) or **Disagree: missed finding**
(the node did not flag a study the reader finds abnormal), optionally with a comment.

Each judgement is a **version**: the first one of a study and model is version 1, a changed
judgement version 2, and so on; every version is kept (audit), the **latest counts**
(whoever the reader). A version is stored, before the API answers, as two files under
``data_dir/feedback/<StudyInstanceUID>/<model>/``, each written with
`dicom_node.fsutil.write_durable` (fsync, atomic rename, fsync of the folder):

- ``<NNNN>.dcm``: the review SR (`ai_engine.dicom_io.sr_writer.write_review_sr`: TID 1500,
  the reader as person observer, the node's SR of the study as its evidence, the earlier
  version in PredecessorDocumentsSequence);
- ``<NNNN>.json``: the `FeedbackRecord` (the commit point: a version exists when its JSON
  does), with the study's score, threshold and flag at the time, so agreement and drift
  are computed without looking anything up again.

The review SR then goes to the PACS like every result: a job of kind ``feedback`` is put
into ``jobs/outbox/`` and `dicom_node.sender.Outbox` delivers it (STOW-RS or C-STORE, with
its retries and dead letter); when it is accepted, the record gets ``delivered_at``. At
start, a version without ``delivered_at`` and without a job is queued again.

Who is a *reader-confirmed normal*: ``agree`` on a study the node did not flag, or ``false
alarm`` on one it flagged. A *reader-confirmed abnormal*: ``agree`` on a flagged study or
``missed finding`` on one not flagged. ``false alarm`` on a study not flagged and ``missed
finding`` on a flagged one contradict the result and are refused (409).

Drift: the scores of the confirmed normals of a model version against the healthy
validation scores its model card was calibrated on (``calibration.healthy_scores``): the
two-sample Kolmogorov-Smirnov statistic D (0: same distribution, 1: disjoint), and the
share of each above the threshold. ``drift_alert`` is raised when D exceeds
``feedback_drift_alert_ks`` with at least ``feedback_drift_min_normals`` confirmed normals.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from pydantic import BaseModel, ValidationError
from pydicom import Dataset, dcmread

from dicom_node.engine import read_node_sr
from dicom_node.fsutil import ensure_dir, write_durable
from dicom_node.index import StateIndex, StudyScore
from dicom_node.metrics import Metrics
from dicom_node.queue import OUTPUT_DIR, Job, JobQueue, JobStateValues, new_job_id, utcnow

logger = logging.getLogger(__name__)

Judgement = Literal["agree", "false_alarm", "missed_finding"]
JUDGEMENTS: tuple[str, ...] = ("agree", "false_alarm", "missed_finding")
#: What the viewer's buttons say.
JUDGEMENT_LABELS = {
    "agree": "Agree",
    "false_alarm": "Disagree: false alarm",
    "missed_finding": "Disagree: missed finding",
}
FEEDBACK_DIR = "feedback"
JOB_KIND: Literal["feedback"] = "feedback"
#: Longest reader name (PN component group, LO-like).
MAX_READER_CHARS = 64
#: Largest request body accepted (JSON).
MAX_BODY_BYTES = 16 * 1024

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_READER_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\=]")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class FeedbackError(Exception):
    """A judgement that cannot be taken; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class FeedbackRecord(BaseModel):
    """One version of a reader's judgement (``<NNNN>.json``).

    Attributes:
        study_instance_uid: the study.
        model: the checkpoint name whose result was judged.
        model_version: its version.
        version: 1 for the first judgement of this study and model, then 2, 3, ...
        judgement: ``agree``, ``false_alarm`` or ``missed_finding``.
        comment: the reader's comment ("" for none).
        reader: who judged (the viewer's login, or the name the reader gave).
        created_at: when the node stored it.
        score: the study score that was judged.
        threshold: its threshold.
        is_abnormal: whether the node had flagged the study.
        judged_sr_uid: SOP Instance UID of the node's SR that was judged.
        sop_instance_uid: SOP Instance UID of the review SR.
        series_instance_uid: its series (one per study and model; versions share it).
        job_id: the delivery job.
        delivered_at: when the PACS accepted the review SR (None: not yet).
    """

    study_instance_uid: str
    model: str
    model_version: str
    version: int
    judgement: Judgement
    comment: str = ""
    reader: str
    created_at: datetime
    score: float | None
    threshold: float | None
    is_abnormal: bool | None
    judged_sr_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    job_id: str
    delivered_at: datetime | None = None

    @property
    def confirmed_normal(self) -> bool:
        """The reader found the study normal."""
        return (self.judgement == "agree" and self.is_abnormal is False) or (
            self.judgement == "false_alarm" and self.is_abnormal is True
        )

    @property
    def confirmed_abnormal(self) -> bool:
        """The reader found the study abnormal."""
        return (self.judgement == "agree" and self.is_abnormal is True) or (
            self.judgement == "missed_finding" and self.is_abnormal is False
        )

    def as_json(self) -> dict[str, Any]:
        """JSON-ready dict, with the derived ``confirmed_normal`` / ``confirmed_abnormal``."""
        data = self.model_dump(mode="json")
        data["label"] = JUDGEMENT_LABELS[self.judgement]
        data["confirmed_normal"] = self.confirmed_normal
        data["confirmed_abnormal"] = self.confirmed_abnormal
        data["delivered"] = self.delivered_at is not None
        return data


def model_folder(model: str) -> str:
    """The folder name of a model's judgements (its name, or a hash if not path-safe)."""
    if _SAFE_NAME.match(model) and not model.startswith("."):
        return model
    return "model-" + hashlib.sha256(model.encode()).hexdigest()[:16]


class FeedbackStore:
    """The judgement files under ``root`` and an in-memory index of them (thread-safe).

    Args:
        root: ``data_dir/feedback`` (created if missing).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        ensure_dir(root)
        self._lock = threading.RLock()
        self._records: dict[tuple[str, str], list[FeedbackRecord]] = {}
        for path in sorted(root.glob("*/*/[0-9][0-9][0-9][0-9].json")):
            try:
                record = FeedbackRecord.model_validate_json(path.read_bytes())
            except (OSError, ValidationError) as exc:
                logger.warning("unreadable feedback record skipped", extra={"err": str(exc)})
                continue
            self._records.setdefault((record.study_instance_uid, record.model), []).append(record)
        for versions in self._records.values():
            versions.sort(key=lambda r: r.version)

    def folder(self, study_uid: str, model: str) -> Path:
        """Folder of a study's judgements of one model."""
        return self.root / study_uid / model_folder(model)

    def record_path(self, record: FeedbackRecord, suffix: str = ".json") -> Path:
        """``<NNNN>.json`` (or ``.dcm``) of a version."""
        folder = self.folder(record.study_instance_uid, record.model)
        return folder / f"{record.version:04d}{suffix}"

    def versions(self, study_uid: str, model: str | None = None) -> list[FeedbackRecord]:
        """Every version for a study (one model or all), oldest first."""
        with self._lock:
            return [
                r
                for (study, m), records in sorted(self._records.items())
                if study == study_uid and (model is None or m == model)
                for r in records
            ]

    def latest(self, study_uid: str, model: str) -> FeedbackRecord | None:
        """The version that counts for a study and model."""
        with self._lock:
            records = self._records.get((study_uid, model))
            return records[-1] if records else None

    def current(
        self,
        model: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[FeedbackRecord]:
        """The latest version of every (study, model), newest first, optionally filtered.

        Args:
            model: only this checkpoint.
            since: only judgements made at or after this time.
            until: only judgements made before this time.
        """
        with self._lock:
            latest = [records[-1] for records in self._records.values() if records]
        out = [
            r
            for r in latest
            if (model is None or r.model == model)
            and (since is None or r.created_at >= since)
            and (until is None or r.created_at < until)
        ]
        out.sort(key=lambda r: r.created_at, reverse=True)
        return out

    def undelivered(self) -> list[FeedbackRecord]:
        """Versions the PACS has not accepted yet."""
        with self._lock:
            return [r for rs in self._records.values() for r in rs if r.delivered_at is None]

    def next_version(self, study_uid: str, model: str) -> int:
        """The version number a new judgement gets."""
        latest = self.latest(study_uid, model)
        return 1 if latest is None else latest.version + 1

    def read_sr(self, record: FeedbackRecord) -> Dataset:
        """The stored review SR of a version."""
        return dcmread(self.record_path(record, ".dcm"))

    def add(self, record: FeedbackRecord, sr_bytes: bytes) -> None:
        """Store a new version durably: the SR first, then the record (the commit point).

        Raises:
            FeedbackError: (409) that version exists already.
        """
        with self._lock:
            if record.version != self.next_version(record.study_instance_uid, record.model):
                raise FeedbackError("another judgement of this study was stored meanwhile", 409)
            folder = self.folder(record.study_instance_uid, record.model)
            ensure_dir(folder)
            write_durable(self.record_path(record, ".dcm"), sr_bytes)
            write_durable(self.record_path(record), record.model_dump_json(indent=2).encode())
            self._records.setdefault((record.study_instance_uid, record.model), []).append(record)

    def mark_delivered(self, study_uid: str, model: str, version: int, at: datetime) -> None:
        """Record that the PACS accepted a version's review SR."""
        with self._lock:
            for record in self._records.get((study_uid, model), []):
                if record.version == version and record.delivered_at is None:
                    record.delivered_at = at
                    write_durable(
                        self.record_path(record), record.model_dump_json(indent=2).encode()
                    )


# --------------------------------------------------------------------------- validation


def check_uid(uid: str) -> str:
    """``uid`` if it is a valid DICOM UID, else FeedbackError (400)."""
    if not (0 < len(uid) <= 64 and _UID.match(uid)):
        raise FeedbackError("not a valid DICOM UID (digits and dots, at most 64 characters)")
    return uid


def parse_request(body: object, max_comment_chars: int) -> dict[str, str]:
    """Validate a judgement request body.

    Args:
        body: the decoded JSON (``{"judgement", "reader", "comment"?, "model"?}``).
        max_comment_chars: longest comment accepted.

    Returns:
        ``judgement``, ``reader``, ``comment`` ("" if none), ``model`` ("" if not given).

    Raises:
        FeedbackError: (400, 413) what is wrong, in a sentence.
    """
    if not isinstance(body, dict):
        raise FeedbackError('the body must be a JSON object, e.g. {"judgement": "agree", ...}')
    unknown = sorted(set(body) - {"judgement", "reader", "comment", "model"})
    if unknown:
        raise FeedbackError(f"unknown fields {unknown}")
    judgement = body.get("judgement")
    if judgement not in JUDGEMENTS:
        raise FeedbackError(f"judgement must be one of {list(JUDGEMENTS)}")
    reader = body.get("reader")
    if not isinstance(reader, str) or not reader.strip():
        raise FeedbackError("reader (who judges) is required")
    reader = reader.strip()
    if len(reader) > MAX_READER_CHARS or _READER_FORBIDDEN.search(reader):
        raise FeedbackError(
            f"reader must be at most {MAX_READER_CHARS} characters, without control "
            "characters, '\\' or '='"
        )
    comment = body.get("comment", "")
    if comment is None:
        comment = ""
    if not isinstance(comment, str):
        raise FeedbackError("comment must be a string")
    comment = comment.strip()
    if len(comment) > max_comment_chars:
        raise FeedbackError(
            f"comment has {len(comment)} characters; at most {max_comment_chars}", 413
        )
    if _CONTROL.search(comment):
        raise FeedbackError("comment contains control characters")
    model = body.get("model", "")
    if not isinstance(model, str) or len(model) > 200:
        raise FeedbackError("model must be a checkpoint name")
    return {"judgement": judgement, "reader": reader, "comment": comment, "model": model}


# --------------------------------------------------------------------------- statistics


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two ECDFs."""
    x, y = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, grid, side="right") / len(x)
    cdf_y = np.searchsorted(y, grid, side="right") / len(y)
    return float(np.max(np.abs(cdf_x - cdf_y)))


@dataclass(frozen=True)
class DriftSettings:
    """When the drift alert is raised (node settings ``feedback_drift_*``)."""

    alert_ks: float = 0.3
    min_normals: int = 20


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def summarise(
    records: Iterable[FeedbackRecord],
    healthy_scores: Callable[[str, str], Sequence[float] | None],
    drift: DriftSettings,
) -> list[dict[str, Any]]:
    """Agreement and drift per model version, from the versions that count.

    Args:
        records: latest versions (`FeedbackStore.current`).
        healthy_scores: (model, version) -> the card's calibration healthy scores, or None
            when that card is not known to this node.
        drift: alert settings.

    Returns:
        One dict per (model, version), sorted: counts of each judgement, ``flagged`` /
        ``not_flagged`` judged studies, ``agreement_rate`` (agree / judged),
        ``false_alarm_rate`` (false alarms / flagged judged), ``missed_findings`` and
        ``missed_finding_rate`` (/ not-flagged judged), ``confirmed_normals``, and
        ``drift`` (see the module docstring; ``ks`` None when either side is empty).
    """
    groups: dict[tuple[str, str], list[FeedbackRecord]] = {}
    for r in records:
        groups.setdefault((r.model, r.model_version), []).append(r)
    out = []
    for (model, version), rs in sorted(groups.items()):
        counts = {j: sum(1 for r in rs if r.judgement == j) for j in JUDGEMENTS}
        flagged = sum(1 for r in rs if r.is_abnormal)
        not_flagged = sum(1 for r in rs if r.is_abnormal is False)
        normals = [r.score for r in rs if r.confirmed_normal and r.score is not None]
        healthy = list(healthy_scores(model, version) or [])
        thresholds = [r.threshold for r in rs if r.threshold is not None]
        threshold = thresholds[0] if thresholds else None
        ks = ks_statistic(normals, healthy) if normals and healthy else None
        out.append(
            {
                "model": model,
                "model_version": version,
                "studies": len(rs),
                **counts,
                "flagged": flagged,
                "not_flagged": not_flagged,
                "agreement_rate": _rate(counts["agree"], len(rs)),
                "false_alarm_rate": _rate(counts["false_alarm"], flagged),
                "missed_findings": counts["missed_finding"],
                "missed_finding_rate": _rate(counts["missed_finding"], not_flagged),
                "confirmed_normals": len(normals),
                "confirmed_abnormals": sum(1 for r in rs if r.confirmed_abnormal),
                "drift": {
                    "ks": ks,
                    "alert": bool(
                        ks is not None and len(normals) >= drift.min_normals and ks > drift.alert_ks
                    ),
                    "alert_ks": drift.alert_ks,
                    "min_normals": drift.min_normals,
                    "n_normals": len(normals),
                    "n_calibration": len(healthy),
                    "normals_median": float(np.median(normals)) if normals else None,
                    "calibration_median": float(np.median(healthy)) if healthy else None,
                    "normals_above_threshold": _above(normals, threshold),
                    "calibration_above_threshold": _above(healthy, threshold),
                },
            }
        )
    return out


def _above(scores: Sequence[float], threshold: float | None) -> float | None:
    if not scores or threshold is None or not math.isfinite(threshold):
        return None
    return sum(1 for s in scores if s >= threshold) / len(scores)


# --------------------------------------------------------------------------- the service


class Feedback:
    """Takes judgements (validation, review SR, store, delivery job) and answers queries.

    Args:
        store: the judgement files.
        queue: the job queue (delivery jobs go into ``outbox/``).
        index: the study scores (what was judged).
        metrics: counters.
        checkpoints: checkpoint names or folders whose cards give the drift reference.
        drift: alert settings.
        max_comment_chars: longest comment accepted.
        on_queued: called after a delivery job was queued (wakes the outbox).
    """

    def __init__(
        self,
        store: FeedbackStore,
        queue: JobQueue,
        index: StateIndex,
        metrics: Metrics,
        *,
        checkpoints: Sequence[str] = (),
        drift: DriftSettings | None = None,
        max_comment_chars: int = 1024,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self._queue = queue
        self._index = index
        self._metrics = metrics
        self._checkpoints = list(checkpoints)
        self.drift = drift or DriftSettings()
        self.max_comment_chars = max_comment_chars
        self._on_queued = on_queued or (lambda: None)
        self._cards: dict[tuple[str, str], tuple[float, ...] | None] = {}
        self._submit_lock = threading.Lock()
        # highdicom and the writers load now, not during the first reader's click
        import ai_engine.dicom_io.sr_writer  # noqa: F401

    # --- taking a judgement ------------------------------------------------------------

    def submit(self, study_uid: str, body: object) -> FeedbackRecord:
        """Store a judgement of a study's result and queue its review SR for the PACS.

        Args:
            study_uid: the study.
            body: the request body (see `parse_request`).

        Returns:
            The stored version.

        Raises:
            FeedbackError: 400/413 bad input, 404 unknown study or model, 409 the judgement
                contradicts the result, the study was not analysed, or its SR is no longer
                kept.
        """
        check_uid(study_uid)
        request = parse_request(body, self.max_comment_chars)
        row = self._score_row(study_uid, request["model"])
        if row.score is None or row.is_abnormal is None:
            raise FeedbackError("the node did not analyse this study: nothing to judge", 409)
        judgement = request["judgement"]
        if judgement == "false_alarm" and not row.is_abnormal:
            raise FeedbackError("a false alarm needs a flagged study; this one is not", 409)
        if judgement == "missed_finding" and row.is_abnormal:
            raise FeedbackError("the node flagged this study: it missed nothing", 409)
        judged = self._judged_sr(row)
        with self._submit_lock:
            record = self._store_version(row, judged, request)
        self._metrics.inc("feedback_received_total")
        logger.info(
            "judgement stored",
            extra={"study_uid": study_uid, "judgement": judgement, "version": record.version},
        )
        self._queue_delivery(record)
        return record

    def _score_row(self, study_uid: str, model: str) -> StudyScore:
        rows = self._index.scores([study_uid], model=model or None)
        if not rows:
            what = f" with model {model!r}" if model else ""
            raise FeedbackError(f"the node has no result for this study{what}", 404)
        if len(rows) > 1:
            names = sorted(r.model for r in rows)
            raise FeedbackError(f"the study has results of several models {names}: name one", 400)
        return rows[0]

    def _judged_sr(self, row: StudyScore) -> Dataset:
        """The node's SR of the study and model, from the job that delivered it."""
        for path in self._queue.result_files(row.job_id, row.study_instance_uid, row.model):
            ds = read_node_sr(path)
            if ds is not None:
                return cast(Dataset, ds)
        raise FeedbackError(
            "the node no longer keeps this study's AI report (retention_days_done): "
            "it cannot write a review that references it",
            409,
        )

    def _store_version(
        self, row: StudyScore, judged: Dataset, request: dict[str, str]
    ) -> FeedbackRecord:
        from ai_engine.dicom_io.sr_writer import write_review_sr

        study, model = row.study_instance_uid, row.model
        previous = self.store.versions(study, model)
        version = self.store.next_version(study, model)
        sr = write_review_sr(
            judged,
            request["judgement"],
            request["reader"],
            comment=request["comment"],
            previous=[self.store.read_sr(r) for r in previous[-1:]],
            series_instance_uid=previous[0].series_instance_uid if previous else None,
            instance_number=version,
        )
        job_id = new_job_id()
        record = FeedbackRecord(
            study_instance_uid=study,
            model=model,
            model_version=row.model_version,
            version=version,
            judgement=request["judgement"],  # type: ignore[arg-type]
            comment=request["comment"],
            reader=request["reader"],
            created_at=utcnow(),
            score=row.score,
            threshold=row.threshold,
            is_abnormal=row.is_abnormal,
            judged_sr_uid=str(judged.SOPInstanceUID),
            sop_instance_uid=str(sr.SOPInstanceUID),
            series_instance_uid=str(sr.SeriesInstanceUID),
            job_id=job_id,
        )
        buffer = io.BytesIO()
        sr.save_as(buffer, enforce_file_format=True)  # Part 10, as `convert.save` writes
        self.store.add(record, buffer.getvalue())
        return record

    def _queue_delivery(self, record: FeedbackRecord) -> None:
        job = Job(
            job_id=record.job_id,
            study_instance_uid=record.study_instance_uid,
            checkpoints=[record.model],
            model_versions={record.model: record.model_version},
            kind=JOB_KIND,
            feedback_version=record.version,
        )
        folder = self._queue.stage(job)
        data = self.store.record_path(record, ".dcm").read_bytes()
        write_durable(folder / OUTPUT_DIR / f"review-{record.sop_instance_uid}.dcm", data)
        self._queue.commit(job, to=JobStateValues.SENDING)
        self._on_queued()

    def recover(self) -> int:
        """At start: queue again the versions not delivered whose job is gone.

        Returns:
            How many were queued.
        """
        count = 0
        for record in self.store.undelivered():
            job = self._queue.find(record.job_id)
            if job is not None and job.state is not JobStateValues.DONE:
                continue  # still on its way, or dead-lettered (visible in /jobs)
            if job is not None:  # delivered, but the mark was lost
                self.store.mark_delivered(
                    record.study_instance_uid,
                    record.model,
                    record.version,
                    job.finished_at or utcnow(),
                )
                continue
            self._queue_delivery(record)
            count += 1
        return count

    def delivered(self, job: Job) -> None:
        """The outbox delivered a feedback job: mark its version delivered."""
        if job.feedback_version is None:
            return
        for model in job.checkpoints:
            self.store.mark_delivered(
                job.study_instance_uid, model, job.feedback_version, job.finished_at or utcnow()
            )
        self._metrics.inc("feedback_sent_total")

    # --- queries -----------------------------------------------------------------------

    def healthy_scores(self, model: str, version: str) -> tuple[float, ...] | None:
        """The calibration healthy scores of (model, version), if this node has its card."""
        key = (model, version)
        if key not in self._cards:
            self._cards[key] = self._find_card_scores(model, version)
        return self._cards[key]

    def _find_card_scores(self, model: str, version: str) -> tuple[float, ...] | None:
        from ai_engine import checkpoints

        for candidate in [*self._checkpoints, model]:
            try:
                card = checkpoints.read_card(candidate)
            except Exception:  # noqa: BLE001, S112 - not a card this node can read
                continue
            if card.name == model and card.version == version:
                return tuple(card.calibration.healthy_scores)
        return None

    def summary(
        self,
        model: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """`summarise` over the current judgements."""
        return summarise(self.store.current(model, since, until), self.healthy_scores, self.drift)
