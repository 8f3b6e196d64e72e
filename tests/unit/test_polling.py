"""The tests' one poll loop (tests/support/polling.py), on a fake clock: nothing waits."""

from __future__ import annotations

import pytest

from tests.support.clocks import FakeClock
from tests.support.polling import WaitTimeout, poll


def test_returns_the_first_value_that_is_done_and_sleeps_only_between_tries() -> None:
    clock, values = FakeClock(start=0.0), iter([0, 1, 2, 3])
    got = poll(lambda: next(values), lambda v: v >= 2, timeout=10, interval=0.5, what="two",
               clock=clock, sleep=clock.sleep)
    assert got == 2 and clock.sleeps == [0.5, 0.5]


def test_fails_at_the_deadline_naming_the_wait_and_the_last_value() -> None:
    clock = FakeClock(start=0.0)
    with pytest.raises(WaitTimeout, match=r"after 3s waiting for the answer; last value: 41"):
        poll(lambda: 41, lambda v: v == 42, timeout=3, interval=1, what="the answer",
             clock=clock, sleep=clock.sleep)
    assert clock.now == 3 and len(clock.sleeps) == 3  # tried at 0, 1, 2 and 3 s, then gave up


def test_a_timeout_is_a_test_failure() -> None:
    assert issubclass(WaitTimeout, AssertionError)
