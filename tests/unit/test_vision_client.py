"""The Vision client with a hand-written fake transport under the real SDK, a fake clock and a
recording sleep: retries, Retry-After, no retry on 4xx, jitter bounds and the token bucket."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError, ServiceResponseTimeoutError
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import case_insensitive_dict

from shared.analysis.attempts import VisionAttempt
from shared.analysis.vision import (
    RetryRules,
    TokenBucket,
    VisionClient,
    build_vision_client,
    parse_retry_after,
)
from shared.errors import (
    AuthError,
    ConfigError,
    ErrorClass,
    InvalidImageError,
    OperationTimeoutError,
    ThrottledError,
    TransientError,
    VisionUnavailableError,
)
from shared.settings import Settings
from tests.support.clocks import FakeClock
from tests.support.vision import OK_BODY

# --------------------------------------------------------------------------- fakes


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def error_body(code: str, inner: str | None = None, message: str = "nope") -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner:
        error["innererror"] = {"code": inner, "message": message}
    return {"error": error}


class _Closable:
    def close(self) -> None:
        pass


class FakeTransport(HttpTransport):  # type: ignore[type-arg]
    """Answers each request with the next scripted reply (or raises the scripted error)."""

    def __init__(self, script: Sequence[Reply | Exception]) -> None:
        self.script = list(script)
        self.requests: list[tuple[HttpRequest, dict[str, Any]]] = []

    def send(self, request: HttpRequest, **kwargs: Any) -> HttpResponseImpl:  # type: ignore[override]
        self.requests.append((request, kwargs))
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        body = b"" if item.body is None else json.dumps(item.body).encode()

        def stream(**_: Any) -> Iterator[bytes]:
            yield body

        response = HttpResponseImpl(
            request=request,
            internal_response=_Closable(),
            status_code=item.status,
            reason="fake",
            content_type="application/json",
            headers=case_insensitive_dict({"Content-Type": "application/json", **item.headers}),
            stream_download_generator=stream,
        )
        response.read()  # like the requests transport does for non-streamed calls
        return response

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeTransport:
        return self

    def __exit__(self, *args: object) -> None:
        pass


SETTINGS = Settings.from_env(
    {
        "VISION_ENDPOINT": "http://127.0.0.1:7081",
        "VISION_KEY": "devstack-vision-key",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "VISION_MAX_RETRIES": "3",
        "VISION_BACKOFF_BASE_SECONDS": "1",
        "VISION_BACKOFF_MAX_SECONDS": "8",
        "VISION_MAX_RETRY_AFTER_SECONDS": "30",
        "VISION_CONNECT_TIMEOUT_SECONDS": "2",
        "VISION_TIMEOUT_SECONDS": "9",
        "VISION_RATE_LIMIT_PER_SECOND": "1000",
    }
)
FEATURES = ("read", "people", "smartCrops")


def client_for(
    script: Sequence[Reply | Exception], clock: FakeClock
) -> tuple[VisionClient, FakeTransport]:
    transport = FakeTransport(script)
    client = build_vision_client(
        SETTINGS.vision,
        transport=transport,
        clock=clock,
        sleep=clock.sleep,
        limiter_clock=clock,
        rng=random.Random(42),
    )
    return client, transport


# --------------------------------------------------------------------------- the real SDK path


def test_success_sends_features_key_and_timeouts() -> None:
    clock = FakeClock()
    client, transport = client_for([Reply(200, OK_BODY)], clock)
    attempts: list[VisionAttempt] = []
    result = client.analyze(b"\xff\xd8\xffimage", FEATURES, on_attempt=attempts.append)
    assert result.model_version == "2023-10-01"
    assert result.payload["metadata"] == {"width": 640, "height": 480}
    assert result.attempts == 1
    ((request, kwargs),) = transport.requests
    assert request.url.startswith("http://127.0.0.1:7081/computervision/imageanalysis:analyze?")
    assert "features=read,people,smartCrops" in request.url.replace("%2C", ",")
    assert request.headers["Ocp-Apim-Subscription-Key"] == "devstack-vision-key"
    assert request.headers["Content-Type"] == "application/octet-stream"
    assert kwargs["connection_timeout"] == 2.0
    assert kwargs["read_timeout"] == 9.0
    assert [a.status_code for a in attempts] == [200]
    assert attempts[0].succeeded and not attempts[0].will_retry
    assert clock.sleeps == []


def test_429_honours_retry_after_then_succeeds() -> None:
    clock = FakeClock()
    client, transport = client_for(
        [
            Reply(429, error_body("429", None, "Rate limit"), {"Retry-After": "3"}),
            Reply(200, OK_BODY),
        ],
        clock,
    )
    attempts: list[VisionAttempt] = []
    result = client.analyze(b"img", FEATURES, on_attempt=attempts.append)
    assert result.attempts == 2
    assert len(transport.requests) == 2
    assert clock.sleeps[0] >= 3.0  # never sooner than the service asked
    first = attempts[0]
    assert first.error_class is ErrorClass.THROTTLED
    assert first.retry_after_s == 3.0
    assert first.backoff_s is not None and first.backoff_s >= 3.0


@pytest.mark.parametrize(
    ("status", "body", "error_type", "reason"),
    [
        (
            400,
            error_body("InvalidRequest", "InvalidImageFormat"),
            InvalidImageError,
            "service_invalid_image_format",
        ),
        (
            400,
            error_body("InvalidRequest", "InvalidImageSize"),
            InvalidImageError,
            "service_invalid_image_size",
        ),
        (
            400,
            error_body("InvalidRequest", "NotSupportedVisualFeature"),
            ConfigError,
            "service_not_supported_visual_feature",
        ),
        (401, error_body("PermissionDenied"), AuthError, "unauthorized"),
        (403, error_body("Forbidden"), AuthError, "forbidden"),
        (404, error_body("NotFound"), ConfigError, "endpoint_not_found"),
        (415, None, InvalidImageError, "service_rejected_image"),
    ],
)
def test_non_retryable_errors_are_never_retried(
    status: int, body: Any, error_type: type[Exception], reason: str
) -> None:
    clock = FakeClock()
    client, transport = client_for([Reply(status, body), Reply(200, OK_BODY)], clock)
    with pytest.raises(error_type) as info:
        client.analyze(b"img", FEATURES)
    assert len(transport.requests) == 1
    assert clock.sleeps == []
    error = info.value
    assert getattr(error, "reason") == reason  # noqa: B009
    assert getattr(error, "status_code") == status  # noqa: B009
    assert getattr(error, "attempts") == 1  # noqa: B009
    assert getattr(error, "retryable") is False  # noqa: B009


def test_service_error_codes_are_kept() -> None:
    clock = FakeClock()
    client, _ = client_for([Reply(400, error_body("InvalidRequest", "InvalidImageFormat"))], clock)
    with pytest.raises(InvalidImageError) as info:
        client.analyze(b"img", FEATURES)
    assert (info.value.error_code, info.value.inner_code) == (
        "InvalidRequest",
        "InvalidImageFormat",
    )


def test_5xx_retried_until_exhausted_then_retryable_error() -> None:
    clock = FakeClock()
    client, transport = client_for([Reply(503, error_body("ServiceUnavailable"))] * 4, clock)
    attempts: list[VisionAttempt] = []
    with pytest.raises(TransientError) as info:
        client.analyze(b"img", FEATURES, on_attempt=attempts.append)
    assert len(transport.requests) == 4  # 1 + VISION_MAX_RETRIES
    assert info.value.attempts == 4
    assert info.value.retryable
    assert info.value.reason == "server_error_503"
    assert len(clock.sleeps) == 3
    for n, slept in enumerate(clock.sleeps, start=1):
        assert 0.0 <= slept <= min(8.0, 1.0 * 2 ** (n - 1))
    assert [a.will_retry for a in attempts] == [True, True, True, False]


def test_503_retry_after_is_honoured_like_a_429s() -> None:
    clock = FakeClock()
    client, transport = client_for(
        [Reply(503, error_body("ServiceUnavailable"), {"Retry-After": "2"}), Reply(200, OK_BODY)],
        clock,
    )
    attempts: list[VisionAttempt] = []
    result = client.analyze(b"img", FEATURES, on_attempt=attempts.append)
    assert result.attempts == 2
    assert clock.sleeps[0] >= 2.0  # not the 0-0.5 s jitter of a plain 5xx
    assert attempts[0].error_class is ErrorClass.TRANSIENT
    assert attempts[0].retry_after_s == 2.0
    assert len(transport.requests) == 2


def test_timeouts_and_connection_errors_are_retried() -> None:
    clock = FakeClock()
    client, transport = client_for(
        [
            ServiceResponseTimeoutError("read timed out"),
            ServiceRequestError("refused"),
            Reply(200, OK_BODY),
        ],
        clock,
    )
    attempts: list[VisionAttempt] = []
    result = client.analyze(b"img", FEATURES, on_attempt=attempts.append)
    assert result.attempts == 3
    assert [a.error_class for a in attempts] == [ErrorClass.TIMEOUT, ErrorClass.TRANSIENT, None]
    assert len(transport.requests) == 3


def test_exhausted_timeouts_raise_timeout_error() -> None:
    clock = FakeClock()
    client, _ = client_for([ServiceResponseTimeoutError("read timed out")] * 4, clock)
    with pytest.raises(OperationTimeoutError):
        client.analyze(b"img", FEATURES)


def test_retry_after_beyond_cap_gives_back_to_the_host() -> None:
    clock = FakeClock()
    client, transport = client_for([Reply(429, None, {"Retry-After": "120"})], clock)
    with pytest.raises(ThrottledError) as info:
        client.analyze(b"img", FEATURES)
    assert info.value.retry_after == 120.0
    assert info.value.retryable
    assert len(transport.requests) == 1
    assert clock.sleeps == []


def test_401_from_entra_token_path_uses_bearer() -> None:
    @dataclass
    class Token:
        token: str
        expires_on: int

    class Credential:
        def get_token(self, *scopes: str, **kwargs: Any) -> Token:
            assert scopes == ("https://cognitiveservices.azure.com/.default",)
            return Token("entra-token", 2**31)

    keyless = Settings.from_env(
        {
            "VISION_ENDPOINT": "https://acct.cognitiveservices.azure.com",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        }
    )
    clock = FakeClock()
    transport = FakeTransport([Reply(401, error_body("PermissionDenied"))])
    client = build_vision_client(
        keyless.vision,
        credential=Credential(),
        transport=transport,
        clock=clock,
        sleep=clock.sleep,  # type: ignore[arg-type]
        limiter_clock=clock,
    )
    with pytest.raises(AuthError):
        client.analyze(b"img", FEATURES)
    ((request, _),) = transport.requests
    assert request.headers["Authorization"] == "Bearer entra-token"


# --------------------------------------------------------------------------- backoff + jitter


class EdgeRng(random.Random):
    def __init__(self, pick_high: bool) -> None:
        super().__init__(0)
        self.pick_high = pick_high

    def uniform(self, a: float, b: float) -> float:
        return b if self.pick_high else a


def test_full_jitter_bounds_and_cap() -> None:
    policy = RetryRules(backoff_base_seconds=0.5, backoff_max_seconds=5.0)
    assert [policy.backoff_ceiling(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    high, low = EdgeRng(True), EdgeRng(False)
    assert policy.delay(3, None, high) == 2.0
    assert policy.delay(3, None, low) == 0.0
    assert policy.delay(3, 7.5, low) == 7.5  # Retry-After is a floor
    rng = random.Random(1)
    samples = [policy.delay(4, None, rng) for _ in range(2000)]
    assert min(samples) >= 0.0 and max(samples) <= 4.0
    assert max(samples) > 3.5 and min(samples) < 0.5  # the full range is used
    assert policy.backoff_ceiling(10_000) == 5.0


def test_parse_retry_after_forms() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"x-ms-retry-after-ms": "250"}) == 0.25
    date = "Wed, 01 May 2024 12:00:30 GMT"
    assert parse_retry_after({"Retry-After": date}, now=lambda: now) == 30.0
    assert parse_retry_after({"Retry-After": "-5"}) == 0.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None


# --------------------------------------------------------------------------- token bucket


def test_token_bucket_spaces_calls_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, clock=clock, sleep=clock.sleep)
    waits = [bucket.reserve() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    clock.now += 10.0  # idle time does not bank more than the burst
    assert [bucket.reserve() for _ in range(2)] == pytest.approx([0.0, 0.1])


def test_token_bucket_burst_then_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, burst=3, clock=clock, sleep=clock.sleep)
    assert [bucket.reserve() for _ in range(5)] == pytest.approx([0, 0, 0, 1, 2])


def test_token_bucket_acquire_sleeps_and_f0_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(20 / 60, clock=clock, sleep=clock.sleep)  # F0: 20 per minute
    for _ in range(21):
        bucket.acquire()
    assert clock.now - 1000.0 == pytest.approx(60.0)  # 21st call starts after one minute
    assert len(clock.sleeps) == 20


def test_token_bucket_pause_delays_new_slots() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, clock=clock, sleep=clock.sleep)
    bucket.reserve()
    bucket.pause(2.0)
    assert bucket.reserve() == pytest.approx(2.0)
    assert bucket.reserve() == pytest.approx(2.1)


def test_token_bucket_is_thread_safe() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100.0, clock=clock, sleep=clock.sleep)
    waits: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def worker() -> None:
        start.wait()
        for _ in range(25):
            wait = bucket.reserve()
            with lock:
                waits.append(wait)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 400 reservations, each its own slot exactly 10 ms apart: none lost, none shared
    assert sorted(round(w, 6) for w in waits) == [round(i * 0.01, 6) for i in range(400)]


def test_limiter_leaves_headroom_below_the_configured_rate() -> None:
    """The service counts arrivals in a rolling second: at 10/s configured, any 11 consecutive
    sends must span more than a second, with slack for send-to-arrival jitter."""
    settings = Settings.from_env(
        {
            "VISION_ENDPOINT": "http://127.0.0.1:7081",
            "VISION_KEY": "k",
            "VISION_RATE_LIMIT_PER_SECOND": "10",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        }
    )
    clock = FakeClock()
    transport = FakeTransport([Reply(200, OK_BODY)] * 11)
    client = build_vision_client(
        settings.vision, transport=transport, clock=clock, sleep=clock.sleep, limiter_clock=clock
    )
    sent: list[float] = []
    for _ in range(11):
        client.analyze(b"img", FEATURES)
        sent.append(clock.now)
    assert sent[10] - sent[0] >= 1.0 + 0.02  # 20 ms of slack per window
    assert sent[10] - sent[0] <= 1.0 / 0.97  # but no more than 3 % below the limit


def test_invalid_bucket_arguments() -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(0)


# --------------------------------------------------------------------------- flow control


def settings_with(**values: str) -> Settings:
    base = {
        "VISION_ENDPOINT": "http://127.0.0.1:7081",
        "VISION_KEY": "k",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "VISION_MAX_RETRIES": "3",
        "VISION_BACKOFF_BASE_SECONDS": "0.1",
        "VISION_BACKOFF_MAX_SECONDS": "1",
    }
    return Settings.from_env({**base, **values})


def build(settings: Settings, script: Sequence[Reply | Exception],
          clock: FakeClock) -> tuple[VisionClient, FakeTransport]:
    transport = FakeTransport(script)
    client = build_vision_client(settings.vision, transport=transport, clock=clock,
                                 sleep=clock.sleep, limiter_clock=clock, rng=random.Random(3))
    return client, transport


def test_each_attempt_takes_a_rate_limiter_token() -> None:
    clock = FakeClock()
    settings = settings_with(VISION_RATE_LIMIT_PER_SECOND="2", VISION_BACKOFF_BASE_SECONDS="0",
                             VISION_BACKOFF_MAX_SECONDS="0")
    client, transport = build(settings, [Reply(503), Reply(503), Reply(200, OK_BODY)], clock)
    result = client.analyze(b"img", FEATURES)
    assert result.attempts == 3 and len(transport.requests) == 3
    # one slot every 1 / (2 * 0.98) s: the 2nd and 3rd attempt each wait for theirs
    assert result.limiter_wait_ms == pytest.approx(2 * 1000 / (2 * 0.98))


def test_a_long_retry_after_pauses_every_caller_a_short_one_only_the_retry() -> None:
    clock = FakeClock()
    script = [Reply(503, None, {"Retry-After": "5"}), Reply(200, OK_BODY)]
    client, _ = build(settings_with(VISION_RATE_LIMIT_PER_SECOND="100"), script, clock)
    client.analyze(b"img", FEATURES)
    assert client.flow.bucket.reserve() == pytest.approx(0.0, abs=0.02)  # 5 s already slept
    assert clock.sleeps[0] >= 5.0
    clock2 = FakeClock()
    waits: list[float] = []
    holder: dict[str, Any] = {}

    def sleep(seconds: float) -> None:
        if "flow" in holder:  # another caller asks for a slot during this wait
            waits.append(holder["flow"].bucket.reserve())
        clock2.sleep(seconds)

    short = build_vision_client(
        settings_with(VISION_RATE_LIMIT_PER_SECOND="100").vision,
        transport=FakeTransport([Reply(429, None, {"Retry-After": "1"}), Reply(200, OK_BODY)]),
        clock=clock2, sleep=sleep, limiter_clock=clock2, rng=random.Random(3),
    )
    flow = holder["flow"] = short.flow
    short.analyze(b"img", FEATURES)
    assert clock2.sleeps[0] == pytest.approx(1.0, abs=0.2)  # the retry waited Retry-After
    assert waits and waits[0] < 0.5  # ... but the other caller was not stopped for it
    assert flow.throttles == 1 and flow.pauses == 0


def test_unexpected_transport_exceptions_propagate_unchanged() -> None:
    clock = FakeClock()
    client, transport = build(settings_with(), [KeyError("bug")], clock)
    with pytest.raises(KeyError):
        client.analyze(b"img", FEATURES)
    assert len(transport.requests) == 1


def test_the_breaker_opens_after_consecutive_failures_and_probes_at_its_interval() -> None:
    clock = FakeClock()
    settings = settings_with(
        VISION_RATE_LIMIT_PER_SECOND="100", VISION_MAX_RETRIES="1",
        VISION_BREAKER_FAILURES="4", VISION_PROBE_INTERVAL_SECONDS="5",
    )
    client, transport = build(settings, [Reply(503)] * 5 + [Reply(200, OK_BODY)], clock)
    with pytest.raises(TransientError) as first:
        client.analyze(b"img", FEATURES)  # 2 failures: still closed
    assert not isinstance(first.value, VisionUnavailableError)
    with pytest.raises(VisionUnavailableError) as second:
        client.analyze(b"img", FEATURES)  # 4 failures: open
    assert second.value.reason == "vision_unavailable"
    assert len(transport.requests) == 4
    with pytest.raises(VisionUnavailableError) as refused:
        client.analyze(b"img", FEATURES)
    assert refused.value.reason == "circuit_open"
    assert len(transport.requests) == 4  # refused locally: nothing was sent
    clock.now += 5.0
    with pytest.raises(VisionUnavailableError):
        client.analyze(b"img", FEATURES)  # the probe goes out, fails, no retry while open
    assert len(transport.requests) == 5
    with pytest.raises(VisionUnavailableError):
        client.analyze(b"img", FEATURES)
    assert len(transport.requests) == 5
    clock.now += 5.0
    assert client.analyze(b"img", FEATURES).attempts == 1  # the probe succeeds: closed
    assert client.flow.breaker.state.value == "closed"


def test_the_retry_budget_stops_retries_in_a_failure_storm() -> None:
    clock = FakeClock()
    settings = settings_with(VISION_RATE_LIMIT_PER_SECOND="1000", VISION_BREAKER_FAILURES="1000",
                             VISION_RETRY_BUDGET_RATIO="0.2")
    calls = 40
    client, transport = build(settings, [Reply(500)] * 1000, clock)
    attempts: list[VisionAttempt] = []
    for _ in range(calls):
        with pytest.raises(TransientError):
            client.analyze(b"img", FEATURES, on_attempt=attempts.append)
    retries = len(transport.requests) - calls
    # 10 s window: 20 % of 40 first attempts + 0.5/s x 10 s reserve = 13 retries at most
    assert 0 < retries <= 13
    exhausted = [a for a in attempts if a.budget_exhausted]
    assert exhausted and client.flow.budget.exhausted == len(exhausted)
    assert len(transport.requests) < calls * 4  # without the budget: 4 attempts each


def test_a_probe_that_dies_of_a_bug_does_not_wedge_the_breaker_half_open() -> None:
    clock = FakeClock()
    settings = settings_with(
        VISION_RATE_LIMIT_PER_SECOND="100", VISION_MAX_RETRIES="0",
        VISION_BREAKER_FAILURES="1", VISION_PROBE_INTERVAL_SECONDS="5",
    )
    script = [Reply(503), KeyError("bug"), Reply(200, OK_BODY)]
    client, transport = build(settings, script, clock)
    with pytest.raises(VisionUnavailableError):
        client.analyze(b"img", FEATURES)  # opens
    clock.now += 5
    with pytest.raises(KeyError):
        client.analyze(b"img", FEATURES)  # the probe raises something that is no answer
    assert client.flow.breaker.state.value == "open"
    clock.now += 5
    assert client.analyze(b"img", FEATURES).attempts == 1  # the next probe still goes out
    assert len(transport.requests) == 3
