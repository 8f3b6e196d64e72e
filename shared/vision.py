"""The Vision client: Image Analysis 4.0 behind a small Protocol, with retries and a rate limiter.

``VisionAnalyzer`` is the seam the pipeline depends on; unit tests pass a hand-written fake.
``RetryingVisionClient`` is the real implementation. It owns the retry loop instead of
azure-core's ``RetryPolicy`` because every attempt must (a) take a token from the client-side
rate limiter — retries that skip the limiter are what turn one 429 into a storm — and (b) be
reported to the observer with its classification. The SDK's own retries are therefore switched
off (``RetryPolicy.no_retries()``); transport timeouts (connect/read) come from settings.

Retry rules: exponential backoff with full jitter (``uniform(0, min(cap, base * 2**n))``),
never sooner than the service's ``Retry-After`` (429, 503 and 408 alike), which also pauses the
rate limiter; only throttled/transient/timeout errors are retried, never 400/401/403/404. A
``Retry-After`` longer than ``VISION_MAX_RETRY_AFTER_SECONDS`` ends the local loop (the host
retries the blob later).

The token bucket is sized from the tier (F0: 20/min; S1: ``VISION_RATE_LIMIT_PER_SECOND``)
less ``LIMITER_HEADROOM``, and is per process: with N instances, set the limit to quota / N.

Never log image bytes, OCR text or the key from here.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from shared.errors import (
    AuthError,
    ConfigError,
    ErrorClass,
    InvalidImageError,
    OperationTimeoutError,
    RetryableError,
    ThrottledError,
    TransientError,
    VisionOpsError,
)
from shared.units import ms

if TYPE_CHECKING:
    from azure.ai.vision.imageanalysis import ImageAnalysisClient
    from azure.core.credentials import TokenCredential
    from azure.core.exceptions import AzureError
    from azure.core.pipeline.transport import HttpTransport

    from shared.settings import Settings

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], None]


# --------------------------------------------------------------------------- results


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

    @property
    def succeeded(self) -> bool:
        return self.error_class is None

    @property
    def will_retry(self) -> bool:
        return self.backoff_s is not None


@dataclass(frozen=True, slots=True)
class VisionResult:
    """The service's JSON (``modelVersion``, ``metadata``, ``readResult`` …) plus how we got it."""

    payload: Mapping[str, Any]
    model_version: str | None
    features: tuple[str, ...]
    attempts: int
    duration_ms: float
    limiter_wait_ms: float


AttemptHook = Callable[[VisionAttempt], None]


class VisionAnalyzer(Protocol):
    """What the pipeline needs from Vision. Raises only ``VisionOpsError`` subclasses."""

    def analyze(
        self,
        image: bytes,
        features: Sequence[str],
        *,
        on_attempt: AttemptHook | None = None,
    ) -> VisionResult: ...


class AnalyzeCall(Protocol):
    """One un-retried call to the service; returns its JSON as a dict.

    Raises azure-core exceptions (the real SDK) or ``VisionOpsError`` (fakes)."""

    def __call__(self, image: bytes, features: Sequence[str]) -> Mapping[str, Any]: ...


# --------------------------------------------------------------------------- rate limiter

#: The service counts *arrivals* in a rolling one-second window with no burst allowance; the
#: bucket can only space *sends*. At exactly the limit, calls N apart are exactly one second
#: apart, so a few ms of send-to-arrival jitter puts the (N+1)th call inside the window: a 429
#: and a ``Retry-After`` pause of at least a second. Pacing at 98 % leaves every window 20 ms of
#: slack. Measured against the emulator at 10 TPS with 8 threads (bench/goodput_bench.py): at
#: 100 %, 5 % of calls got 429 and goodput was 86 % of the limit; at 98 %, no 429 and 98 %.
LIMITER_HEADROOM = 0.02


