"""Retention: delete finished job folders, quarantined files and index rows when they are old.

What is deleted, and when (settings in `dicom_node.config.NodeSettings`):

* ``jobs/done/<job>``: ``retention_days_done`` after its results were delivered;
* ``jobs/failed/<job>`` and ``quarantine/*``: ``retention_days_failed`` after they failed
  (0, the default, keeps dead letters until an operator removes them);
* index rows (``processed`` of finished jobs, ``not_routed``): ``retention_days_index``
  after they were last updated (0, the default, keeps them: they are what makes a study
  sent again weeks later produce no second result set).

Never touched: the spool, ``jobs/staging``, ``ready``, ``running`` and ``outbox`` (nothing
not yet delivered), index rows of queued jobs, and the study scores the viewer shows.

A folder is first renamed into ``jobs/trash/`` (atomic), then removed; a crash in between
leaves it in the trash, which the next run empties. So a job is either fully in ``done/`` /
``failed/`` or gone, never half-deleted in a state folder.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from dicom_node.config import NodeSettings
from dicom_node.errors import JobError
from dicom_node.fsutil import ensure_dir, move_durable
from dicom_node.index import StateIndex
from dicom_node.metrics import Metrics
from dicom_node.queue import Job, JobQueue, JobStateValues, utcnow

logger = logging.getLogger(__name__)

TRASH_FOLDER = "trash"


@dataclass(frozen=True)
class CleanupReport:
    """What one clean-up run removed.

    Attributes:
        done_jobs: job folders removed from ``done/``.
        failed_jobs: job folders removed from ``failed/``.
        quarantined_files: files removed from ``quarantine/``.
        index_rows: index rows forgotten.
    """

    done_jobs: int = 0
    failed_jobs: int = 0
    quarantined_files: int = 0
    index_rows: int = 0

    @property
    def total(self) -> int:
        """Everything removed."""
        return self.done_jobs + self.failed_jobs + self.quarantined_files + self.index_rows


class Cleaner:
    """Applies the retention settings (run periodically by `dicom_node.service.NodeService`).

    Args:
        settings: the retention settings.
        queue: the job queue.
        index: the state index.
        metrics: counters (``cleanup_removed_total``).
        quarantine_dir: the router's quarantine folder.
    """

    def __init__(
        self,
        settings: NodeSettings,
        queue: JobQueue,
        index: StateIndex,
        metrics: Metrics | None = None,
        quarantine_dir: Path | None = None,
    ) -> None:
        self._settings = settings
        self._queue = queue
        self._index = index
        self._metrics = metrics
        self._quarantine = quarantine_dir or settings.data_dir / "quarantine"
        self.trash_dir = queue.root / TRASH_FOLDER

    def run_once(self, now: datetime | None = None) -> CleanupReport:
        """Delete what is past its retention.

        Args:
            now: the current time (tests).

        Returns:
            What was removed.
        """
        now = now or utcnow()
        s = self._settings
        self._empty_trash()
        done = failed = quarantined = rows = 0
        if s.retention_days_done > 0:
            done = self._expire(JobStateValues.DONE, now - timedelta(days=s.retention_days_done))
        if s.retention_days_failed > 0:
            limit = now - timedelta(days=s.retention_days_failed)
            failed = self._expire(JobStateValues.FAILED, limit)
            quarantined = self._expire_quarantine(limit)
        if s.retention_days_index > 0:
            rows = self._index.purge(now - timedelta(days=s.retention_days_index))
        report = CleanupReport(done, failed, quarantined, rows)
        if report.total:
            if self._metrics is not None:
                self._metrics.inc("cleanup_removed_total", report.total)
            logger.info(
                "retention clean-up",
                extra={
                    "done_jobs": done,
                    "failed_jobs": failed,
                    "quarantined_files": quarantined,
                    "index_rows": rows,
                },
            )
        return report

    def step(self) -> bool:
        """`run_once` for the service's loop (always False: the loop waits its interval).

        Returns:
            False.
        """
        self.run_once()
        return False

    def _expire(self, state: JobStateValues, before: datetime) -> int:
        folder = self._queue.state_dir(state)
        removed = 0
        for path in sorted(p for p in folder.iterdir() if p.is_dir()):
            if _finished_at(path, state) < before:
                self._delete(path)
                removed += 1
        return removed

    def _expire_quarantine(self, before: datetime) -> int:
        if not self._quarantine.is_dir():
            return 0
        removed = 0
        limit = before.timestamp()
        for path in sorted(self._quarantine.iterdir()):
            try:
                old = path.stat().st_mtime < limit
            except FileNotFoundError:
                continue
            if old:
                self._delete(path)
                removed += 1
        return removed

    def _delete(self, path: Path) -> None:
        ensure_dir(self.trash_dir)
        target = self.trash_dir / f"{path.parent.name}-{path.name}"
        move_durable(path, target)
        _remove(target)

    def _empty_trash(self) -> None:
        if self.trash_dir.is_dir():
            for path in self.trash_dir.iterdir():
                _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _finished_at(folder: Path, state: JobStateValues) -> datetime:
    """When a finished job was delivered (done) or dead-lettered (failed).

    Falls back to the folder's modification time when ``job.json`` is unreadable.
    """
    try:
        job: Job | None = JobQueue.read_job(folder)
    except JobError:
        job = None
    if job is not None:
        when = job.finished_at if state is JobStateValues.DONE else None
        return when or job.updated_at
    return datetime.fromtimestamp(folder.stat().st_mtime, tz=utcnow().tzinfo)
