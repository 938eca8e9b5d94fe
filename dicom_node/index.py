"""Durable index (sqlite, WAL, synchronous=FULL): what was processed, and the study scores.

Table ``processed``: one row per (SOPInstanceUID, checkpoint, model version) that a job has
claimed. The router never queues an instance again while a row for it with the same
checkpoint and version is ``queued`` or ``done``; a ``failed`` row does not block (sending the
study again re-processes it). This is what makes results exactly-once when Orthanc sends a
study again, e.g. after the node's own results made it "stable" a second time.

Table ``study_scores``: per (study, model) the latest verdict, which the HTTP API serves to
the viewer's study list. A study processed in several jobs (late instances) keeps the
maximum score and "abnormal" if any job flagged it.

Table ``not_routed``: instances that no routing rule sent to a checkpoint (the fallback said
"none"), so the decision is on record rather than a silent drop.

Claims are checked again inside the claiming transaction (`ClaimConflictError`), so two
processes routing the same instance at once (the node's router and a ``pull`` run) cannot
both queue it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from dicom_node.errors import JobError
from dicom_node.queue import Job, JobStateValues, utcnow

_SCHEMA = """
CREATE TABLE IF NOT EXISTS processed (
    sop_instance_uid TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    model_version TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    job_id TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (study_instance_uid, sop_instance_uid, checkpoint, model_version)
);
CREATE INDEX IF NOT EXISTS processed_job ON processed (job_id);
CREATE TABLE IF NOT EXISTS study_scores (
    study_instance_uid TEXT NOT NULL,
    model TEXT NOT NULL,
    model_version TEXT NOT NULL,
    score REAL,
    is_abnormal INTEGER,
    threshold REAL,
    finished_at TEXT NOT NULL,
    job_id TEXT NOT NULL,
    PRIMARY KEY (study_instance_uid, model)
);
CREATE TABLE IF NOT EXISTS not_routed (
    sop_instance_uid TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    rule TEXT,
    recorded_at TEXT NOT NULL
);
"""

#: The states of ``processed`` rows: the job states (`dicom_node.jobs` owns the transitions).
STATE_QUEUED = JobStateValues.QUEUED
STATE_DONE = JobStateValues.DONE
STATE_FAILED = JobStateValues.FAILED

_CHUNK = 500  # stay below sqlite's bound-parameter limit


class ClaimConflictError(JobError):
    """Another job claimed some of the instances between the check and the claim."""


def not_routed_reason(rule: str | None) -> str:
    """The sentence the API gives for an instance recorded as not routed.

    Args:
        rule: the rule that decided; None for the built-in routing, which routes every
            image and sends no result object (SEG, SR, Parametric Map) of any system.
    """
    if rule is None:
        return "a result object (SEG, SR or Parametric Map), not an image a model analyses"
    return f"routing rule {rule!r} sends it to no model"


@dataclass(frozen=True)
class StudyScore:
    """One row of ``GET /studies/scores``.

    Attributes:
        study_instance_uid: the study.
        model: checkpoint name.
        model_version: its version.
        score: study score (None when no image was analysed).
        is_abnormal: flagged.
        threshold: calibrated threshold.
        finished_at: when the (last) results were delivered.
        job_id: the last job that contributed.
    """

    study_instance_uid: str
    model: str
    model_version: str
    score: float | None
    is_abnormal: bool | None
    threshold: float | None
    finished_at: datetime
    job_id: str

    def as_json(self) -> dict[str, Any]:
        """JSON-ready dict (``finished_at`` as ISO 8601)."""
        return {
            "study_instance_uid": self.study_instance_uid,
            "score": self.score,
            "is_abnormal": self.is_abnormal,
            "threshold": self.threshold,
            "model": self.model,
            "model_version": self.model_version,
            "finished_at": self.finished_at.isoformat(),
            "job_id": self.job_id,
        }


class StateIndex:
    """The sqlite index. Thread-safe (one connection behind a lock).

    Args:
        path: the database file (created if missing).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate_processed_key()
        self._db.executescript(_SCHEMA)

    def _migrate_processed_key(self) -> None:
        """Key ``processed`` by study too (index files written before issue 21).

        A SOP Instance UID that two studies share (a modality reusing UIDs) made the second
        study's image "already processed"; claims are now per (study, instance, checkpoint,
        version). The old rows are copied over in one transaction.
        """
        columns = self._db.execute("PRAGMA table_info(processed)").fetchall()
        keyed = {row[1]: row[5] for row in columns}  # name -> position in the primary key
        if not columns or keyed.get("study_instance_uid"):
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("ALTER TABLE processed RENAME TO processed_before_study_key")
            self._db.execute("DROP INDEX IF EXISTS processed_job")
            self._db.execute(_SCHEMA.split(";", 1)[0])
            self._db.execute(
                "INSERT OR REPLACE INTO processed SELECT sop_instance_uid, checkpoint, "
                "model_version, study_instance_uid, job_id, state, updated_at "
                "FROM processed_before_study_key"
            )
            self._db.execute("DROP TABLE processed_before_study_key")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def claimed(
        self,
        sop_instance_uids: Sequence[str],
        checkpoint: str,
        version: str,
        *,
        study_instance_uid: str | None = None,
    ) -> set[str]:
        """Which of these instances are already queued or done with this checkpoint/version.

        Args:
            sop_instance_uids: candidate instances.
            checkpoint: checkpoint name.
            version: its version.
            study_instance_uid: their study; an instance of another study with the same
                SOP Instance UID does not count (None: any study).

        Returns:
            The subset that must not be processed again.
        """
        found: set[str] = set()
        study_clause = "" if study_instance_uid is None else " AND study_instance_uid = ?"
        study_args = () if study_instance_uid is None else (study_instance_uid,)
        with self._lock:
            for start in range(0, len(sop_instance_uids), _CHUNK):
                chunk = list(sop_instance_uids[start : start + _CHUNK])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    "SELECT sop_instance_uid FROM processed WHERE checkpoint = ? "  # noqa: S608
                    f"AND model_version = ? AND state != ?{study_clause} "
                    f"AND sop_instance_uid IN ({marks})",
                    (checkpoint, version, STATE_FAILED, *study_args, *chunk),
                ).fetchall()
                found.update(r[0] for r in rows)
        return found

    def claim(
        self,
        job_id: str,
        study_instance_uid: str,
        items: Iterable[tuple[str, str, str]],
    ) -> None:
        """Record that ``job_id`` will process these (sop, checkpoint, version) triples.

        Rows of failed jobs are taken over; the caller has checked `claimed` first, and the
        check is repeated inside the transaction (another process may have claimed since).

        Args:
            job_id: the job.
            study_instance_uid: their study.
            items: (SOPInstanceUID, checkpoint, version) triples.

        Raises:
            ClaimConflictError: some triple is queued or done by another job; nothing is
                claimed.
        """
        now = utcnow().isoformat()
        rows = [
            (sop, ckpt, ver, study_instance_uid, job_id, STATE_QUEUED, now)
            for sop, ckpt, ver in items
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._check_unclaimed(job_id, rows)
                self._db.executemany(
                    "INSERT OR REPLACE INTO processed VALUES (?, ?, ?, ?, ?, ?, ?)", rows
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _check_unclaimed(self, job_id: str, rows: Sequence[tuple[str, ...]]) -> None:
        """Raise `ClaimConflictError` if another job holds one of the triples (lock held)."""
        for sop, ckpt, ver, study, *_ in rows:
            taken = self._db.execute(
                "SELECT 1 FROM processed WHERE sop_instance_uid = ? AND checkpoint = ? "
                "AND model_version = ? AND study_instance_uid = ? AND state != ? "
                "AND job_id != ?",
                (sop, ckpt, ver, study, STATE_FAILED, job_id),
            ).fetchone()
            if taken is not None:
                raise ClaimConflictError(
                    f"instance {sop} is already claimed for {ckpt} {ver} by another job"
                )

    def release(self, job_id: str) -> None:
        """Forget the claims of a job that was never queued (router rollback).

        Args:
            job_id: the job.
        """
        with self._lock:
            self._db.execute(
                "DELETE FROM processed WHERE job_id = ? AND state = ?", (job_id, STATE_QUEUED)
            )

    def record_not_routed(
        self, study_instance_uid: str, sop_instance_uids: Sequence[str], rule: str | None
    ) -> None:
        """Record instances that no rule routed (dropped from the spool, never processed).

        Args:
            study_instance_uid: their study.
            sop_instance_uids: the instances.
            rule: the rule that decided (e.g. ``fallback``), None for the built-in default.
        """
        now = utcnow().isoformat()
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO not_routed VALUES (?, ?, ?, ?)",
                [(sop, study_instance_uid, rule, now) for sop in sop_instance_uids],
            )

    def not_routed(self, study_instance_uid: str) -> dict[str, str | None]:
        """Instances of a study recorded as not routed.

        Args:
            study_instance_uid: the study.

        Returns:
            SOPInstanceUID -> rule that decided.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT sop_instance_uid, rule FROM not_routed WHERE study_instance_uid = ?",
                (study_instance_uid,),
            ).fetchall()
        return {r[0]: r[1] for r in rows}

    def purge(self, before: datetime) -> int:
        """Forget rows of finished jobs (done or failed) and not-routed records older than this.

        Rows of queued jobs are kept whatever their age.

        Args:
            before: rows last updated before this time go.

        Returns:
            Number of rows removed.
        """
        limit = before.isoformat()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                a = self._db.execute(
                    "DELETE FROM processed WHERE state IN (?, ?) AND updated_at < ?",
                    (STATE_DONE, STATE_FAILED, limit),
                ).rowcount
                b = self._db.execute(
                    "DELETE FROM not_routed WHERE recorded_at < ?", (limit,)
                ).rowcount
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return int(a) + int(b)

    def set_state(self, job_id: str, state: JobStateValues) -> None:
        """Mark all rows of a job (``done`` or ``failed``).

        Args:
            job_id: the job.
            state: the new state.
        """
        with self._lock:
            self._db.execute(
                "UPDATE processed SET state = ?, updated_at = ? WHERE job_id = ?",
                (state, utcnow().isoformat(), job_id),
            )

    def job_ids(self, state: JobStateValues) -> set[str]:
        """Ids of the jobs that have rows in this state.

        Args:
            state: ``queued``, ``done`` or ``failed``.

        Returns:
            The job ids.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT job_id FROM processed WHERE state = ?", (state,)
            ).fetchall()
        return {str(r[0]) for r in rows}

    def record_done(self, job: Job) -> None:
        """Mark a delivered job's instances done and merge its scores into ``study_scores``.

        Idempotent: recording the same job twice gives the same rows.

        Args:
            job: the job, with ``results`` and ``finished_at`` set.
        """
        finished = (job.finished_at or utcnow()).isoformat()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE processed SET state = ?, updated_at = ? WHERE job_id = ?",
                    (STATE_DONE, finished, job.job_id),
                )
                for r in job.results:
                    self._merge_score(
                        r.study_instance_uid,
                        r.model,
                        r.model_version,
                        r.score,
                        r.is_abnormal,
                        r.threshold,
                        finished,
                        job.job_id,
                    )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _merge_score(
        self,
        study: str,
        model: str,
        version: str,
        score: float | None,
        is_abnormal: bool | None,
        threshold: float | None,
        finished: str,
        job_id: str,
    ) -> None:
        row = self._db.execute(
            "SELECT model_version, score, is_abnormal, job_id FROM study_scores "
            "WHERE study_instance_uid = ? AND model = ?",
            (study, model),
        ).fetchone()
        if row is not None and row[0] == version and row[3] != job_id:
            old_score, old_abn = row[1], row[2]
            if old_score is not None:
                score = old_score if score is None else max(score, old_score)
            if old_abn is not None:
                is_abnormal = bool(old_abn) or bool(is_abnormal)
        self._db.execute(
            "INSERT OR REPLACE INTO study_scores VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                study,
                model,
                version,
                score,
                None if is_abnormal is None else int(is_abnormal),
                threshold,
                finished,
                job_id,
            ),
        )

    def scores(
        self, study_instance_uids: Sequence[str] | None = None, model: str | None = None
    ) -> list[StudyScore]:
        """Study scores, newest first.

        Args:
            study_instance_uids: only these studies (None: all).
            model: only this checkpoint (None: all).

        Returns:
            The rows.
        """
        sql = "SELECT * FROM study_scores WHERE 1=1"
        params: list[Any] = []
        if model is not None:
            sql += " AND model = ?"
            params.append(model)
        rows: list[tuple[Any, ...]] = []
        with self._lock:
            if study_instance_uids is None:
                rows = self._db.execute(sql, params).fetchall()
            else:
                uids = list(study_instance_uids)
                for start in range(0, len(uids), _CHUNK):
                    chunk = uids[start : start + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    rows += self._db.execute(
                        f"{sql} AND study_instance_uid IN ({marks})",
                        [*params, *chunk],
                    ).fetchall()
        result = [
            StudyScore(
                study_instance_uid=r[0],
                model=r[1],
                model_version=r[2],
                score=r[3],
                is_abnormal=None if r[4] is None else bool(r[4]),
                threshold=r[5],
                finished_at=datetime.fromisoformat(r[6]),
                job_id=r[7],
            )
            for r in rows
        ]
        result.sort(key=lambda s: s.finished_at, reverse=True)
        return result
