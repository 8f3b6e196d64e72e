"""The small exception tree of the pipeline and the one function that maps errors to outcomes.

A type exists only where a caller handles it differently::

    VisionOpsError
    ├── RetryableError            raise out of the function: the host retries, then poisons
    │   │                         (carries the service's Retry-After, if it sent one)
    │   ├── ThrottledError        429 / quota exhausted
    │   ├── TransientError        5xx, connection reset, storage hiccup
    │   │   ├── StorageError      reading or writing results/failed documents failed
    │   │   └── VisionUnavailableError  Vision is down (the client's breaker is open):
    │   │                         the pipeline parks the blob instead of spending host tries
    │   └── OperationTimeoutError connect/read timeout, 408
    └── PermanentError            never retried: written to ``failed/`` with its reason
        ├── InvalidImageError     rejected by preprocessing or by the service (reason code)
        ├── AuthError             401 / 403 from the service
        └── ConfigError           404 endpoint, unsupported feature, bad settings
            └── SettingsError     (defined in ``shared.settings``) every bad/missing key at once

This module must never import Azure SDKs or Functions types: callers translate SDK
exceptions into these (``raise … from exc``) at the boundary where they happen.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ErrorClass(StrEnum):
    """Low-cardinality class of a failure; used in documents, outcomes and telemetry."""

    INVALID_INPUT = "invalid_input"
    AUTH = "auth"
    CONFIG = "config"
    THROTTLED = "throttled"
    TRANSIENT = "transient"
    TIMEOUT = "timeout"
    UNEXPECTED = "unexpected"


class VisionOpsError(Exception):
    """Base of every error the pipeline raises on purpose.

    ``reason`` is a stable snake_case code; ``status_code``/``error_code``/``inner_code`` carry
    what the service said (``error.code`` and ``error.innererror.code`` of its error body).
    ``message`` must never contain OCR text, image bytes, keys or connection strings.
    """

    error_class: ErrorClass = ErrorClass.UNEXPECTED
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        status_code: int | None = None,
        error_code: str | None = None,
        inner_code: str | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or str(self.error_class)
        self.status_code = status_code
        self.error_code = error_code
        self.inner_code = inner_code
        self.attempts = attempts


class RetryableError(VisionOpsError):
    """The operation may succeed later; the Functions host retries the invocation.

    ``retry_after`` is the wait the service asked for with ``Retry-After`` (429, but also 503
    and 408 answers carry it), or ``None``.
    """

    retryable = True
    error_class = ErrorClass.TRANSIENT

    def __init__(self, message: str, *, retry_after: float | None = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class ThrottledError(RetryableError):
    error_class = ErrorClass.THROTTLED


class TransientError(RetryableError):
    error_class = ErrorClass.TRANSIENT


class StorageError(TransientError):
    """Reading or writing a result document failed; retrying the whole blob is safe."""


class VisionUnavailableError(TransientError):
    """Vision keeps failing and the client stopped calling it except for probes.

    Retrying now cannot help and would only spend the host's tries (then poison); the pipeline
    parks the blob and re-drives it once Vision answers again.
    """


class OperationTimeoutError(RetryableError):
    error_class = ErrorClass.TIMEOUT


class PermanentError(VisionOpsError):
    """Retrying cannot help: the blob goes to ``failed/`` with the reason."""

    retryable = False


class InvalidImageError(PermanentError):
    error_class = ErrorClass.INVALID_INPUT


class AuthError(PermanentError):
    error_class = ErrorClass.AUTH


class ConfigError(PermanentError):
    error_class = ErrorClass.CONFIG


@dataclass(frozen=True, slots=True)
class Disposition:
    """What the pipeline does with an error: its class, whether to retry, and why."""

    error_class: ErrorClass
    retryable: bool
    reason: str


def classify(exc: BaseException) -> Disposition:
    """The single mapping from an exception to an outcome class.

    Anything we did not raise on purpose is ``unexpected`` and retryable: the host retries and
    finally poisons the blob, so a bug never silently drops an image.
    """
    if isinstance(exc, VisionOpsError):
        return Disposition(exc.error_class, exc.retryable, exc.reason)
    return Disposition(ErrorClass.UNEXPECTED, True, "unexpected")
