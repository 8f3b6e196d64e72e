"""Synthetic availability probes: the Vision probe and the end-to-end pipeline probe.

Two probes, each one availability result per run (AppAvailabilityResults, see
docs/probes-and-quota.md):

* ``vision-analyze`` — sends the bundled probe images (``shared/probe_assets``) to Vision with
  a probe-specific client (few or no retries, short timeout, its own key setting) and checks the
  **content**: OCR must contain the manifest's words and the metadata the manifest's size.
* ``pipeline-e2e`` — uploads a probe image, marked as the probe's by its blob metadata
  (``telemetry.PROBE_BLOB_MARKER``), into the probe's folder (``PROBE_E2E_PREFIX``) of the
  images container, waits (injected clock and sleep) for its result document with the right
  source ETag and content, then removes the blob and its documents.

The folder is reserved for the probe, but a user's blob there is still the user's: it is
analysed and counted like any other, and the probe only ever deletes a blob that carries its
marker and still has the ETag the probe saw (a user's overwrite drops the marker), with the
documents of exactly that blob version.

Every failure becomes a ``ProbeFailure`` class in the result's message
(``"<class>: <detail>"``), never an exception into the host. Each run goes through the timer
body every job shares (``shared.ops.jobs.run_timer``: past-due log, a blob lease so runs never
overlap), records its availability result and keeps the last result per probe in the status
container (``probes/<name>.json``, read by ``read_probe_results``).

Must never: let an exception reach the Functions host from a timer, put OCR text, image bytes,
keys or connection strings into a message, log or status document.

Why one module past 450 lines: the two probes share their assets, their failure classification
and their timer body, and are one sibling among the ops jobs (an import contract keeps the jobs
from importing each other, so splitting it would mean a package of its own).
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceModifiedError, ResourceNotFoundError

from shared.analysis.results import BlobDocumentStore
from shared.errors import (
    AuthError,
    ConfigError,
    InvalidImageError,
    OperationTimeoutError,
    StorageError,
    ThrottledError,
    TransientError,
    VisionOpsError,
)
from shared.ops.jobs import (
    AvailabilitySink,
    ProbeFailure,
    ProbeResult,
    RunLock,
    StatusStore,
    run_timer,
    track_probe_availability,
)
from shared.telemetry import PROBE_BLOB_MARKER, is_synthetic_blob
from shared.units import ms

if TYPE_CHECKING:
    from shared.analysis.results import ResultRepository
    from shared.analysis.vision import AttemptHook, VisionAnalyzer
    from shared.settings import Settings

logger = logging.getLogger(__name__)

ASSETS_DIR: Final = Path(__file__).resolve().parent / "probe_assets"
MANIFEST: Final = "manifest.json"

VISION_PROBE: Final = "vision-analyze"
E2E_PROBE: Final = "pipeline-e2e"
#: Blob (in the status container) holding the last result of probe ``<name>``.
PROBE_RESULT_PATH: Final = "probes/{name}.json"
#: Features the Vision probe asks for: OCR is what it validates; metadata always comes back.
PROBE_FEATURES: Final = ("read",)

Clock = Callable[[], float]
Sleep = Callable[[float], None]
Now = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ProbeError(Exception):
    """A probe check failed; carries its class and a short detail (no content, no secrets)."""

    def __init__(self, failure: ProbeFailure, detail: str) -> None:
        super().__init__(f"{failure.value}: {detail}")
        self.failure = failure
        self.detail = detail


# --------------------------------------------------------------------------- assets


@dataclass(frozen=True, slots=True)
class ProbeAsset:
    """A probe image whose correct answer is known."""

    file: str
    data: bytes = field(repr=False)
    expected_words: tuple[str, ...]
    width: int
    height: int


@functools.cache
def load_probe_assets(directory: Path = ASSETS_DIR) -> tuple[ProbeAsset, ...]:
    """The manifest's images (read once per process); a broken manifest is a ``ConfigError``."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        assets = tuple(
            ProbeAsset(
                file=str(item["file"]),
                data=(directory / str(item["file"])).read_bytes(),
                expected_words=tuple(str(w) for w in item["expected_words"]),
                width=int(item["width"]),
                height=int(item["height"]),
            )
            for item in manifest["assets"]
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError("probe assets unreadable", reason="probe_assets") from exc
    if not assets:
        raise ConfigError("probe manifest lists no assets", reason="probe_assets")
    return assets


