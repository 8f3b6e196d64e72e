"""Probes with fakes: content validation, failure classes, the e2e flow, timers and locks."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.analysis.results import ResultRepository
from shared.analysis.vision import AttemptHook, VisionResult
from shared.errors import (
    AuthError,
    ConfigError,
    InvalidImageError,
    OperationTimeoutError,
    StorageError,
    ThrottledError,
    TransientError,
)
from shared.naming import result_path
from shared.ops.jobs import ProbeFailure, ProbeResult, StatusStore, run_timer
from shared.ops.probes import (
    E2E_PROBE,
    VISION_PROBE,
    E2EProbe,
    ProbeAsset,
    ProbeRuntime,
    check_content,
    classify_probe_error,
    e2e_probe_timer,
    load_probe_assets,
    read_probe_results,
    run_e2e_probe,
    run_vision_probe,
    vision_probe_timer,
)
from shared.settings import RateMode, Settings
from shared.telemetry import PROBE_BLOB_MARKER, is_synthetic_blob
from tests.support.fakes import MemoryStore

NOW = datetime(2024, 5, 17, 12, 0, tzinfo=UTC)
ASSET = ProbeAsset(file="p.png", data=b"png", expected_words=("VISIONOPS", "PROBE", "4217"),
                   width=480, height=160)


def payload(lines: Sequence[str] = ("VISIONOPSPROBE", "CHECK 4217"), w: int = 480,
            h: int = 160) -> dict[str, Any]:
    return {"modelVersion": "2023-10-01", "metadata": {"width": w, "height": h},
            "readResult": {"blocks": [{"lines": [{"text": t} for t in lines]}]}}


class FakeAnalyzer:
    def __init__(self, answer: Mapping[str, Any] | BaseException) -> None:
        self.answer = answer
        self.calls: list[tuple[str, ...]] = []

    def analyze(self, image: bytes, features: Sequence[str], *,
                on_attempt: AttemptHook | None = None) -> VisionResult:
        self.calls.append(tuple(features))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return VisionResult(payload=self.answer, model_version="2023-10-01",
                            features=tuple(features), attempts=1, duration_ms=5.0,
                            limiter_wait_ms=0.0)


class Ticker:
    """A clock that moves only when slept on."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


# --------------------------------------------------------------------------- assets, content


def test_bundled_assets_match_their_manifest() -> None:
    from io import BytesIO

    from PIL import Image

    assets = load_probe_assets()
    assert assets
    for asset in assets:
        with Image.open(BytesIO(asset.data)) as img:
            assert img.size == (asset.width, asset.height)
        assert asset.expected_words
        assert len(asset.data) < 64 * 1024  # small: it ships in the package


def test_content_passes_even_when_ocr_drops_spaces() -> None:
    assert check_content(payload(), ASSET) is None
    assert check_content(payload(["visionops probe check 4217"]), ASSET) is None


@pytest.mark.parametrize(("answer", "expected"), [
    (payload(["VISIONOPS", "CHECK"]), "missed 2 of 3 expected words: PROBE, 4217"),
    (payload(w=481), "metadata 481x160, expected 480x160"),
    ({"metadata": {"width": 480, "height": 160}}, "no readResult"),
    ({}, "no metadata"),
])
def test_content_failures_name_what_is_wrong(answer: dict[str, Any], expected: str) -> None:
    problem = check_content(answer, ASSET)
    assert problem is not None and expected in problem


# --------------------------------------------------------------------------- classification

