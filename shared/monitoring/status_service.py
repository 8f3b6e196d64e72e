"""The status report as every caller of one instance gets it: one runner, one report cache.

The composition root (``shared.composition.get_status_service``) builds it once per process,
on first use, over the process's one ``LogsQueryRunner`` (short timeouts, no retries,
``STATUS_QUERY_CONCURRENCY`` queries at a time on its own threads), with the ``ReportCache``
(``STATUS_CACHE_TTL_SECONDS``, ``STATUS_WAIT_SECONDS``) that
``StatusService`` puts ``shared.monitoring.status.build_status`` behind. The HTTP adapter only ever
talks to
``StatusService.report``.

Must never: compute a report on the caller's thread, or send more than one report's queries per
TTL per instance.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.monitoring.reportcache import Cached, ReportCache
from shared.monitoring.status import (
    CLIENT_OPTIONS,
    BaselineLoader,
    QueryRunner,
    QuotaLoader,
    Status,
    StatusUnavailable,
    TuningLoader,
    Window,
    build_series,
    build_status,
)

if TYPE_CHECKING:
    from shared.settings import Settings


def client_options(settings: Settings) -> dict[str, Any]:
    return {**CLIENT_OPTIONS, "read_timeout": settings.logs_query.timeout_s}


@dataclass(frozen=True, slots=True)
class Served:
    """What the HTTP adapter sends: the report's JSON and how old and fresh it is."""

    body: dict[str, Any]
    age_s: float
    stale: bool
    ttl_s: float


class StatusService:
    """Reports for every caller of one instance, through one ``ReportCache``.

    The core report and each window's series are cached apart, so dashboards on different
    windows share the core's five queries. A report that cannot be refreshed is served stale,
    with its age and the cause (``cache`` in the body).
    """

    def __init__(
        self,
        settings: Settings,
        runner: QueryRunner,
        *,
        cache: ReportCache[Any] | None = None,
        quota_loader: QuotaLoader | None = None,
        tuning_loader: TuningLoader | None = None,
        baseline_loader: BaselineLoader | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        m = settings.monitoring
        self._settings = settings
        self._runner = runner
        self._cache = cache if cache is not None else ReportCache(
            ttl_s=m.status_cache_ttl_s, wait_s=m.status_wait_s)
        self._quota_loader = quota_loader
        self._tuning_loader = tuning_loader
        self._baseline_loader = baseline_loader
        self._clock = clock

    @property
    def cache(self) -> ReportCache[Any]:
        return self._cache

    def _core(self) -> Status:
        return build_status(self._settings, self._runner, now=self._clock(),
                            quota_loader=self._quota_loader, tuning_loader=self._tuning_loader,
                            baseline_loader=self._baseline_loader)

    async def report(self, history: Window | None = None) -> Served:
        """The report (with ``history``'s series); raises ``StatusUnavailable`` or
        ``ReportPending`` when there is none to serve."""
        core: Cached[Status]
        parts: list[Cached[Any]]
        if history is None:
            core = await self._cache.aget("core", self._core)
            parts = [core]
        else:  # both at once: a cold series computes alongside a cold core
            series: Cached[dict[str, Any]]
            core, series = await asyncio.gather(
                self._cache.aget("core", self._core),
                self._cache.aget(f"series:{history.name}", functools.partial(
                    build_series, self._runner, history, settings=self._settings,
                    baseline_loader=self._baseline_loader)))
            parts = [core, series]
        body = core.value.to_json()
        if history is not None:
            window = dict(parts[1].value)
            # the window's drift view joins the core's baseline in the report's drift section
            body["drift"] = {**body.get("drift", {}), **window.pop("drift", {})}
            body["series"] = window
        age = max(p.age_s for p in parts)
        stale = any(p.stale for p in parts)
        errors = [p.error for p in parts if p.error is not None]
        body["cache"] = {
            "age_s": round(age, 3), "stale": stale, "ttl_s": self._cache.ttl_s,
            "error": _cache_error(errors[0]) if errors else None,
        }
        return Served(body=body, age_s=age, stale=stale, ttl_s=self._cache.ttl_s)


def _cache_error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, StatusUnavailable):
        return exc.error_json()
    return {"cause": "report_failed", "message": type(exc).__name__}


__all__ = ["Served", "StatusService", "client_options"]