def _squeeze(text: str) -> str:
    return "".join(text.split()).upper()


def check_content(payload: Mapping[str, Any], asset: ProbeAsset) -> str | None:
    """What is wrong with an analysis of ``asset`` (``None`` when it is the known answer).

    OCR engines sometimes drop or add spaces ("VISIONOPSPROBE"), so the expected words are
    matched, case-insensitively, against the read text with all whitespace removed. The detail
    names only expected words and sizes, never what was read.
    """
    metadata = payload.get("metadata")
    if not isinstance(metadata, Mapping):
        return "no metadata in the response"
    width, height = metadata.get("width"), metadata.get("height")
    if (width, height) != (asset.width, asset.height):
        return f"metadata {width}x{height}, expected {asset.width}x{asset.height}"
    read = payload.get("readResult")
    if not isinstance(read, Mapping):
        return "no readResult in the response"
    lines: list[str] = []
    for block in read.get("blocks") or []:
        for line in (block or {}).get("lines") or []:
            text = (line or {}).get("text")
            if isinstance(text, str):
                lines.append(text)
    found = _squeeze(" ".join(lines))
    missing = [w for w in asset.expected_words if _squeeze(w) not in found]
    if missing:
        return f"OCR missed {len(missing)} of {len(asset.expected_words)} expected words: " + (
            ", ".join(missing)
        )
    return None


# --------------------------------------------------------------------------- classification


# First matching rule wins; order matters (a 403 "quota" answer is throttling, not auth).
_VISION_RULES: tuple[tuple[Callable[[VisionOpsError], bool], ProbeFailure], ...] = (
    (lambda e: isinstance(e, ThrottledError), ProbeFailure.THROTTLED),
    (lambda e: e.status_code == 403 and "quota" in e.message.lower(), ProbeFailure.THROTTLED),
    (lambda e: isinstance(e, AuthError), ProbeFailure.AUTH),
    (lambda e: isinstance(e, OperationTimeoutError), ProbeFailure.TIMEOUT),
    (lambda e: isinstance(e, StorageError), ProbeFailure.STORAGE),
    (lambda e: isinstance(e, TransientError) and (e.status_code or 0) >= 500,
     ProbeFailure.SERVER_ERROR),
    # connection refused/reset, a body cut off mid-way: the endpoint is not answering
    (lambda e: isinstance(e, TransientError), ProbeFailure.UNREACHABLE),
    # a 200 whose body the SDK could not decode (truncated JSON)
    (lambda e: e.status_code is not None and 200 <= e.status_code < 300,
     ProbeFailure.WRONG_CONTENT),
    (lambda e: isinstance(e, InvalidImageError), ProbeFailure.REJECTED),
    (lambda e: isinstance(e, ConfigError), ProbeFailure.CONFIG),
)


def classify_probe_error(exc: BaseException) -> tuple[ProbeFailure, str]:
    """The probe's failure class and a short detail for any exception a probe step raised."""
    if isinstance(exc, ProbeError):
        return exc.failure, exc.detail
    if isinstance(exc, VisionOpsError):
        failure = next((f for test, f in _VISION_RULES if test(exc)), ProbeFailure.UNEXPECTED)
        status = f"HTTP {exc.status_code} " if exc.status_code else ""
        detail = f"{status}{exc.reason}"
        if isinstance(exc, ThrottledError) and exc.retry_after is not None:
            detail += f" (retry after {exc.retry_after:g}s)"
        elif failure is ProbeFailure.WRONG_CONTENT:
            detail = f"unreadable response ({detail})"
        return failure, detail
    if isinstance(exc, ValueError):
        # the SDK lets the JSON error of a 200 body with the wrong content type through
        return ProbeFailure.WRONG_CONTENT, f"unreadable response ({type(exc).__name__})"
    return ProbeFailure.UNEXPECTED, type(exc).__name__


