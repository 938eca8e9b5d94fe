"""Delivery of results to the PACS: STOW-RS (default) or C-STORE, with retries.

`Outbox` takes the jobs in ``jobs/outbox/``, hands every file of their ``output/`` to a
`ResultSender` and moves them to ``done/`` only after the destination accepted all of them.
A `SendError` with ``retryable=True`` (PACS down, HTTP 5xx/429/408, connection refused,
association rejected or aborted) leaves the job in the outbox with ``next_retry_at`` set
(exponential backoff up to ``send_backoff_max_seconds``, at most ``send_max_attempts``);
anything else, or the last attempt, dead-letters it with ``error.json``.

Results appear exactly once: the output files keep their SOP Instance UIDs across retries
and restarts, and storing the same SOP instance again replaces it in Orthanc (STOW-RS and
C-STORE alike), so a delivery interrupted half-way is simply repeated.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import requests
from dicomweb_client import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.dsutils import split_dataset

from dicom_node.config import NodeSettings
from dicom_node.errors import SendError
from dicom_node.index import StateIndex
from dicom_node.jobs import JobLifecycle
from dicom_node.logutil import log_failure
from dicom_node.metrics import Metrics
from dicom_node.queue import OUTPUT_DIR, Job, JobQueue, JobStageValues
from dicom_node.tls import client_context

logger = logging.getLogger(__name__)

#: HTTP statuses after which the same request may succeed later.
RETRYABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
#: STOW-RS / C-STORE failure reasons that are about the receiver, not the content.
RETRYABLE_FAILURE_REASONS = frozenset({0x0110, 0x0111, *range(0xA700, 0xA800)})


class StoreClient(Protocol):
    """The part of the `dicomweb_client.DICOMClient` protocol the sender uses."""

    def store_instances(
        self, datasets: Sequence[Dataset], study_instance_uid: str | None = None
    ) -> Dataset:
        """STOW-RS ``datasets``; returns the response dataset."""
        ...


class ResultSender(Protocol):
    """Delivers result files to one destination."""

    def send(self, files: Sequence[Path]) -> None:
        """Deliver all files, or raise.

        Args:
            files: DICOM Part 10 files.

        Raises:
            SendError: not all files were accepted.
        """
        ...


class DicomWebSender:
    """STOW-RS with `dicomweb_client.DICOMwebClient` (its own retrying switched off).

    Args:
        url: DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
        username: basic-auth user (with ``password``).
        password: basic-auth password.
        token: bearer token (instead of basic auth).
        timeout: seconds per HTTP request.
        batch_size: instances per request.
        client: a `StoreClient` (any `dicomweb_client.DICOMClient`) to use instead of an
            HTTP client for ``url``, e.g. a ``DICOMfileClient`` standing in for the PACS
            in unit tests.
    """

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float = 60.0,
        batch_size: int = 20,
        client: StoreClient | None = None,
    ) -> None:
        self.url = url
        self._batch_size = batch_size
        self._timeout = timeout
        self._session = requests.Session()
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"
        elif username is not None and password is not None:
            self._session.auth = (username, password)
        if client is not None:
            self._client: StoreClient = client
        else:
            web = DICOMwebClient(url=url, session=self._session, timeout=timeout)
            web.set_http_retry_params(retry=False)  # our Outbox owns the retry policy
            self._client = web

    def send(self, files: Sequence[Path]) -> None:
        """STOW-RS the files in batches.

        Args:
            files: DICOM Part 10 files.

        Raises:
            SendError: a request failed or the PACS refused instances.
        """
        for start in range(0, len(files), self._batch_size):
            batch = files[start : start + self._batch_size]
            datasets = [_read(path) for path in batch]
            try:
                response = self._client.store_instances(datasets)
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                raise SendError(
                    f"STOW-RS to {self.url} answered HTTP {status}",
                    retryable=status in RETRYABLE_HTTP,
                ) from exc
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise SendError(
                    f"STOW-RS to {self.url} failed: {type(exc).__name__}", retryable=True
                ) from exc
            _check_stow_response(response, len(batch))


def _read(path: Path) -> Dataset:
    try:
        return dcmread(path)
    except (InvalidDicomError, OSError) as exc:
        raise SendError(f"result file {path.name} is not readable DICOM", retryable=False) from exc


def _check_stow_response(response: Dataset | None, sent: int) -> None:
    failed = list(getattr(response, "FailedSOPSequence", None) or [])
    if not failed:
        return
    reasons = [int(getattr(item, "FailureReason", 0) or 0) for item in failed]
    uids = [str(getattr(item, "ReferencedSOPInstanceUID", "")) for item in failed]
    raise SendError(
        f"PACS refused {len(failed)} of {sent} instances "
        f"(failure reasons {sorted({f'0x{r:04X}' for r in reasons})}; SOP instances {uids})",
        retryable=all(r in RETRYABLE_FAILURE_REASONS for r in reasons),
    )


class CStoreSender:
    """C-STORE SCU to a DICOM destination (fallback or alternative to STOW-RS).

    Args:
        host: destination host.
        port: destination port.
        called_ae: destination AE title.
        calling_ae: our AE title.
        timeout: ACSE/DIMSE/network timeout in seconds.
        ssl_context: TLS client context (`dicom_node.tls.client_context`); None: plain TCP.
        server_name: host name expected in the destination's certificate (default: ``host``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        called_ae: str,
        calling_ae: str,
        timeout: float = 30.0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.host, self.port, self.called_ae = host, port, called_ae
        self._calling_ae = calling_ae
        self._timeout = timeout
        self._tls_args = (ssl_context, server_name or host) if ssl_context is not None else None

    def send(self, files: Sequence[Path]) -> None:
        """C-STORE the files in one association (several if more than 128 contexts).

        Args:
            files: DICOM Part 10 files.

        Raises:
            SendError: the association failed or an instance got a failure status.
        """
        by_context: dict[tuple[str, str], list[Path]] = {}
        for path in files:
            try:
                meta, _ = split_dataset(path)
                key = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
            except (OSError, AttributeError, ValueError) as exc:
                raise SendError(
                    f"result file {path.name} has no usable file meta", retryable=False
                ) from exc
            by_context.setdefault(key, []).append(path)
        keys = list(by_context)
        for start in range(0, len(keys), 128):
            chunk = keys[start : start + 128]
            self._send_chunk(chunk, [p for k in chunk for p in by_context[k]])

    def _send_chunk(self, contexts: list[tuple[str, str]], files: list[Path]) -> None:
        ae = AE(ae_title=self._calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self._timeout
        for sop_class, syntax in contexts:
            ae.add_requested_context(sop_class, syntax)
        assoc = ae.associate(self.host, self.port, ae_title=self.called_ae, tls_args=self._tls_args)
        if not assoc.is_established:
            raise SendError(
                f"association with {self.called_ae}@{self.host}:{self.port} "
                f"{'rejected' if assoc.is_rejected else 'failed'}",
                retryable=not assoc.is_rejected or _transient_reject(assoc),
            )
        try:
            for path in files:
                status = assoc.send_c_store(path)
                code = int(getattr(status, "Status", -1)) if status else -1
                if code == -1:
                    raise SendError("C-STORE got no response (connection lost)", retryable=True)
                if code != 0x0000 and not 0xB000 <= code <= 0xBFFF:
                    raise SendError(
                        f"C-STORE of {path.name} failed with status 0x{code:04X}",
                        retryable=code in RETRYABLE_FAILURE_REASONS,
                    )
        finally:
            if assoc.is_established:
                assoc.release()


def _is_part10(path: Path) -> bool:
    """Whether a file is in the DICOM file format (``DICM`` after the 128-byte preamble)."""
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _transient_reject(assoc: Any) -> bool:
    primitive = getattr(assoc.acceptor, "primitive", None)
    return getattr(primitive, "result", None) == 0x02


@dataclass(frozen=True)
class Destination:
    """Where results go: the node's configured destination or one of the routing rules'.

    Attributes:
        name: its name (``default`` for the node's configured one).
        type: ``dicomweb`` (STOW-RS) or ``cstore``.
        url: DICOMweb root (dicomweb).
        username: basic-auth user (dicomweb, with a password).
        password: basic-auth password.
        token: bearer token.
        host: C-STORE host.
        port: C-STORE port.
        ae_title: C-STORE called AE title.
        timeout_seconds: request / DIMSE timeout (None: the node's setting).
        tls: C-STORE over TLS (the destination's certificate is always verified).
        tls_ca_file: CA bundle that signed it (None: the system's trust store).
        tls_cert_file: our client certificate, for destinations that require one.
        tls_key_file: its private key.
        tls_server_name: name expected in its certificate (None: ``host``).
    """

    name: str
    type: Literal["dicomweb", "cstore"]
    url: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    host: str = ""
    port: int = 104
    ae_title: str = ""
    timeout_seconds: float | None = None
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_server_name: str | None = None


def default_destination(settings: NodeSettings) -> Destination:
    """The node's configured destination (``destination``, ``orthanc_*``, ``cstore_*``)."""
    if settings.destination == "cstore":
        return Destination(
            name="default",
            type="cstore",
            host=settings.cstore_host,
            port=settings.cstore_port,
            ae_title=settings.cstore_ae_title,
            tls=settings.cstore_tls,
            tls_ca_file=settings.cstore_tls_ca_file,
            tls_cert_file=settings.cstore_tls_cert_file,
            tls_key_file=settings.cstore_tls_key_file,
            tls_server_name=settings.cstore_tls_server_name,
        )
    return Destination(
        name="default",
        type="dicomweb",
        url=settings.orthanc_url,
        username=settings.orthanc_username,
        password=(
            settings.orthanc_password.get_secret_value() if settings.orthanc_password else None
        ),
        token=settings.orthanc_token.get_secret_value() if settings.orthanc_token else None,
    )


def make_sender(destination: Destination, settings: NodeSettings) -> ResultSender:
    """The one place a destination becomes a sender (the node's own and the rules').

    Args:
        destination: where to send.
        settings: node settings (our AE title, default timeouts, STOW batch size).

    Returns:
        A `DicomWebSender` or a `CStoreSender`.

    Raises:
        ConfigError: a TLS file of a C-STORE destination cannot be loaded.
    """
    if destination.type == "cstore":
        context = None
        if destination.tls:
            context = client_context(
                destination.tls_ca_file, destination.tls_cert_file, destination.tls_key_file
            )
        return CStoreSender(
            destination.host,
            destination.port,
            destination.ae_title,
            settings.ae_title,
            timeout=destination.timeout_seconds or settings.dimse_timeout_seconds,
            ssl_context=context,
            server_name=destination.tls_server_name,
        )
    return DicomWebSender(
        destination.url,
        username=destination.username,
        password=destination.password,
        token=destination.token,
        timeout=destination.timeout_seconds or settings.http_timeout_seconds,
        batch_size=settings.stow_batch_size,
    )


def build_sender(settings: NodeSettings) -> ResultSender:
    """The sender of the node's configured destination (`make_sender`).

    Raises:
        ConfigError: a TLS file of the C-STORE destination cannot be loaded.
    """
    return make_sender(default_destination(settings), settings)


class Outbox:
    """Delivers the jobs in ``jobs/outbox/`` and moves them to ``done/`` or ``failed/``.

    Args:
        settings: node settings (retry policy).
        queue: the job queue.
        index: the index (instances marked done, study scores recorded).
        metrics: counters.
        sender: the node's configured destination (``default``).
        on_result: called with each job that is done (exceptions are logged, not raised).
        senders: further named destinations (routing rules); a job whose
            ``destinations`` names them is delivered to each, and a retry skips those in
            its ``delivered_to``.
        on_feedback: called with each ``feedback`` job (a reader's review SR) that is
            done; such jobs record no scores and do not count as ``jobs_sent_total``.
    """

    def __init__(
        self,
        settings: NodeSettings,
        queue: JobQueue,
        index: StateIndex,
        metrics: Metrics,
        sender: ResultSender,
        on_result: Callable[[Job], None] | None = None,
        senders: Mapping[str, ResultSender] | None = None,
        on_feedback: Callable[[Job], None] | None = None,
    ) -> None:
        self._settings = settings
        self._on_feedback = on_feedback
        self._queue = queue
        self._metrics = metrics
        self._jobs = JobLifecycle(queue, index, metrics)
        self._sender = sender
        self._on_result = on_result
        self._senders = dict(senders or {})

    def run_once(self) -> bool:
        """Try to deliver every due job once.

        Returns:
            True if at least one delivery was attempted.
        """
        jobs = self._queue.due_outbox()
        for job in jobs:
            self.deliver(job)
        return bool(jobs)

    def deliver(self, job: Job) -> None:
        """Deliver one job's results.

        Args:
            job: a job in ``outbox/``.
        """
        ctx: dict[str, Any] = {"job_id": job.job_id, "study_uid": job.study_instance_uid}
        job.attempts[JobStageValues.SEND] = job.attempts.get(JobStageValues.SEND, 0) + 1
        self._queue.save(job)
        files = []
        for path in self._queue.output_files(job):
            if _is_part10(path):
                files.append(path)
            else:
                logger.warning(
                    "non-DICOM file in job output not sent", extra={**ctx, "file": path.name}
                )
        sending_started = time.monotonic()
        try:
            for name in job.destinations or ["default"]:
                if name in job.delivered_to:
                    continue
                self._destination(name).send(files)
                if job.destinations:
                    job.delivered_to.append(name)
                    self._queue.save(job)
        except SendError as exc:
            self._metrics.observe("send_seconds", time.monotonic() - sending_started)
            self._failed(job, exc, exc.retryable)
            return
        except Exception as exc:  # noqa: BLE001 - unexpected: retried within the bounds
            self._metrics.observe("send_seconds", time.monotonic() - sending_started)
            self._failed(job, exc, True)
            return
        self._metrics.observe("send_seconds", time.monotonic() - sending_started)
        out = self._queue.job_dir(job) / OUTPUT_DIR
        self._jobs.delivered(job, [str(p.relative_to(out)) for p in files])
        feedback = job.kind == "feedback"
        logger.info(
            "review delivered" if feedback else "results delivered",
            extra={**ctx, "files": len(files)},
        )
        name, callback = ("on_feedback", self._on_feedback) if feedback else (
            "on_result", self._on_result
        )  # fmt: skip
        if callback is not None:
            try:
                callback(job)
            except Exception as exc:  # noqa: BLE001 - a callback must not stop delivery
                log_failure(logger, f"{name} callback failed", exc, **ctx)

    def _destination(self, name: str) -> ResultSender:
        if name == "default":
            return self._sender
        sender = self._senders.get(name)
        if sender is None:
            raise SendError(f"no destination named {name!r} is configured", retryable=False)
        return sender

    def _failed(self, job: Job, exc: BaseException, retryable: bool) -> None:
        ctx: dict[str, Any] = {"job_id": job.job_id, "study_uid": job.study_instance_uid}
        retry = self._jobs.failed(
            job,
            JobStageValues.SEND,
            exc,
            retryable=retryable,
            max_attempts=self._settings.send_max_attempts,
            backoff_seconds=self._settings.send_backoff_seconds,
            backoff_max_seconds=self._settings.send_backoff_max_seconds,
        )
        if retry:
            logger.warning(
                f"delivery failed, will retry: {exc}",
                extra={**ctx, "next_retry_at": str(job.next_retry_at)},
            )
        else:
            logger.error(f"delivery failed, job moved to failed: {exc}", extra=ctx)
