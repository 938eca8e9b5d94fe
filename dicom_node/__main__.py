"""Command line: ``python -m dicom_node serve`` and ``python -m dicom_node demo ...``.

``serve`` runs `dicom_node.service.NodeService` with settings from the ``DICOM_NODE_*``
environment until SIGINT or SIGTERM. ``demo`` hands its arguments to
``dicom_node.embedded.main`` (Orthanc + node + viewer with sample studies). Logging is
configured here and only here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from dicom_node.errors import ConfigError

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
        context = [f"{key}={getattr(record, key)}" for key in _CONTEXT_KEYS if hasattr(record, key)]
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

    try:
        settings = load_settings()
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point.

    Args:
        argv: arguments (default: ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["demo"]:
        embedded = importlib.import_module("dicom_node.embedded")
        return int(embedded.main(args_in[1:]) or 0)
    parser = argparse.ArgumentParser(prog="python -m dicom_node")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="run the node (settings from DICOM_NODE_* env)")
    serve_p.add_argument("--log-level", default="INFO")
    sub.add_parser("demo", help="Orthanc + node + viewer with sample studies (embedded default)")
    args = parser.parse_args(args_in)
    if args.command == "serve":
        return serve(args.log_level)
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
