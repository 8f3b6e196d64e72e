"""Fault schedule of the Vision emulator: parsing, seeded draws, outage windows."""

from __future__ import annotations

import collections
import datetime as dt

import pytest

from devstack.vision.faults import FaultConfig, FaultConfigError, FaultInjector

NOW = 1_900_000_000.0


def injector(document: dict[str, object]) -> FaultInjector:
    faults = FaultInjector()
    faults.replace(FaultConfig.from_json(document, now=NOW))
    return faults


def test_empty_schedule_breaks_nothing() -> None:
    decision = FaultInjector().decide()
    assert decision.error_status is None and decision.kinds == ()
    assert decision.latency_ms == 0 and decision.hold is None


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(FaultConfigError) as caught:
        FaultConfig.from_json(
            {
                "error_rates": {"200": 0.5, "503": 1.5},
                "latency": {"distribution": "gamma"},
                "outages": [{"start_in_s": 10, "duration_s": 0}],
                "corrupt": {"rate": 0.1, "mode": "rot13"},
                "bogus": 1,
            },
            now=NOW,
        )
    problems = " | ".join(caught.value.problems)
    for fragment in (
        "bogus",
        "'200'",
        "error_rates.503",
        "distribution",
        "outages[0]",
        "corrupt.mode",
    ):
        assert fragment in problems
    assert len(caught.value.problems) >= 5


def test_rates_must_not_exceed_one() -> None:
    with pytest.raises(FaultConfigError, match="add up"):
        FaultConfig.from_json({"error_rates": {"500": 0.7, "503": 0.6}}, now=NOW)


def test_same_seed_same_sequence() -> None:
    document = {
        "seed": 42,
        "error_rates": {"500": 0.2, "503": 0.1, "429": 0.1},
        "latency": {"distribution": "uniform", "min_ms": 10, "max_ms": 50, "p": 0.5},
    }
    a, b = injector(document), injector(document)
    run_a = [a.decide() for _ in range(200)]
    run_b = [b.decide() for _ in range(200)]
    assert run_a == run_b
    assert len({d.error_status for d in run_a}) == 4  # None, 429, 500, 503 all drawn


def test_error_rates_are_honoured_statistically() -> None:
    faults = injector({"seed": 1, "error_rates": {"500": 0.2, "503": 0.05}})
    counts = collections.Counter(faults.decide().error_status for _ in range(10_000))
    assert counts[500] == pytest.approx(2000, rel=0.1)
    assert counts[503] == pytest.approx(500, rel=0.2)
    assert counts[None] == pytest.approx(7500, rel=0.05)


def test_latency_distributions() -> None:
    fixed = injector({"seed": 3, "latency": {"distribution": "fixed", "ms": 250, "p": 1}})
    assert {fixed.decide().latency_ms for _ in range(20)} == {250}
    uniform = injector(
        {"seed": 3, "latency": {"distribution": "uniform", "min_ms": 5, "max_ms": 9}}
    )
    assert all(5 <= uniform.decide().latency_ms <= 9 for _ in range(100))
    normal = injector(
        {"seed": 3, "latency": {"distribution": "normal", "mean_ms": 100, "stddev_ms": 10}}
    )
    samples = [normal.decide().latency_ms for _ in range(2000)]
    assert sum(samples) / len(samples) == pytest.approx(100, rel=0.05)
    never = injector({"seed": 3, "latency": {"distribution": "fixed", "ms": 250, "p": 0}})
    assert all(never.decide().latency_ms == 0 for _ in range(50))


def test_relative_outage_window_is_anchored_when_set() -> None:
    faults = injector({"outages": [{"start_in_s": 10, "duration_s": 5, "mode": "reset"}]})
    assert faults.active_outage(NOW + 9.9) is None
    window = faults.active_outage(NOW + 10)
    assert window is not None and window.mode == "reset"
    assert faults.active_outage(NOW + 14.99) is not None
    assert faults.active_outage(NOW + 15) is None


def test_absolute_outage_window() -> None:
    start = dt.datetime(2030, 5, 1, 12, 0, tzinfo=dt.UTC)
    faults = injector(
        {"outages": [{"start": "2030-05-01T12:00:00Z", "end": "2030-05-01T12:30:00+00:00"}]}
    )
    assert faults.active_outage(start.timestamp() - 1) is None
    assert faults.active_outage(start.timestamp() + 60) is not None
    assert faults.config.to_json()["outages"][0]["start"] == "2030-05-01T12:00:00Z"


def test_timeout_slow_and_corrupt_decisions() -> None:
    faults = injector(
        {
            "seed": 9,
            "timeout": {"rate": 1, "hold_s": 3, "then": "respond"},
            "slow_body": {"rate": 1, "chunk_bytes": 8, "interval_ms": 5},
            "corrupt": {"rate": 1, "mode": "wrong_content_type"},
        }
    )
    decision = faults.decide()
    assert decision.hold is not None and decision.hold.hold_s == 3
    assert decision.slow_body is not None and decision.slow_body.chunk_bytes == 8
    assert decision.corrupt == "wrong_content_type"
    assert set(decision.kinds) == {"timeout", "slow_body", "corrupt"}


def test_round_trip_and_reset() -> None:
    document = {"seed": 5, "error_rates": {"503": 0.5}, "retry_after_s": 2}
    faults = injector(document)
    again = FaultConfig.from_json(faults.config.to_json(), now=NOW)
    assert again == faults.config
    faults.reset()
    assert faults.config == FaultConfig()


def test_sticky_faults_fail_the_same_images_on_every_attempt() -> None:
    injector = FaultInjector()
    injector.replace(FaultConfig.from_json({"seed": 3, "sticky": {"rate": 0.25, "status": 500}},
                                           now=0.0))
    images = [f"image-{i}".encode() for i in range(400)]
    first = [injector.decide(body).error_status for body in images]
    again = [injector.decide(body).error_status for body in images]
    assert first == again  # keyed on the image, not drawn per request
    failing = first.count(500)
    assert 70 <= failing <= 130  # ~25 % of 400
    assert set(first) == {None, 500}
    assert injector.decide(None).error_status is None  # no body: nothing to key on
    with pytest.raises(FaultConfigError, match=r"sticky\.status"):
        FaultConfig.from_json({"sticky": {"rate": 0.1, "status": 200}}, now=0.0)


def test_size_latency_grows_with_the_request_body() -> None:
    injector = FaultInjector()
    injector.replace(FaultConfig.from_json({"size_latency": {"ms_per_mb": 2000}}, now=0.0))
    small, large = injector.decide(b"x" * 100_000), injector.decide(b"x" * 500_000)
    assert (small.latency_ms, large.latency_ms) == (200.0, 1000.0)
    assert "size_latency" in large.kinds
    assert injector.config.to_json()["size_latency"] == {"ms_per_mb": 2000.0}
    with pytest.raises(FaultConfigError, match=r"size_latency\.ms_per_mb"):
        FaultConfig.from_json({"size_latency": {"ms_per_mb": -1}}, now=0.0)
