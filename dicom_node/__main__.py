"""Command line: ``python -m dicom_node serve``, ``worker``, ``pull ...`` and ``demo ...``.

``worker`` runs one scaled-out worker (`dicom_node.distributed`; needs
``DICOM_NODE_BROKER_URL`` and the node's ``data_dir`` on shared storage).

``serve`` runs `dicom_node.service.NodeService` with settings from the ``DICOM_NODE_*``
environment until SIGINT or SIGTERM. ``pull`` queues jobs for studies already in the PACS
(`dicom_node.pull`; ``pull --help``). ``demo`` hands its arguments to the development
stack's ``devstack.demo.main`` (Orthanc + node + viewer with sample studies; it runs from a
checkout and is not part of this package). Logging is configured here and only here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from pydantic import SecretStr

from dicom_node.errors import ConfigError

if TYPE_CHECKING:
    from dicom_node.config import NodeSettings

logger = logging.getLogger("dicom_node")

#: ``extra=`` keys appended to log lines (UIDs and ids only: never PHI).
_CONTEXT_KEYS = (
    "job_id",
    "study_uid",
    "sop_uid",
    "model_id",
    "calling_ae",
    "reason",
    "stage",
    "error_type",
    "error_where",
)


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def _escape(value: object) -> str:
    """A context value on one line, control characters (newlines) escaped.

    So a UID a peer sent cannot forge log lines.
    """
    return str(value).translate(_CONTROL)


class ContextFormatter(logging.Formatter):
    """Formats a record and appends its known ``extra`` context as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        """Format one record.

        Args:
            record: the record.

        Returns:
            The line.
        """
        line = super().format(record)
        context = [
            f"{key}={_escape(getattr(record, key))}"
            for key in _CONTEXT_KEYS
            if hasattr(record, key)
        ]
        return f"{line} [{' '.join(context)}]" if context else line