CASES: list[tuple[BaseException, ProbeFailure, str]] = [
    (ThrottledError("x", retry_after=2, reason="throttled", status_code=429),
     ProbeFailure.THROTTLED, "throttled: HTTP 429 throttled (retry after 2s)"),
    (AuthError("x", reason="unauthorized", status_code=401), ProbeFailure.AUTH,
     "auth: HTTP 401 unauthorized"),
    (AuthError("Out of call volume quota", reason="forbidden", status_code=403),
     ProbeFailure.THROTTLED, "throttled: HTTP 403 forbidden"),
    (OperationTimeoutError("x", reason="timeout"), ProbeFailure.TIMEOUT, "timeout: timeout"),
    (TransientError("x", reason="server_error_503", status_code=503),
     ProbeFailure.SERVER_ERROR, "server_error: HTTP 503 server_error_503"),
    (TransientError("x", reason="connection_error"), ProbeFailure.UNREACHABLE,
     "unreachable: connection_error"),
    (TransientError("x", reason="client_error"), ProbeFailure.UNREACHABLE,
     "unreachable: client_error"),
    (ConfigError("HTTP 200", reason="http_200", status_code=200), ProbeFailure.WRONG_CONTENT,
     "wrong_content: unreadable response (HTTP 200 http_200)"),
    (json.JSONDecodeError("Expecting value", "", 0), ProbeFailure.WRONG_CONTENT,
     "wrong_content: unreadable response (JSONDecodeError)"),
    (ConfigError("x", reason="endpoint_not_found", status_code=404), ProbeFailure.CONFIG,
     "config: HTTP 404 endpoint_not_found"),
    (InvalidImageError("x", reason="service_invalid_image_format", status_code=400),
     ProbeFailure.REJECTED, "rejected: HTTP 400 service_invalid_image_format"),
    (RuntimeError("boom"), ProbeFailure.UNEXPECTED, "unexpected: RuntimeError"),
]


@pytest.mark.parametrize(("error", "failure", "message"), CASES)
def test_vision_probe_classifies_each_failure(
    error: BaseException, failure: ProbeFailure, message: str
) -> None:
    result = run_vision_probe(FakeAnalyzer(error), [ASSET], run_location="here", now=lambda: NOW)
    assert (result.success, result.failure, result.message) == (False, failure, message)
    assert result.name == VISION_PROBE and result.run_location == "here"
    assert classify_probe_error(error) == (failure, message.split(": ", 1)[1])


def test_vision_probe_passes_on_the_known_answer_and_fails_on_wrong_content() -> None:
    clock = iter([0.0, 0.25])
    ok = run_vision_probe(FakeAnalyzer(payload()), [ASSET], run_location="l",
                          clock=lambda: next(clock), now=lambda: NOW)
    assert ok.success and ok.failure is None and ok.duration_ms == 250.0
    bad = run_vision_probe(FakeAnalyzer(payload(["NOTHING"])), [ASSET], run_location="l")
    assert bad.failure is ProbeFailure.WRONG_CONTENT
    assert bad.message.startswith("wrong_content: p.png: OCR missed 3 of 3")


