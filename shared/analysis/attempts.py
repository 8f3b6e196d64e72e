"""``VisionAttempt``: one HTTP attempt to Vision, as the retry policy records it and the
observer reports it (no payload, no OCR text).

Its own module so that the Vision client (``shared.analysis.vision``) and its azure-core
policies (``shared.analysis.vision_policies``), which both build attempts, import it without
importing each other in a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import ErrorClass

__all__ = ["VisionAttempt"]


@dataclass(frozen=True, slots=True)
class VisionAttempt:
    """One HTTP attempt, as the observer sees it (no payload, no OCR text)."""

    attempt: int
    features: tuple[str, ...]
    image_bytes: int
    duration_ms: float
    limiter_wait_ms: float
    status_code: int | None = None
    error_class: ErrorClass | None = None
    reason: str | None = None
    error_code: str | None = None
    inner_code: str | None = None
    retry_after_s: float | None = None
    backoff_s: float | None = None
    #: the client's sending rate (calls/s) when the attempt went out
    rate_per_second: float | None = None
    #: the last attempt of a call that the retry budget did not allow to be retried
    budget_exhausted: bool = False

    @property
    def succeeded(self) -> bool:
        return self.error_class is None

    @property
    def will_retry(self) -> bool:
        return self.backoff_s is not None
