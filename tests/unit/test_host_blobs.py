"""Blob trigger pieces of the local host: paths, receipts, poison messages, the InputStream."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob_sdk
import pytest

from devstack.host.blobs import (
    BlobPathError,
    BlobPathPattern,
    build_blob_argument,
    encode_queue_message,
    poison_message,
    quoted_etag,
    receipt_blob_name,
)
from devstack.host.loader import FunctionSpec


def test_receipt_path_layout_matches_the_real_host() -> None:
    name = receipt_blob_name("my-host", "Host.Functions.analyze", '"0x8DC1"', "images",
                             "sub/cat.jpg")
    assert name == 'blobreceipts/my-host/Host.Functions.analyze/"0x8DC1"/images/sub/cat.jpg'
    assert quoted_etag("0x8DC1") == '"0x8DC1"'
    assert quoted_etag('"0x8DC1"') == '"0x8DC1"'


@pytest.mark.parametrize(("path", "blob", "expected"), [
    ("images/{name}", "cat.jpg", {"name": "cat.jpg"}),
    ("images/{name}", "sub/cat.jpg", {"name": "sub/cat.jpg"}),
    ("images/sub/{name}", "sub/cat.jpg", {"name": "cat.jpg"}),
    ("images/sub/{name}", "other/cat.jpg", None),
    ("images/{stem}.png", "cat.png", {"stem": "cat"}),
    ("images/{stem}.png", "cat.jpg", None),
    ("images", "anything/at/all.bin", {}),
])
def test_blob_path_patterns(path: str, blob: str, expected: dict[str, str] | None) -> None:
    pattern = BlobPathPattern.parse(path)
    assert pattern.container == "images"
    assert pattern.match(blob) == expected


def test_blob_path_prefix_and_errors() -> None:
    assert BlobPathPattern.parse("images/sub/{name}").prefix == "sub/"
    assert BlobPathPattern.parse("images/{name}").prefix == ""
    with pytest.raises(BlobPathError):
        BlobPathPattern.parse("{container}/{name}")


def test_poison_message_is_the_extensions_json_base64_encoded() -> None:
    body = poison_message("Host.Functions.analyze", "BlockBlob", "images", "a/b.jpg", '"0x1"')
    assert body == ('{"Type":"BlobTrigger","FunctionId":"Host.Functions.analyze",'
                    '"BlobType":"BlockBlob","ContainerName":"images","BlobName":"a/b.jpg",'
                    '"ETag":"\\"0x1\\""}')
    assert base64.b64decode(encode_queue_message(body)).decode() == body


def _spec(function: object) -> FunctionSpec:
    trigger = {"type": "blobTrigger", "name": "blob", "path": "images/{name}"}
    return FunctionSpec(name="analyze", func=function, trigger=trigger,  # type: ignore[arg-type]
                        bindings=(trigger,), raw_bindings=(trigger,), is_async=False)


def test_input_stream_built_like_the_worker() -> None:
    def analyze(blob: func.InputStream) -> None: ...

    properties = {"ContentMD5": "abc=", "ContentType": "image/png", "ETag": '"0x1"',
                  "LastModified": "2030-01-01T00:00:00+00:00", "ContentLength": 5, "Length": 5}
    stream = build_blob_argument(
        _spec(analyze), b"hello", path="images/cat.png", uri="http://127.0.0.1/acct/images/cat.png",
        properties=properties, metadata={"owner": "me"}, binding_data={"name": "cat.png"})
    assert isinstance(stream, func.InputStream)
    assert stream.name == "images/cat.png"
    assert stream.uri == "http://127.0.0.1/acct/images/cat.png"
    assert stream.length == 5
    assert stream.blob_properties == properties
    assert stream.metadata == {"owner": "me"}
    assert stream.read() == b"hello"


def test_bytes_and_str_annotations_get_raw_content() -> None:
    def as_bytes(blob: bytes) -> None: ...

    def as_text(blob: str) -> None: ...

    common = {"path": "images/a", "uri": "u", "properties": {}, "metadata": {},
              "binding_data": {}}
    assert build_blob_argument(_spec(as_bytes), b"x", **common) == b"x"  # type: ignore[arg-type]
    assert build_blob_argument(_spec(as_text), b"x", **common) == "x"  # type: ignore[arg-type]


def test_test_app_declares_what_the_integration_tests_rely_on() -> None:
    source = (Path(__file__).resolve().parents[1] / "host_app" / "function_app.py").read_text()
    assert "%TEST_CONTAINER%/{name}" in source
    assert json.loads((Path(__file__).resolve().parents[1] / "host_app" / "host.json")
                      .read_text())["extensions"]["blobs"]["maxDegreeOfParallelism"] == 3


def test_a_blob_that_never_gets_a_receipt_poisons_after_the_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name the storage client cannot address fails before any attempt is recorded: it must
    still end in one poison message after the threshold, not be retried on every poll forever."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from devstack.host import blobs

    sent: list[str] = []
    monkeypatch.setattr(blobs, "_send_poison", lambda _connection, body: sent.append(body))
    trigger = {"type": "blobTrigger", "name": "blob", "path": "images/{name}",
               "connection": "AzureWebJobsStorage", "direction": "in"}
    spec = FunctionSpec(name="analyze", func=lambda blob: None, trigger=trigger,
                        bindings=(trigger,), raw_bindings=(trigger,), is_async=False)
    binding = blobs.BlobTriggerBinding(spec, BlobPathPattern.parse("images/{name}"), "conn")

    class Unaddressable(blobs.BlobTriggerListener):
        async def _process_receipt(self, candidate: blobs._Candidate) -> None:
            raise OSError("signature mismatch")

    with ThreadPoolExecutor(1) as io:
        listener = Unaddressable([binding], invoker=None,  # type: ignore[arg-type]
                                 host_connection="conn", host_id="h", poison_threshold=3,
                                 max_parallelism=1, poll_interval=1.0, io=io)
        candidate = blobs._Candidate(binding, "odd/../x.png", '"0x1"', "BlockBlob", {})

        async def polls(n: int) -> None:
            for _ in range(n):
                if candidate.key not in listener._done:
                    await listener._process(candidate)

        asyncio.run(polls(10))
    assert len(sent) == 1
    assert json.loads(sent[0])["BlobName"] == "odd/../x.png"
    assert candidate.key in listener._done


def test_sdk_type_annotation_gets_a_blob_client_and_no_content(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ``BlobClient``-typed trigger parameter is bound the way the worker does it: the host
    sends model binding data (connection setting, container, name), never the content, and the
    extension's converter builds the client from the connection app setting."""
    from azure.storage.blob import BlobClient

    from devstack.host.blobs import model_binding_data, sdk_type_converter

    def analyze(blob: blob_sdk.BlobClient) -> None: ...

    connection = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
                  "BlobEndpoint=http://127.0.0.1:41234/devstoreaccount1;")
    monkeypatch.setenv("AzureWebJobsStorage", connection)
    spec = _spec(analyze)
    assert sdk_type_converter(spec) is not None
    assert sdk_type_converter(_spec(lambda blob: None)) is None
    client = build_blob_argument(
        spec, None, path="images/sub/cat.png", uri="u", properties={}, metadata={},
        binding_data={"name": "sub/cat.png"})
    assert isinstance(client, BlobClient)
    assert (client.container_name, client.blob_name) == ("images", "sub/cat.png")
    assert client.url.startswith("http://127.0.0.1:41234/devstoreaccount1/images/sub")
    mbd = model_binding_data("AzureWebJobsStorage", "images", "sub/cat.png")
    assert (mbd.version, mbd.source, mbd.content_type) == ("1.0", "AzureStorageBlobs",
                                                           "application/json")
    assert json.loads(mbd.content) == {"Connection": "AzureWebJobsStorage",
                                       "ContainerName": "images", "BlobName": "sub/cat.png"}


def test_content_bound_parameter_without_content_is_an_error() -> None:
    def analyze(blob: func.InputStream) -> None: ...

    with pytest.raises(ValueError, match="blob content is needed"):
        build_blob_argument(_spec(analyze), None, path="images/a", uri="u", properties={},
                            metadata={}, binding_data={})
