"""Node settings: one pydantic-settings model, read from ``DICOM_NODE_*`` environment variables.

Every field can be set as ``DICOM_NODE_<FIELD NAME IN UPPER CASE>``, e.g.
``DICOM_NODE_AE_TITLE=AINODE``, ``DICOM_NODE_ALLOWED_CALLING_AES=ORTHANC,MODALITY1`` (comma list
or JSON list), ``DICOM_NODE_ORTHANC_PASSWORD_FILE=/run/secrets/orthanc``. The settings are
validated when built; `load_settings` turns validation failures into one `ConfigError` whose
message names every bad field, so the service fails fast at startup.

Secure defaults: the SCP binds 127.0.0.1, only the calling AE ``ORTHANC`` may associate, the
called AE title must match, and the HTTP API binds 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dicom_node.errors import ConfigError
from dicom_node.limits import DatasetLimits

ENV_PREFIX = "DICOM_NODE_"

_AE_TITLE_RE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # printable ASCII without backslash
_CHECKPOINT_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def _split_list(value: Any) -> Any:
    """Accept a JSON list or a comma-separated string for list settings from the environment."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def validate_ae_title(value: str) -> str:
    """Check an AE title (PS3.5 AE VR: 1-16 chars, no backslash, not only spaces).

    Args:
        value: the title.

    Returns:
        The title without leading/trailing spaces.

    Raises:
        ValueError: it is not a valid AE title.
    """
    title = value.strip()
    if not title or not _AE_TITLE_RE.fullmatch(title):
        raise ValueError(
            f"invalid AE title {value!r}: 1-16 printable ASCII characters, no backslash"
        )
    return title


