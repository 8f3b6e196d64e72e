"""Fault schedule of the emulator: what to break, how often, and when.

A :class:`FaultConfig` is parsed (all problems reported at once) from the admin API's JSON; a
:class:`FaultInjector` draws one :class:`FaultDecision` per analyze request from a seeded RNG, so a
given seed and request sequence always break the same way. Outage windows are absolute wall-clock
intervals (relative ones are anchored when the config is set) read from an injected clock.
This module only decides; ``app`` carries the decisions out.

JSON accepted by ``PUT /admin/faults`` (every key optional)::

    {"seed": 7,
     "error_rates": {"500": 0.2, "503": 0.05, "429": 0.1},
     "retry_after_s": 1,
     "latency": {"p": 0.5, "distribution": "fixed", "ms": 300},
                 # or "uniform" with min_ms/max_ms, or "normal" with mean_ms/stddev_ms
     "timeout": {"rate": 0.1, "hold_s": 30, "then": "close"},      # or "respond"
     "outages": [{"start_in_s": 0, "duration_s": 60, "mode": "503"},   # or "reset"
                 {"start": "2030-01-01T00:00:00Z", "end": "2030-01-01T01:00:00Z"}],
     "slow_body": {"rate": 1.0, "chunk_bytes": 64, "interval_ms": 100},
     "corrupt": {"rate": 0.1, "mode": "truncate"},                 # or "wrong_content_type"
     "sticky": {"rate": 0.2, "status": 500},
     "size_latency": {"ms_per_mb": 2000}}

``sticky`` fails the same share of *images* on every attempt (chosen from a hash of the seed and
the request body, not drawn per request), the way a service bug tied to some content does; it is
what a "retries beyond the second never succeed" rehearsal needs, which independent per-request
errors cannot express. ``size_latency`` adds latency in proportion to the request body, as the
service's own time grows with the image it receives; a "larger images cost more" rehearsal of
the tuning review needs it, because the local OCR works at a fixed internal resolution.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

LatencyKind = Literal["fixed", "uniform", "normal"]
OutageMode = Literal["503", "reset"]
HoldThen = Literal["close", "respond"]
CorruptMode = Literal["truncate", "wrong_content_type"]


class FaultConfigError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Latency:
    distribution: LatencyKind
    p: float = 1.0
    ms: float = 0.0
    min_ms: float = 0.0
    max_ms: float = 0.0
    mean_ms: float = 0.0
    stddev_ms: float = 0.0

    def sample_ms(self, rng: random.Random) -> float:
        if self.distribution == "fixed":
            return self.ms
        if self.distribution == "uniform":
            return rng.uniform(self.min_ms, self.max_ms)
        return max(0.0, rng.gauss(self.mean_ms, self.stddev_ms))

    def to_json(self) -> dict[str, Any]:
        shape: dict[str, float] = {
            "fixed": {"ms": self.ms},
            "uniform": {"min_ms": self.min_ms, "max_ms": self.max_ms},
            "normal": {"mean_ms": self.mean_ms, "stddev_ms": self.stddev_ms},
        }[self.distribution]
        return {"distribution": self.distribution, "p": self.p, **shape}


@dataclass(frozen=True, slots=True)
class HoldFault:
    rate: float
    hold_s: float
    then: HoldThen = "close"


@dataclass(frozen=True, slots=True)
class Outage:
    start: float  # epoch seconds, inclusive
    end: float  # epoch seconds, exclusive
    mode: OutageMode = "503"

    def covers(self, now: float) -> bool:
        return self.start <= now < self.end

    def to_json(self) -> dict[str, Any]:
        def iso(ts: float) -> str:
            return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat().replace("+00:00", "Z")

        return {"start": iso(self.start), "end": iso(self.end), "mode": self.mode}


@dataclass(frozen=True, slots=True)
class SlowBody:
    rate: float
    chunk_bytes: int = 64
    interval_ms: float = 100.0


@dataclass(frozen=True, slots=True)
class Corrupt:
    rate: float
    mode: CorruptMode = "truncate"


@dataclass(frozen=True, slots=True)
class Sticky:
    rate: float
    status: int = 500

    def hits(self, seed: int | None, body: bytes) -> bool:
        digest = hashlib.sha256(f"{seed}:".encode() + body).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.rate


@dataclass(frozen=True, slots=True)
class FaultConfig:
    seed: int | None = None
    error_rates: tuple[tuple[int, float], ...] = ()
    retry_after_s: float = 1.0
    latency: Latency | None = None
    timeout: HoldFault | None = None
    outages: tuple[Outage, ...] = ()
    slow_body: SlowBody | None = None
    corrupt: Corrupt | None = None
    sticky: Sticky | None = None
    #: extra latency per MB of request body (0: none)
    ms_per_mb: float = 0.0

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, now: float) -> FaultConfig:
        return _Parser(now).parse(data)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "error_rates": {str(code): rate for code, rate in self.error_rates},
            "retry_after_s": self.retry_after_s,
            "latency": self.latency.to_json() if self.latency else None,
            "timeout": (
                {
                    "rate": self.timeout.rate,
                    "hold_s": self.timeout.hold_s,
                    "then": self.timeout.then,
                }
                if self.timeout
                else None
            ),
            "outages": [o.to_json() for o in self.outages],
            "slow_body": (
                {
                    "rate": self.slow_body.rate,
                    "chunk_bytes": self.slow_body.chunk_bytes,
                    "interval_ms": self.slow_body.interval_ms,
                }
                if self.slow_body
                else None
            ),
            "corrupt": (
                {"rate": self.corrupt.rate, "mode": self.corrupt.mode} if self.corrupt else None
            ),
            "sticky": (
                {"rate": self.sticky.rate, "status": self.sticky.status} if self.sticky else None
            ),
            "size_latency": {"ms_per_mb": self.ms_per_mb} if self.ms_per_mb else None,
        }


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What to do to one request; the default breaks nothing."""

    error_status: int | None = None
    latency_ms: float = 0.0
    hold: HoldFault | None = None
    slow_body: SlowBody | None = None
    corrupt: CorruptMode | None = None
    kinds: tuple[str, ...] = field(default=())


