"""The status report's sections: query rows → the JSON of windows, probes, freshness, quota,
tuning, drift, Vision rate, series and the public configuration.

``shared.monitoring.status`` plans the queries, asks them and decides the state; this module
turns each answer into its section, and names the windows and queries both share. Pure: no I/O
except through the loaders the composition root injects (quota document, drift baseline,
tuning summary), and none of those may take the report down.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from shared import telemetry
from shared.errors import StorageError
from shared.monitoring.alerts import (
    AlertState,
    iso_duration,
)
from shared.monitoring.drift import Baseline

if TYPE_CHECKING:
    from shared.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Window:
    """A KPI window and the bin size its dashboard series uses (about 15-48 points)."""

    name: str
    span: timedelta
    bin_size: timedelta

    @property
    def minutes(self) -> float:
        return self.span.total_seconds() / 60


WINDOWS: Final = (
    Window("15m", timedelta(minutes=15), timedelta(minutes=1)),
    Window("1h", timedelta(hours=1), timedelta(minutes=2)),
    Window("24h", timedelta(hours=24), timedelta(minutes=30)),
)
WINDOWS_BY_NAME: Final = {w.name: w for w in WINDOWS}
PROBES_WINDOW: Final = timedelta(hours=24)

# The status queries (queries/status_*.kql).
Q_WINDOWS: Final = "status_windows"
Q_PROBES: Final = "status_probes"
Q_FRESHNESS: Final = "status_freshness"
Q_VISION_RATE: Final = "status_vision_rate"
#: gauges are exported every minute or so; older values belong to instances that are gone
VISION_RATE_WINDOW: Final = timedelta(minutes=5)
Q_QUOTA: Final = "status_quota"
Q_SERIES_REQUESTS: Final = "status_series_requests"
Q_SERIES_VISION: Final = "status_series_vision"
Q_SERIES_AVAILABILITY: Final = "status_series_availability"
Q_SERIES_DEPLOYMENTS: Final = "status_series_deployments"
Q_DRIFT_DISTRIBUTION: Final = "drift_distribution"
Q_DRIFT_SERIES: Final = "drift_series"



QuotaLoader = Callable[["Settings"], Any]
BaselineLoader = Callable[["Settings"], "Baseline"]
#: the tuning review's state for the report (``shared.ops.tuning.review.tuning_summary``)
TuningLoader = Callable[[], Mapping[str, Any] | None]



# --------------------------------------------------------------------------- sections


RowsOf = Callable[[str], list[dict[str, Any]]]


def windows_section(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault((str(row.get("Window")), str(row.get("Scope"))), []).append(row)

    def scoped(window: str, scope: str) -> list[dict[str, Any]]:
        return by.get((window, scope), [])

    return {w.name: _window(w, functools.partial(scoped, w.name)) for w in WINDOWS}


def _window(w: Window, rows: RowsOf) -> dict[str, Any]:
    success = _first(rows("requests"))
    invocation = _first(rows("invocation"))
    vision = _first(rows("vision_call"))
    throttle = _first(rows("attempts"))
    invocations = _int(success.get("Invocations"))
    return {
        "window": iso_duration(w.span),
        "invocations": invocations,
        "succeeded": _int(success.get("Succeeded")),
        "failed": _int(success.get("Failed")),
        "analyzed": _int(success.get("Analyzed")),
        "rejected": _int(success.get("Rejected")),
        "success_rate_pct": _num(success.get("SuccessRatePct")),
        "throughput_per_min": round(invocations / w.minutes, 4),
        "latency_ms": {"p50": _num(invocation.get("P50Ms")), "p95": _num(invocation.get("P95Ms")),
                       "p99": _num(invocation.get("P99Ms"))},
        "vision_latency_ms": {"p50": _num(vision.get("P50Ms")), "p95": _num(vision.get("P95Ms")),
                              "p99": _num(vision.get("P99Ms"))},
        "vision_calls": _int(throttle.get("Calls")),
        "throttled": _int(throttle.get("Throttled")),
        "throttle_rate_pct": _num(throttle.get("ThrottleRatePct")),
        "errors": [{"outcome": str(r.get("Outcome") or ""),
                    "error_class": str(r.get("ErrorClass") or ""),
                    "reason": str(r.get("Reason") or ""),
                    "status_code": str(r.get("StatusCode") or ""),
                    "service_code": str(r.get("ServiceCode") or ""),
                    "count": _int(r.get("Count"))}
                   for r in rows("errors")],
    }


def probes_section(rows: list[dict[str, Any]]) -> dict[str, Any]:
    results = [{
        "probe": str(r.get("probe") or ""),
        "runs": _int(r.get("runs")),
        "passed": _int(r.get("passed")),
        "availability_pct": _num(r.get("availability_pct")),
        "last_time": iso_text(r.get("last_time")),
        "last_success": bool(r.get("last_success")),
        "last_duration_ms": _num(r.get("last_duration_ms")),
        "last_message": str(r.get("last_message") or ""),
        "last_location": str(r.get("last_location") or ""),
    } for r in rows]
    runs = sum(_int(r.get("runs")) for r in rows)
    passed = sum(_int(r.get("passed")) for r in rows)
    return {"window": iso_duration(PROBES_WINDOW),
            "availability_pct": round(100.0 * passed / runs, 3) if runs else None,
            "results": results}


def freshness_section(rows: list[dict[str, Any]], max_age_s: int) -> dict[str, Any]:
    tables = [{"table": str(r.get("table_name") or ""), "newest": iso_text(r.get("newest")),
               "age_s": _num(r.get("age_s"))} for r in rows]
    ages = [a for a in (_num(r.get("age_s")) for r in rows) if a is not None]
    age = min(ages) if ages else None
    newest = max((n for n in (iso_text(r.get("newest")) for r in rows) if n), default=None)
    return {"newest": newest, "age_s": age, "max_age_s": max_age_s,
            "fresh": age is not None and age <= max_age_s, "tables": tables}


def tuning_section(loader: TuningLoader | None) -> Mapping[str, Any] | None:
    """The tuning review's last review and the overlay in force; never fails the report."""
    if loader is None:
        return None
    try:
        return loader()
    except StorageError as exc:
        logger.warning("status: tuning state unreadable (%s)", exc.reason)
        return {"error": {"cause": "storage_unavailable", "message": exc.reason}}


