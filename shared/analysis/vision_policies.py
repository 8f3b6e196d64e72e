"""The Vision client's azure-core pipeline policies: retries, flow control, per-attempt reports.

``AdaptiveRetryPolicy`` is azure-core's ``RetryPolicy`` with our decisions plugged into its hooks
(its ``send`` loop, history and timeout handling are kept): which answers are retried (429, 408,
5xx, timeouts and connection errors — the analyze POST only reads, so it is safe to repeat),
how long to wait (full jitter, never sooner than ``Retry-After``), and whether the retry budget
or the breaker allow another attempt. ``FlowPolicy`` runs once per attempt (``per_retry_policies``):
asks the breaker, waits for a token at the adaptive rate, sends, and tells the controller what
the service answered. Each attempt is reported once, with the backoff chosen after it.

Imported only when a client is built (azure-core is not loaded at app import).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import AzureError
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import HTTPPolicy, RetryPolicy

from shared.analysis.attempts import VisionAttempt
from shared.analysis.ratecontrol import BreakerState, FlowControl
from shared.errors import ErrorClass, RetryableError, ThrottledError, VisionOpsError
from shared.units import ms

if TYPE_CHECKING:
    from shared.analysis.vision import RetryRules

logger = logging.getLogger(__name__)

#: Context option the client passes per call (popped before the transport sees it).
ATTEMPT_HOOK_OPTION = "vision_on_attempt"
_HOOK = "visionops.attempt_hook"
_PENDING = "visionops.pending_attempt"
_OUTCOME = "visionops.outcome"
_DELAY = "visionops_delay"


class CircuitOpenError(AzureError):
    """Raised instead of sending while the breaker is open (no call reaches the service)."""


@dataclass(slots=True)
class CallOutcome:
    """What the pipeline learnt about one logical call, for the client to map errors."""

    attempts: int = 0
    limiter_wait_s: float = 0.0
    budget_exhausted: bool = False
    circuit_open: bool = False


@dataclass(frozen=True, slots=True)
class _Pending:
    attempt: VisionAttempt
    error: VisionOpsError | None


def _retry_after(error: VisionOpsError | None) -> float | None:
    return error.retry_after if isinstance(error, RetryableError) else None


class FlowPolicy(HTTPPolicy):  # type: ignore[type-arg]  # azure-core's generics are request/response
    """Per attempt: breaker, rate-limit token, send, feed the controller, keep the report."""

    def __init__(
        self,
        flow: FlowControl,
        *,
        features: Callable[[PipelineRequest[Any]], tuple[str, ...]],
        classify_http: Callable[[PipelineResponse[Any, Any]], VisionOpsError],
        classify_error: Callable[[AzureError], VisionOpsError],
    ) -> None:
        super().__init__()
        self._flow = flow
        self._features = features
        self._classify_http = classify_http
        self._classify_error = classify_error

    def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        context = request.context
        number = int(context.get("retry_count", 0)) + 1
        outcome: CallOutcome = context.setdefault(_OUTCOME, CallOutcome())
        outcome.attempts = number
        body = request.http_request.body
        base = VisionAttempt(
            attempt=number, features=self._features(request),
            image_bytes=len(body) if isinstance(body, bytes | bytearray) else 0,
            duration_ms=0.0, limiter_wait_ms=0.0,
        )
        if number == 1:
            self._flow.budget.record_first_attempt()
        if not self._flow.breaker.allow():
            outcome.circuit_open = True
            refused = VisionOpsError("the breaker is open", reason="circuit_open")
            context[_PENDING] = _Pending(
                replace(base, error_class=ErrorClass.TRANSIENT, reason="circuit_open",
                        rate_per_second=self._flow.rate()), refused)
            raise CircuitOpenError("Vision is failing; only probing calls go out")
        wait = self._flow.acquire()
        outcome.limiter_wait_s += wait
        started = self._flow.clock()
        try:
            response = self.next.send(request)
        except AzureError as exc:
            failure = self._classify_error(exc)
            self._flow.on_failure()
            context[_PENDING] = _Pending(
                replace(base, duration_ms=ms(self._flow.clock() - started),
                        limiter_wait_ms=ms(wait), error_class=failure.error_class,
                        reason=failure.reason, rate_per_second=self._flow.rate()),
                failure)
            raise
        except BaseException:
            # not an answer either: a probe in flight must not hold the breaker half-open
            self._flow.on_failure()
            raise
        status = response.http_response.status_code
        error = self._classify_http(response) if status >= 400 else None
        if status == 429:
            self._flow.on_throttled(started, _retry_after(error))
        elif status >= 500 or status == 408:
            self._flow.on_failure()
        else:
            self._flow.on_answered()
        context[_PENDING] = _Pending(
            replace(base, duration_ms=ms(self._flow.clock() - started), limiter_wait_ms=ms(wait),
                    status_code=status, rate_per_second=self._flow.rate(),
                    error_class=error.error_class if error else None,
                    reason=error.reason if error else None,
                    error_code=error.error_code if error else None,
                    inner_code=error.inner_code if error else None,
                    retry_after_s=_retry_after(error)), error)
        return response


class AdaptiveRetryPolicy(RetryPolicy):  # type: ignore[type-arg]
    """azure-core's retry loop with our retry rules, budget and breaker in its hooks."""

    def __init__(
        self,
        rules: RetryRules,
        flow: FlowControl,
        *,
        sleep: Callable[[float], None],
        rng: random.Random | None = None,
    ) -> None:
        # azure-core's own counters must never be what stops us: ``increment`` counts attempts
        big = rules.max_retries + 2
        super().__init__(retry_total=big, retry_connect=big, retry_read=big, retry_status=big)
        self._rules = rules
        self._flow = flow
        self._sleep_fn = sleep
        self._rng = rng or random.Random()

    # -- the loop ----------------------------------------------------------------------------

    def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        context = request.context
        context[_HOOK] = context.options.pop(ATTEMPT_HOOK_OPTION, None)
        context[_OUTCOME] = CallOutcome()
        try:
            response = super().send(request)
        except AzureError:
            self._report(request, backoff=None)
            raise
        self._report(request, backoff=None)
        return response

    def _report(self, request: PipelineRequest[Any] | PipelineResponse[Any, Any],
                *, backoff: float | None) -> None:
        context = request.context
        pending: _Pending | None = context.get(_PENDING)
        if pending is None:
            return
        context[_PENDING] = None
        hook = context.get(_HOOK)
        if hook is None:
            return
        outcome: CallOutcome = context[_OUTCOME]
        hook(replace(pending.attempt, backoff_s=backoff,
                     budget_exhausted=outcome.budget_exhausted and backoff is None))

    # -- decisions (hooks of azure-core's loop) -----------------------------------------------

    def _is_method_retryable(self, settings: dict[str, Any], request: Any,
                             response: Any = None) -> bool:
        return True  # the analyze POST only reads: repeating it is safe

    def is_retry(self, settings: dict[str, Any], response: PipelineResponse[Any, Any]) -> bool:
        pending: _Pending | None = response.context.get(_PENDING)
        return pending is not None and pending.error is not None and pending.error.retryable

    def increment(self, settings: dict[str, Any], response: Any = None,
                  error: Exception | None = None) -> bool:
        context = response.context
        pending: _Pending | None = context.get(_PENDING)
        outcome: CallOutcome = context[_OUTCOME]
        if pending is None or not self._may_retry(pending, outcome):
            return False
        retry_after = _retry_after(pending.error)
        if not super().increment(settings, response=response, error=error):
            return False
        # decided here, where the call's context is at hand; ``sleep`` only gets ``settings``
        delay = self._rules.delay(pending.attempt.attempt, retry_after, self._rng)
        settings[_DELAY] = (delay, retry_after)
        logger.info(
            "vision attempt %d failed (%s/%s); retrying in %.2fs", pending.attempt.attempt,
            pending.attempt.error_class, pending.attempt.reason, delay,
        )
        self._report(response, backoff=delay)
        return True

    def _may_retry(self, pending: _Pending, outcome: CallOutcome) -> bool:
        error = pending.error
        if error is None or not error.retryable or outcome.circuit_open:
            return False
        if pending.attempt.attempt > self._rules.max_retries:
            return False
        retry_after = _retry_after(error)
        if retry_after is not None and retry_after > self._rules.max_retry_after_seconds:
            return False  # the host retries the blob later
        if self._flow.breaker.state is BreakerState.OPEN:
            outcome.circuit_open = True
            return False
        # throttled retries wait for Retry-After and a token: the limiter bounds them already
        if not isinstance(error, ThrottledError) and not self._flow.budget.try_spend():
            outcome.budget_exhausted = True
            logger.warning("vision retry budget exhausted; giving the call back to the caller")
            return False
        return True

    def sleep(self, settings: dict[str, Any], transport: Any,
              response: PipelineResponse[Any, Any] | None = None) -> None:
        delay, retry_after = settings.pop(_DELAY, (0.0, None))
        if retry_after is not None and retry_after > 0:
            self._flow.pause(retry_after)
        if delay > 0:
            self._sleep_fn(delay)


def error_body(response: PipelineResponse[Any, Any]) -> tuple[str | None, str | None, str]:
    """``error.code``, ``error.innererror.code`` and the message of an error answer."""
    http = response.http_response
    try:
        document = json.loads(http.text() or "{}")
    except (ValueError, UnicodeDecodeError):
        document = {}
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        return None, None, f"HTTP {http.status_code}"
    inner = error.get("innererror")
    code = error.get("code")
    inner_code = inner.get("code") if isinstance(inner, dict) else None
    message = error.get("message")
    return (
        code if isinstance(code, str) else None,
        inner_code if isinstance(inner_code, str) else None,
        message if isinstance(message, str) and message else f"HTTP {http.status_code}",
    )
