"""Errors the node raises on purpose; each says what failed and, where useful, how to fix it."""

from __future__ import annotations


class DicomNodeError(Exception):
    """Base class of every error the node raises on purpose."""


class ConfigError(DicomNodeError):
    """The settings are invalid or the environment does not allow them (raised at startup)."""


class SpoolError(DicomNodeError):
    """A received instance could not be written durably to the spool."""


class JobError(DicomNodeError):
    """A job folder or its job.json is missing, unreadable or in an unexpected state."""


class ProcessingError(DicomNodeError):
    """The engine failed on a job.

    Attributes:
        retryable: whether running the same job again may succeed (a transient failure such
            as memory pressure) or not (the input is not something the engine can read).
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class SendError(DicomNodeError):
    """Results could not be delivered to the destination.

    Attributes:
        retryable: True while the destination may accept the same request later (PACS down,
            HTTP 5xx/429, connection refused, association rejected transiently); False when
            it refused the content itself (HTTP 400/409/413/415, a DIMSE failure status).
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable
