"""Last version wins, and size before bytes: process_blob with completions deliberately
reordered through the fakes' hooks (no threads, no sleeps).

Each test lets a newer version of the same blob arrive — and often be processed completely — at
one exact point of an older version's run (during its analysis, between its HEAD and its read,
just before its document write), then checks what is left in ``results/`` and ``failed/``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from shared.analysis.pipeline import AnalysisOutcome, Outcome, PipelineDeps, process_blob
from shared.analysis.results import COMMIT_ATTEMPTS
from shared.analysis.vision import AttemptHook, VisionResult
from shared.errors import ErrorClass, StorageError
from shared.naming import result_path
from tests.support.fakes import MemoryBlob, MemoryStore
from tests.support.pipeline import IMAGE, OK_PAYLOAD, RecordingObserver, jpeg, make_deps

NAME = "cats/tom.jpg"
PATH = result_path(NAME)
V1, V2 = jpeg((320, 240)), jpeg((330, 250))


class HookedAnalyzer:
    """Succeeds; ``during`` runs inside the n-th call (0-based), as if the call were slow."""

    def __init__(self) -> None:
        self.calls = 0
        self.during: dict[int, Callable[[], None]] = {}

    def analyze(
        self, image: bytes, features: Sequence[str], *, on_attempt: AttemptHook | None = None
    ) -> VisionResult:
        call = self.calls
        self.calls += 1
        hook = self.during.pop(call, None)
        if hook is not None:
            hook()
        return VisionResult(payload=OK_PAYLOAD, model_version="2023-10-01",
                            features=tuple(features), attempts=1, duration_ms=5.0,
                            limiter_wait_ms=0.0)


def setup() -> tuple[MemoryStore, HookedAnalyzer, RecordingObserver, PipelineDeps]:
    store, analyzer, observer = MemoryStore(), HookedAnalyzer(), RecordingObserver()
    deps = make_deps(store, observer=observer)
    deps = PipelineDeps(analyzer=analyzer, repository=deps.repository, features=deps.features,
                        observer=observer, clock=deps.clock, now=deps.now)
    return store, analyzer, observer, deps


def final_state(store: MemoryStore) -> dict[str, Mapping[str, Any]]:
    """container → the document's source block, for every document of NAME."""
    found: dict[str, Mapping[str, Any]] = {}
    for container in ("results", "failed"):
        doc = store.doc(container, NAME)
        if doc is not None:
            found[container] = doc["source"]
    return found


def describes(source: Mapping[str, Any], blob: MemoryBlob, data: bytes) -> bool:
    return source["etag"] == blob.etag and source["sha256"] == hashlib.sha256(data).hexdigest()


def test_slow_old_version_finishing_last_is_superseded_not_written() -> None:
    store, analyzer, observer, deps = setup()
    blob = MemoryBlob(NAME, V1)
    v1 = blob.etag
    newer: list[AnalysisOutcome] = []

    def v2_arrives_and_finishes() -> None:
        blob.upload(V2)
        newer.append(process_blob(blob, deps))

    analyzer.during[0] = v2_arrives_and_finishes
    older = process_blob(blob, deps)

    assert newer[0].status is Outcome.ANALYZED and newer[0].etag == blob.etag
    assert older.status is Outcome.SUPERSEDED
    assert (older.etag, older.current_etag, older.reason) == (v1, blob.etag, "newer_version")
    assert older.document is None and older.attempts == 1  # the Vision call it spent is kept
    state = final_state(store)
    assert list(state) == ["results"] and describes(state["results"], blob, V2)
    assert [o.status for o in observer.outcomes] == [Outcome.ANALYZED, Outcome.SUPERSEDED]
    assert observer.failures == []  # superseded is an outcome: nothing for the host to retry


def test_newer_version_uploaded_during_the_write_makes_the_old_one_withdraw() -> None:
    """The old run's HEAD said current, its write went through, then v2 arrived: its second HEAD
    sees v2 and it deletes what it wrote; v2's own run, later, documents v2."""
    store, _, _, deps = setup()
    blob = MemoryBlob(NAME, V1)

    def upload_once(operation: str, container: str, path: str) -> None:
        if operation == "write" and container == "results":
            store.before.remove(upload_once)
            blob.upload(V2)

    store.before.append(upload_once)
    older = process_blob(blob, deps)
    assert older.status is Outcome.SUPERSEDED and older.current_etag == blob.etag
    assert final_state(store) == {}  # nothing stale left behind, even before v2's run
    newer = process_blob(blob, deps)
    assert newer.status is Outcome.ANALYZED
    assert describes(final_state(store)["results"], blob, V2)


def test_newer_result_written_between_the_old_runs_read_and_write_is_kept() -> None:
    """v2 finishes between v1's look at the document and v1's write: v1's conditional write
    fails (the document changed), its next round sees v2 current and gives up."""
    store, _, _, deps = setup()
    blob = MemoryBlob(NAME, V1)
    newer: list[AnalysisOutcome] = []

    def v2_finishes_first(operation: str, container: str, path: str) -> None:
        if operation == "write":
            store.before.remove(v2_finishes_first)
            blob.upload(V2)
            newer.append(process_blob(blob, deps))

    store.before.append(v2_finishes_first)
    # the old run read v1 and its HEADs saw v1; only the write is late
    older = process_blob(blob, deps)
    assert newer[0].status is Outcome.ANALYZED
    assert older.status is Outcome.SUPERSEDED
    assert store.conflicts >= 1
    assert describes(final_state(store)["results"], blob, V2)


