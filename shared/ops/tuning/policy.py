"""The periodic tuning review: from production telemetry to recommended values of the slow knobs.

What it covers: the Vision timeout, retries and backoff, the preprocessing size and JPEG
quality, the rate ceiling and the host's blob concurrency. The adaptive Vision client handles
the call rate second by second; this module handles what should change over days.

Everything here is a pure decision: ``review()`` takes the values in force, the evidence (the
numbers the named queries in ``queries/tuning_*.kql`` returned) and the overlay that is active,
and returns a ``Review``; ``apply()`` turns a review into the next overlay. Neither reads a
clock, a setting or storage (``shared.tuning_store`` does that).

What it must never do: recommend a value outside the tunable's documented bounds, move a value
by more than one bounded step per review, change a pinned tunable, or apply a tunable the app
cannot change at run time (host.json's blob concurrency is recommend-only).

Why one module past 450 lines: the rules, the overlay they move and the revert that judges them
share one vocabulary (``Tunable`` bounds and steps, ``Kpi``) and are read together to answer
"why did this value change"; each rule is a short function of its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from shared.settings import TuningMode as Mode


class Confidence(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


# --------------------------------------------------------------------------- the tunables


@dataclass(frozen=True, slots=True)
class Tunable:
    """One knob: its app setting, documented bounds, largest move per review, and kind."""

    name: str
    setting: str
    low: float
    high: float
    #: the largest move of one review: a factor (up or down) when ``relative``, else a step
    max_step: float
    relative: bool
    integer: bool
    #: False for knobs the app cannot change while running (recommend only)
    runtime: bool = True
    unit: str = ""

    def clamp(self, value: float) -> float:
        value = min(self.high, max(self.low, value))
        return float(round(value)) if self.integer else round(value, 3)

    def one_step(self, current: float, target: float) -> float:
        """``target`` limited to one bounded step from ``current`` and to the bounds."""
        if self.relative:
            low, high = current / self.max_step, current * self.max_step
        else:
            low, high = current - self.max_step, current + self.max_step
        return self.clamp(min(high, max(low, target)))


#: Bounds: the Settings parser's ranges narrowed to what the service documents or a sane
#: operator would run (Image Analysis: sides > 50 and < 16,000 px; retries beyond 8 only add
#: load; timeouts above 120 s hold a worker for nothing).
TUNABLES: Mapping[str, Tunable] = {t.name: t for t in (
    Tunable("vision_timeout_seconds", "VISION_TIMEOUT_SECONDS", 5, 120, 2.0, True, False,
            unit="s"),
    Tunable("vision_max_retries", "VISION_MAX_RETRIES", 0, 8, 1, False, True),
    Tunable("vision_backoff_base_seconds", "VISION_BACKOFF_BASE_SECONDS", 0.1, 10, 2.0, True,
            False, unit="s"),
    Tunable("vision_backoff_max_seconds", "VISION_BACKOFF_MAX_SECONDS", 1, 60, 2.0, True, False,
            unit="s"),
    Tunable("preprocess_max_dimension", "PREPROCESS_MAX_DIMENSION", 512, 4096, 512, False, True,
            unit="px"),
    Tunable("preprocess_jpeg_quality", "PREPROCESS_JPEG_QUALITY", 60, 95, 5, False, True),
    Tunable("vision_rate_limit_per_second", "VISION_RATE_LIMIT_PER_SECOND", 0.1, 1000, 1.5,
            True, False, unit="calls/s"),
    Tunable("host_blob_concurrency", "host.json extensions.blobs.maxDegreeOfParallelism", 1, 32,
            2.0, True, True, runtime=False),
)}
RUNTIME_TUNABLES = tuple(name for name, t in TUNABLES.items() if t.runtime)


# --------------------------------------------------------------------------- evidence


@dataclass(frozen=True, slots=True)
class AttemptStats:
    """Vision calls of one attempt number (1 = first try) in the review window."""

    attempt: int
    calls: int
    successes: int
    throttled: int
    timeouts: int


@dataclass(frozen=True, slots=True)
class Distribution:
    """Count and percentiles of one measure (its unit is in the field that holds it)."""

    count: int = 0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class SizeBucket:
    """Analysed images whose sent image's longer side fell in ``(low_px, high_px]``."""

    low_px: int
    high_px: int
    images: int
    vision_p50_ms: float | None
    preprocess_p50_ms: float | None
    ocr_words_avg: float | None
    word_confidence_avg: float | None
    people_avg: float | None