def _failed(
    name: str, exc: BaseException, *, started_at: datetime, duration_ms: float, location: str
) -> ProbeResult:
    failure, detail = classify_probe_error(exc)
    return ProbeResult(
        name=name,
        success=False,
        duration_ms=duration_ms,
        message=f"{failure.value}: {detail}",
        run_location=location,
        started_at=started_at,
        failure=failure,
    )



# --------------------------------------------------------------------------- Vision probe


def run_vision_probe(
    analyzer: VisionAnalyzer,
    assets: Sequence[ProbeAsset],
    *,
    run_location: str,
    clock: Clock = time.perf_counter,
    now: Now = _utc_now,
    on_attempt: AttemptHook | None = None,
) -> ProbeResult:
    """Analyse each asset and check its content; the first failure ends the run."""
    started_at, t0 = now(), clock()
    try:
        for asset in assets:
            result = analyzer.analyze(asset.data, PROBE_FEATURES, on_attempt=on_attempt)
            problem = check_content(result.payload, asset)
            if problem is not None:
                raise ProbeError(ProbeFailure.WRONG_CONTENT, f"{asset.file}: {problem}")
    except Exception as exc:  # every failure is a result (classified), never a raise
        return _failed(VISION_PROBE, exc, started_at=started_at,
                       duration_ms=ms(clock() - t0), location=run_location)
    return ProbeResult(
        name=VISION_PROBE, success=True, duration_ms=ms(clock() - t0),
        message=f"passed: {len(assets)} image(s), content as expected",
        run_location=run_location, started_at=started_at,
    )


# --------------------------------------------------------------------------- end-to-end probe


class ProbeBlobs(Protocol):
    """The blob operations of the end-to-end probe. Raise ``StorageError``."""

    def upload(self, container: str, name: str, data: bytes, metadata: Mapping[str, str]) -> str:
        """Create (never overwrite) a blob with ``metadata``; return its ETag."""
        ...

    def delete_version(self, container: str, name: str, etag: str) -> bool:
        """Delete the blob only while it still has ``etag``; whether it was deleted."""
        ...

    def list_marked(self, container: str, prefix: str) -> list[tuple[str, str]]:
        """``(name, etag)`` of the blobs under ``prefix`` carrying the probe's marker."""
        ...


@dataclass(frozen=True, slots=True)
class E2EProbe:
    blobs: ProbeBlobs
    repository: ResultRepository
    images_container: str
    #: The folder the probe uploads to and sweeps (``PROBE_E2E_PREFIX``, ends in ``/``).
    prefix: str
    asset: ProbeAsset
    deadline_seconds: float
    poll_seconds: float
    run_location: str
    clock: Clock = time.monotonic
    sleep: Sleep = time.sleep
    now: Now = _utc_now
    new_id: Callable[[], str] = field(default=lambda: uuid.uuid4().hex)


def _marker() -> dict[str, str]:
    return {PROBE_BLOB_MARKER: E2E_PROBE}


def run_e2e_probe(probe: E2EProbe) -> ProbeResult:
    """Upload → wait for the result document of that ETag → check content → clean up."""
    started_at, t0 = probe.now(), probe.clock()
    name = f"{probe.prefix}{probe.new_id()}.png"
    try:
        _sweep(probe)
        etag = probe.blobs.upload(probe.images_container, name, probe.asset.data, _marker())
        try:
            _await_result(probe, name, etag, t0)
        finally:
            _cleanup(probe, name, etag)
    except Exception as exc:  # every failure is a result (classified), never a raise
        return _failed(E2E_PROBE, exc, started_at=started_at,
                       duration_ms=ms(probe.clock() - t0),
                       location=probe.run_location)
    return ProbeResult(
        name=E2E_PROBE, success=True, duration_ms=ms(probe.clock() - t0),
        message="passed: result document with the expected content",
        run_location=probe.run_location, started_at=started_at,
    )