class FaultInjector:
    def __init__(self) -> None:
        self.config = FaultConfig()
        self._rng = random.Random()

    def replace(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)

    def reset(self) -> None:
        self.replace(FaultConfig())

    def active_outage(self, now: float) -> Outage | None:
        return next((o for o in self.config.outages if o.covers(now)), None)

    def decide(self, body: bytes | None = None) -> FaultDecision:
        """One request's faults; ``body`` (the image bytes) is what ``sticky`` is keyed on."""
        cfg, rng = self.config, self._rng
        kinds: list[str] = []
        error_status: int | None = None
        if cfg.sticky is not None and body is not None and cfg.sticky.hits(cfg.seed, body):
            error_status = cfg.sticky.status
            kinds.append("sticky")
        elif cfg.error_rates:
            draw, cumulative = rng.random(), 0.0
            for status, rate in cfg.error_rates:
                cumulative += rate
                if draw < cumulative:
                    error_status = status
                    kinds.append("error")
                    break
        latency_ms = 0.0
        if cfg.latency is not None and rng.random() < cfg.latency.p:
            latency_ms = cfg.latency.sample_ms(rng)
            kinds.append("latency")
        if cfg.ms_per_mb and body:
            latency_ms += cfg.ms_per_mb * len(body) / 1_000_000
            kinds.append("size_latency")
        hold = None
        if cfg.timeout is not None and rng.random() < cfg.timeout.rate:
            hold = cfg.timeout
            kinds.append("timeout")
        slow = None
        if cfg.slow_body is not None and rng.random() < cfg.slow_body.rate:
            slow = cfg.slow_body
            kinds.append("slow_body")
        corrupt: CorruptMode | None = None
        if cfg.corrupt is not None and rng.random() < cfg.corrupt.rate:
            corrupt = cfg.corrupt.mode
            kinds.append("corrupt")
        return FaultDecision(error_status, latency_ms, hold, slow, corrupt, tuple(kinds))