class TokenBucket:
    """Thread-safe token bucket (GCRA form): ``rate`` tokens per second, ``burst`` at most.

    ``acquire()`` reserves the next slot under a lock and sleeps *outside* it, so callers on
    the worker's thread pool queue up in order without holding each other. ``pause()`` pushes
    the next slot out, e.g. when the service answered 429 with ``Retry-After``.
    """

    def __init__(
        self,
        rate_per_second: float,
        burst: int = 1,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        if rate_per_second <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._interval = 1.0 / rate_per_second
        self._tolerance = (burst - 1) * self._interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tat = -math.inf  # theoretical arrival time of the next conforming request

    @property
    def rate_per_second(self) -> float:
        return 1.0 / self._interval

    def reserve(self) -> float:
        """Take the next slot; return how long the caller must wait for it (seconds)."""
        with self._lock:
            now = self._clock()
            tat = max(self._tat, now)
            slot = max(now, tat - self._tolerance)
            self._tat = tat + self._interval
            return slot - now

    def acquire(self) -> float:
        """Block until a token is available; return the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait

    def pause(self, seconds: float) -> None:
        """Issue no new slot for ``seconds`` (already-reserved slots are kept)."""
        with self._lock:
            self._tat = max(self._tat, self._clock() + seconds + self._tolerance)


# --------------------------------------------------------------------------- retry policy


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 4
    backoff_base_seconds: float = 0.5
    backoff_max_seconds: float = 20.0
    max_retry_after_seconds: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_retries=settings.vision_max_retries,
            backoff_base_seconds=settings.vision_backoff_base_seconds,
            backoff_max_seconds=settings.vision_backoff_max_seconds,
            max_retry_after_seconds=settings.vision_max_retry_after_seconds,
        )

    def backoff_ceiling(self, retry_number: int) -> float:
        """Upper bound of the jittered delay before retry ``retry_number`` (1-based)."""
        exponent = min(retry_number - 1, 62)
        return min(self.backoff_max_seconds, self.backoff_base_seconds * 2.0**exponent)

    def delay(self, retry_number: int, retry_after: float | None, rng: random.Random) -> float:
        """Full jitter, but never sooner than the service asked."""
        jittered = rng.uniform(0.0, self.backoff_ceiling(retry_number))
        return max(jittered, retry_after) if retry_after is not None else jittered


def parse_retry_after(
    headers: Mapping[str, str], *, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> float | None:
    """Seconds from ``Retry-After`` (delta or HTTP date), ``retry-after-ms``/``x-ms-…``."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, scale in (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001)):
        raw = lowered.get(name)
        if raw:
            try:
                return max(0.0, float(raw) * scale)
            except ValueError:
                continue
    raw = lowered.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now()).total_seconds())


# --------------------------------------------------------------------------- classification

_CONFIG_INNER_PREFIXES = ("NotSupported", "InvalidModelVersion", "InvalidApiVersion")