@pytest.mark.parametrize(("old", "new", "container"), [
    (b"", V2, "results"),  # old version rejected (empty), new one analysed
    (V1, b"", "failed"),  # old version analysed, new one rejected
])
def test_old_outcome_never_lands_beside_the_new_one_in_the_other_container(
    old: bytes, new: bytes, container: str
) -> None:
    store, _, _, deps = setup()
    blob = MemoryBlob(NAME, old)
    other = "failed" if container == "results" else "results"
    newer: list[AnalysisOutcome] = []

    def new_version_finishes_during_the_old_write(operation: str, where: str, path: str) -> None:
        if operation == "write" and where == other:
            store.before.remove(new_version_finishes_during_the_old_write)
            blob.upload(new)
            newer.append(process_blob(blob, deps))

    store.before.append(new_version_finishes_during_the_old_write)
    older = process_blob(blob, deps)
    assert older.status is Outcome.SUPERSEDED
    assert newer[0].status in (Outcome.ANALYZED, Outcome.REJECTED)
    state = final_state(store)
    assert list(state) == [container]
    assert state[container]["etag"] == blob.etag


def test_blob_overwritten_between_head_and_read_is_superseded_unread() -> None:
    store, analyzer, observer, deps = setup()

    class OverwrittenBeforeRead(MemoryBlob):
        def read(self, etag: str | None, limit: int) -> bytes:
            if len(self.versions) == 1:
                self.upload(V2)
            return super().read(etag, limit)

    blob = OverwrittenBeforeRead(NAME, V1)
    outcome = process_blob(blob, deps)
    assert outcome.status is Outcome.SUPERSEDED
    assert outcome.current_etag == blob.etag and outcome.attempts == 0
    assert analyzer.calls == 0 and blob.bytes_read == 0
    assert final_state(store) == {}
    assert observer.outcomes[-1].status is Outcome.SUPERSEDED


def test_blob_deleted_during_analysis_leaves_no_document() -> None:
    store, analyzer, _, deps = setup()
    blob = MemoryBlob(NAME, V1)
    analyzer.during[0] = blob.delete
    outcome = process_blob(blob, deps)
    assert (outcome.status, outcome.reason, outcome.current_etag) == (
        Outcome.SUPERSEDED, "deleted", None)
    assert final_state(store) == {}


def test_blob_gone_before_the_run_is_superseded_without_any_work() -> None:
    store, analyzer, _, deps = setup()
    blob = MemoryBlob(NAME, V1)
    blob.delete()
    outcome = process_blob(blob, deps)
    assert (outcome.status, outcome.reason) == (Outcome.SUPERSEDED, "deleted")
    assert analyzer.calls == 0 and store.blobs == {}


def test_two_runs_of_the_same_version_write_once() -> None:
    """At-least-once delivery: a second run of the version that is written meanwhile reports
    a duplicate instead of writing again."""
    store, _, _, deps = setup()
    blob = MemoryBlob(NAME, V1)
    first: list[AnalysisOutcome] = []

    def twin_finishes_first(operation: str, container: str, path: str) -> None:
        if operation == "write":
            store.before.remove(twin_finishes_first)
            first.append(process_blob(blob, deps))

    store.before.append(twin_finishes_first)
    second = process_blob(blob, deps)
    assert first[0].status is Outcome.ANALYZED
    assert second.status is Outcome.DUPLICATE and second.document == f"results/{PATH}"
    assert describes(final_state(store)["results"], blob, V1)


def test_a_document_that_keeps_changing_goes_back_to_the_host() -> None:
    store, _, observer, deps = setup()
    blob = MemoryBlob(NAME, V1)

    def another_writer(operation: str, container: str, path: str) -> None:
        if operation == "write" and container == "results":
            store.blobs[(container, path)] = (b"{}", {})
            store.etags[(container, path)] = f'"other-{len(store.etags)}-{store.conflicts}"'

    store.before.append(another_writer)
    with pytest.raises(StorageError) as info:
        process_blob(blob, deps)
    assert info.value.reason == "document_conflict" and info.value.retryable
    assert store.conflicts == COMMIT_ATTEMPTS
    assert observer.failures[0].error_class is ErrorClass.TRANSIENT


def test_oversized_blob_is_rejected_from_its_properties_without_a_read() -> None:
    store, analyzer, observer, deps = setup()
    declared = 200 * 1024 * 1024
    blob = MemoryBlob(NAME, IMAGE, size=declared)
    outcome = process_blob(blob, deps)
    assert outcome.status is Outcome.REJECTED
    assert (outcome.error_class, outcome.reason, outcome.stage) == (
        ErrorClass.INVALID_INPUT, "input_too_large", "preprocess")
    assert blob.bytes_read == 0 and analyzer.calls == 0
    doc = store.doc("failed", NAME)
    assert doc is not None
    assert doc["source"]["size"] == declared and doc["source"]["etag"] == blob.etag
    assert doc["source"]["sha256"] is None  # never read, so never hashed
    assert doc["error"]["retryable"] is False
    assert observer.events[0] == "started" and "preprocessed" not in observer.events


def test_blob_just_under_the_limit_is_read_and_hashed() -> None:
    store, _, _, deps = setup()
    limit = deps.preprocess_options.max_input_bytes
    blob = MemoryBlob(NAME, V1, size=limit)  # declared at the limit: allowed to be read
    outcome = process_blob(blob, deps)
    assert outcome.status is Outcome.ANALYZED and blob.bytes_read == len(V1)
    doc = store.doc("results", NAME)
    assert doc is not None and doc["source"]["sha256"] == hashlib.sha256(V1).hexdigest()
