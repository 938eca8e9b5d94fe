"""Pull mode: process studies that are already in the PACS (retrospective runs, new versions).

``python -m dicom_node pull --modality CR --since 1d`` (or `pull_studies` from Python):

1. QIDO-RS finds the studies (``ModalitiesInStudy``, ``StudyDate`` from ``--since`` on),
   then their series (of that modality; the node's own SEG/SR/PM series are skipped);
2. WADO-RS retrieves each series, in its stored transfer syntax where the server allows,
   and each instance is written durably (temporary file, fsync, rename) into
   ``data_dir/pull/<study>/``;
3. each retrieved study is routed at once by the same `dicom_node.router.Router` the node
   uses: the index claims (SOP instance, checkpoint, version), so an instance already
   processed with this checkpoint *version* is dropped, and the rest become jobs in
   ``jobs/ready/``. The running node (``serve``) processes and delivers them like any
   other job; if it is not running, they wait there.

The pull spool is owned by pull runs, one at a time (the node's router never reads it): a
run stopped between retrieval and routing (a crash, ``kill``) leaves its instances there,
and the next pull run routes them first, before it queries the PACS
(`PullReport.recovered_job_ids`). Retention never deletes from it, as from the node's spool.

Because the exactly-once key includes the checkpoint version, pulling the same studies
again does nothing, and pulling them after a new version of a checkpoint is installed
processes them again with it. ``--model`` overrides the checkpoints; without it the rules
file (``DICOM_NODE_RULES_FILE``) or ``DICOM_NODE_CHECKPOINTS`` decide, as for received
studies. ``--dry-run`` only queries and reports.

``StudyDate`` has day granularity: ``--since 12h`` means "studies dated from the day 12
hours ago on". Studies without a StudyDate are not found by a date query (omit
``--since``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from io import BytesIO
from typing import Any, Protocol

from pydicom.dataset import Dataset

from dicom_node.config import NodeSettings
from dicom_node.errors import ConfigError, DicomNodeError
from dicom_node.index import StateIndex
from dicom_node.metrics import Metrics
from dicom_node.queue import JobQueue, utcnow
from dicom_node.router import DefaultRules, Router, RoutingRules, checkpoint_version
from dicom_node.rules_file import build_rules
from dicom_node.spool import Spool, safe_name

logger = logging.getLogger(__name__)

PULL_FOLDER = "pull"
#: Series of these modalities are never pulled (results and presentation objects).
SKIPPED_MODALITIES = frozenset({"SEG", "SR", "PR", "KO", "RTSTRUCT", "REG"})
_PAGE = 100
_SINCE_RE = re.compile(r"(\d+)\s*([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class PullError(DicomNodeError):
    """The PACS could not be queried or a study could not be retrieved."""


class DicomWebSource(Protocol):
    """The part of `dicomweb_client.DICOMClient` pull mode uses (QIDO-RS and WADO-RS)."""

    def search_for_studies(
        self,
        fuzzymatching: bool | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fields: Sequence[str] | None = None,
        search_filters: dict[str, Any] | None = None,
        get_remaining: bool = False,
    ) -> list[dict[str, dict]]:  # type: ignore[type-arg]
        """QIDO-RS for studies."""
        ...

    def search_for_series(
        self,
        study_instance_uid: str | None = None,
        fuzzymatching: bool | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fields: Sequence[str] | None = None,
        search_filters: dict[str, Any] | None = None,
        get_remaining: bool = False,
    ) -> list[dict[str, dict]]:  # type: ignore[type-arg]
        """QIDO-RS for the series of a study."""
        ...

    def iter_series(
        self,
        study_instance_uid: str,
        series_instance_uid: str,
        media_types: tuple[str | tuple[str, str], ...] | None = None,
    ) -> Iterable[Dataset]:
        """WADO-RS of a series, instance by instance."""
        ...


@dataclass(frozen=True)
class PulledStudy:
    """One study found (and, unless a dry run, retrieved and queued).

    Attributes:
        study_instance_uid: the study.
        series: series selected for retrieval.
        instances: instances retrieved (dry run: as reported by QIDO, if it says).
        job_ids: jobs queued for it (none when everything was processed before).
    """

    study_instance_uid: str
    series: int
    instances: int
    job_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class PullReport:
    """Outcome of `pull_studies`.

    Attributes:
        studies: one entry per study found.
        dry_run: nothing was retrieved or queued.
        recovered_job_ids: jobs queued for instances an interrupted earlier run had
            retrieved but not routed.
    """

    studies: list[PulledStudy] = field(default_factory=list)
    dry_run: bool = False
    recovered_job_ids: tuple[str, ...] = ()

    @property
    def job_ids(self) -> list[str]:
        """All jobs queued (those of an earlier, interrupted run's instances first)."""
        return [*self.recovered_job_ids, *(j for s in self.studies for j in s.job_ids)]

    @property
    def instances(self) -> int:
        """Instances retrieved (or reported, for a dry run)."""
        return sum(s.instances for s in self.studies)


def parse_since(text: str, now: datetime | None = None) -> date:
    """The first StudyDate of a ``--since`` value.

    Args:
        text: a duration back from now (``30m``, ``12h``, ``1d``, ``2w``) or a date
            (``20240131`` or ``2024-01-31``).
        now: the current time (tests).

    Returns:
        The date.

    Raises:
        ConfigError: the value is neither.
    """
    value = text.strip().lower()
    match = _SINCE_RE.fullmatch(value)
    if match:
        delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        return ((now or utcnow()) - delta).date()
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return datetime.strptime(value, fmt).date()
        except ValueError:
            continue
    raise ConfigError(f"--since {text!r}: use e.g. 30m, 12h, 1d, 2w or a date YYYYMMDD")


def _value(record: Mapping[str, Any], tag: str) -> str:
    values = record.get(tag, {}).get("Value") or [""]
    return str(values[0] or "")


def _part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def find_studies(
    client: DicomWebSource, *, modality: str | None, since: date | None, limit: int | None
) -> list[str]:
    """QIDO-RS: the StudyInstanceUIDs matching the filters (paged).

    Args:
        client: the DICOMweb client.
        modality: ``ModalitiesInStudy`` filter (None: any).
        since: first StudyDate (None: any date).
        limit: at most this many studies (None: all).

    Returns:
        The UIDs, in the server's order.

    Raises:
        PullError: the query failed.
    """
    filters: dict[str, Any] = {}
    if modality:
        filters["ModalitiesInStudy"] = modality
    if since is not None:
        filters["StudyDate"] = f"{since:%Y%m%d}-"
    found: list[str] = []
    offset = 0
    while limit is None or len(found) < limit:
        page = _PAGE if limit is None else min(_PAGE, limit - len(found))
        try:
            records = client.search_for_studies(
                search_filters=filters, offset=offset, limit=page, fields=["StudyDate"]
            )
        except Exception as exc:
            raise PullError(f"QIDO-RS study search failed: {type(exc).__name__}") from exc
        uids = [_value(r, "0020000D") for r in records]
        found.extend(u for u in uids if u and u not in found)
        if len(records) < page:
            break
        offset += len(records)
    return found


def pull_studies(
    settings: NodeSettings,
    client: DicomWebSource,
    *,
    modality: str | None = None,
    since: date | None = None,
    checkpoints: Sequence[str] | None = None,
    dry_run: bool = False,
    limit: int | None = None,
    version_of: Callable[[str], str] = checkpoint_version,
    rules: RoutingRules | None = None,
) -> PullReport:
    """Find studies by QIDO-RS, retrieve them by WADO-RS and queue jobs for them.

    Args:
        settings: node settings (``data_dir``; the rules file or checkpoints).
        client: DICOMweb client of the PACS (e.g. `dicomweb_client.DICOMwebClient`).
        modality: only studies with, and only series of, this modality (None: any; the
            node's own result series are skipped either way).
        since: first StudyDate (`parse_since`); None: any date.
        checkpoints: run these checkpoints on every pulled image (None: the rules file or
            ``settings.checkpoints``, as for received studies).
        dry_run: only query and report.
        limit: at most this many studies.
        version_of: checkpoint name -> version (default: from the shipped ``card.json``).
        rules: routing rules (overrides ``checkpoints`` and the settings; tests).

    Returns:
        What was found and queued.

    Raises:
        PullError: the PACS could not be queried or a series could not be retrieved; the
            studies queued before stay queued.
        ConfigError: the rules file is invalid.
    """
    if rules is None:
        rules = DefaultRules(checkpoints) if checkpoints else build_rules(settings)
    wanted = modality.strip().upper() if modality else None
    study_uids = find_studies(client, modality=wanted, since=since, limit=limit)
    report = PullReport(dry_run=dry_run)
    if dry_run:
        for uid in study_uids:
            series = _select_series(client, uid, wanted)
            count = sum(int(_value(s, "00201209") or 0) for s in series)
            report.studies.append(PulledStudy(uid, len(series), count))
        return report
    spool = Spool(settings.data_dir / PULL_FOLDER)
    queue = JobQueue(settings.jobs_dir)
    index = StateIndex(settings.state_db)
    router = Router(
        spool,
        queue,
        index,
        Metrics(),
        quiet_seconds=0.0,
        max_wait_seconds=max(settings.study_max_wait_seconds, 1.0),
        rules=rules,
        quarantine_dir=settings.data_dir / "quarantine",
        version_of=version_of,
    )
    try:
        recovered = [job.job_id for s in spool.scan() for job in router.route_study(s, "pull")]
        if recovered:
            logger.info(
                "routed instances of an interrupted pull run",
                extra={"job_id": ",".join(recovered)},
            )
        report = PullReport(recovered_job_ids=tuple(recovered))
        for uid in study_uids:
            series = _select_series(client, uid, wanted)
            retrieved = sum(_retrieve_series(client, spool, uid, s) for s in series)
            jobs = [
                job.job_id
                for study in spool.scan()
                if study.name == safe_name(uid)
                for job in router.route_study(study, "pull")
            ]
            report.studies.append(PulledStudy(uid, len(series), retrieved, tuple(jobs)))
            logger.info(
                "study pulled",
                extra={"study_uid": uid, "instances": retrieved, "job_id": ",".join(jobs)},
            )
    finally:
        index.close()
    return report


def _select_series(
    client: DicomWebSource, study_uid: str, modality: str | None
) -> list[dict[str, Any]]:
    try:
        records = client.search_for_series(
            study_uid, fields=["Modality", "NumberOfSeriesRelatedInstances"]
        )
    except Exception as exc:
        raise PullError(f"QIDO-RS series search of {study_uid} failed") from exc
    selected = []
    for record in records:
        series_modality = _value(record, "00080060").upper()
        if series_modality in SKIPPED_MODALITIES:
            continue
        if modality and series_modality != modality:
            continue
        selected.append(record)
    return selected


def _retrieve_series(
    client: DicomWebSource, spool: Spool, study_uid: str, record: Mapping[str, Any]
) -> int:
    series_uid = _value(record, "0020000E")
    count = 0
    try:
        # "*": the stored transfer syntax (no transcoding by the server)
        for ds in client.iter_series(
            study_uid, series_uid, media_types=(("application/dicom", "*"),)
        ):
            spool.store(study_uid, str(ds.SOPInstanceUID), _part10(ds))
            count += 1
    except DicomNodeError:
        raise
    except Exception as exc:
        raise PullError(
            f"WADO-RS of series {series_uid} failed after {count} instances: {type(exc).__name__}"
        ) from exc
    return count


def make_client(url: str, settings: NodeSettings) -> DicomWebSource:
    """A DICOMweb client for ``url`` with the node's PACS credentials.

    Args:
        url: the DICOMweb root (QIDO-RS and WADO-RS).
        settings: ``orthanc_username``/``orthanc_password`` or ``orthanc_token``.

    Returns:
        The client.
    """
    import requests
    from dicomweb_client import DICOMwebClient

    session = requests.Session()
    if settings.orthanc_token is not None:
        session.headers["Authorization"] = f"Bearer {settings.orthanc_token.get_secret_value()}"
    elif settings.orthanc_username is not None and settings.orthanc_password is not None:
        session.auth = (settings.orthanc_username, settings.orthanc_password.get_secret_value())
    client: DicomWebSource = DICOMwebClient(
        url=url.rstrip("/"), session=session, timeout=settings.http_timeout_seconds
    )
    return client