class _Parser:
    """Collects every problem of a faults document before failing."""

    _KEYS = frozenset(
        {
            "seed",
            "error_rates",
            "retry_after_s",
            "latency",
            "timeout",
            "outages",
            "slow_body",
            "corrupt",
            "sticky",
            "size_latency",
        }
    )

    def __init__(self, now: float) -> None:
        self.now = now
        self.problems: list[str] = []

    def parse(self, data: Mapping[str, Any]) -> FaultConfig:
        if not isinstance(data, Mapping):
            raise FaultConfigError(["the faults document must be a JSON object"])
        unknown = sorted(set(data) - self._KEYS)
        if unknown:
            self.problems.append(f"unknown keys: {', '.join(unknown)}")
        seed = data.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            self.problems.append("seed must be an integer")
            seed = None
        config = FaultConfig(
            seed=seed,
            error_rates=self._error_rates(data.get("error_rates") or {}),
            retry_after_s=self._number(data, "retry_after_s", 1.0, low=1.0),
            latency=self._latency(data.get("latency")),
            timeout=self._hold(data.get("timeout")),
            outages=self._outages(data.get("outages") or []),
            slow_body=self._slow(data.get("slow_body")),
            corrupt=self._corrupt(data.get("corrupt")),
            sticky=self._sticky(data.get("sticky")),
            ms_per_mb=self._size_latency(data.get("size_latency")),
        )
        if self.problems:
            raise FaultConfigError(self.problems)
        return config

    def _number(
        self,
        obj: Mapping[str, Any],
        key: str,
        default: float,
        *,
        low: float = 0.0,
        high: float | None = None,
        where: str = "",
    ) -> float:
        value = obj.get(key, default)
        name = f"{where}{key}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problems.append(f"{name} must be a number")
            return default
        if value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            self.problems.append(f"{name} must be {bound}, got {value}")
            return default
        return float(value)

    def _rate(self, obj: Mapping[str, Any], key: str, where: str) -> float:
        return self._number(obj, key, 0.0, high=1.0, where=where)

    def _object(self, value: Any, name: str) -> Mapping[str, Any] | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.problems.append(f"{name} must be an object or null")
            return None
        return cast(Mapping[str, Any], value)

    def _error_rates(self, value: Any) -> tuple[tuple[int, float], ...]:
        rates = self._object(value, "error_rates")
        if rates is None:
            return ()
        parsed: list[tuple[int, float]] = []
        for key in rates:
            if not str(key).isdigit() or not 400 <= int(key) <= 599:
                self.problems.append(f"error_rates key {key!r} must be an HTTP status 400..599")
                continue
            parsed.append((int(key), self._rate(rates, key, "error_rates.")))
        if sum(rate for _, rate in parsed) > 1.0 + 1e-9:
            self.problems.append("error_rates must add up to at most 1")
        return tuple(sorted(parsed))

    def _latency(self, value: Any) -> Latency | None:
        obj = self._object(value, "latency")
        if obj is None:
            return None
        kind = obj.get("distribution", "fixed")
        p = self._rate({"p": obj.get("p", 1.0)}, "p", "latency.")
        w = "latency."
        if kind == "fixed":
            return Latency("fixed", p, ms=self._number(obj, "ms", 0.0, where=w))
        if kind == "uniform":
            low = self._number(obj, "min_ms", 0.0, where=w)
            high = self._number(obj, "max_ms", 0.0, where=w)
            if high < low:
                self.problems.append("latency.max_ms must be >= latency.min_ms")
            return Latency("uniform", p, min_ms=low, max_ms=high)
        if kind == "normal":
            return Latency(
                "normal",
                p,
                mean_ms=self._number(obj, "mean_ms", 0.0, where=w),
                stddev_ms=self._number(obj, "stddev_ms", 0.0, where=w),
            )
        self.problems.append("latency.distribution must be fixed, uniform or normal")
        return None

    def _hold(self, value: Any) -> HoldFault | None:
        obj = self._object(value, "timeout")
        if obj is None:
            return None
        then = obj.get("then", "close")
        if then not in ("close", "respond"):
            self.problems.append("timeout.then must be close or respond")
            then = "close"
        return HoldFault(
            rate=self._rate(obj, "rate", "timeout."),
            hold_s=self._number(obj, "hold_s", 30.0, high=3600.0, where="timeout."),
            then=cast(HoldThen, then),
        )

    def _instant(self, value: Any, name: str) -> float | None:
        if not isinstance(value, str):
            self.problems.append(f"{name} must be an ISO 8601 timestamp")
            return None
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            self.problems.append(f"{name} is not an ISO 8601 timestamp: {value!r}")
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return moment.timestamp()

    def _outages(self, value: Any) -> tuple[Outage, ...]:
        if not isinstance(value, list):
            self.problems.append("outages must be a list")
            return ()
        windows: list[Outage] = []
        for index, item in enumerate(value):
            name = f"outages[{index}]"
            obj = self._object(item, name)
            if obj is None:
                continue
            mode = str(obj.get("mode", "503"))
            if mode not in ("503", "reset"):
                self.problems.append(f"{name}.mode must be 503 or reset")
                continue
            if "start" in obj or "end" in obj:
                start = self._instant(obj.get("start"), f"{name}.start")
                end = self._instant(obj.get("end"), f"{name}.end")
            else:
                start = self.now + self._number(obj, "start_in_s", 0.0, where=f"{name}.")
                end = start + self._number(obj, "duration_s", 60.0, where=f"{name}.")
            if start is None or end is None:
                continue
            if end <= start:
                self.problems.append(f"{name} must end after it starts")
                continue
            windows.append(Outage(start, end, cast(OutageMode, mode)))
        return tuple(windows)

    def _slow(self, value: Any) -> SlowBody | None:
        obj = self._object(value, "slow_body")
        if obj is None:
            return None
        return SlowBody(
            rate=self._rate(obj, "rate", "slow_body."),
            chunk_bytes=int(self._number(obj, "chunk_bytes", 64, low=1, where="slow_body.")),
            interval_ms=self._number(obj, "interval_ms", 100.0, high=60_000, where="slow_body."),
        )

    def _corrupt(self, value: Any) -> Corrupt | None:
        obj = self._object(value, "corrupt")
        if obj is None:
            return None
        mode = obj.get("mode", "truncate")
        if mode not in ("truncate", "wrong_content_type"):
            self.problems.append("corrupt.mode must be truncate or wrong_content_type")
            mode = "truncate"
        return Corrupt(rate=self._rate(obj, "rate", "corrupt."), mode=cast(CorruptMode, mode))

    def _size_latency(self, value: Any) -> float:
        obj = self._object(value, "size_latency")
        if obj is None:
            return 0.0
        return self._number(obj, "ms_per_mb", 0.0, low=0.0, high=600_000.0,
                            where="size_latency.")

    def _sticky(self, value: Any) -> Sticky | None:
        obj = self._object(value, "sticky")
        if obj is None:
            return None
        status = obj.get("status", 500)
        if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
            self.problems.append("sticky.status must be an HTTP status 400..599")
            status = 500
        return Sticky(rate=self._rate(obj, "rate", "sticky."), status=status)