def test_probe_client_settings_fail_fast_and_use_the_probe_key() -> None:
    settings = Settings.from_env({
        "VISION_ENDPOINT": "http://127.0.0.1:1", "VISION_KEY": "pipeline-key",
        "PROBE_VISION_KEY": "probe-key", "PROBE_TIMEOUT_SECONDS": "4",
        "VISION_CONNECT_TIMEOUT_SECONDS": "9", "VISION_LANGUAGE": "fr",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    probe = settings.probes.vision
    assert probe.key == "probe-key"
    assert probe.max_retries == 0 and probe.timeout_seconds == 4
    assert probe.connect_timeout_seconds == 4  # never longer than the whole probe call
    assert probe.max_retry_after_seconds <= 1
    assert probe.rate_mode is RateMode.STATIC and probe.rate_limit_per_second == 1000
    assert probe.breaker_failures == 1000  # the breaker never refuses the probe
    # what it measures is the pipeline's own Vision: same endpoint, language, tier
    assert (probe.endpoint, probe.language, probe.tier) == (
        settings.vision.endpoint, "fr", settings.vision.tier)
    assert settings.vision.key == "pipeline-key"  # the pipeline's own client is untouched
    assert settings.vision.max_retries == 4 and settings.vision.rate_mode is RateMode.ADAPTIVE


def test_probe_key_falls_back_to_the_pipeline_key() -> None:
    base = {"VISION_ENDPOINT": "http://127.0.0.1:1",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    keyed = Settings.from_env({**base, "VISION_KEY": "pipeline-key"})
    assert keyed.probes.vision.key == "pipeline-key"
    assert Settings.from_env(base).probes.vision.key is None  # Entra ID, like the pipeline


def test_health_settings_report_every_bad_value() -> None:
    from shared.settings import SettingsError

    with pytest.raises(SettingsError) as info:
        Settings.from_env({
            "VISION_ENDPOINT": "http://x", "AzureWebJobsStorage": "UseDevelopmentStorage=true",
            "PROBE_SCHEDULE": "*/5 * * * *", "QUOTA_WARN_THRESHOLDS": "0.8,abc",
            "STATUS_CONTAINER": "images", "PROBE_TIMEOUT_SECONDS": "0"})
    text = "\n".join(info.value.problems)
    for key in ("PROBE_SCHEDULE", "QUOTA_WARN_THRESHOLDS", "STATUS_CONTAINER",
                "PROBE_TIMEOUT_SECONDS"):
        assert key in text


# --------------------------------------------------------------------------- end-to-end probe


@dataclass
class FakeImages:
    """The images container plus a fake pipeline that documents a blob after ``delay`` s."""

    repo: ResultRepository
    ticker: Ticker
    delay: float = 3.0
    outcome: str = "analyzed"
    answer: dict[str, Any] = field(default_factory=payload)
    uploaded: dict[str, tuple[str, float]] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    count: int = 0

    def upload(self, container: str, name: str, data: bytes, metadata: Mapping[str, str]) -> str:
        assert name not in self.uploaded, "the probe never overwrites a blob"
        return self.put(name, metadata)

    def put(self, name: str, metadata: Mapping[str, str], at: float | None = None) -> str:
        """Any upload (the probe's or a user's): a new ETag, metadata replaced."""
        self.count += 1
        etag = f'"0x{self.count}"'
        self.uploaded[name] = (etag, self.ticker.t if at is None else at)
        self.metadata[name] = dict(metadata)
        return etag

    def delete_version(self, container: str, name: str, etag: str) -> bool:
        if name not in self.uploaded or self.uploaded[name][0] != etag:
            return False
        del self.uploaded[name]
        del self.metadata[name]
        return True

    def list_marked(self, container: str, prefix: str) -> list[tuple[str, str]]:
        return [(n, etag) for n, (etag, _) in self.uploaded.items()
                if n.startswith(prefix) and is_synthetic_blob(self.metadata[n])]

    def run_pipeline(self) -> None:
        for name, (etag, at) in list(self.uploaded.items()):
            if self.ticker.t - at >= self.delay:
                if self.outcome == "analyzed":
                    self.repo.write_result("images", name, etag, {"outcome": "analyzed",
                                                                  "analysis": self.answer})
                else:
                    self.repo.write_failure("images", name, etag, {
                        "outcome": "rejected",
                        "error": {"class": "invalid_input", "reason": "too_small"}})


def e2e_setup(**images: Any) -> tuple[E2EProbe, FakeImages, MemoryStore, Ticker]:
    store = MemoryStore()
    repo = ResultRepository(store, results_container="results", failed_container="failed")
    ticker = Ticker()
    fake = FakeImages(repo=repo, ticker=ticker, **images)

    def sleep(seconds: float) -> None:
        ticker.sleep(seconds)
        fake.run_pipeline()

    probe = E2EProbe(blobs=fake, repository=repo, images_container="images",
                     prefix="synthetic/probe/", asset=ASSET, deadline_seconds=10, poll_seconds=1,
                     run_location="here", clock=ticker.clock, sleep=sleep, now=lambda: NOW,
                     new_id=lambda: "run1")
    return probe, fake, store, ticker


def test_e2e_probe_waits_for_the_document_checks_it_and_cleans_up() -> None:
    probe, fake, store, ticker = e2e_setup()
    result = run_e2e_probe(probe)
    assert result.success, result.message
    assert result.name == E2E_PROBE and result.duration_ms == 3000.0
    assert ticker.sleeps == [1, 1, 1]  # polled with the injected sleep, no real wait
    assert fake.uploaded == {} and store.blobs == {}  # blob and document removed
    assert fake.count == 1


def test_e2e_probe_marks_its_blob() -> None:
    probe, fake, _, _ = e2e_setup(delay=60)
    seen: list[dict[str, str]] = []
    original = fake.delete_version

    def spy(container: str, name: str, etag: str) -> bool:
        seen.append(dict(fake.metadata[name]))
        return original(container, name, etag)

    fake.delete_version = spy  # type: ignore[method-assign]
    run_e2e_probe(probe)
    assert seen == [{PROBE_BLOB_MARKER: E2E_PROBE}]


def test_e2e_probe_ignores_a_document_of_another_etag() -> None:
    probe, _fake, store, _ = e2e_setup(delay=1)
    stale = ResultRepository(store, results_container="results", failed_container="failed")
    stale.write_result("images", "synthetic/probe/run1.png", '"0xold"', {"analysis": {}})
    result = run_e2e_probe(probe)
    assert result.success, result.message
    assert result.duration_ms == 1000.0  # waited for the document of the new ETag


@pytest.mark.parametrize(("images", "failure", "text"), [
    ({"delay": 60}, ProbeFailure.DEADLINE, "deadline: no result document within 10s"),
    ({"outcome": "rejected"}, ProbeFailure.REJECTED, "(invalid_input/too_small)"),
    ({"answer": payload(["SOMETHING ELSE"])}, ProbeFailure.WRONG_CONTENT, "OCR missed"),
])
def test_e2e_probe_failures(images: dict[str, Any], failure: ProbeFailure, text: str) -> None:
    probe, fake, store, _ = e2e_setup(**images)
    result = run_e2e_probe(probe)
    assert not result.success and result.failure is failure and text in result.message
    assert fake.uploaded == {} and store.blobs == {}  # cleaned up on failure too


def test_e2e_probe_sweeps_only_its_own_marked_leftovers() -> None:
    probe, fake, store, _ = e2e_setup()
    repo = probe.repository
    old = "synthetic/probe/old.png"  # a crashed probe run's blob and document
    old_etag = fake.put(old, {PROBE_BLOB_MARKER: E2E_PROBE}, at=-100.0)
    repo.write_result("images", old, old_etag, {"outcome": "analyzed"})
    # user uploads under the reserved folder (and elsewhere), each with its result document
    users = ["synthetic/probe/customer-upload-1.jpg", "synthetic/other.jpg", "user/photo.png"]
    for name in users:
        repo.write_result("images", name, fake.put(name, {"owner": "customer"}, at=-100.0),
                          {"outcome": "analyzed"})
    assert run_e2e_probe(probe).success
    assert sorted(fake.uploaded) == sorted(users)  # only the marked blob was swept
    assert sorted(path for _, path in store.blobs) == sorted(result_path(n) for n in users)


def test_e2e_probe_never_deletes_a_version_it_did_not_write() -> None:
    """A user overwrites a marked leftover (the marker goes with the old version): the new
    version and its document stay, whatever the probe's sweep finds in its listing."""
    probe, fake, _, _ = e2e_setup()
    repo = probe.repository
    name = "synthetic/probe/reused.png"
    probe_etag = fake.put(name, {PROBE_BLOB_MARKER: E2E_PROBE}, at=-100.0)
    repo.write_result("images", name, probe_etag, {"outcome": "analyzed"})
    listed = fake.list_marked("images", probe.prefix)
    user_etag = fake.put(name, {}, at=-50.0)  # between the listing and the delete
    repo.write_result("images", name, user_etag, {"outcome": "analyzed"})
    fake.list_marked = lambda container, prefix: listed  # type: ignore[method-assign]
    assert run_e2e_probe(probe).success
    assert fake.uploaded[name][0] == user_etag
    assert repo.find_current("images", name, user_etag) is not None


def test_e2e_probe_leaves_its_blob_for_the_sweep_when_document_cleanup_fails() -> None:
    probe, fake, store, _ = e2e_setup()
    original = store.delete

    def failing(container: str, path: str) -> bool:
        if container == "results":  # the probe's clean-up (the pipeline deletes in failed/)
            raise StorageError("storage down", reason="storage_delete")
        return original(container, path)

    store.delete = failing  # type: ignore[method-assign]
    assert run_e2e_probe(probe).success
    assert list(fake.uploaded) == ["synthetic/probe/run1.png"]  # still marked, still there
    store.delete = original  # type: ignore[method-assign]
    probe2 = replace(probe, new_id=lambda: "run2")
    assert run_e2e_probe(probe2).success
    assert fake.uploaded == {} and store.blobs == {}  # the next run's sweep finished the job


# --------------------------------------------------------------------------- timers and locks


class MemoryLock:
    def __init__(self) -> None:
        self.held: set[str] = set()

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[bool]:
        if name in self.held:
            yield False
            return
        self.held.add(name)
        try:
            yield True
        finally:
            self.held.discard(name)


def test_overlapping_run_is_skipped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    lock = MemoryLock()
    ran: list[str] = []

    def job() -> None:
        # a second trigger while the first still runs (another instance, a slow run)
        ran.append("outer")
        inner = run_timer("vision_probe", lambda: ran.append("inner"), past_due=False, lock=lock)
        assert inner is False

    with caplog.at_level(logging.INFO, logger="shared.ops.jobs"):
        assert run_timer("vision_probe", job, past_due=False, lock=lock) is True
    assert ran == ["outer"]
    assert "previous run still in progress" in caplog.text
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)
    assert lock.held == set()  # released after the run


def test_past_due_is_logged_and_runs_once(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[int] = []
    with caplog.at_level(logging.INFO, logger="shared.ops.jobs"):
        run_timer("quota_check", lambda: ran.append(1), past_due=True, lock=MemoryLock())
    assert ran == [1]
    assert "past due; running once now" in caplog.text


def runtime(analyzer: Any, recorded: list[ProbeResult], store: MemoryStore,
            lock: MemoryLock | None = None) -> ProbeRuntime:
    settings = Settings.from_env({"VISION_ENDPOINT": "http://127.0.0.1:1",
                                  "AzureWebJobsStorage": "UseDevelopmentStorage=true",
                                  "PROBE_RUN_LOCATION": "test-region"})

    def factory() -> Any:
        if isinstance(analyzer, BaseException):
            raise analyzer
        return analyzer

    def no_e2e() -> E2EProbe:
        raise AssertionError("not used")

    return ProbeRuntime(settings=settings, lock=lock or MemoryLock(),
                        status=StatusStore(store, "status"), analyzer_factory=factory,
                        e2e_factory=no_e2e, availability=recorded.append)


def test_timer_records_availability_and_keeps_the_last_result() -> None:
    recorded: list[ProbeResult] = []
    store = MemoryStore()
    result = vision_probe_timer(past_due=False,
                                runtime=runtime(FakeAnalyzer(payload()), recorded, store))
    assert result is not None and result.success
    assert recorded == [result] and result.run_location == "test-region"
    assert read_probe_results(StatusStore(store, "status")) == {VISION_PROBE: result}


def test_a_probe_that_cannot_even_start_never_raises_into_the_host() -> None:
    recorded: list[ProbeResult] = []
    store = MemoryStore()
    rt = runtime(RuntimeError("client construction failed"), recorded, store)
    result = vision_probe_timer(past_due=False, runtime=rt)
    assert result is not None and result.failure is ProbeFailure.UNEXPECTED
    assert [r.success for r in recorded] == [False]


def test_a_failing_lock_is_a_failed_result_not_an_exception() -> None:
    from shared.errors import StorageError

    class BrokenLock:
        @contextlib.contextmanager
        def hold(self, name: str) -> Iterator[bool]:
            raise StorageError("lock", reason="storage_lock")
            yield True  # pragma: no cover

    recorded: list[ProbeResult] = []
    rt = runtime(FakeAnalyzer(payload()), recorded, MemoryStore())
    rt = ProbeRuntime(settings=rt.settings, lock=BrokenLock(), status=rt.status,
                      analyzer_factory=rt.analyzer_factory, e2e_factory=rt.e2e_factory,
                      availability=recorded.append)
    result = e2e_probe_timer(past_due=False, runtime=rt)
    assert result is not None and result.name == E2E_PROBE
    assert result.failure is ProbeFailure.STORAGE and recorded == [result]


def test_skipped_timer_records_nothing() -> None:
    recorded: list[ProbeResult] = []
    lock = MemoryLock()
    lock.held.add("vision_probe")
    rt = runtime(FakeAnalyzer(payload()), recorded, MemoryStore(), lock)
    assert vision_probe_timer(past_due=False, runtime=rt) is None
    assert recorded == []


def test_probe_result_round_trips() -> None:
    result = ProbeResult(name=E2E_PROBE, success=False, duration_ms=1.5, message="deadline: x",
                         run_location="r", started_at=NOW, failure=ProbeFailure.DEADLINE)
    assert ProbeResult.from_dict(json.loads(json.dumps(result.as_dict()))) == result
