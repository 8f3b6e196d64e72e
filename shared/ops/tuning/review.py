"""The tuning review as a job: its evidence, where it keeps its results, how the app reads them.

* ``load_evidence`` / ``load_kpi`` run the named queries ``queries/tuning_*.kql`` (4 queries per
  review, plus 1 when a pending change is judged) and turn their rows into ``Evidence``;
* ``TuningStore`` is the seam over the status container: the overlay (``tuning/overlay.json``,
  written only with an ETag condition, so two reviews can never overwrite each other) and every
  review as JSON and as a short text report (``tuning/reviews/<id>.json|.md``, and
  ``tuning/latest.json|.md``);
* ``OverlayCache`` is what the analysis path pays: one overlay read per TTL, the last good
  overlay kept when storage cannot be read;
* ``run_review`` is the job: evidence → review → (apply mode) the next overlay → audit.

What it must never do: write the overlay without an ETag condition, raise into the analysis
path, or log a query result.

Why one module past 450 lines: evidence, storage, the app's cached view and the entry points are
the four sides of one job and change together when the review's documents change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import ContentSettings

from shared import telemetry
from shared.errors import StorageError
from shared.monitoring.logsquery import QueryError
from shared.ops.tuning.policy import (
    RUNTIME_TUNABLES,
    TUNABLES,
    AttemptStats,
    Distribution,
    Evidence,
    Kpi,
    Mode,
    Overlay,
    Policy,
    Review,
    SizeBucket,
    apply,
    pin,
    report_text,
    review,
)

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

    from shared.monitoring.logsquery import LogsQueryRunner
    from shared.settings import Settings

logger = logging.getLogger(__name__)

OVERLAY_PATH = "tuning/overlay.json"
LATEST_PATH = "tuning/latest"
REVIEW_PATH = "tuning/reviews/{id}"

EVENT_REVIEWED = "TuningReviewed"
EVENT_CHANGED = "TuningChanged"
EVENT_REVERTED = "TuningReverted"
EVENT_PINNED = "TuningPinned"

QUERY_ATTEMPTS = "tuning_attempts"
QUERY_LATENCY = "tuning_vision_latency"
QUERY_SIZES = "tuning_size_buckets"
QUERY_KPI = "tuning_kpi"


class OverlayConflictError(StorageError):
    """The overlay changed since it was read (another review wrote it first)."""


# --------------------------------------------------------------------------- evidence


def load_kpi(runner: LogsQueryRunner, timespan: timedelta | tuple[datetime, datetime]) -> Kpi:
    rows = {row["Scope"]: row for row in runner.run(QUERY_KPI, timespan=timespan).rows}
    requests, latency, calls = (rows.get(k, {}) for k in ("requests", "latency", "calls"))
    return Kpi(images=int(requests.get("Images") or 0), analysed=int(requests.get("Analysed") or 0),
               p95_ms=_float(latency.get("P95Ms")), calls=int(calls.get("Calls") or 0))


def load_evidence(runner: LogsQueryRunner, window: timedelta) -> Evidence:
    """The review's evidence over ``window`` (four named queries)."""
    attempts = tuple(
        AttemptStats(attempt=int(r["Attempt"]), calls=int(r["Calls"]),
                     successes=int(r["Successes"]), throttled=int(r["Throttled"]),
                     timeouts=int(r["Timeouts"]))
        for r in runner.run(QUERY_ATTEMPTS, timespan=window).rows if r.get("Attempt") is not None)
    measures = {r["Measure"]: r for r in runner.run(QUERY_LATENCY, timespan=window).rows}
    sizes = tuple(
        SizeBucket(low_px=int(r["Low"]), high_px=int(r["High"]), images=int(r["Images"]),
                   vision_p50_ms=_float(r.get("VisionP50Ms")),
                   preprocess_p50_ms=_float(r.get("PreprocessP50Ms")),
                   ocr_words_avg=_float(r.get("OcrWordsAvg")),
                   word_confidence_avg=_float(r.get("WordConfidenceAvg")),
                   people_avg=_float(r.get("PeopleAvg")))
        for r in runner.run(QUERY_SIZES, timespan=window).rows)
    busiest = measures.get("busiest_minute", {})
    busiest_max = _float(busiest.get("Max"))
    return Evidence(
        window_hours=window.total_seconds() / 3600,
        attempts=attempts,
        success_ms=_distribution(measures.get("success_ms")),
        timeout_ms=_distribution(measures.get("timeout_ms")),
        retry_after_s=_distribution(measures.get("retry_after_s")),
        rethrottled_retries=int((measures.get("rethrottled") or {}).get("Count") or 0),
        sizes=sizes,
        kpi=load_kpi(runner, window),
        limiter_wait_p95_ms=_distribution(measures.get("limiter_wait_ms")).p95,
        pipeline_p50_ms=_distribution(measures.get("pipeline_ms")).p50,
        throughput_per_s=busiest_max / 60 if busiest_max is not None else None,
    )


