"""Parking and re-drive with fakes: an outage parks blob versions instead of raising, and the
re-drive brings each version back exactly once, gated by the breaker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.analysis.parking import ParkingLot, RedriveReport, redrive
from shared.analysis.pipeline import Outcome, process_blob
from shared.analysis.ratecontrol import CircuitBreaker
from shared.analysis.results import ResultRepository
from shared.errors import TransientError, VisionUnavailableError
from tests.support.clocks import FakeClock
from tests.support.fakes import MemoryStore
from tests.support.pipeline import FakeAnalyzer, blob, make_deps

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class Blobs:
    """``SourceBlobs``: current ETags (unquoted) and a re-touch that makes a new version."""

    def __init__(self, etags: Mapping[str, str]) -> None:
        self.etags = dict(etags)
        self.retouched: list[str] = []

    def current_etag(self, container: str, name: str) -> str | None:
        etag = self.etags.get(name)
        return None if etag is None else f'"{etag}"'  # as the SDK returns it

    def retouch(self, container: str, name: str, etag: str) -> str:
        assert etag == f'"{self.etags[name]}"', "re-touched under If-Match on the parked ETag"
        self.retouched.append(name)
        self.etags[name] += "-next"
        return self.etags[name]


def parked_deps(store: MemoryStore, script: Sequence[Any]) -> Any:
    deps = make_deps(store, FakeAnalyzer(script))
    return replace(deps, parking=ParkingLot(store, "parked"))


def repo(store: MemoryStore) -> ResultRepository:
    return ResultRepository(store, results_container="results", failed_container="failed")


def test_an_outage_parks_the_version_instead_of_raising() -> None:
    store = MemoryStore()
    deps = parked_deps(store, [VisionUnavailableError("down", reason="circuit_open")])
    outcome = process_blob(blob("a.jpg", '"0x1"'), deps)
    assert outcome.status is Outcome.PARKED and outcome.reason == "circuit_open"
    assert outcome.document == "parked/a.jpg/0x1.json"
    assert list(store.list_paths("parked")) == ["a.jpg/0x1.json"]
    assert list(store.list_paths("results")) == [] and list(store.list_paths("failed")) == []


def test_without_a_parking_lot_the_host_retries_as_before() -> None:
    deps = make_deps(MemoryStore(), FakeAnalyzer([VisionUnavailableError("down")]))
    with pytest.raises(VisionUnavailableError):
        process_blob(blob(), deps)


def test_other_retryable_errors_still_raise_for_the_host() -> None:
    deps = parked_deps(MemoryStore(), [TransientError("503", reason="server_error_503")])
    with pytest.raises(TransientError):
        process_blob(blob(), deps)


def test_redrive_waits_while_the_breaker_is_open_then_probes_with_one_blob() -> None:
    store, clock = MemoryStore(), FakeClock(100.0)
    lot = ParkingLot(store, "parked")
    for i in range(5):
        lot.park("images", f"b{i}.jpg", f"0x{i}", reason="circuit_open", now=lambda: NOW)
    blobs = Blobs({f"b{i}.jpg": f"0x{i}" for i in range(5)})
    breaker = CircuitBreaker(failure_threshold=1, probe_interval_s=5, clock=clock)
    breaker.on_failure()  # open; first probe due in 5 s

    def run() -> RedriveReport:
        return redrive(lot, blobs=blobs, repository=repo(store), images_container="images",
                       gate=breaker, batch=100)

    assert run().seen == 0 and blobs.retouched == []
    clock.now += 5
    probe = run()
    assert probe.requeued == 1 and probe.left == 4 and len(blobs.retouched) == 1
    breaker.allow()  # the re-driven blob's call takes the probe ...
    breaker.on_success()  # ... and Vision answers: closed
    rest = run()
    assert rest.requeued == 4 and rest.left == 0
    assert sorted(blobs.retouched) == [f"b{i}.jpg" for i in range(5)]  # each once
    assert list(store.list_paths("parked")) == []


def test_redrive_drops_versions_that_are_gone_newer_or_done() -> None:
    store = MemoryStore()
    lot = ParkingLot(store, "parked")
    for name in ("gone.jpg", "newer.jpg", "done.jpg", "todo.jpg"):
        lot.park("images", name, "0x1", reason="circuit_open", now=lambda: NOW)
    repo(store).write_result("images", "done.jpg", "0x1", {"outcome": "analyzed"})
    blobs = Blobs({"newer.jpg": "0x2", "done.jpg": "0x1", "todo.jpg": "0x1"})
    report = redrive(lot, blobs=blobs, repository=repo(store), images_container="images",
                     gate=CircuitBreaker(), batch=10)
    assert (report.requeued, report.dropped) == (1, 3)
    assert blobs.retouched == ["todo.jpg"]
    assert list(store.list_paths("parked")) == []


def test_two_parked_versions_of_one_blob_are_two_documents() -> None:
    store = MemoryStore()
    lot = ParkingLot(store, "parked")
    lot.park("images", "x.jpg", '"0x1"', reason="circuit_open", now=lambda: NOW)
    lot.park("images", "x.jpg", '"0x2"', reason="circuit_open", now=lambda: NOW)
    assert sorted(store.list_paths("parked")) == ["x.jpg/0x1.json", "x.jpg/0x2.json"]
    report = redrive(lot, blobs=Blobs({"x.jpg": "0x2"}), repository=repo(store),
                     images_container="images", gate=CircuitBreaker(), batch=10)
    assert (report.requeued, report.dropped) == (1, 1)  # the stale one dropped, not re-driven


def test_an_unreadable_parked_document_is_kept_and_counted() -> None:
    store = MemoryStore()
    store.write("parked", "junk.json", b"not json", {})
    report = redrive(ParkingLot(store, "parked"), blobs=Blobs({}), repository=repo(store),
                     images_container="images", gate=CircuitBreaker(), batch=10)
    assert report.undecodable == 1 and list(store.list_paths("parked")) == ["junk.json"]
