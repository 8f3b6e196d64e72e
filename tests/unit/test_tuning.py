"""The tuning review's decisions: each rehearsal scenario's right answer, bounds, steps, reverts."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.ops.tuning.policy import (
    TUNABLES,
    AppliedChange,
    AttemptStats,
    Distribution,
    Evidence,
    Kpi,
    Mode,
    Overlay,
    SizeBucket,
    apply,
    pin,
    report_text,
    review,
)

CURRENT: dict[str, float | None] = {
    "vision_timeout_seconds": 30.0, "vision_max_retries": 4.0,
    "vision_backoff_base_seconds": 0.5, "vision_backoff_max_seconds": 20.0,
    "preprocess_max_dimension": 2048.0, "preprocess_jpeg_quality": 90.0,
    "vision_rate_limit_per_second": None, "host_blob_concurrency": 8.0,
}
KPI = Kpi(images=400, analysed=396, p95_ms=2500.0, calls=420)


def healthy(**changes: Any) -> Evidence:
    """A healthy, stable day: quick successes, rare retries that succeed, one image size."""
    base = Evidence(
        window_hours=24,
        attempts=(AttemptStats(1, 400, 390, 2, 0), AttemptStats(2, 10, 10, 0, 0)),
        success_ms=Distribution(400, 800.0, 1500.0, 2500.0, 4000.0),
        timeout_ms=Distribution(),
        retry_after_s=Distribution(2, 1.0, 1.0, 1.0, 1.0),
        rethrottled_retries=0,
        sizes=(SizeBucket(1536, 2048, 396, 900.0, 120.0, 14.0, 0.93, 0.4),),
        kpi=KPI, limiter_wait_p95_ms=20.0, pipeline_p50_ms=950.0, throughput_per_s=0.6)
    return replace(base, **changes)


def run(evidence: Evidence, current: dict[str, float | None] | None = None,
        **kwargs: Any) -> dict[str, Any]:
    result = review(current or CURRENT, evidence, review_id="r1", created_at="2030-01-01T00:00:00",
                    mode=Mode.RECOMMEND, tier_limit=10.0, **kwargs)
    return {r.tunable: r for r in result.recommendations}


def test_a_healthy_stable_stream_changes_nothing() -> None:
    recs = run(healthy())
    assert len(recs) == len(TUNABLES)  # every tunable is covered, with evidence
    assert [name for name, r in recs.items() if r.change] == []
    assert all(r.evidence for r in recs.values())


def test_hung_calls_far_above_successes_lower_the_timeout() -> None:
    # every success under 2 s while failures hang to the 30 s timeout
    ev = healthy(success_ms=Distribution(400, 700.0, 1400.0, 1800.0, 1990.0),
                 timeout_ms=Distribution(40, 30_000.0, 30_000.0, 30_000.0, 30_000.0),
                 attempts=(AttemptStats(1, 440, 400, 0, 40), AttemptStats(2, 40, 40, 0, 0)))
    rec = run(ev)["vision_timeout_seconds"]
    assert rec.change and rec.recommended is not None
    assert 5 <= rec.recommended <= 10  # band: 3x the successes' p99 (5.4 s), floor 5 s
    assert rec.evidence["timeouts"] == 40 and rec.query == "tuning_vision_latency"


def test_successes_crowding_the_timeout_raise_it() -> None:
    ev = healthy(success_ms=Distribution(400, 9000.0, 13_000.0, 14_500.0, 14_900.0),
                 timeout_ms=Distribution(30, 15_000.0, 15_000.0, 15_000.0, 15_000.0))
    rec = run(ev, {**CURRENT, "vision_timeout_seconds": 15.0})["vision_timeout_seconds"]
    assert rec.change and rec.recommended is not None and 15 < rec.recommended <= 30


def test_attempts_beyond_the_second_never_succeeding_cut_the_retries() -> None:
    ev = healthy(attempts=(AttemptStats(1, 400, 300, 0, 0), AttemptStats(2, 100, 60, 0, 0),
                           AttemptStats(3, 40, 0, 0, 0), AttemptStats(4, 40, 0, 0, 0),
                           AttemptStats(5, 40, 0, 0, 0)))
    rec = run(ev)["vision_max_retries"]
    assert rec.change and rec.recommended == 1  # attempts 1 and 2 are the useful ones
    assert rec.evidence["calls_that_never_succeed"] == 120


def test_a_last_attempt_that_still_mostly_succeeds_adds_one_retry() -> None:
    ev = healthy(attempts=(AttemptStats(1, 400, 100, 300, 0), AttemptStats(2, 300, 100, 200, 0),
                           AttemptStats(3, 200, 150, 50, 0)))
    rec = run(ev, {**CURRENT, "vision_max_retries": 2.0})["vision_max_retries"]
    assert rec.change and rec.recommended == 3


def test_large_images_that_read_no_better_lower_the_max_dimension() -> None:
    ev = healthy(sizes=(SizeBucket(1024, 1536, 150, 900.0, 100.0, 14.0, 0.93, 0.5),
                        SizeBucket(1536, 2048, 150, 1800.0, 250.0, 14.2, 0.93, 0.5)))
    rec = run(ev)["preprocess_max_dimension"]
    assert rec.change and rec.recommended == 1536
    assert rec.evidence["words_gain"] < 0.05


def test_large_images_that_read_better_keep_the_max_dimension() -> None:
    ev = healthy(sizes=(SizeBucket(1024, 1536, 150, 900.0, 100.0, 10.0, 0.85, 0.5),
                        SizeBucket(1536, 2048, 150, 1800.0, 250.0, 14.0, 0.92, 0.5)))
    assert not run(ev)["preprocess_max_dimension"].change


def test_frequent_429s_lower_the_rate_ceiling_and_long_retry_after_raises_the_cap() -> None:
    ev = healthy(attempts=(AttemptStats(1, 400, 300, 100, 0), AttemptStats(2, 100, 90, 10, 0)),
                 retry_after_s=Distribution(110, 20.0, 30.0, 40.0, 45.0), rethrottled_retries=60)
    recs = run(ev)
    rate = recs["vision_rate_limit_per_second"]
    assert rate.change and rate.recommended is not None and rate.recommended < 10
    assert recs["vision_backoff_max_seconds"].recommended == 30
    assert recs["vision_backoff_base_seconds"].recommended == 1.0  # doubled: retries re-throttled


def test_concurrency_follows_littles_law_and_is_recommend_only() -> None:
    # 10 calls/s x 0.4 s x 1.25 = 5 in flight; p95 2 s queued behind the limiter
    ev = healthy(pipeline_p50_ms=400.0, limiter_wait_p95_ms=2000.0)
    rec = run(ev, {**CURRENT, "host_blob_concurrency": 16.0})["host_blob_concurrency"]
    assert rec.change and rec.recommended == 8  # one step (÷2) toward 5
    assert rec.applicable is False


def test_too_little_traffic_changes_nothing() -> None:
    ev = Evidence(window_hours=24, attempts=(AttemptStats(1, 5, 0, 0, 5),),
                  success_ms=Distribution(5, 100.0, 100.0, 100.0, 100.0),
                  timeout_ms=Distribution(5, 30_000.0, 30_000.0, 30_000.0, 30_000.0),
                  kpi=Kpi(images=5, analysed=0, calls=5))
    assert [n for n, r in run(ev).items() if r.change] == []


def test_apply_moves_one_bounded_step_and_skips_recommend_only() -> None:
    ev = healthy(success_ms=Distribution(400, 700.0, 1400.0, 1800.0, 1990.0),
                 timeout_ms=Distribution(40, 30_000.0, 30_000.0, 30_000.0, 30_000.0),
                 pipeline_p50_ms=400.0, limiter_wait_p95_ms=2000.0)
    current = {**CURRENT, "host_blob_concurrency": 16.0}
    result = review(current, ev, review_id="r1", created_at="t0", mode=Mode.APPLY,
                    tier_limit=10.0, overlay=Overlay())
    overlay, applied = apply(Overlay(), result, applied_at="2030-01-01T00:00:00+00:00")
    assert overlay.version == 1
    assert overlay.values == {"vision_timeout_seconds": 15.0}  # 30 → 15, not straight to 5.4
    assert "host_blob_concurrency" not in overlay.values
    [change] = applied.applied
    assert (change.old, change.new, change.kpi_before) == (30.0, 15.0, KPI)
    assert "APPLIED vision_timeout_seconds 30 -> 15" in report_text(applied)


def test_a_regressed_change_is_reverted_and_a_good_one_kept() -> None:
    change = AppliedChange("vision_timeout_seconds", 30.0, 15.0, "r0", "2030-01-01T00:00:00",
                           kpi_before=Kpi(images=400, analysed=396, p95_ms=2000.0, calls=420))
    overlay = Overlay(version=3, values={"vision_timeout_seconds": 15.0}, changes=(change,))
    worse = Kpi(images=200, analysed=198, p95_ms=3000.0, calls=210)
    result = review(CURRENT, healthy(), review_id="r1", created_at="t1", mode=Mode.APPLY,
                    tier_limit=10.0, overlay=overlay, kpi_since_change=worse)
    [revert] = result.reverts
    assert revert.reverted_to == 30.0 and "p95" in revert.reason
    nxt, _ = apply(overlay, result, applied_at="t1")
    assert nxt.values == {"vision_timeout_seconds": 30.0}
    assert [c.verdict for c in nxt.changes] == ["reverted"]

    better = Kpi(images=200, analysed=198, p95_ms=1700.0, calls=210)
    kept = review(CURRENT, healthy(), review_id="r2", created_at="t1", mode=Mode.APPLY,
                  tier_limit=10.0, overlay=overlay, kpi_since_change=better)
    assert kept.reverts == ()
    nxt, _ = apply(overlay, kept, applied_at="t1")
    assert [c.verdict for c in nxt.changes] == ["kept"]


def test_a_change_is_not_judged_on_too_little_traffic() -> None:
    change = AppliedChange("vision_timeout_seconds", 30.0, 15.0, "r0", "t0",
                           kpi_before=Kpi(images=400, analysed=396, p95_ms=2000.0, calls=420))
    overlay = Overlay(version=1, values={"vision_timeout_seconds": 15.0}, changes=(change,))
    result = review(CURRENT, healthy(), review_id="r1", created_at="t1", mode=Mode.APPLY,
                    tier_limit=10.0, overlay=overlay, kpi_since_change=Kpi(images=3, analysed=3,
                                                                           p95_ms=9000.0))
    assert result.reverts == ()
    nxt, _ = apply(overlay, result, applied_at="t1")
    assert nxt.pending() == (change,)  # still waiting for a verdict


def test_pins_win_and_hold_recommendations() -> None:
    overlay = pin(Overlay(), "vision_timeout_seconds", 25)
    assert overlay.effective() == {"vision_timeout_seconds": 25.0}
    ev = healthy(success_ms=Distribution(400, 700.0, 1400.0, 1800.0, 1990.0),
                 timeout_ms=Distribution(40, 30_000.0, 30_000.0, 30_000.0, 30_000.0))
    result = review(CURRENT, ev, review_id="r1", created_at="t", mode=Mode.APPLY,
                    tier_limit=10.0, overlay=overlay)
    rec = {r.tunable: r for r in result.recommendations}["vision_timeout_seconds"]
    assert not rec.change and rec.evidence["held"] == "pinned"
    assert apply(overlay, result, applied_at="t")[0] is overlay
    assert pin(overlay, "vision_timeout_seconds", None).pins == {}
    with pytest.raises(ValueError, match="within"):
        pin(Overlay(), "vision_timeout_seconds", 500)
    with pytest.raises(ValueError, match="cannot be pinned"):
        pin(Overlay(), "host_blob_concurrency", 4)


def test_stored_overlays_are_parsed_inside_the_whitelist_and_bounds() -> None:
    parsed = Overlay.from_dict({"version": 4, "values": {"vision_timeout_seconds": 999,
                                                         "VISION_KEY": 1, "preprocess_jpeg_quality":
                                                         "high"},
                                "pins": {"vision_max_retries": 2}})
    assert parsed.values == {"vision_timeout_seconds": 120.0}
    assert parsed.pins == {"vision_max_retries": 2.0}
    assert Overlay.from_dict(parsed.as_dict()) == parsed


_dist = st.builds(Distribution, st.integers(0, 5000),
                  *(st.one_of(st.none(), st.floats(0, 200_000)) for _ in range(4)))


@settings(max_examples=150, deadline=None)
@given(
    attempts=st.lists(st.builds(AttemptStats, st.integers(1, 10), st.integers(0, 5000),
                                st.integers(0, 5000), st.integers(0, 5000), st.integers(0, 5000)),
                      max_size=10),
    success=_dist, timeouts=_dist, retry_after=_dist,
    sizes=st.lists(st.builds(SizeBucket, st.integers(0, 4000), st.integers(1, 5000),
                             st.integers(0, 1000), *(st.one_of(st.none(), st.floats(0, 1e5))
                                                     for _ in range(5))), max_size=6),
    pipeline=st.one_of(st.none(), st.floats(0, 1e6)),
)
def test_recommendations_never_leave_the_documented_bounds(  # noqa: PLR0917 (hypothesis)
    attempts: list[AttemptStats], success: Distribution, timeouts: Distribution,
    retry_after: Distribution, sizes: list[SizeBucket], pipeline: float | None,
) -> None:
    ev = Evidence(window_hours=24, attempts=tuple(attempts), success_ms=success,
                  timeout_ms=timeouts, retry_after_s=retry_after, sizes=tuple(sizes),
                  kpi=KPI, pipeline_p50_ms=pipeline, rethrottled_retries=100)
    for rec in run(ev).values():
        t = TUNABLES[rec.tunable]
        if rec.change:
            assert rec.recommended is not None and t.low <= rec.recommended <= t.high


def test_a_success_drop_within_chance_is_kept_and_a_real_one_reverted() -> None:
    change = AppliedChange("vision_timeout_seconds", 30.0, 15.0, "r0", "t0",
                           kpi_before=Kpi(images=20, analysed=20, p95_ms=2000.0, calls=29))
    overlay = Overlay(version=1, values={"vision_timeout_seconds": 15.0}, changes=(change,))

    def reverts(after: Kpi) -> tuple[str, ...]:
        result = review(CURRENT, healthy(), review_id="r1", created_at="t1", mode=Mode.APPLY,
                        tier_limit=10.0, overlay=overlay, kpi_since_change=after)
        return tuple(r.reason for r in result.reverts)

    assert reverts(Kpi(images=21, analysed=20, p95_ms=1900.0, calls=30)) == ()  # 1 in 21
    [reason] = reverts(Kpi(images=21, analysed=14, p95_ms=1900.0, calls=30))  # 7 in 21
    assert "success ratio" in reason