def configure_logging(level: str) -> None:
    """Log to stderr with context fields.

    Args:
        level: logging level name.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(ContextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def with_api_token(settings: NodeSettings) -> NodeSettings:
    """``serve``'s API is never open: without a configured token, the demo's one is used.

    The token is the ``api_token`` of ``<data_dir>/secrets.json``, generated on first run
    (mode 0600) by `dicom_node.credentials.load_or_create_secrets`, as the demo's is; it
    becomes the admin token (read and state-changing routes). Read it from that file.

    Args:
        settings: the validated settings.

    Returns:
        ``settings`` itself when a token is configured, else a copy with the admin token.
    """
    if settings.api_token is not None or settings.api_admin_token is not None:
        return settings
    from dicom_node.credentials import load_or_create_secrets

    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = load_or_create_secrets(settings.data_dir).api_token
    logger.info(
        "HTTP API token: the api_token in secrets.json of the data folder (mode 0600)",
        extra={"reason": "no DICOM_NODE_API_TOKEN or DICOM_NODE_API_ADMIN_TOKEN set"},
    )
    return settings.model_copy(update={"api_admin_token": SecretStr(token)})


def serve(log_level: str) -> int:
    """Run the node until SIGINT/SIGTERM.

    Args:
        log_level: logging level name.

    Returns:
        Exit status (2 for invalid settings).
    """
    configure_logging(log_level)
    from dicom_node.config import load_settings
    from dicom_node.service import NodeService

    os.umask(0o077)  # everything the node writes (spool, jobs, index, logs) is 0600 / 0700
    try:
        settings = with_api_token(load_settings())
        service = NodeService(settings)
        service.start()
    except ConfigError as exc:
        print(f"dicom_node: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal received, stopping", extra={"reason": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        service.stop()
    return 0


def worker(log_level: str) -> int:
    """Run one scaled-out worker (`dicom_node.distributed.run_worker`) until SIGINT/SIGTERM.

    Args:
        log_level: logging level name.

    Returns:
        Exit status (2 for invalid settings, no broker, or Celery missing).
    """
    configure_logging(log_level)
    from dicom_node.config import load_settings
    from dicom_node.distributed import run_worker

    try:
        return run_worker(load_settings())
    except ConfigError as exc:
        print(f"dicom_node: {exc}", file=sys.stderr)
        return 2


def pull(args: argparse.Namespace) -> int:
    """Run `dicom_node.pull.pull_studies` and print one line per study (UIDs only).

    Args:
        args: the parsed ``pull`` arguments.

    Returns:
        Exit status (2 for invalid settings or arguments, 1 when the PACS failed).
    """
    configure_logging(args.log_level)
    from dicom_node.config import load_settings
    from dicom_node.pull import PullError, make_client, parse_since, pull_studies

    try:
        settings = load_settings()
        since = parse_since(args.since) if args.since else None
        client = make_client(args.qido_url or settings.orthanc_url, settings)
        report = pull_studies(
            settings,
            client,
            modality=args.modality,
            since=since,
            checkpoints=args.models,
            dry_run=args.dry_run,
            limit=args.limit,
        )
    except ConfigError as exc:
        print(f"dicom_node: {exc}", file=sys.stderr)
        return 2
    except PullError as exc:
        print(f"dicom_node pull: {exc}", file=sys.stderr)
        return 1
    if report.recovered_job_ids:
        print(f"(interrupted earlier run)\tjobs={','.join(report.recovered_job_ids)}")
    for study in report.studies:
        jobs = ",".join(study.job_ids) or ("-" if not report.dry_run else "(dry run)")
        print(
            f"{study.study_instance_uid}\tseries={study.series}\t"
            f"instances={study.instances}\tjobs={jobs}"
        )
    verb = "would retrieve" if report.dry_run else "retrieved"
    print(
        f"{len(report.studies)} studies, {verb} {report.instances} instances, "
        f"{len(report.job_ids)} jobs queued"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point.

    Args:
        argv: arguments (default: ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["demo"]:
        try:
            demo = importlib.import_module("devstack.demo")
        except ModuleNotFoundError as exc:
            if exc.name not in ("devstack", "devstack.demo"):
                raise
            print(
                "dicom_node: the demo is the development stack (devstack/ of a checkout); "
                "run scripts/run.sh from the repository",
                file=sys.stderr,
            )
            return 2
        return int(demo.main(args_in[1:]) or 0)
    parser = argparse.ArgumentParser(prog="python -m dicom_node")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the node (settings from DICOM_NODE_* env)")
    serve_p.add_argument("--log-level", default="INFO")
    worker_p = sub.add_parser(
        "worker",
        help="run jobs of a scaled-out node (DICOM_NODE_BROKER_URL, shared DICOM_NODE_DATA_DIR)",
    )
    worker_p.add_argument("--log-level", default="INFO")
    sub.add_parser("demo", help="Orthanc + node + viewer with sample studies (embedded default)")
    pull_p = sub.add_parser(
        "pull",
        help="queue jobs for studies already in the PACS (QIDO-RS + WADO-RS)",
        description="Find studies by QIDO-RS, retrieve them by WADO-RS and queue jobs that "
        "the running node processes. PACS credentials and data_dir come from DICOM_NODE_*.",
    )
    pull_p.add_argument("--qido-url", help="DICOMweb root (default: DICOM_NODE_ORTHANC_URL)")
    pull_p.add_argument("--modality", help="e.g. CR: studies with, and series of, this modality")
    pull_p.add_argument("--since", help="30m, 12h, 1d, 2w or a date YYYYMMDD (StudyDate)")
    pull_p.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="CHECKPOINT",
        help="checkpoint to run (repeatable; default: the rules file or DICOM_NODE_CHECKPOINTS)",
    )
    pull_p.add_argument("--limit", type=int, help="at most this many studies")
    pull_p.add_argument("--dry-run", action="store_true", help="only query and report")
    pull_p.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(args_in)
    if args.command == "serve":
        return serve(args.log_level)
    if args.command == "pull":
        return pull(args)
    if args.command == "worker":
        return worker(args.log_level)
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