def quota_section(
    rows: list[dict[str, Any]], settings: Settings, loader: QuotaLoader | None
) -> dict[str, Any]:
    metrics = {str(r.get("metric")): r for r in rows}
    used = metrics.get(telemetry.METRIC_QUOTA_USED_RATIO, {})
    forecast = metrics.get(telemetry.METRIC_QUOTA_FORECAST_RATIO, {})
    out: dict[str, Any] = {
        "tier": settings.vision.tier.value,
        "used_ratio": _num(used.get("value")),
        "forecast_ratio": _num(forecast.get("value")),
        "reported_at": iso_text(forecast.get("reported") or used.get("reported")),
        "source": "telemetry" if metrics else "none",
        "details": None,
    }
    loaded = _load_quota(settings, loader)
    if loaded is not None:
        out["details"] = jsonable(
            asdict(loaded) if is_dataclass(loaded) and not isinstance(loaded, type) else loaded)
        out["source"] = "quota_check"
    return out


def vision_rate_section(rows: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """What the instances send together against the tier's documented limit."""
    row = rows[0] if rows else {}
    effective = _num(row.get("effective_per_second"))
    limit = settings.vision.tier_limit_per_second
    return {
        "mode": settings.vision.rate_mode.value,
        "tier_limit_per_second": round(limit, 4),
        "ceiling_per_second": round(settings.vision.rate_limit_per_second, 4),
        "instances": _int(row.get("instances")),
        "effective_per_second": effective,
        "share_of_limit": round(effective / limit, 4) if effective is not None else None,
        "reported_at": iso_text(row.get("reported")),
    }


def _load_quota(settings: Settings, loader: QuotaLoader | None) -> Any:
    """The quota check's last result, from the loader the composition root injects
    (``shared.ops.quota.read_quota_status`` over the status container); none without a loader."""
    if loader is None:
        return None
    try:
        return loader(settings)
    # The quota document lives in storage (StorageError, azure-core errors, bad JSON): whatever
    # breaks there, the quota section is optional and the report must still answer.
    except Exception as exc:
        logger.warning("status: quota status unavailable (%s)", type(exc).__name__)
        return None


def load_baseline_or_rolling(settings: Settings, loader: BaselineLoader | None) -> Baseline:
    """The drift baseline ``loader`` finds (the pinned document), else the rolling one."""
    if loader is None:
        return Baseline()
    try:
        return loader(settings)
    # Like the quota document: storage trouble must not take the report down; the rolling
    # baseline is always available.
    except Exception as exc:
        logger.warning("status: drift baseline unavailable (%s); rolling", type(exc).__name__)
        return Baseline()


def drift_section(
    settings: Settings, baseline: Baseline, now: datetime, rows: RowsOf | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"baseline": baseline.describe(settings.drift, now)}
    if rows is not None:
        out["distribution"] = [
            {"descriptor": str(r.get("Descriptor")), "bin": str(r.get("Bin")),
             "current_share": _num(r.get("CurrentShare")),
             "baseline_share": _num(r.get("BaselineShare"))}
            for r in rows(Q_DRIFT_DISTRIBUTION)]
        out["scores"] = [
            {"time": iso_text(r.get("bin_start")), "descriptor": str(r.get("Descriptor")),
             "images": _int(r.get("Images")), "psi": _num(r.get("Psi"))}
            for r in rows(Q_DRIFT_SERIES)]
    return out


def series_section(w: Window, rows: RowsOf) -> dict[str, Any]:
    return {
        "window": w.name,
        "span": iso_duration(w.span),
        "bin": iso_duration(w.bin_size),
        "requests": [{"time": iso_text(r.get("bin_start")), "requests": _int(r.get("requests")),
                      "failed": _int(r.get("failed")),
                      "success_rate_pct": _pct(r.get("success_rate")),
                      "throughput_per_min": round(_int(r.get("requests"))
                                                  / (w.bin_size.total_seconds() / 60), 4),
                      "p50_ms": _num(r.get("p50_ms")), "p95_ms": _num(r.get("p95_ms"))}
                     for r in rows(Q_SERIES_REQUESTS)],
        "vision": [{"time": iso_text(r.get("bin_start")), "calls": _int(r.get("calls")),
                    "throttled": _int(r.get("throttled"))} for r in rows(Q_SERIES_VISION)],
        "availability": [{"time": iso_text(r.get("bin_start")), "runs": _int(r.get("runs")),
                          "passed": _int(r.get("passed")),
                          "availability_pct": _num(r.get("availability_pct"))}
                         for r in rows(Q_SERIES_AVAILABILITY)],
        # Deployment markers (the deploy workflow, python -m devstack rollout) for the charts.
        "deployments": [{"time": iso_text(r.get("at")), "version": str(r.get("version") or ""),
                         "kind": str(r.get("deploy_kind") or ""),
                         "outcome": str(r.get("outcome") or "")}
                        for r in rows(Q_SERIES_DEPLOYMENTS)],
    }


def public_config(settings: Settings) -> dict[str, Any]:
    """Tunables, features and tier: never a key, a connection string or an endpoint URL."""
    t = settings.telemetry
    m = settings.monitoring
    return {
        "vision": {
            "tier": settings.vision.tier.value,
            "features": list(settings.vision.features),
            "language": settings.vision.language,
            "model_version": settings.vision.model_version,
            "rate_limit_per_second": settings.vision.rate_limit_per_second,
            "rate_burst": settings.vision.rate_burst,
            "timeout_seconds": settings.vision.timeout_seconds,
            "max_retries": settings.vision.max_retries,
            "key_auth": settings.vision.key is not None,
        },
        "preprocess": {
            "max_dimension": settings.preprocess.max_dimension,
            "jpeg_quality": settings.preprocess.jpeg_quality,
            "max_pixels": settings.preprocess.max_pixels,
            "max_input_bytes": settings.preprocess.max_input_bytes,
        },
        "containers": {"images": settings.pipeline.images_container,
                       "results": settings.pipeline.results_container,
                       "failed": settings.pipeline.failed_container},
        "storage_identity_based": settings.storage.uses_identity,
        "telemetry": {"sampling_ratio": t.sampling_ratio, "hash_blob_names": t.hash_blob_names,
                      "configured_by_worker": t.configured_by_worker,
                      "workspace_configured": bool(settings.logs_query.workspace_id)},
        "alerts": {"slo_target": m.slo_target, "error_rate_threshold": m.error_rate_threshold,
                   "min_requests": m.min_requests,
                   "latency_baseline_p95_ms": m.latency_baseline_p95_ms,
                   "latency_factor": m.latency_factor,
                   "availability_threshold_pct": m.availability_threshold_pct,
                   "throttle_rate_threshold": m.throttle_rate_threshold,
                   "quota_forecast_threshold": m.quota_forecast_threshold,
                   "freshness_max_age_s": m.freshness_max_age_s},
    }


def alert_json(a: AlertState) -> dict[str, Any]:
    r = a.rule
    return {"name": r.name, "title": r.title, "active": a.active, "severity": int(r.severity),
            "value": a.value, "operator": r.operator.value, "threshold": r.threshold,
            "measure": r.measure, "window": iso_duration(r.window),
            "frequency": iso_duration(r.frequency), "summary": a.summary,
            "runbook": r.runbook_url, "error": a.error, "breaching": list(a.breaching)}


# --------------------------------------------------------------------------- values


def _first(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return rows[0] if rows else {}


def _int(value: Any) -> int:
    number = _num(value)
    return int(number) if number is not None else 0


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                return None
        else:
            return None
    number = float(value)
    return number if math.isfinite(number) else None


def _pct(value: Any) -> float | None:
    number = _num(value)
    return None if number is None else round(100.0 * number, 3)


def iso_text(value: Any) -> str | None:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str) and value:
        return value
    return None


def jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    return _scalar(value)


def _scalar(value: Any) -> Any:
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return iso_text(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value if value is None or isinstance(value, str | int | bool) else str(value)