def _distribution(row: Mapping[str, Any] | None) -> Distribution:
    if not row:
        return Distribution()
    return Distribution(count=int(row.get("Count") or 0), p50=_float(row.get("P50")),
                        p95=_float(row.get("P95")), p99=_float(row.get("P99")),
                        max=_float(row.get("Max")))


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


# --------------------------------------------------------------------------- storage


class TuningStore(Protocol):
    def read_overlay(self) -> tuple[Overlay, str | None]: ...

    def write_overlay(self, overlay: Overlay, etag: str | None) -> str: ...

    def write_review(self, result: Review, text: str) -> None: ...

    def latest_review(self) -> dict[str, Any] | None: ...


class BlobTuningStore:
    """``TuningStore`` in the status container (``STATUS_CONTAINER``)."""

    def __init__(self, container: ContainerClient) -> None:
        self._container = container

    def read_overlay(self) -> tuple[Overlay, str | None]:
        try:
            downloader = self._container.get_blob_client(OVERLAY_PATH).download_blob()
            body, etag = downloader.readall(), downloader.properties.etag
        except ResourceNotFoundError:
            return Overlay(), None
        except AzureError as exc:
            raise StorageError("reading the tuning overlay failed", reason="storage_read") from exc
        try:
            data = json.loads(body)
            return Overlay.from_dict(data if isinstance(data, dict) else {}), etag
        except (ValueError, KeyError, TypeError):
            logger.warning("tuning overlay is unreadable; treated as empty")
            return Overlay(), etag

    def write_overlay(self, overlay: Overlay, etag: str | None) -> str:
        body = json.dumps(overlay.as_dict(), sort_keys=True, indent=1).encode("utf-8")
        blob = self._container.get_blob_client(OVERLAY_PATH)
        try:
            self._ensure_container()
            if etag is None:
                props = blob.upload_blob(body, overwrite=False)  # only if still absent
            else:
                props = blob.upload_blob(body, overwrite=True, etag=etag,
                                         match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceExistsError) as exc:
            raise OverlayConflictError("the tuning overlay changed meanwhile",
                                       reason="overlay_conflict") from exc
        except AzureError as exc:
            raise StorageError("writing the tuning overlay failed", reason="storage_write") from exc
        return str(props["etag"])

    def write_review(self, result: Review, text: str) -> None:
        doc = json.dumps(result.as_dict(), sort_keys=True, indent=1).encode("utf-8")
        try:
            self._ensure_container()
            for path in (REVIEW_PATH.format(id=result.id), LATEST_PATH):
                self._container.upload_blob(
                    f"{path}.json", doc, overwrite=True,
                    content_settings=ContentSettings(content_type="application/json"))
                self._container.upload_blob(
                    f"{path}.md", text.encode("utf-8"), overwrite=True,
                    content_settings=ContentSettings(content_type="text/markdown; charset=utf-8"))
        except AzureError as exc:
            raise StorageError("writing the tuning review failed", reason="storage_write") from exc

    def latest_review(self) -> dict[str, Any] | None:
        try:
            body = self._container.get_blob_client(f"{LATEST_PATH}.json").download_blob().readall()
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise StorageError("reading the tuning review failed", reason="storage_read") from exc
        try:
            data = json.loads(body)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _ensure_container(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            self._container.create_container()


# --------------------------------------------------------------------------- the app's view


class OverlayCache:
    """The overlay as the analysis path sees it: read at most once per ``ttl_s``.

    A failed read keeps the last good overlay (logged once per failure streak), so a storage
    hiccup never changes tunables or fails an invocation.
    """

    def __init__(self, read: Callable[[], Overlay], *, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._ttl = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._value = Overlay()
        self._expires = float("-inf")
        self._failing = False

    def get(self) -> Overlay:
        with self._lock:
            now = self._clock()
            if now < self._expires:
                return self._value
            self._expires = now + self._ttl
            try:
                self._value = self._read()
                self._failing = False
            except StorageError as exc:
                if not self._failing:
                    logger.warning("tuning overlay unreadable (%s); keeping version %d",
                                   exc.reason, self._value.version)
                self._failing = True
            return self._value


#: Where each runtime tunable lives in ``Settings``: the overlay stores the tunable's name (the
#: key of ``TUNABLES``, e.g. ``preprocess_max_dimension``) in documents already written, so the
#: stored key never follows the Python shape; this table does.
SETTING_FIELDS: Mapping[str, tuple[str, str]] = {
    "vision_timeout_seconds": ("vision", "timeout_seconds"),
    "vision_max_retries": ("vision", "max_retries"),
    "vision_backoff_base_seconds": ("vision", "backoff_base_seconds"),
    "vision_backoff_max_seconds": ("vision", "backoff_max_seconds"),
    "preprocess_max_dimension": ("preprocess", "max_dimension"),
    "preprocess_jpeg_quality": ("preprocess", "jpeg_quality"),
    "vision_rate_limit_per_second": ("vision", "rate_limit_override"),
}


def apply_overlay(settings: Settings, overlay: Overlay) -> Settings:
    """``settings`` with the overlay's runtime tunables on top (values the app reads at run time).

    Only whitelisted runtime tunables are taken; values are clamped to their bounds by
    ``Overlay.from_dict`` and typed to match the setting.
    """
    groups: dict[str, dict[str, Any]] = {}
    for name, value in overlay.effective().items():
        if name in RUNTIME_TUNABLES:
            group, attr = SETTING_FIELDS[name]
            groups.setdefault(group, {})[attr] = (int(value) if TUNABLES[name].integer
                                                  else float(value))
    if not groups:
        return settings
    merged = replace(settings, **{group: replace(getattr(settings, group), **changes)
                                  for group, changes in groups.items()})
    vision = merged.vision
    if vision.backoff_max_seconds < vision.backoff_base_seconds:
        merged = replace(merged, vision=replace(vision,
                                                backoff_max_seconds=vision.backoff_base_seconds))
    return merged


def current_values(settings: Settings, host_concurrency: int | None) -> dict[str, float | None]:
    """The values in force for every tunable (``settings`` already carries the overlay)."""
    values: dict[str, float | None] = {}
    for name in RUNTIME_TUNABLES:
        group, attr = SETTING_FIELDS[name]
        values[name] = _float(getattr(getattr(settings, group), attr))
    values["host_blob_concurrency"] = (float(host_concurrency) if host_concurrency is not None
                                       else None)
    return values


# --------------------------------------------------------------------------- the job

#: host.json beside the app's code (the app root, deployed with it)
HOST_JSON = Path(__file__).resolve().parents[3] / "host.json"  # the app root: shared/ops/tuning/..


def host_blob_concurrency(path: Path = HOST_JSON) -> int | None:
    """``extensions.blobs.maxDegreeOfParallelism`` of the deployed host.json, if set."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        value = doc["extensions"]["blobs"]["maxDegreeOfParallelism"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None



@dataclass(frozen=True, slots=True)
class ReviewContext:
    """What one review needs; built by the composition root, or by tests with fakes."""

    settings: Settings  # app settings without the overlay
    runner: LogsQueryRunner
    store: TuningStore
    host_concurrency: int | None
    event: Callable[[str, Mapping[str, object]], None]
    #: the no-overlap lock across instances (the probes' blob lease): ``hold(name)`` → acquired
    hold: Callable[[str], contextlib.AbstractContextManager[bool]]
    now: Callable[[], datetime] = lambda: datetime.now(UTC)


def run_review(ctx: ReviewContext, *, mode: Mode | None = None) -> Review | None:
    """One review: evidence → recommendations → (apply mode) the next overlay → audit.

    Returns ``None`` when tuning is off. Raises ``QueryError`` / ``StorageError`` for the
    caller to report; an overlay conflict (another review won) is retried once from a fresh
    read, then reported.
    """
    t = ctx.settings.tuning
    mode = mode or t.mode
    if mode is Mode.OFF:
        return None
    policy = Policy(min_samples=t.min_samples, p95_tolerance=t.revert_p95_tolerance)
    now = ctx.now()
    evidence = load_evidence(ctx.runner, timedelta(hours=t.window_hours))
    for attempt in (1, 2):
        overlay, etag = ctx.store.read_overlay()
        pending = overlay.pending()
        since = (min(datetime.fromisoformat(c.applied_at) for c in pending) if pending else None)
        after = load_kpi(ctx.runner, (since, now)) if since is not None else None
        effective = apply_overlay(ctx.settings, overlay)
        result = review(
            current_values(effective, ctx.host_concurrency), evidence,
            review_id=f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}",
            created_at=now.isoformat(), mode=mode,
            tier_limit=ctx.settings.vision.tier_limit_per_second,
            overlay=overlay, kpi_since_change=after, policy=policy)
        if mode is not Mode.APPLY:
            break
        nxt, result = apply(overlay, result, applied_at=now.isoformat())
        if nxt is overlay:
            break
        try:
            ctx.store.write_overlay(nxt, etag)
            break
        except OverlayConflictError:
            if attempt == 2:
                raise
            logger.info("tuning: overlay changed during the review; reviewing again")
    ctx.store.write_review(result, report_text(result))
    _audit(ctx, result)
    return result


def _audit(ctx: ReviewContext, result: Review) -> None:
    ctx.event(EVENT_REVIEWED, {"tuning.review_id": result.id, "tuning.mode": result.mode.value,
                               "tuning.recommended_changes": len(result.changes()),
                               "tuning.applied": len(result.applied),
                               "tuning.reverted": len(result.reverts)})
    for change in result.applied:
        ctx.event(EVENT_CHANGED, {"tuning.review_id": result.id, "tuning.tunable": change.tunable,
                                  "tuning.old": change.old, "tuning.new": change.new})
        logger.info("tuning: %s %s -> %s (review %s)", change.tunable, change.old, change.new,
                    result.id)
    for rev in result.reverts:
        ctx.event(EVENT_REVERTED, {"tuning.review_id": result.id, "tuning.tunable": rev.tunable,
                                   "tuning.from": rev.applied_value, "tuning.to": rev.reverted_to,
                                   "tuning.reason": rev.reason})
        logger.warning("tuning: reverted %s %s -> %s: %s", rev.tunable, rev.applied_value,
                       rev.reverted_to, rev.reason)


# --------------------------------------------------------------------------- entry points

JOB_NAME = "tuning_review"


def tuning_timer(ctx: ReviewContext, *, past_due: bool,
                 invocation_id: str | None = None) -> Review | None:
    """The timer's body. Never raises: a failed review is logged and the next run tries again."""
    if past_due:
        logger.info("%s: timer is past due; running once now", JOB_NAME)
    with telemetry.invocation(JOB_NAME, trigger=telemetry.Trigger.TIMER,
                              invocation_id=invocation_id, synthetic=True):
        try:
            with ctx.hold(JOB_NAME) as acquired:
                if not acquired:
                    logger.info("%s: a review is already running; this run skipped", JOB_NAME)
                    return None
                return run_review(ctx)
        except (QueryError, StorageError) as exc:
            logger.warning("%s: review failed (%s)", JOB_NAME, type(exc).__name__)
            return None


def review_now(ctx: ReviewContext, mode: str | None) -> tuple[int, dict[str, Any]]:
    """The on-demand review (HTTP): status code and JSON body."""
    chosen = ctx.settings.tuning.mode
    if mode:
        try:
            chosen = Mode(mode.lower())
        except ValueError:
            return 400, {"error": "bad_mode", "message": "mode must be off, recommend or apply"}
    try:
        with ctx.hold(JOB_NAME) as acquired:
            if not acquired:
                return 409, {"error": "review_running", "message": "a review is already running"}
            result = run_review(ctx, mode=chosen)
    except QueryError as exc:
        return 503, {"error": "telemetry_unavailable", "message": type(exc).__name__}
    except StorageError as exc:
        return 503, {"error": "storage_unavailable", "message": exc.reason}
    if result is None:
        return 200, {"mode": Mode.OFF.value, "review": None}
    return 200, {"mode": result.mode.value, "review": result.as_dict(),
                 "report": report_text(result)}


def tuning_state(ctx: ReviewContext) -> dict[str, Any]:
    """The last review and the overlay in force (what status and the dashboard show)."""
    overlay, _ = ctx.store.read_overlay()
    return {"mode": ctx.settings.tuning.mode.value, "overlay": overlay.as_dict(),
            "effective": overlay.effective(), "last_review": ctx.store.latest_review()}


def tuning_summary(ctx: ReviewContext) -> dict[str, Any]:
    """What ``/api/status`` shows of tuning: mode, the overlay in force, the last review."""
    overlay, _ = ctx.store.read_overlay()
    last = ctx.store.latest_review()
    review_summary = None
    if last is not None:
        review_summary = {
            "id": last.get("id"), "created_at": last.get("created_at"),
            "mode": last.get("mode"),
            "changes": [{k: r.get(k) for k in ("tunable", "current", "recommended",
                                                "confidence", "applicable")}
                        for r in last.get("recommendations", []) if r.get("change")],
            "applied": len(last.get("applied", [])), "reverted": len(last.get("reverts", [])),
        }
    return {"mode": ctx.settings.tuning.mode.value,
            "overlay": {"version": overlay.version, "effective": overlay.effective(),
                        "pins": dict(overlay.pins),
                        "pending": [c.tunable for c in overlay.pending()]},
            "last_review": review_summary}


def set_pin(ctx: ReviewContext, tunable: str, value: float | None) -> tuple[int, dict[str, Any]]:
    """Pin (or with ``None`` unpin) one runtime tunable; ETag-guarded, audited."""
    for attempt in (1, 2):
        overlay, etag = ctx.store.read_overlay()
        try:
            nxt = pin(overlay, tunable, value)
        except ValueError as exc:
            return 400, {"error": "bad_pin", "message": str(exc)}
        try:
            ctx.store.write_overlay(nxt, etag)
        except OverlayConflictError:
            if attempt == 2:
                return 409, {"error": "overlay_conflict", "message": "try again"}
            continue
        ctx.event(EVENT_PINNED, {"tuning.tunable": tunable, "tuning.pinned": value})
        logger.info("tuning: %s %s", tunable, "unpinned" if value is None else f"pinned at {value}")
        return 200, {"overlay": nxt.as_dict(), "effective": nxt.effective()}
    return 409, {"error": "overlay_conflict", "message": "try again"}


__all__ = [
    "EVENT_CHANGED",
    "EVENT_PINNED",
    "EVENT_REVERTED",
    "EVENT_REVIEWED",
    "BlobTuningStore",
    "OverlayCache",
    "OverlayConflictError",
    "ReviewContext",
    "TuningStore",
    "apply_overlay",
    "current_values",
    "load_evidence",
    "load_kpi",
    "review_now",
    "run_review",
    "set_pin",
    "tuning_state",
    "tuning_summary",
    "tuning_timer",
]
