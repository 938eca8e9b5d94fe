"""Errors raised by ai_engine. Each says what was wrong with which input."""

from __future__ import annotations


class AiEngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class UnsupportedInputError(AiEngineError):
    """The input cannot be read as an image the engine understands.

    Examples: no pixel data, a transfer syntax no installed decoder handles, a colour image
    where greyscale is expected, an unknown SOP class.
    """


class UnsuitableSeriesError(AiEngineError):
    """The image is readable but the model was not trained for it (other modality, view...)."""


class UnknownModelError(AiEngineError):
    """A model id that is not in the registry. The message lists the valid ids."""


class ModelLoadError(AiEngineError):
    """Weights or model card missing, corrupt, or not matching their sha256."""
