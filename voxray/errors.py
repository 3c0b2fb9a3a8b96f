"""Typed errors that carry an HTTP status, a machine-readable kind and a message a user can act on.

Batch jobs record ``kind`` and ``message`` in a row's ``error`` column; the Serve ingress turns
``status`` into the HTTP response code. One hierarchy serves both so the messages never drift.
"""

from __future__ import annotations


class VoxrayError(Exception):
    """Base class: ``status`` is the HTTP code, ``kind`` groups errors in run reports."""

    status: int = 500
    kind: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def as_row_error(self) -> str:
        """The string stored in a result row's ``error`` column: ``kind: message``."""
        return f"{self.kind}: {self.message}"


class InputError(VoxrayError):
    """The caller's input is wrong; fixing the input fixes the problem."""

    status = 400
    kind = "bad_input"


class AudioDecodeError(InputError):
    kind = "decode"


class EmptyAudioError(InputError):
    kind = "empty_audio"


class InputNotFoundError(InputError):
    status = 404
    kind = "not_found"


class PayloadTooLargeError(InputError):
    status = 413
    kind = "too_large"


class TextError(InputError):
    kind = "bad_text"


class UnknownVoiceError(InputError):
    kind = "unknown_voice"


class UnknownLanguageError(InputError):
    kind = "unknown_language"


class ModelUnavailableError(VoxrayError):
    """A model cannot be loaded (not cached, hub unreachable, wrong format)."""

    status = 404
    kind = "model_unavailable"


class OverloadedError(VoxrayError):
    status = 503
    kind = "overloaded"


class InferenceError(VoxrayError):
    """The model failed on an input that passed validation (e.g. out of memory)."""

    status = 500
    kind = "inference"


def row_error(exc: BaseException) -> str:
    """Format any exception for a row's ``error`` column without losing its type."""
    if isinstance(exc, VoxrayError):
        return exc.as_row_error()
    return f"internal: {type(exc).__name__}: {exc}"


def error_kind(error: str | None) -> str | None:
    """The ``kind`` prefix of a row error string (inverse of :func:`row_error`)."""
    if not error:
        return None
    return error.split(":", 1)[0].strip() or "internal"


def from_row_error(error: str) -> VoxrayError:
    """Rebuild a typed error from a row's ``kind: message`` string (inverse of :func:`row_error`),
    so a per-item error inside a batch still maps to the right HTTP status."""
    kind, _, message = error.partition(": ")
    classes = {cls.kind: cls for cls in _all_subclasses(VoxrayError)}
    cls = classes.get(kind, VoxrayError)
    return cls(message or kind)


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out
