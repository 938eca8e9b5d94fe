"""Logging helpers that keep PHI out of the logs.

Exception messages raised while decoding a dataset may quote attribute values (names, ids),
so failures of untrusted input are logged by exception type and code location only.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path


def error_context(exc: BaseException) -> dict[str, str]:
    """Describe an exception without its message.

    Args:
        exc: the exception.

    Returns:
        ``error_type`` (class name) and ``error_where`` (innermost frame: file, line, function).
    """
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        last = frames[-1]
        where = f"{Path(last.filename).name}:{last.lineno} in {last.name}"
    return {"error_type": type(exc).__name__, "error_where": where}


def log_failure(
    log: logging.Logger,
    message: str,
    exc: BaseException,
    *,
    level: int = logging.ERROR,
    **context: object,
) -> None:
    """Log a failure with its type and location but not its message text.

    Args:
        log: the module's logger.
        message: what failed (no PHI).
        exc: the exception.
        level: logging level.
        **context: UIDs, job ids and the like for ``extra``.
    """
    log.log(level, message, extra={**context, **error_context(exc)})