def _snake(code: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", code).lower()


def classify_http(
    status: int,
    *,
    error_code: str | None,
    inner_code: str | None,
    message: str,
    retry_after: float | None,
) -> VisionOpsError:
    """Map an HTTP error answer of the service to our error tree."""
    kw: dict[str, Any] = {
        "status_code": status,
        "error_code": error_code,
        "inner_code": inner_code,
    }
    code = inner_code or error_code
    result: VisionOpsError
    if status == 429:
        result = ThrottledError(message, retry_after=retry_after, reason="throttled", **kw)
    elif status == 408:
        result = OperationTimeoutError(
            message, retry_after=retry_after, reason="service_timeout", **kw
        )
    elif status >= 500:
        # a 503 says when to come back just like a 429 does
        result = TransientError(
            message, retry_after=retry_after, reason=f"server_error_{status}", **kw
        )
    elif status in (401, 403):
        result = AuthError(message, reason="unauthorized" if status == 401 else "forbidden", **kw)
    elif status == 404:
        result = ConfigError(message, reason="endpoint_not_found", **kw)
    elif code and code.startswith(_CONFIG_INNER_PREFIXES):
        result = ConfigError(message, reason=f"service_{_snake(code)}", **kw)
    elif status in (400, 413, 415, 422):
        reason = f"service_{_snake(code)}" if code else "service_rejected_image"
        result = InvalidImageError(message, reason=reason, **kw)
    else:
        result = ConfigError(message, reason=f"http_{status}", **kw)
    return result


def classify_azure_error(exc: AzureError) -> VisionOpsError:
    """Translate an azure-core exception raised by the SDK into our error tree."""
    from azure.core.exceptions import (
        HttpResponseError,
        ServiceRequestError,
        ServiceRequestTimeoutError,
        ServiceResponseError,
        ServiceResponseTimeoutError,
    )

    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        error = exc.error
        inner = error.innererror if error is not None else None
        headers = dict(getattr(exc.response, "headers", None) or {})
        return classify_http(
            exc.status_code,
            error_code=error.code if error is not None else None,
            inner_code=inner.get("code") if isinstance(inner, dict) else None,
            message=(error.message if error is not None else None) or f"HTTP {exc.status_code}",
            retry_after=parse_retry_after(headers),
        )
    if isinstance(exc, ServiceRequestTimeoutError | ServiceResponseTimeoutError):
        return OperationTimeoutError(type(exc).__name__, reason="timeout")
    if isinstance(exc, ServiceResponseError | ServiceRequestError):
        if "timed out" in str(exc).lower():
            return OperationTimeoutError(type(exc).__name__, reason="timeout")
        return TransientError(type(exc).__name__, reason="connection_error")
    return TransientError(type(exc).__name__, reason="client_error")


# --------------------------------------------------------------------------- client


class RetryingVisionClient:
    """``VisionAnalyzer`` over any ``AnalyzeCall``: limiter, retries, classification."""

    def __init__(
        self,
        call: AnalyzeCall,
        *,
        limiter: TokenBucket,
        policy: RetryPolicy,
        clock: Clock = time.perf_counter,
        sleep: Sleep = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._call = call
        self._limiter = limiter
        self._policy = policy
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()

    def analyze(
        self,
        image: bytes,
        features: Sequence[str],
        *,
        on_attempt: AttemptHook | None = None,
    ) -> VisionResult:
        from azure.core.exceptions import AzureError

        features = tuple(features)
        started = self._clock()
        limiter_wait = 0.0
        attempt = 0
        while True:
            attempt += 1
            wait = self._limiter.acquire()
            limiter_wait += wait
            t0 = self._clock()
            try:
                payload = self._call(image, features)
            except (VisionOpsError, AzureError) as exc:
                error = exc if isinstance(exc, VisionOpsError) else classify_azure_error(exc)
                error.attempts = attempt
                backoff = self._backoff(attempt, error)
                if on_attempt is not None:
                    on_attempt(VisionAttempt(
                        attempt=attempt, features=features, image_bytes=len(image),
                        duration_ms=ms(self._clock() - t0), limiter_wait_ms=ms(wait),
                        status_code=error.status_code, error_class=error.error_class,
                        reason=error.reason, error_code=error.error_code,
                        inner_code=error.inner_code, retry_after_s=_retry_after(error),
                        backoff_s=backoff,
                    ))  # fmt: skip
                if backoff is None:
                    if error is exc:
                        raise
                    raise error from exc
                logger.info(
                    "vision attempt %d failed (%s/%s); retrying in %.2fs",
                    attempt, error.error_class, error.reason, backoff,
                )  # fmt: skip
                retry_after = _retry_after(error)
                if retry_after:
                    self._limiter.pause(retry_after)
                self._sleep(backoff)
                continue
            if on_attempt is not None:
                on_attempt(VisionAttempt(
                    attempt=attempt, features=features, image_bytes=len(image),
                    duration_ms=ms(self._clock() - t0), limiter_wait_ms=ms(wait),
                    status_code=200,
                ))  # fmt: skip
            model_version = payload.get("modelVersion")
            return VisionResult(
                payload=payload,
                model_version=model_version if isinstance(model_version, str) else None,
                features=features,
                attempts=attempt,
                duration_ms=ms(self._clock() - started),
                limiter_wait_ms=ms(limiter_wait),
            )

    def _backoff(self, attempt: int, error: VisionOpsError) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up now."""
        if not error.retryable or attempt > self._policy.max_retries:
            return None
        retry_after = _retry_after(error)
        if retry_after is not None and retry_after > self._policy.max_retry_after_seconds:
            return None
        return self._policy.delay(attempt, retry_after, self._rng)


def _retry_after(error: VisionOpsError) -> float | None:
    return error.retry_after if isinstance(error, RetryableError) else None



class SdkAnalyzeCall:
    """``AnalyzeCall`` over ``azure.ai.vision.imageanalysis.ImageAnalysisClient``."""

    def __init__(
        self,
        client: ImageAnalysisClient,
        *,
        language: str | None,
        model_version: str | None,
        connection_timeout: float,
        read_timeout: float,
    ) -> None:
        self._client = client
        self._language = language
        self._model_version = model_version
        self._connection_timeout = connection_timeout
        self._read_timeout = read_timeout

    def __call__(self, image: bytes, features: Sequence[str]) -> Mapping[str, Any]:
        from azure.ai.vision.imageanalysis.models import VisualFeatures

        result = self._client.analyze(
            image_data=image,
            visual_features=[VisualFeatures(name) for name in features],
            language=self._language,
            model_version=self._model_version,
            connection_timeout=self._connection_timeout,  # passed through to the transport
            read_timeout=self._read_timeout,
        )
        return result.as_dict()


def build_vision_client(
    settings: Settings,
    *,
    credential: TokenCredential | None = None,
    transport: HttpTransport[Any, Any] | None = None,
    clock: Clock = time.perf_counter,
    sleep: Sleep = time.sleep,
    limiter_clock: Clock = time.monotonic,
    rng: random.Random | None = None,
) -> RetryingVisionClient:
    """The real client from settings: key auth when ``VISION_KEY`` is set, else Entra ID."""
    from azure.ai.vision.imageanalysis import ImageAnalysisClient
    from azure.core.credentials import AzureKeyCredential
    from azure.core.pipeline.policies import RetryPolicy as CoreRetryPolicy

    auth: AzureKeyCredential | TokenCredential
    if settings.vision_key:
        auth = AzureKeyCredential(settings.vision_key)
    elif credential is not None:
        auth = credential
    else:
        from azure.identity import DefaultAzureCredential

        auth = DefaultAzureCredential()
    options: dict[str, Any] = {"retry_policy": CoreRetryPolicy.no_retries()}
    if transport is not None:
        options["transport"] = transport
    client = ImageAnalysisClient(settings.vision_endpoint, auth, **options)
    call = SdkAnalyzeCall(
        client,
        language=settings.vision_language,
        model_version=settings.vision_model_version,
        connection_timeout=settings.vision_connect_timeout_seconds,
        read_timeout=settings.vision_timeout_seconds,
    )
    limiter = TokenBucket(
        settings.rate_limit_per_second * (1.0 - LIMITER_HEADROOM),
        settings.vision_rate_burst,
        clock=limiter_clock,
        sleep=sleep,
    )
    return RetryingVisionClient(
        call, limiter=limiter, policy=RetryPolicy.from_settings(settings), clock=clock,
        sleep=sleep, rng=rng,
    )  # fmt: skip