@dataclass(frozen=True, slots=True)
class Kpi:
    """The KPIs a change is judged by: p95 analysis time, success ratio, calls per success."""

    images: int = 0
    analysed: int = 0
    p95_ms: float | None = None
    calls: int = 0

    @property
    def success_ratio(self) -> float | None:
        return self.analysed / self.images if self.images else None

    @property
    def calls_per_success(self) -> float | None:
        return self.calls / self.analysed if self.analysed else None


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the named queries returned for one review window (see ``queries/tuning_*.kql``)."""

    window_hours: float
    attempts: tuple[AttemptStats, ...] = ()
    success_ms: Distribution = field(default_factory=Distribution)  # successful Vision calls
    timeout_ms: Distribution = field(default_factory=Distribution)  # calls that timed out
    retry_after_s: Distribution = field(default_factory=Distribution)  # Retry-After values
    rethrottled_retries: int = 0  # retries (attempt > 1) answered 429 again
    sizes: tuple[SizeBucket, ...] = ()
    kpi: Kpi = field(default_factory=Kpi)
    limiter_wait_p95_ms: float | None = None
    pipeline_p50_ms: float | None = None  # preprocess + Vision of an analysed image
    throughput_per_s: float | None = None  # analysed images per second at the busiest minute

    @property
    def calls(self) -> int:
        return sum(a.calls for a in self.attempts)

    @property
    def throttled(self) -> int:
        return sum(a.throttled for a in self.attempts)


# --------------------------------------------------------------------------- the review


@dataclass(frozen=True, slots=True)
class Recommendation:
    tunable: str
    setting: str
    current: float | None
    recommended: float | None
    evidence: Mapping[str, Any]
    query: str
    effect: str
    confidence: Confidence
    #: False when the recommendation is "keep": not enough evidence, or already right
    change: bool = False
    applicable: bool = True

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["evidence"] = dict(self.evidence)
        data["confidence"] = self.confidence.value
        return data


@dataclass(frozen=True, slots=True)
class Policy:
    """How cautious the review is. Defaults are documented in docs/tuning.md."""

    #: fewest samples behind any recommendation that changes a value
    min_samples: int = 30
    #: an applied change is reverted when p95 grows by more than this share …
    p95_tolerance: float = 0.20
    #: … or the success ratio drops by more than this (absolute)
    success_tolerance: float = 0.01
    #: a timeout is "far above" successes when it is this many times their p99
    timeout_headroom: float = 3.0
    #: OCR output counts as "not improving" when it changes less than this share
    output_tolerance: float = 0.05


def _keep(t: Tunable, current: float | None, query: str, why: str,
          evidence: Mapping[str, Any] | None = None) -> Recommendation:
    return Recommendation(t.name, t.setting, current, current, {"why": why, **(evidence or {})},
                          query, "none", Confidence.LOW, change=False, applicable=t.runtime)


def _move(t: Tunable, current: float | None, target: float, query: str,  # noqa: PLR0917
          evidence: Mapping[str, Any], effect: str, confidence: Confidence) -> Recommendation:
    recommended = t.clamp(target)
    changed = current is None or not math.isclose(recommended, current, rel_tol=1e-6)
    return Recommendation(t.name, t.setting, current, recommended, dict(evidence), query,
                          effect if changed else "none", confidence, change=changed,
                          applicable=t.runtime)


def _confidence(samples: int, policy: Policy) -> Confidence:
    if samples >= 10 * policy.min_samples:
        return Confidence.HIGH
    return Confidence.MEDIUM if samples >= 3 * policy.min_samples else Confidence.LOW


def _timeout(current: Mapping[str, float | None], ev: Evidence, policy: Policy) -> Recommendation:
    t, q = TUNABLES["vision_timeout_seconds"], "tuning_vision_latency"
    now = current.get(t.name)
    ok, hung = ev.success_ms, ev.timeout_ms
    if now is None or ok.count < policy.min_samples or ok.p99 is None:
        return _keep(t, now, q, "too few successful calls", {"successes": ok.count})
    p99_s = ok.p99 / 1000
    evidence = {"successes": ok.count, "success_p99_ms": ok.p99,
                "success_max_ms": ok.max, "timeouts": hung.count,
                "timeout_p50_ms": hung.p50}
    if p99_s > 0.8 * now:
        # successes crowd the timeout: some slow-but-good answers are being cut off
        return _move(t, now, p99_s * 1.5, q, evidence,
                     "fewer timeouts of answers that would have arrived", _confidence(ok.count,
                                                                                         policy))
    if hung.count and now > policy.timeout_headroom * p99_s:
        # calls that time out hold a worker for the whole timeout while successes finish far
        # earlier: wait a safe multiple of the successes' p99 instead
        target = max(policy.timeout_headroom * p99_s, p99_s + 2.0)
        return _move(t, now, target, q, evidence,
                     "hung calls fail and retry sooner; p95 analysis time drops",
                     _confidence(ok.count, policy))
    return _keep(t, now, q, "successes and timeouts fit the current timeout", evidence)


def _retries(current: Mapping[str, float | None], ev: Evidence, policy: Policy) -> Recommendation:
    t, q = TUNABLES["vision_max_retries"], "tuning_attempts"
    now = current.get(t.name)
    by_attempt = {a.attempt: a for a in ev.attempts}
    evidence = {f"attempt_{a.attempt}": {"calls": a.calls, "successes": a.successes}
                for a in ev.attempts}
    if now is None or not by_attempt:
        return _keep(t, now, q, "no Vision calls in the window", evidence)
    useful = max((n for n, a in by_attempt.items() if a.successes > 0), default=1)
    beyond = [a for n, a in by_attempt.items() if n > useful]
    wasted = sum(a.calls for a in beyond)
    if wasted >= policy.min_samples and useful - 1 < now:
        # attempts past ``useful`` never succeeded: they only add load and delay the poison
        return _move(t, now, useful - 1, q, {**evidence, "useful_attempts": useful,
                                             "calls_that_never_succeed": wasted},
                     "fewer calls that cannot succeed; failures reach the host sooner",
                     _confidence(wasted, policy))
    last = by_attempt.get(int(now) + 1)
    if last is not None and last.calls >= policy.min_samples and last.successes / last.calls > 0.5:
        # the last allowed attempt still succeeds more often than not: one more would save some
        return _move(t, now, now + 1, q, {**evidence, "last_attempt_success_ratio":
                                          round(last.successes / last.calls, 3)},
                     "fewer images left to the host's retries", _confidence(last.calls, policy))
    return _keep(t, now, q, "every allowed attempt still succeeds sometimes", evidence)


def _backoff(current: Mapping[str, float | None], ev: Evidence,
             policy: Policy) -> tuple[Recommendation, Recommendation]:
    base_t, cap_t, q = (TUNABLES["vision_backoff_base_seconds"],
                        TUNABLES["vision_backoff_max_seconds"], "tuning_retry_after")
    base, cap = current.get(base_t.name), current.get(cap_t.name)
    ra = ev.retry_after_s
    retries = sum(a.calls for a in ev.attempts if a.attempt > 1)
    evidence = {"retry_after_count": ra.count, "retry_after_p95_s": ra.p95,
                "retry_after_max_s": ra.max, "retries": retries,
                "retries_throttled_again": ev.rethrottled_retries}
    if base is None or retries < policy.min_samples:
        base_rec = _keep(base_t, base, q, "too few retries", evidence)
    elif ev.rethrottled_retries / retries > 0.5:
        base_rec = _move(base_t, base, base * 2, q, evidence,
                         "retries wait long enough to land after the throttle clears",
                         _confidence(retries, policy))
    else:
        base_rec = _keep(base_t, base, q, "most retries are not throttled again", evidence)
    if cap is None or ra.count < policy.min_samples or ra.p95 is None:
        cap_rec = _keep(cap_t, cap, q, "too few Retry-After values", evidence)
    elif ra.p95 > cap:
        # the service asks for longer waits than the cap allows between our own retries
        cap_rec = _move(cap_t, cap, math.ceil(ra.p95), q, evidence,
                        "backoff covers the waits the service asks for",
                        _confidence(ra.count, policy))
    else:
        cap_rec = _keep(cap_t, cap, q, "the cap covers the Retry-After values seen", evidence)
    return base_rec, cap_rec


def _max_dimension(current: Mapping[str, float | None], ev: Evidence,
                   policy: Policy) -> Recommendation:
    t, q = TUNABLES["preprocess_max_dimension"], "tuning_size_buckets"
    now = current.get(t.name)
    buckets = sorted((b for b in ev.sizes if b.images > 0), key=lambda b: b.high_px)
    evidence = {f"{b.low_px}-{b.high_px}px": {
        "images": b.images, "vision_p50_ms": b.vision_p50_ms,
        "preprocess_p50_ms": b.preprocess_p50_ms, "ocr_words_avg": b.ocr_words_avg,
        "word_confidence_avg": b.word_confidence_avg} for b in buckets}
    if now is None or len(buckets) < 2:
        return _keep(t, now, q, "images of one size only", evidence)
    top, below = buckets[-1], buckets[-2]
    if min(top.images, below.images) < policy.min_samples // 3 or top.high_px < now:
        return _keep(t, now, q, "too few images at the largest sizes", evidence)
    slower = _cost_ms(top) > _cost_ms(below) * (1 + policy.output_tolerance)
    words_gain = _gain(top.ocr_words_avg, below.ocr_words_avg)
    conf_gain = _gain(top.word_confidence_avg, below.word_confidence_avg)
    if slower and words_gain <= policy.output_tolerance and conf_gain <= policy.output_tolerance:
        # the largest images cost more time and read no better than the next size down
        return _move(t, now, below.high_px, q, {**evidence, "words_gain": round(words_gain, 3),
                                                "confidence_gain": round(conf_gain, 3)},
                     "less time per large image at the same OCR output",
                     _confidence(top.images + below.images, policy))
    return _keep(t, now, q, "larger images still read better (or cost nothing more)",
                 {**evidence, "words_gain": round(words_gain, 3)})


def _cost_ms(bucket: SizeBucket) -> float:
    return (bucket.vision_p50_ms or 0.0) + (bucket.preprocess_p50_ms or 0.0)


def _gain(top: float | None, below: float | None) -> float:
    if top is None or below is None or below <= 0:
        return 0.0
    return (top - below) / below


def _jpeg_quality(current: Mapping[str, float | None], ev: Evidence,
                  policy: Policy) -> Recommendation:
    # Quality trades bytes (upload time) against OCR detail. Without images encoded at two
    # qualities in the window there is no evidence either way, and guessing would be a change
    # without a reason: the review says so and keeps it.
    t = TUNABLES["preprocess_jpeg_quality"]
    analysed = ev.kpi.analysed
    return _keep(t, current.get(t.name), "tuning_size_buckets",
                 "no A/B evidence across qualities in the window", {"analysed": analysed})


def _rate(current: Mapping[str, float | None], ev: Evidence, policy: Policy,
          tier_limit: float) -> Recommendation:
    t, q = TUNABLES["vision_rate_limit_per_second"], "tuning_attempts"
    now = current.get(t.name)
    calls, throttled = ev.calls, ev.throttled
    evidence = {"calls": calls, "throttled": throttled, "tier_limit": tier_limit,
                "limiter_wait_p95_ms": ev.limiter_wait_p95_ms}
    if calls < policy.min_samples:
        return _keep(t, now, q, "too few calls", evidence)
    share = throttled / calls
    ceiling = now if now is not None else tier_limit
    # a share alone is no evidence on a small window: one 429 in 16 calls is 6 %
    if share > 0.05 and throttled >= max(3, policy.min_samples // 3):
        # the account answers 429 often: the limit is lower than the ceiling assumes
        return _move(t, now, t.one_step(ceiling, ceiling * (1 - share)), q,
                     {**evidence, "throttled_share": round(share, 4)},
                     "fewer 429s (BlockedCalls) at the same goodput", _confidence(calls, policy))
    wait = ev.limiter_wait_p95_ms or 0.0
    if now is not None and share == 0 and wait > 1000 and now < tier_limit:
        return _move(t, now, min(tier_limit, now * t.max_step), q,
                     {**evidence, "throttled_share": 0.0},
                     "less time queued behind our own limiter", _confidence(calls, policy))
    return _keep(t, now, q, "429s and limiter waits are low", evidence)


def _concurrency(current: Mapping[str, float | None], ev: Evidence, policy: Policy,
                 rate: float) -> Recommendation:
    t, q = TUNABLES["host_blob_concurrency"], "tuning_vision_latency"
    now = current.get(t.name)
    work_s = (ev.pipeline_p50_ms or 0.0) / 1000
    evidence = {"pipeline_p50_ms": ev.pipeline_p50_ms, "rate_limit_per_s": rate,
                "limiter_wait_p95_ms": ev.limiter_wait_p95_ms, "analysed": ev.kpi.analysed}
    if now is None or ev.kpi.analysed < policy.min_samples or work_s <= 0:
        return _keep(t, now, q, "too few analysed images", evidence)
    # Little's law: invocations needed in flight = rate times the time each one takes.
    needed = math.ceil(rate * work_s * 1.25)
    wait_ms = ev.limiter_wait_p95_ms or 0.0
    busy = ev.throughput_per_s or 0.0
    if needed < now and wait_ms > max(work_s * 1000, 1000):
        # invocations spend longer queued behind the limiter than working (and over a second):
        # the extra ones only hold memory and a worker thread
        target = t.one_step(now, needed)
        effect = "invocations stop queueing behind the limiter"
    elif needed > now and wait_ms < 100 and busy >= 0.8 * now / work_s:
        # every slot is busy at the peak and the limiter is idle: more in flight use the rate
        target = t.one_step(now, needed)
        effect = "the rate limit can be used fully at the peak"
    else:
        return _keep(t, now, q, "concurrency is not what limits throughput", {**evidence,
                                                                            "needed": needed})
    return _move(t, now, target, q, {**evidence, "needed": needed, "busiest_per_s": busy},
                 effect, _confidence(ev.kpi.analysed, policy))


@dataclass(frozen=True, slots=True)
class AppliedChange:
    """A value the overlay moved: from what, to what, by which review, and the KPIs before."""

    tunable: str
    old: float | None
    new: float
    review_id: str
    applied_at: str
    kpi_before: Kpi
    #: set by the next review: "kept" or "reverted"
    verdict: str | None = None


@dataclass(frozen=True, slots=True)
class Overlay:
    """The runtime tunables in force over app settings, versioned; pins win over values."""

    version: int = 0
    values: Mapping[str, float] = field(default_factory=dict)
    pins: Mapping[str, float] = field(default_factory=dict)
    changes: tuple[AppliedChange, ...] = ()

    def effective(self) -> dict[str, float]:
        return {**self.values, **self.pins}

    def pending(self) -> tuple[AppliedChange, ...]:
        return tuple(c for c in self.changes if c.verdict is None)

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "values": dict(self.values), "pins": dict(self.pins),
                "changes": [{**asdict(c), "kpi_before": asdict(c.kpi_before)}
                            for c in self.changes]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Overlay:
        """Parse a stored overlay, dropping anything outside the whitelist or its bounds."""
        def known(items: Mapping[str, Any]) -> dict[str, float]:
            out: dict[str, float] = {}
            for name, value in (items or {}).items():
                t = TUNABLES.get(name)
                if t is not None and t.runtime and isinstance(value, int | float):
                    out[name] = t.clamp(float(value))
            return out
        changes = tuple(
            AppliedChange(tunable=str(c["tunable"]), old=c.get("old"), new=float(c["new"]),
                          review_id=str(c["review_id"]), applied_at=str(c["applied_at"]),
                          kpi_before=Kpi(**c.get("kpi_before", {})), verdict=c.get("verdict"))
            for c in data.get("changes", ()) if c.get("tunable") in TUNABLES)
        return cls(version=int(data.get("version", 0)), values=known(data.get("values", {})),
                   pins=known(data.get("pins", {})), changes=changes[-50:])


@dataclass(frozen=True, slots=True)
class Revert:
    tunable: str
    reverted_to: float | None
    applied_value: float
    reason: str
    kpi_before: Kpi
    kpi_after: Kpi


@dataclass(frozen=True, slots=True)
class Review:
    id: str
    created_at: str
    mode: Mode
    window_hours: float
    kpi: Kpi
    recommendations: tuple[Recommendation, ...]
    reverts: tuple[Revert, ...] = ()
    applied: tuple[AppliedChange, ...] = ()
    queries: tuple[str, ...] = ()
    #: whether the overlay's pending changes were judged (enough traffic since they applied)
    judged: bool = False

    def changes(self) -> tuple[Recommendation, ...]:
        return tuple(r for r in self.recommendations if r.change)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "created_at": self.created_at, "mode": self.mode.value,
                "window_hours": self.window_hours,
                "kpi": {**asdict(self.kpi), "success_ratio": self.kpi.success_ratio,
                        "calls_per_success": self.kpi.calls_per_success},
                "recommendations": [r.as_dict() for r in self.recommendations],
                "reverts": [asdict(r) for r in self.reverts],
                "applied": [asdict(c) for c in self.applied],
                "queries": list(self.queries), "judged": self.judged}


def review(
    current: Mapping[str, float | None],
    evidence: Evidence,
    *,
    review_id: str,
    created_at: str,
    mode: Mode,
    tier_limit: float,
    overlay: Overlay | None = None,
    kpi_since_change: Kpi | None = None,
    policy: Policy | None = None,
) -> Review:
    """Recommend a value for every tunable; judge the overlay's pending changes first.

    ``current`` holds the values in force (app settings with the overlay on top).
    ``kpi_since_change`` are the KPIs measured since the pending changes were applied.
    """
    policy = policy or Policy()
    rate = current.get("vision_rate_limit_per_second") or tier_limit
    base, cap = _backoff(current, evidence, policy)
    rules: Sequence[Recommendation] = (
        _timeout(current, evidence, policy),
        _retries(current, evidence, policy),
        base, cap,
        _max_dimension(current, evidence, policy),
        _jpeg_quality(current, evidence, policy),
        _rate(current, evidence, policy, tier_limit),
        _concurrency(current, evidence, policy, rate),
    )
    judged = (overlay is not None and bool(overlay.pending()) and kpi_since_change is not None
              and kpi_since_change.images >= policy.min_samples // 3)
    reverts = judge(overlay, kpi_since_change, policy) if overlay is not None and judged else ()
    reverted = {r.tunable for r in reverts}
    pinned = set(overlay.pins) if overlay is not None else set()
    recommendations = tuple(
        replace(r, change=False, effect="none",
                evidence={**r.evidence, "held": "pinned" if r.tunable in pinned
                          else "reverted this review"})
        if r.change and (r.tunable in pinned or r.tunable in reverted) else r
        for r in rules)
    return Review(id=review_id, created_at=created_at, mode=mode,
                  window_hours=evidence.window_hours, kpi=evidence.kpi,
                  recommendations=recommendations, reverts=reverts, judged=judged,
                  queries=tuple(sorted({r.query for r in recommendations})))


def judge(overlay: Overlay, after: Kpi | None, policy: Policy) -> tuple[Revert, ...]:
    """Revert each pending change whose KPIs regressed beyond the policy's tolerance."""
    reverts: list[Revert] = []
    if after is None or after.images < policy.min_samples // 3:
        return ()  # not enough traffic since the change to judge it: judge it next time
    for change in overlay.pending():
        before = change.kpi_before
        reason = _regression(before, after, policy)
        if reason is not None:
            reverts.append(Revert(change.tunable, change.old, change.new, reason, before, after))
    return tuple(reverts)


