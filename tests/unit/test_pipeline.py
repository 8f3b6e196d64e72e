"""process_blob with fakes (analyzer, source blob, document store, observer), the Functions
adapter, and replay with fake queue/blobs."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest

from devstack.replay import QueuedMessage, Replayer, decode_poison
from shared.analysis.pipeline import Outcome, process_blob
from shared.errors import (
    AuthError,
    Disposition,
    ErrorClass,
    InvalidImageError,
    StorageError,
    ThrottledError,
)
from shared.naming import result_path
from shared.settings import Settings
from tests.support.fakes import MemoryBlob, MemoryStore
from tests.support.pipeline import (
    IMAGE,
    OK_PAYLOAD,
    FakeAnalyzer,
    RecordingObserver,
    blob,
    make_deps,
)

# --------------------------------------------------------------------------- pipeline


def test_analysed_blob_writes_a_complete_result_document() -> None:
    store, observer = MemoryStore(), RecordingObserver()
    outcome = process_blob(blob(), make_deps(store, observer=observer))
    assert outcome.status is Outcome.ANALYZED
    assert outcome.document == "results/cats/tom.jpg.json"
    doc = store.doc("results", "cats/tom.jpg")
    assert doc is not None
    assert doc["outcome"] == "analyzed"
    assert doc["source"]["container"] == "images"
    assert doc["source"]["name"] == "cats/tom.jpg"
    assert doc["source"]["etag"] == "0x8D1"
    assert doc["source"]["size"] == len(IMAGE)
    assert len(doc["source"]["sha256"]) == 64
    assert doc["model_version"] == "2023-10-01"
    assert doc["features"] == ["read", "people", "smartCrops"]
    assert doc["preprocessing"]["detected_format"] == "jpeg"
    assert set(doc["timings_ms"]) == {"preprocess", "vision", "rate_limiter_wait", "total"}
    assert doc["attempts"] == 1
    assert doc["analysis"]["readResult"]["blocks"][0]["lines"][0]["text"] == "SECRET OCR LINE"
    assert doc["error"] is None
    assert doc["processed_at"] == "2024-05-01T12:00:00+00:00"
    assert observer.events == [
        "started",
        "preprocessed",
        "attempt:1",
        "written:results/cats/tom.jpg.json",
        "outcome:analyzed",
    ]


def test_same_blob_and_etag_is_a_no_op() -> None:
    store, analyzer = MemoryStore(), FakeAnalyzer()
    deps = make_deps(store, analyzer)
    process_blob(blob(), deps)
    before = dict(store.blobs)
    again = process_blob(blob(etag="0x8D1"), deps)  # quoted or not, the same version
    assert again.status is Outcome.DUPLICATE
    assert again.document == "results/cats/tom.jpg.json"
    assert len(analyzer.calls) == 1
    assert store.blobs == before


def test_changed_etag_reanalyses_and_overwrites() -> None:
    store, analyzer = (
        MemoryStore(),
        FakeAnalyzer([OK_PAYLOAD, {**OK_PAYLOAD, "modelVersion": "v2"}]),
    )
    deps = make_deps(store, analyzer)
    process_blob(blob(), deps)
    outcome = process_blob(blob(etag='"0x8D2"'), deps)
    assert outcome.status is Outcome.ANALYZED
    assert len(analyzer.calls) == 2
    doc = store.doc("results", "cats/tom.jpg")
    assert doc is not None
    assert (doc["source"]["etag"], doc["model_version"]) == ("0x8D2", "v2")


def test_same_name_in_another_container_is_not_a_duplicate() -> None:
    store, analyzer = MemoryStore(), FakeAnalyzer()
    deps = make_deps(store, analyzer)
    process_blob(blob(), deps)
    other = MemoryBlob("cats/tom.jpg", IMAGE, etag='"0x8D1"', container="other")
    assert process_blob(other, deps).status is Outcome.ANALYZED


def test_invalid_image_goes_to_failed_without_raising() -> None:
    store, analyzer, observer = MemoryStore(), FakeAnalyzer(), RecordingObserver()
    outcome = process_blob(blob(data=b""), make_deps(store, analyzer, observer))
    assert outcome.status is Outcome.REJECTED
    assert (outcome.error_class, outcome.reason, outcome.stage) == (
        ErrorClass.INVALID_INPUT,
        "empty",
        "preprocess",
    )
    assert analyzer.calls == []
    doc = store.doc("failed", "cats/tom.jpg")
    assert doc is not None
    assert doc["outcome"] == "rejected"
    assert doc["error"]["reason"] == "empty"
    assert doc["error"]["retryable"] is False
    assert store.doc("results", "cats/tom.jpg") is None
    assert observer.events[-1] == "outcome:rejected"


def test_service_rejection_records_service_codes() -> None:
    error = InvalidImageError(
        "bad image",
        reason="service_invalid_image_format",
        status_code=400,
        error_code="InvalidRequest",
        inner_code="InvalidImageFormat",
    )
    store = MemoryStore()
    outcome = process_blob(blob(), make_deps(store, FakeAnalyzer([error])))
    assert outcome.status is Outcome.REJECTED
    assert (outcome.service_error_code, outcome.service_inner_code) == (
        "InvalidRequest",
        "InvalidImageFormat",
    )
    doc = store.doc("failed", "cats/tom.jpg")
    assert doc is not None
    assert doc["error"] == {
        "class": "invalid_input",
        "reason": "service_invalid_image_format",
        "stage": "analyze",
        "retryable": False,
        "message": "bad image",
        "status_code": 400,
        "service_error_code": "InvalidRequest",
        "service_inner_code": "InvalidImageFormat",
    }
    assert doc["attempts"] == 2
    assert doc["preprocessing"]["detected_format"] == "jpeg"


def test_auth_failure_is_documented_not_retried() -> None:
    store = MemoryStore()
    outcome = process_blob(
        blob(), make_deps(store, FakeAnalyzer([AuthError("401", status_code=401)]))
    )
    assert outcome.error_class is ErrorClass.AUTH
    assert store.doc("failed", "cats/tom.jpg") is not None


def test_retryable_failure_raises_and_writes_nothing() -> None:
    store, observer = MemoryStore(), RecordingObserver()
    with pytest.raises(ThrottledError):
        process_blob(blob(), make_deps(store, FakeAnalyzer([ThrottledError("429")]), observer))
    assert store.blobs == {}
    assert observer.failures == [Disposition(ErrorClass.THROTTLED, True, "throttled")]


def test_storage_failure_is_retryable() -> None:
    store = MemoryStore()
    store.fail_writes = True
    with pytest.raises(StorageError) as info:
        process_blob(blob(), make_deps(store))
    assert info.value.retryable


def test_unexpected_errors_propagate_for_the_host_to_poison() -> None:
    observer = RecordingObserver()
    with pytest.raises(ZeroDivisionError):
        process_blob(
            blob(), make_deps(analyzer=FakeAnalyzer([ZeroDivisionError()]), observer=observer)
        )
    assert observer.failures[0].error_class is ErrorClass.UNEXPECTED


def test_a_blob_ends_in_exactly_one_place() -> None:
    store = MemoryStore()
    deps = make_deps(store)
    process_blob(blob(data=b"", etag='"v1"'), deps)
    assert store.doc("failed", "cats/tom.jpg") is not None
    process_blob(blob(etag='"v2"'), deps)  # fixed upload: now analysed
    assert store.doc("failed", "cats/tom.jpg") is None
    assert store.doc("results", "cats/tom.jpg") is not None
    process_blob(blob(data=b"", etag='"v3"'), deps)  # broken again
    assert store.doc("results", "cats/tom.jpg") is None
    assert store.doc("failed", "cats/tom.jpg") is not None


def test_failed_document_with_same_etag_is_a_no_op() -> None:
    store, analyzer = MemoryStore(), FakeAnalyzer()
    deps = make_deps(store, analyzer)
    process_blob(blob(data=b""), deps)
    assert process_blob(blob(data=b""), deps).status is Outcome.DUPLICATE


def test_odd_names_map_to_safe_paths() -> None:
    store = MemoryStore()
    outcome = process_blob(blob(name="../../weird/ünïcode name?.jpg"), make_deps(store))
    assert outcome.document == f"results/{result_path('../../weird/ünïcode name?.jpg')}"
    assert outcome.document is not None and ".." not in outcome.document


def test_ocr_text_never_reaches_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    deps = make_deps()
    process_blob(blob(), deps)
    process_blob(blob(data=b"", etag='"x"', name="other.jpg"), deps)
    assert "SECRET OCR" not in caplog.text


# --------------------------------------------------------------------------- Functions adapter


def test_function_binding_is_an_event_grid_blob_trigger(repo_app: Any) -> None:
    functions = {f.get_function_name(): f for f in repo_app.get_functions()}
    function = functions["analyze_image"]
    binding = json.loads(function.get_function_json())["bindings"][0]
    assert binding["type"] == "blobTrigger"
    assert binding["path"] == "%IMAGES_CONTAINER%/{name}"
    assert binding["connection"] == "AzureWebJobsStorage"
    assert binding["source"] == "EventGrid"


def test_handler_raises_only_for_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.composition
    from devstack.host.invoker import InvocationContext
    from shared.blueprints.analysis import run_analysis

    store = MemoryStore()
    deps = make_deps(store, FakeAnalyzer([ThrottledError("429")]))
    monkeypatch.setattr(shared.composition, "get_pipeline_deps", lambda: deps)
    context = InvocationContext(invocation_id="i-1", function_name="analyze_image",
                                function_directory=".", trace_parent="")

    with pytest.raises(ThrottledError):
        run_analysis(MemoryBlob("a.jpg", IMAGE, etag="v1"), context)
    # rejected: documented, the host is not told
    assert run_analysis(MemoryBlob("a.jpg", b"", etag="v2"), context) is None
    assert store.doc("failed", "a.jpg") is not None


def test_trigger_parameter_is_the_sdk_blob_client_type(repo_app: Any) -> None:
    """The annotation is what makes the worker defer the binding (no content read by the host);
    ``context`` must be exactly ``func.Context`` or the worker refuses to load the function."""
    import typing

    import azurefunctions.extensions.bindings.blob as blob_sdk
    from azurefunctions.extensions.base import SdkType, get_binding_registry

    functions = {f.get_function_name(): f for f in repo_app.get_functions()}
    # resolved the way the worker's indexer does
    hints = typing.get_type_hints(functions["analyze_image"].get_user_function())
    assert hints["blob"] is blob_sdk.BlobClient
    assert issubclass(hints["blob"], SdkType)
    assert get_binding_registry().get("blobTrigger") is not None
    assert hints["context"] is func.Context


# --------------------------------------------------------------------------- replay

SETTINGS = Settings.from_env(
    {
        "VISION_ENDPOINT": "http://127.0.0.1:7081",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    }
)


def poison(container: str, name: str, etag: str = '"0x1"') -> QueuedMessage:
    body = {
        "Type": "BlobTrigger",
        "FunctionId": "Host.Functions.analyze_image",
        "BlobType": "BlockBlob",
        "ContainerName": container,
        "BlobName": name,
        "ETag": etag,
    }
    return QueuedMessage(handle=name, content=base64.b64encode(json.dumps(body).encode()).decode())


class FakeQueue:
    def __init__(self, messages: list[QueuedMessage]) -> None:
        self.messages = messages
        self.deleted: list[QueuedMessage] = []

    def receive(self) -> Iterator[QueuedMessage]:
        yield from list(self.messages)

    def delete(self, message: QueuedMessage) -> None:
        self.deleted.append(message)
        self.messages.remove(message)


class FakeBlobs:
    def __init__(self, etags: dict[str, str]) -> None:
        self.etags = etags
        self.retouched: list[str] = []

    def current_etag(self, container: str, name: str) -> str | None:
        return self.etags.get(name)

    def retouch(self, container: str, name: str, etag: str) -> str:
        assert self.etags[name] == etag
        self.retouched.append(name)
        self.etags[name] = etag + "-new"
        return self.etags[name]


def test_decode_poison_message() -> None:
    ref = decode_poison(poison("images", "a/b.jpg").content)
    assert ref is not None
    assert (ref.container, ref.name, ref.etag) == ("images", "a/b.jpg", '"0x1"')
    assert ref.function_id == "Host.Functions.analyze_image"
    assert decode_poison('{"ContainerName": "images", "BlobName": "x"}') is not None  # plain JSON
    assert decode_poison("not json") is None


def test_replay_poison_retouches_and_removes_handled_messages() -> None:
    store = MemoryStore()
    deps = make_deps(store)
    process_blob(blob(name="done.jpg", etag='"e-done"'), deps)  # already has a result
    queue = FakeQueue(
        [
            poison("images", "todo.jpg"),
            poison("images", "done.jpg"),
            poison("images", "gone.jpg"),
            poison("elsewhere", "x.jpg"),
            QueuedMessage(handle="junk", content="%%%"),
        ]
    )
    blobs = FakeBlobs({"todo.jpg": '"e-todo"', "done.jpg": '"e-done"'})
    replayer = Replayer(settings=SETTINGS, blobs=blobs, store=store, queue=queue)
    actions = {(item.name, item.action) for item in replayer.replay_poison()}
    assert actions == {
        ("todo.jpg", "requeued"),
        ("done.jpg", "already_done"),
        ("gone.jpg", "missing"),
        ("x.jpg", "foreign"),
        ("", "undecodable"),
    }
    assert blobs.retouched == ["todo.jpg"]
    assert [m.handle for m in queue.messages] == ["x.jpg", "junk"]  # foreign/undecodable kept


def test_replay_failed_documents_and_class_filter() -> None:
    store = MemoryStore()
    deps = make_deps(store, FakeAnalyzer([AuthError("401", status_code=401)]))
    process_blob(blob(name="auth.jpg", etag='"e1"'), deps)
    process_blob(blob(name="empty.jpg", etag='"e2"', data=b""), deps)
    blobs = FakeBlobs({"auth.jpg": '"e1"', "empty.jpg": '"e2"'})
    replayer = Replayer(settings=SETTINGS, blobs=blobs, store=store, queue=None)
    items = {(i.name, i.action) for i in replayer.replay_failed(classes=["auth"])}
    assert items == {("auth.jpg", "requeued"), ("empty.jpg", "filtered")}
    assert blobs.retouched == ["auth.jpg"]
    assert store.doc("failed", "auth.jpg") is None  # cleared for the fresh run
    assert store.doc("failed", "empty.jpg") is not None


def test_replay_dry_run_changes_nothing() -> None:
    store = MemoryStore()
    queue = FakeQueue([poison("images", "todo.jpg")])
    blobs = FakeBlobs({"todo.jpg": '"e"'})
    replayer = Replayer(settings=SETTINGS, blobs=blobs, store=store, queue=queue, dry_run=True)
    assert [i.action for i in replayer.replay_poison()] == ["requeued"]
    assert blobs.retouched == [] and len(queue.messages) == 1
