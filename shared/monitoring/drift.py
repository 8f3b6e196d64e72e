"""The drift baseline: which window the current images are compared with (docs/drift.md).

Rolling (the default): the ``DRIFT_BASELINE_HOURS`` before the current window, so the baseline
follows slow change and a step change shows for about one window. Pinned: a fixed time range an
operator snapshotted (``python -m devstack.drift_baseline pin``) into the document
``drift/baseline.json`` of the status container, with the distribution seen then; the status
evaluation then compares against that range until it is unpinned.

``Baseline.query_params`` turns either into the ``baselineStart``/``baselineEnd`` parameters
(look-backs from now) of the ``drift_*`` queries. Must never run a query or touch storage
itself: callers pass a ``JsonDocuments`` (the status store) and run the queries.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from shared.monitoring.logsquery import ParamValue
    from shared.settings import DriftSettings

logger = logging.getLogger(__name__)

BASELINE_DOCUMENT = "drift/baseline.json"
ROLLING = "rolling"
PINNED = "pinned"


class JsonDocuments(Protocol):
    """Read and write small JSON documents (``shared.ops.probes.StatusStore`` is one)."""

    def read_json(self, path: str) -> dict[str, Any] | None: ...

    def write_json(self, path: str, doc: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class Baseline:
    kind: str = ROLLING
    start: datetime | None = None
    end: datetime | None = None
    pinned_at: datetime | None = None
    #: the snapshot taken when pinned: rows of the ``drift_distribution`` query
    distribution: tuple[Mapping[str, Any], ...] = field(default=())

    @classmethod
    def pinned(cls, start: datetime, end: datetime, *, pinned_at: datetime,
               distribution: tuple[Mapping[str, Any], ...] = ()) -> Baseline:
        if not start < end:
            raise ValueError("a pinned baseline must start before it ends")
        return cls(PINNED, start, end, pinned_at, distribution)

    def lookback(self, settings: DriftSettings, now: datetime) -> tuple[timedelta, timedelta]:
        """(baselineStart, baselineEnd) as look-backs from ``now``."""
        if self.kind != PINNED or self.start is None or self.end is None:
            return settings.window + settings.baseline, settings.window
        # a pinned range never reaches into the current window it is compared with
        end = max(now - self.end, settings.window)
        start = max(now - self.start, end + timedelta(minutes=1))
        return start, end

    def query_params(self, settings: DriftSettings, now: datetime) -> dict[str, ParamValue]:
        start, end = self.lookback(settings, now)
        return {"currentWindow": settings.window, "baselineStart": _whole_seconds(start),
                "baselineEnd": _whole_seconds(end), "minImages": settings.min_images}

    def describe(self, settings: DriftSettings, now: datetime) -> dict[str, Any]:
        """What status says about the baseline in force."""
        start, end = self.lookback(settings, now)
        return {"kind": self.kind, "from": _iso(now - start), "to": _iso(now - end),
                "pinned_at": _iso(self.pinned_at), "current_window_minutes":
                settings.window_minutes, "psi_threshold": settings.psi_threshold}

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "start": _iso(self.start), "end": _iso(self.end),
                "pinned_at": _iso(self.pinned_at),
                "distribution": [dict(row) for row in self.distribution]}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Baseline:
        """A pinned baseline from its document; anything malformed is a ``ValueError``."""
        if doc.get("kind") != PINNED:
            return cls()
        start, end = _parse_time(doc.get("start")), _parse_time(doc.get("end"))
        if start is None or end is None:
            raise ValueError("pinned baseline document needs start and end")
        rows = doc.get("distribution") or []
        if not isinstance(rows, list):
            raise ValueError("distribution must be a list")
        return cls.pinned(start, end, pinned_at=_parse_time(doc.get("pinned_at")) or end,
                          distribution=tuple(r for r in rows if isinstance(r, Mapping)))


def load_baseline(documents: JsonDocuments) -> Baseline:
    """The baseline in force: the pinned document if there is a valid one, else rolling."""
    doc = documents.read_json(BASELINE_DOCUMENT)
    if doc is None:
        return Baseline()
    try:
        return Baseline.from_json(doc)
    except ValueError as exc:
        logger.warning("drift baseline document ignored (%s); using the rolling baseline", exc)
        return Baseline()


def save_baseline(documents: JsonDocuments, baseline: Baseline) -> None:
    documents.write_json(BASELINE_DOCUMENT, baseline.to_json())


def _whole_seconds(delta: timedelta) -> timedelta:
    return timedelta(seconds=int(delta.total_seconds()))


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


__all__ = ["BASELINE_DOCUMENT", "PINNED", "ROLLING", "Baseline", "JsonDocuments",
           "load_baseline", "save_baseline"]