def _await_result(probe: E2EProbe, name: str, etag: str, t0: float) -> None:
    repo = probe.repository
    while True:
        found = repo.find_current(probe.images_container, name, etag)
        if found is not None:
            break
        if probe.clock() - t0 >= probe.deadline_seconds:
            raise ProbeError(ProbeFailure.DEADLINE,
                             f"no result document within {probe.deadline_seconds:g}s")
        probe.sleep(probe.poll_seconds)  # the poll interval of an injected sleep
    body = repo.store.read(found.container, found.path)
    doc = json.loads(body) if body else {}
    if found.container != repo.results_container:
        error = doc.get("error") or {}
        raise ProbeError(
            ProbeFailure.REJECTED,
            f"pipeline wrote a failure document ({error.get('class', '?')}/"
            f"{error.get('reason', '?')})",
        )
    problem = check_content(doc.get("analysis") or {}, probe.asset)
    if problem is not None:
        raise ProbeError(ProbeFailure.WRONG_CONTENT, problem)


def _cleanup(probe: E2EProbe, name: str, etag: str) -> None:
    """Remove the probe's blob version ``etag`` and its documents (best effort, logged).

    Documents first, and only those written for exactly this version: if deleting fails
    half-way the marked blob is still there for the next run's sweep, and a document of any
    other version of the name (a user's overwrite) is never touched.
    """
    repo = probe.repository
    try:
        for _ in range(2):  # a result and a failure document at most
            found = repo.find_current(probe.images_container, name, etag)
            if found is None:
                break
            repo.store.delete(found.container, found.path)
        probe.blobs.delete_version(probe.images_container, name, etag)
    except StorageError as exc:
        logger.warning("probe %s: clean-up failed (%s); the next run retries it", E2E_PROBE,
                       exc.reason)


def _sweep(probe: E2EProbe) -> None:
    """Leftovers of earlier runs that could not clean up (crash, storage outage): only blobs
    carrying the probe's marker, whatever else lives under the prefix."""
    for leftover, etag in probe.blobs.list_marked(probe.images_container, probe.prefix):
        _cleanup(probe, leftover, etag)


class BlobProbeBlobs(BlobDocumentStore):
    """``ProbeBlobs`` over azure-storage-blob, on top of the document store's client."""

    def upload(self, container: str, name: str, data: bytes, metadata: Mapping[str, str]) -> str:
        try:
            props = self._service.get_blob_client(container, name).upload_blob(
                data, overwrite=False, metadata=dict(metadata))
        except AzureError as exc:  # an existing blob of that name too: it is never replaced
            raise StorageError("uploading the probe blob failed", reason="storage_write") from exc
        return str(props["etag"])

    def delete_version(self, container: str, name: str, etag: str) -> bool:
        try:
            self._service.get_blob_client(container, name).delete_blob(
                etag=etag, match_condition=MatchConditions.IfNotModified)
        except (ResourceNotFoundError, ResourceModifiedError):
            return False  # gone, or overwritten since (then no longer the probe's)
        except AzureError as exc:
            raise StorageError("deleting the probe blob failed", reason="storage_delete") from exc
        return True

    def list_marked(self, container: str, prefix: str) -> list[tuple[str, str]]:
        try:
            blobs = self._service.get_container_client(container).list_blobs(
                name_starts_with=prefix, include=["metadata"])
            return [(b.name, str(b.etag)) for b in blobs if is_synthetic_blob(b.metadata)]
        except ResourceNotFoundError:
            return []
        except AzureError as exc:
            raise StorageError("listing probe blobs failed", reason="storage_list") from exc


# --------------------------------------------------------------------------- kept results