def _regression(before: Kpi, after: Kpi, policy: Policy) -> str | None:
    if before.p95_ms and after.p95_ms and after.p95_ms > before.p95_ms * (1 + policy.p95_tolerance):
        return (f"p95 analysis time {after.p95_ms:.0f} ms > {before.p95_ms:.0f} ms "
                f"+{policy.p95_tolerance:.0%}")
    if before.success_ratio is None or after.success_ratio is None:
        return None
    # A drop counts only beyond the tolerance and beyond chance: two standard errors of the
    # difference of two proportions (one failure in 21 after 20 of 20 is not a regression).
    pooled = (before.analysed + after.analysed) / (before.images + after.images)
    noise = 2 * math.sqrt(pooled * (1 - pooled) * (1 / before.images + 1 / after.images))
    if before.success_ratio - after.success_ratio > max(policy.success_tolerance, noise):
        return f"success ratio {after.success_ratio:.3f} < {before.success_ratio:.3f}"
    return None


def apply(overlay: Overlay, result: Review, *, applied_at: str) -> tuple[Overlay, Review]:
    """The next overlay: reverts first, then each applicable change, one bounded step each."""
    values = dict(overlay.values)
    reverted = {r.tunable: r for r in result.reverts}
    changes: list[AppliedChange] = []
    for c in overlay.changes:
        changes.append(c if c.verdict is not None or not result.judged else
                       replace(c, verdict="reverted" if c.tunable in reverted else "kept"))
    for name, rev in reverted.items():
        if rev.reverted_to is None:
            values.pop(name, None)
        else:
            values[name] = rev.reverted_to
    applied: list[AppliedChange] = []
    for rec in result.changes():
        t = TUNABLES[rec.tunable]
        if not t.runtime or rec.recommended is None or rec.tunable in overlay.pins:
            continue
        old = values.get(rec.tunable, rec.current)
        new = t.one_step(old, rec.recommended) if old is not None else t.clamp(rec.recommended)
        if old is not None and math.isclose(new, old):
            continue
        values[rec.tunable] = new
        applied.append(AppliedChange(rec.tunable, old, new, result.id, applied_at, result.kpi))
    if not applied and not reverted and not (result.judged and overlay.pending()):
        return overlay, result
    nxt = Overlay(version=overlay.version + 1, values=values, pins=dict(overlay.pins),
                  changes=tuple([*changes, *applied])[-50:])
    return nxt, replace(result, applied=tuple(applied))