class NodeSettings(BaseSettings):
    """Everything the node needs to run. See the module docstring for the environment names.

    Attributes:
        ae_title: our AE title (the called AE that peers must use).
        host: address the Storage SCP binds (127.0.0.1 by default; 0.0.0.0 for all).
        port: Storage SCP port; 0 binds an ephemeral port (tests).
        allowed_calling_aes: calling AE titles allowed to associate. Empty refuses everyone
            unless ``allow_any_calling_ae`` is set.
        allow_any_calling_ae: switch the calling-AE allow-list off (not recommended).
        require_called_ae: reject associations whose called AE title is not ``ae_title``.
        max_associations: concurrent associations accepted.
        max_associations_per_peer: open connections allowed from one peer address.
        association_request_timeout_seconds: a new connection that sends no
            A-ASSOCIATE-RQ within this time is closed (`dicom_node.admission`).
        reserved_associations: association slots that connections which have not sent a
            request yet can never take (kept for peers that associate at once).
        max_dataset_depth: deepest sequence nesting a received data set may have; deeper
            ones are refused (0xC211) before they are acknowledged (`dicom_node.limits`).
        max_dataset_elements: data elements (nested included) a received data set may have.
        max_inflated_mb: size a Deflated data set may inflate to.
        scp_processes: Storage SCP processes sharing the port (``SO_REUSEPORT``,
            `dicom_node.scp_pool`), so associations are received on several cores; 1 runs
            the SCP in the node's process, 0 is one per core. Association limits apply per
            process.
        max_pdu_size: the largest P-DATA-TF PDU the SCP accepts, announced to peers in
            the A-ASSOCIATE-AC (bytes; 0 = no limit). 256 KiB: a 50 KB radiograph arrives
            as one PDU instead of four, and each PDU costs Python time to read and decode
            (pynetdicom's default is 16 KiB).
        scp_event_reactor: run the SCP's associations with `dicom_node.reactor`'s loops,
            which wait for data instead of napping 1 ms per pass (default); false keeps
            pynetdicom's own polling loops.
        receive_mode: where the SCP collects a data set while it arrives: ``memory``
            (default; pynetdicom's buffer) or ``file`` (pynetdicom's chunked receive,
            ``STORE_RECV_CHUNKED_DATASET``: written as it arrives to ``spool/.incoming/``
            and mapped, not read, for the checks and the spool write, so a large instance
            never sits in Python memory). pynetdicom's switch is process-wide:
            SCPs in one process share the mode of the one started last.
        acse_timeout_seconds: association negotiation timeout.
        dimse_timeout_seconds: DIMSE message timeout.
        network_timeout_seconds: idle association timeout.
        min_free_disk_mb: new associations are refused (transient, temporary congestion)
            while ``data_dir`` has less free space than this.
        data_dir: root of ``spool/``, ``jobs/`` and ``state.sqlite3``.
        study_quiet_seconds: a study is complete when nothing arrived for this long and no
            association that sent it is still open.
        study_max_wait_seconds: a study is forced complete this long after its first
            instance arrived, even if instances keep coming.
        checkpoints: engine checkpoints; without a rules file each image goes to those whose
            model card accepts it (`dicom_node.router.DefaultRules`).
        poll_interval_seconds: how often router, worker and sender look for work.
        process_max_attempts: engine runs per job before it is dead-lettered.
        process_backoff_seconds: first wait before re-running a job; doubles each time.
        overlay_sc: which analysed images also get a colour Secondary Capture with the map
            and region burned in (series 9005), for viewers that show neither SEG nor
            Parametric Map: ``projection`` (default: images without a Frame of Reference, the
            radiographs on which no stock viewer shows a SEG), ``all`` or ``off``. Default
            engine only (`ai_engine.pipeline.run`'s ``overlay_sc``).
        engine_isolation: ``process`` (default): the engine runs in a child process of its
            own (`dicom_node.engine_process`), so it does not hold the GIL the SCP and the
            sender need, and a crash or hang of the engine fails the job (retried) instead
            of the node; ``thread``: in the node's worker thread (debugging, profiling).
        engine_processes: engine processes (each with its own worker thread and models)
            that analyse studies side by side; more than one pays on machines with more
            cores than one engine uses, or with a GPU that one process leaves idle while
            it reads and writes DICOM. Process isolation only.
        engine_threads: intra-op threads of each engine process (torch, OpenMP, MKL); 0
            (default) is one core less than the machine has, shared by the engine processes
            (at least 1), so the SCP, the sender and a PACS on the same machine keep a core.
        engine_timeout_seconds: a study the engine has not finished after this long is
            given up (the engine process is killed; the job is retried). Process
            isolation only.
        rules_file: YAML routing rules (`dicom_node.rules`); when set they decide the
            checkpoints and destinations of each instance instead of ``checkpoints``.
        retention_days_done: delivered job folders (``jobs/done/``) are deleted this many
            days after delivery; 0 keeps them.
        retention_days_failed: dead-lettered job folders (``jobs/failed/``) and
            quarantined files are deleted this many days after they failed; 0 (the
            default) keeps them until an operator removes them.
        retention_days_index: rows of the processed-instance index of finished jobs are
            forgotten after this many days; 0 (the default) keeps them. An instance whose
            row is gone is processed again if it is ever sent again.
        cleanup_interval_seconds: how often the retention clean-up runs.
        destination: where results go: ``dicomweb`` (STOW-RS) or ``cstore`` (C-STORE SCU).
        orthanc_url: DICOMweb root of the PACS, e.g. ``http://127.0.0.1:8042/dicom-web``.
        orthanc_username: HTTP basic-auth user.
        orthanc_password: HTTP basic-auth password.
        orthanc_password_file: file holding the password (read at startup, e.g. a secret
            mount); exclusive with ``orthanc_password``.
        orthanc_token: bearer token instead of basic auth.
        http_timeout_seconds: timeout of one STOW-RS request.
        stow_batch_size: instances per STOW-RS request.
        cstore_host: C-STORE destination host (``destination=cstore``).
        cstore_port: C-STORE destination port.
        cstore_ae_title: C-STORE destination (called) AE title.
        send_max_attempts: delivery attempts per job before it is dead-lettered.
        send_backoff_seconds: first wait after a failed delivery; doubles each time.
        send_backoff_max_seconds: longest wait between delivery attempts.
        http_host: address of the HTTP API; anything but loopback needs a token.
        http_port: port of the HTTP API; 0 disables it.
        api_token: bearer token required by every API route except ``/health``; the
            viewer's token: it reads, and may post a reader's judgement (the one state
            change it may make).
        api_token_file: file holding the API token; exclusive with ``api_token``.
        api_admin_token: bearer token of the admin role: the only one accepted by routes
            that change state (process-now, re-run); it may also read. With a token
            configured but no admin token, state-changing routes answer 403.
        api_admin_token_file: file holding the admin token; exclusive with
            ``api_admin_token``.
        orthanc_token_file: file holding ``orthanc_token``; exclusive with it.
        feedback_comment_max_chars: longest comment a reader's judgement may carry (413
            beyond).
        feedback_drift_alert_ks: drift alert threshold: Kolmogorov-Smirnov D between the
            scores of reader-confirmed normals and the calibration's healthy scores.
        feedback_drift_min_normals: confirmed normals a model version needs before its
            drift alert can be raised.
        api_allowed_hosts: host names a state-changing API request's ``Host`` may name
            besides the loopback names and ``http_host`` (e.g. the node's DNS name).
        tls_cert_file: PEM certificate (chain) of the SCP; with ``tls_key_file`` the SCP
            accepts DIMSE over TLS only.
        tls_key_file: PEM private key of ``tls_cert_file`` (keep it mode 0600).
        tls_ca_file: PEM CA bundle; when set, peers must present a client certificate
            signed by it (mutual TLS).
        cstore_tls: C-STORE results over TLS (``destination=cstore``).
        cstore_tls_ca_file: CA bundle that signed the destination's certificate (default:
            the system trust store).
        cstore_tls_cert_file: our client certificate for a destination that requires one.
        cstore_tls_key_file: its private key.
        cstore_tls_server_name: name expected in the destination's certificate (default:
            ``cstore_host``).
        broker_url: Celery broker (e.g. ``redis://host:6379/0``) of the scaled-out node:
            ``serve`` dispatches job ids to ``python -m dicom_node worker`` processes
            instead of running the engine itself (`dicom_node.distributed`). None (the
            default) is the embedded node: no server, the worker runs in the node.
        broker_queue: name of the Celery queue the job ids go to.
        broker_visibility_timeout_seconds: a job id a worker had taken from Redis but not
            started when it died goes back to the queue after this long (tasks are
            acknowledged when they start: a dead worker's running job is recovered by its
            lease, not by the broker).
        worker_lease_seconds: a running job whose worker did not renew its lease (on the
            shared ``data_dir``) for this long is taken over by another worker.
        dispatch_timeout_seconds: a due job still queued this long after it was dispatched
            while the broker's queue is empty (the message was lost) is dispatched again.
        worker_engine: ``module:function`` the worker (the node's engine process, or a
            scaled-out worker) runs instead of ``ai_engine.pipeline.run`` (same signature);
            for stand-in engines.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        validate_assignment=True,
    )

    # --- DICOM receive -------------------------------------------------------------------
    ae_title: str = "AINODE"
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    allowed_calling_aes: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["ORTHANC"])
    allow_any_calling_ae: bool = False
    require_called_ae: bool = True
    max_associations: int = Field(default=10, ge=1, le=1000)
    max_associations_per_peer: int = Field(default=5, ge=1, le=1000)
    association_request_timeout_seconds: float = Field(default=5.0, gt=0)
    reserved_associations: int = Field(default=2, ge=0, le=1000)
    acse_timeout_seconds: float = Field(default=30.0, gt=0)
    dimse_timeout_seconds: float = Field(default=30.0, gt=0)
    network_timeout_seconds: float = Field(default=60.0, gt=0)
    min_free_disk_mb: int = Field(default=1024, ge=0)
    max_dataset_depth: int = Field(default=32, ge=1, le=100_000)
    receive_mode: Literal["memory", "file"] = "memory"
    scp_processes: int = Field(default=1, ge=0, le=64)
    scp_event_reactor: bool = True
    max_pdu_size: int = Field(default=262_144, ge=0, le=2**32 - 1)
    max_dataset_elements: int = Field(default=1_000_000, ge=1)
    max_inflated_mb: int = Field(default=256, ge=1)

    # --- storage, study completion, jobs ---------------------------------------------------
    data_dir: Path = Path("var/dicom_node")
    study_quiet_seconds: float = Field(default=10.0, ge=0)
    study_max_wait_seconds: float = Field(default=600.0, gt=0)
    checkpoints: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["default-cxr", "default-brain"]
    )
    poll_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    process_max_attempts: int = Field(default=2, ge=1, le=100)
    process_backoff_seconds: float = Field(default=10.0, ge=0)
    overlay_sc: Literal["off", "projection", "all"] = "projection"
    engine_isolation: Literal["process", "thread"] = "process"
    engine_processes: int = Field(default=1, ge=1, le=64)
    engine_threads: int = Field(default=0, ge=0, le=512)
    engine_timeout_seconds: float = Field(default=900.0, gt=0)
    rules_file: Path | None = None
    retention_days_done: float = Field(default=14.0, ge=0)
    retention_days_failed: float = Field(default=0.0, ge=0)
    retention_days_index: float = Field(default=0.0, ge=0)
    cleanup_interval_seconds: float = Field(default=3600.0, gt=0)

    # --- results back to the PACS ----------------------------------------------------------
    destination: Literal["dicomweb", "cstore"] = "dicomweb"
    orthanc_url: str = "http://127.0.0.1:8042/dicom-web"
    orthanc_username: str | None = None
    orthanc_password: SecretStr | None = None
    orthanc_password_file: Path | None = None
    orthanc_token: SecretStr | None = None
    http_timeout_seconds: float = Field(default=60.0, gt=0)
    stow_batch_size: int = Field(default=20, ge=1, le=1000)
    cstore_host: str = "127.0.0.1"
    cstore_port: int = Field(default=4242, ge=1, le=65535)
    cstore_ae_title: str = "ORTHANC"
    send_max_attempts: int = Field(default=10, ge=1, le=1000)
    send_backoff_seconds: float = Field(default=5.0, ge=0)
    send_backoff_max_seconds: float = Field(default=600.0, ge=0)

    # --- HTTP API ------------------------------------------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8099, ge=0, le=65535)
    api_token: SecretStr | None = None
    api_token_file: Path | None = None
    api_admin_token: SecretStr | None = None
    api_admin_token_file: Path | None = None
    api_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- reader feedback (dicom_node.feedback) ---------------------------------------------
    feedback_comment_max_chars: int = Field(default=1024, ge=0, le=10_000)
    feedback_drift_alert_ks: float = Field(default=0.3, gt=0, le=1)
    feedback_drift_min_normals: int = Field(default=20, ge=1)

    # --- security: secrets from files, DIMSE over TLS ---------------------------------------
    orthanc_token_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    cstore_tls: bool = False
    cstore_tls_ca_file: Path | None = None
    cstore_tls_cert_file: Path | None = None
    cstore_tls_key_file: Path | None = None
    cstore_tls_server_name: str | None = None

    # --- scaled out: Celery broker, workers on other machines --------------------------------
    broker_url: SecretStr | None = None
    broker_queue: str = Field(default="dicom_node", pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    broker_visibility_timeout_seconds: float = Field(default=3600.0, gt=0)
    worker_lease_seconds: float = Field(default=30.0, gt=0)
    dispatch_timeout_seconds: float = Field(default=600.0, gt=0)
    worker_engine: str | None = Field(default=None, pattern=r"^[\w.]+:\w+$")

    def scp_process_count(self) -> int:
        """Storage SCP processes to run (``scp_processes``, 0 resolved to the core count)."""
        return self.scp_processes or max(1, os.cpu_count() or 1)

    def engine_thread_count(self) -> int:
        """Threads per engine process: ``engine_threads``, or the default described above."""
        if self.engine_threads:
            return self.engine_threads
        return max(1, ((os.cpu_count() or 1) - 1) // self.engine_processes)

    @field_validator("allowed_calling_aes", "checkpoints", "api_allowed_hosts", mode="before")
    @classmethod
    def _lists_from_env(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("ae_title", "cstore_ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        return validate_ae_title(value)

    @field_validator("allowed_calling_aes")
    @classmethod
    def _check_calling_aes(cls, value: list[str]) -> list[str]:
        return [validate_ae_title(v) for v in value]

    @field_validator("checkpoints")
    @classmethod
    def _check_checkpoints(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one checkpoint is needed")
        for name in value:
            if not _CHECKPOINT_RE.fullmatch(name):
                raise ValueError(
                    f"invalid checkpoint name {name!r}: lower case letters, digits, '_.-'"
                )
        if len(set(value)) != len(value):
            raise ValueError("checkpoint names repeat")
        return value

    @field_validator("orthanc_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        url = value.strip().rstrip("/")
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
            raise ValueError(f"not an http(s) URL: {value!r}")
        return url

    @model_validator(mode="after")
    def _check_combinations(self) -> NodeSettings:
        if self.study_max_wait_seconds < self.study_quiet_seconds:
            raise ValueError(
                "study_max_wait_seconds must be >= study_quiet_seconds "
                f"({self.study_max_wait_seconds} < {self.study_quiet_seconds})"
            )
        if self.send_backoff_max_seconds < self.send_backoff_seconds:
            raise ValueError("send_backoff_max_seconds must be >= send_backoff_seconds")
        if self.orthanc_password is not None and self.orthanc_password_file is not None:
            raise ValueError("set orthanc_password or orthanc_password_file, not both")
        if self.api_token is not None and self.api_token_file is not None:
            raise ValueError("set api_token or api_token_file, not both")
        if self.orthanc_token is not None and (
            self.orthanc_username is not None
            or self.orthanc_password is not None
            or self.orthanc_password_file is not None
        ):
            raise ValueError("use either orthanc_token (bearer) or username/password, not both")
        if self.orthanc_password_file is not None:
            object.__setattr__(
                self, "orthanc_password", SecretStr(_read_secret(self.orthanc_password_file))
            )
            object.__setattr__(self, "orthanc_password_file", None)
        if self.api_token_file is not None:
            object.__setattr__(self, "api_token", SecretStr(_read_secret(self.api_token_file)))
            object.__setattr__(self, "api_token_file", None)
        if self.api_token is not None and not self.api_token.get_secret_value():
            raise ValueError("api_token is empty")
        if (self.orthanc_password is not None) != (self.orthanc_username is not None):
            raise ValueError("orthanc_username and orthanc_password go together")
        return self

    @model_validator(mode="after")
    def _check_security(self) -> NodeSettings:
        if self.api_admin_token is not None and self.api_admin_token_file is not None:
            raise ValueError("set api_admin_token or api_admin_token_file, not both")
        if self.api_admin_token_file is not None:
            secret = SecretStr(_read_secret(self.api_admin_token_file))
            object.__setattr__(self, "api_admin_token", secret)
            object.__setattr__(self, "api_admin_token_file", None)
        if self.api_admin_token is not None:
            admin = self.api_admin_token.get_secret_value()
            if not admin:
                raise ValueError("api_admin_token is empty")
            if self.api_token is not None and admin == self.api_token.get_secret_value():
                raise ValueError("api_admin_token must differ from api_token")
        if self.orthanc_token_file is not None:
            if self.orthanc_token is not None:
                raise ValueError("set orthanc_token or orthanc_token_file, not both")
            if self.orthanc_username is not None or self.orthanc_password is not None:
                raise ValueError("use either orthanc_token (bearer) or username/password, not both")
            secret = SecretStr(_read_secret(self.orthanc_token_file))
            object.__setattr__(self, "orthanc_token", secret)
            object.__setattr__(self, "orthanc_token_file", None)
        loopback = self.http_host in ("127.0.0.1", "::1", "localhost")
        if (
            self.http_port
            and not loopback
            and self.api_token is None
            and self.api_admin_token is None
        ):
            raise ValueError(
                f"the HTTP API on {self.http_host} (not loopback) needs api_token or "
                "api_admin_token"
            )
        if self.broker_url is not None and not re.fullmatch(
            r"[a-z][a-z0-9+]*://\S*", self.broker_url.get_secret_value()
        ):
            raise ValueError("broker_url must be a URL such as redis://host:6379/0")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_ca_file (client certificates) needs tls_cert_file/tls_key_file")
        if (self.cstore_tls_cert_file is None) != (self.cstore_tls_key_file is None):
            raise ValueError("cstore_tls_cert_file and cstore_tls_key_file go together")
        uses_cstore_tls_files = any(
            f is not None
            for f in (self.cstore_tls_ca_file, self.cstore_tls_cert_file, self.cstore_tls_key_file)
        )
        if uses_cstore_tls_files and not self.cstore_tls:
            raise ValueError("cstore_tls_* files are set but cstore_tls is false")
        return self

    @property
    def dataset_limits(self) -> DatasetLimits:
        """The receive-time limits of `dicom_node.limits`."""
        return DatasetLimits(
            max_depth=self.max_dataset_depth,
            max_elements=self.max_dataset_elements,
            max_inflated_bytes=self.max_inflated_mb * 1024 * 1024,
        )

    @property
    def tls_enabled(self) -> bool:
        """Whether the SCP accepts DIMSE over TLS (and only that)."""
        return self.tls_cert_file is not None

    @property
    def spool_dir(self) -> Path:
        """Where received instances wait for their study to complete."""
        return self.data_dir / "spool"

    @property
    def jobs_dir(self) -> Path:
        """Root of the job state folders."""
        return self.data_dir / "jobs"

    @property
    def feedback_dir(self) -> Path:
        """Readers' judgements (``data_dir/feedback``)."""
        return self.data_dir / "feedback"

    @property
    def state_db(self) -> Path:
        """The sqlite file with the processed-instance index and study scores."""
        return self.data_dir / "state.sqlite3"

    def calling_ae_allowed(self, calling_ae: str) -> bool:
        """Whether an association from ``calling_ae`` may be accepted.

        Args:
            calling_ae: the peer's calling AE title (spaces are ignored at both ends).

        Returns:
            True if allowed.
        """
        if self.allow_any_calling_ae:
            return True
        return calling_ae.strip() in self.allowed_calling_aes


def _read_secret(path: Path) -> str:
    """Read a secret from a file (trailing newline removed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from exc
    secret = text.rstrip("\r\n")
    if not secret:
        raise ValueError(f"secret file {path} is empty")
    return secret


def load_settings(**overrides: Any) -> NodeSettings:
    """Build `NodeSettings` from the environment plus ``overrides``, failing with a clear error.

    Args:
        **overrides: field values that take precedence over the environment.

    Returns:
        The validated settings.

    Raises:
        ConfigError: one or more settings are invalid; the message lists each field with
            its environment variable name and the reason (never the secret values).
    """
    try:
        return NodeSettings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_input=False, include_url=False):
            loc = ".".join(str(p) for p in err["loc"])
            env = f" ({ENV_PREFIX}{loc.upper()})" if loc else ""
            lines.append(f"  {loc or 'settings'}{env}: {err['msg']}")
        raise ConfigError("invalid dicom_node settings:\n" + "\n".join(lines)) from None
