"""devstack.host.flush: what the local host flushes on a graceful stop, and that it is bounded."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest

from devstack.host.flush import flush_telemetry


class _Recording(logging.Handler):
    def __init__(self, block: threading.Event | None = None) -> None:
        super().__init__()
        self.flushes = 0
        self.block = block

    def emit(self, record: logging.LogRecord) -> None:
        pass

    def flush(self) -> None:
        self.flushes += 1
        if self.block is not None:
            self.block.wait(60)


class _Broken(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        pass

    def flush(self) -> None:
        raise OSError("disk gone")


@pytest.fixture
def root_handlers() -> Iterator[list[logging.Handler]]:
    added: list[logging.Handler] = []
    yield added
    for handler in added:
        logging.getLogger().removeHandler(handler)


def test_every_root_handler_is_flushed_even_after_a_broken_one(
    root_handlers: list[logging.Handler],
) -> None:
    broken, recording = _Broken(), _Recording()
    for handler in (broken, recording):
        logging.getLogger().addHandler(handler)
        root_handlers.append(handler)
    assert flush_telemetry(5.0) is False  # the broken handler is reported, not raised
    assert recording.flushes == 1


def test_a_flush_that_hangs_is_abandoned_at_the_bound(
    root_handlers: list[logging.Handler],
) -> None:
    release = threading.Event()
    hung = _Recording(block=release)
    logging.getLogger().addHandler(hung)
    root_handlers.append(hung)
    started = time.monotonic()
    try:
        assert flush_telemetry(0.2) is False
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert hung.flushes == 1
    assert elapsed < 5.0  # the bound (0.2 s) held, not the handler's 60 s