def read_probe_results(store: StatusStore) -> dict[str, ProbeResult]:
    """The last result of each probe (``probes/<name>.json``); probes never run are absent.

    Raises ``StorageError`` when storage cannot be read; an unreadable document is skipped.
    """
    results: dict[str, ProbeResult] = {}
    for name in (VISION_PROBE, E2E_PROBE):
        raw = store.read_json(PROBE_RESULT_PATH.format(name=name))
        if raw is None:
            continue
        try:
            results[name] = ProbeResult.from_dict(raw)
        except (KeyError, TypeError, ValueError):
            logger.warning("status document of probe %s is unreadable; ignored", name)
    return results


@dataclass(frozen=True, slots=True)
class ProbeRuntime:
    """What the probe timers need, built once per process by the composition root."""

    settings: Settings
    lock: RunLock
    status: StatusStore
    analyzer_factory: Callable[[], VisionAnalyzer]
    e2e_factory: Callable[[], E2EProbe]
    availability: AvailabilitySink = track_probe_availability
    on_vision_attempt: AttemptHook | None = None


def vision_probe_timer(
    *, past_due: bool, runtime: ProbeRuntime | Callable[[], ProbeRuntime],
    invocation_id: str | None = None,
) -> ProbeResult | None:
    """The Vision probe's timer body. Never raises; ``None`` when the run was skipped.

    ``runtime`` may be the factory the composition root offers: a failure to build it is then
    a failed result too."""
    return _probe_timer(
        "vision_probe", VISION_PROBE, past_due=past_due, invocation_id=invocation_id,
        runtime=runtime,
        probe=lambda rt: run_vision_probe(
            rt.analyzer_factory(), load_probe_assets(),
            run_location=rt.settings.jobs.run_location,
            on_attempt=rt.on_vision_attempt),
    )


def e2e_probe_timer(
    *, past_due: bool, runtime: ProbeRuntime | Callable[[], ProbeRuntime],
    invocation_id: str | None = None,
) -> ProbeResult | None:
    """The end-to-end probe's timer body. Never raises; ``None`` when the run was skipped."""
    return _probe_timer(
        "e2e_probe", E2E_PROBE, past_due=past_due, invocation_id=invocation_id,
        runtime=runtime, probe=lambda rt: run_e2e_probe(rt.e2e_factory()),
    )


def _probe_timer(
    function_name: str, probe_name: str, *, past_due: bool, invocation_id: str | None,
    runtime: ProbeRuntime | Callable[[], ProbeRuntime],
    probe: Callable[[ProbeRuntime], ProbeResult],
) -> ProbeResult | None:
    started_at, t0 = _utc_now(), time.perf_counter()
    outcome: list[ProbeResult] = []
    rt: ProbeRuntime | None = None
    try:
        rt = runtime if isinstance(runtime, ProbeRuntime) else runtime()
        bound = rt

        def job() -> None:
            result = probe(bound)
            outcome.append(result)
            _record(bound, result)

        run_timer(function_name, job, past_due=past_due, lock=rt.lock,
                  invocation_id=invocation_id)
    except Exception as exc:  # the host must never see a probe fail: record it instead
        logger.warning("%s: run failed before a result (%s)", function_name, type(exc).__name__,
                       exc_info=not isinstance(exc, VisionOpsError))
        location = rt.settings.jobs.run_location if rt is not None else "unknown"
        result = _failed(probe_name, exc, started_at=started_at,
                         duration_ms=ms(time.perf_counter() - t0), location=location)
        outcome.append(result)
        if rt is not None:
            _record(rt, result, persist=False)
        else:
            track_probe_availability(result)
    return outcome[-1] if outcome else None


def _record(rt: ProbeRuntime, result: ProbeResult, *, persist: bool = True) -> None:
    rt.availability(result)
    if result.success:
        logger.info("probe %s passed in %.0f ms", result.name, result.duration_ms)
    else:
        logger.warning("probe %s failed: %s", result.name, result.message)
    if persist:
        try:
            rt.status.write_json(PROBE_RESULT_PATH.format(name=result.name), result.as_dict())
        except StorageError as exc:
            logger.warning("probe %s: result not kept for the status function (%s)",
                           result.name, exc.reason)