def pin(overlay: Overlay, tunable: str, value: float | None) -> Overlay:
    """Pin ``tunable`` at ``value`` (``None`` unpins). Raises ``ValueError`` for a bad pin."""
    t = TUNABLES.get(tunable)
    if t is None or not t.runtime:
        allowed = ", ".join(RUNTIME_TUNABLES)
        raise ValueError(f"{tunable!r} cannot be pinned; runtime tunables: {allowed}")
    pins = dict(overlay.pins)
    if value is None:
        pins.pop(tunable, None)
    else:
        if not t.low <= value <= t.high:
            raise ValueError(f"{tunable} must be within [{t.low:g}, {t.high:g}], got {value:g}")
        pins[tunable] = t.clamp(value)
    return replace(overlay, version=overlay.version + 1, pins=pins)


def report_text(result: Review) -> str:
    """A short human-readable report of one review (stored beside its JSON)."""
    lines = [f"Tuning review {result.id} ({result.mode.value}, last {result.window_hours:g} h)",
             f"KPIs: {result.kpi.images} images, success "
             f"{_pct(result.kpi.success_ratio)}, p95 {_num(result.kpi.p95_ms)} ms, "
             f"{_num(result.kpi.calls_per_success, 2)} calls per success", ""]
    for r in result.recommendations:
        verb = "change" if r.change else "keep"
        target = f" -> {_num(r.recommended)}" if r.change else ""
        why = r.evidence.get("why") or r.effect
        lines.append(f"- {r.tunable}: {verb} {_num(r.current)}{target} "
                     f"[{r.confidence.value}] {why} (query {r.query})")
    for rev in result.reverts:
        lines.append(f"- REVERTED {rev.tunable} {_num(rev.applied_value)} -> "
                     f"{_num(rev.reverted_to)}: {rev.reason}")
    for c in result.applied:
        lines.append(f"- APPLIED {c.tunable} {_num(c.old)} -> {_num(c.new)}")
    return "\n".join(lines) + "\n"


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if digits else f"{value:g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


__all__ = [
    "RUNTIME_TUNABLES",
    "TUNABLES",
    "AppliedChange",
    "AttemptStats",
    "Confidence",
    "Distribution",
    "Evidence",
    "Kpi",
    "Mode",
    "Overlay",
    "Policy",
    "Recommendation",
    "Revert",
    "Review",
    "SizeBucket",
    "Tunable",
    "apply",
    "judge",
    "pin",
    "report_text",
    "review",
]
