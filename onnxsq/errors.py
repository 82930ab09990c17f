"""Exception families.

``OnnxsqError`` and its subclasses are *user or model problems*: the CLI prints their message as one
line and exits with status 1. Any other exception escaping the library is a bug in onnxsq: the CLI
reports it as an internal error (status 3) and shows the traceback only with ``-v``.
"""

from __future__ import annotations


class OnnxsqError(Exception):
    """A problem with the user's input, options or model (not a bug in onnxsq)."""


class ModelLoadError(OnnxsqError):
    """The model file is missing, unreadable, truncated or rejected by onnx.checker."""


class UnsupportedModelError(OnnxsqError):
    """The model uses something a pass cannot handle."""


class InvalidOptionError(OnnxsqError):
    """An option or option combination is invalid."""


class DataError(OnnxsqError):
    """Calibration, training or evaluation data is missing, unreadable or does not fit the model."""


class RuntimeMissingError(OnnxsqError):
    """The runtime a command needs (onnxruntime / onnxruntime-training / CUDA) is not installed."""


class VerificationError(OnnxsqError):
    """Two models that should be equivalent are not, beyond the tolerance."""


class CheckNotRunError(OnnxsqError):
    """A check could not run: the reference model fails on the random inputs made up for it (their
    shape does not suit it). Not a mismatch; the message says which shape to pass instead."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors that
    quote what onnx, onnxruntime, numpy or a parser said."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()
