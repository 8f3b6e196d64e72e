"""Blob trigger: poll containers, keep receipts, retry, poison — like the Storage Blobs extension.

What is reproduced from the real host (WebJobs Storage Blobs extension 5.x):

* one receipt per function, blob and ETag in container ``azure-webjobs-hosts`` at
  ``blobreceipts/<hostId>/<functionId>/<etag>/<container>/<blob>``, created with metadata
  ``Incomplete=true`` and made complete (key removed) once the blob is done, so a blob is processed
  once per ETag even across restarts and an overwritten blob (new ETag) triggers again;
* a lease on the receipt while a blob is in progress (30 s, renewed), so a second host instance
  skips it and a host that died mid-invocation leaves it to be retried (at-least-once);
* up to ``poisonBlobThreshold`` attempts (default 5), then one message on
  ``webjobs-blobtrigger-poison`` in the triggering blob's account with the JSON the extension
  writes, base64-encoded like its queue messages, and the receipt completed;
* at most ``maxDegreeOfParallelism`` blob invocations at once across all blob functions.

What differs: the real host finds blobs by scanning storage logs and the container (or, with
``source=EventGrid``, by Event Grid events) and counts attempts with its internal queue's dequeue
count. Locally every matching container is listed every ``poll_interval`` seconds (whatever the
``source``) and the attempt count is kept in the receipt's metadata (``LocalHostDequeueCount``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import typing
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from devstack.host.invoker import Invoker, Outcome
from devstack.host.loader import FunctionSpec
from devstack.host.storage import (
    DEFAULT_CONNECTION,
    HOSTS_CONTAINER,
    blob_service,
    queue_service,
)
from shared.naming import printable

if TYPE_CHECKING:
    from azure.storage.blob import BlobClient, BlobLeaseClient, BlobServiceClient

log = logging.getLogger(__name__)

RECEIPTS_DIRECTORY = "blobreceipts"
POISON_QUEUE = "webjobs-blobtrigger-poison"
INCOMPLETE_KEY = "Incomplete"
ATTEMPTS_KEY = "LocalHostDequeueCount"
LEASE_SECONDS = 30
_RENEW_EVERY = 10.0

T = TypeVar("T")


class BlobPathError(ValueError):
    """A blob trigger ``path`` the host cannot interpret."""


@dataclass(frozen=True, slots=True)
class BlobPathPattern:
    """``container/prefix/{name}``-style path of a blob trigger.

    Each ``{param}`` binds one or more characters, slashes included (so ``images/{name}`` binds
    ``sub/a.png`` for ``images/sub/a.png``); the literal text before the first parameter is the
    listing prefix.
    """

    container: str
    template: str
    regex: re.Pattern[str]
    prefix: str

    @classmethod
    def parse(cls, path: str) -> BlobPathPattern:
        container, _, template = path.strip().strip("/").partition("/")
        if not container or "{" in container:
            raise BlobPathError(f"blob path {path!r} must start with a literal container name")
        pieces: list[str] = []
        position = 0
        for match in re.finditer(r"\{([^{}]+)\}", template):
            pieces.append(re.escape(template[position:match.start()]))
            name = match.group(1)
            if not name.isidentifier():
                raise BlobPathError(f"blob path {path!r}: bad parameter name {name!r}")
            pieces.append(f"(?P<{name}>.+?)")
            position = match.end()
        pieces.append(re.escape(template[position:]))
        body = "".join(pieces)
        # A path that is only a container (or ends in a literal folder) matches every blob under it.
        if "{" not in template:
            body += ".*"
        prefix = template.split("{", 1)[0]
        return cls(container=container, template=template,
                   regex=re.compile(f"^{body}$", re.DOTALL), prefix=prefix)

    def match(self, blob_name: str) -> dict[str, str] | None:
        found = self.regex.match(blob_name)
        return None if found is None else dict(found.groupdict())


def receipt_blob_name(host_id: str, function_id: str, etag: str, container: str,
                      blob_name: str) -> str:
    """Where the real host keeps the receipt (the ETag precedes the name, which may hold '/')."""
    return f"{RECEIPTS_DIRECTORY}/{host_id}/{function_id}/{etag}/{container}/{blob_name}"


def quoted_etag(etag: str) -> str:
    """The ETag as the blob's ``ETag`` header has it (quoted), which the real host records.

    Listings return it bare; the extension takes it from the blob's properties, quoted.
    """
    return etag if etag.startswith('"') else f'"{etag}"'


def poison_message(function_id: str, blob_type: str, container: str, blob_name: str,
                   etag: str) -> str:
    """The ``BlobTriggerMessage`` JSON the extension serializes (Newtonsoft, compact)."""
    return json.dumps({
        "Type": "BlobTrigger",
        "FunctionId": function_id,
        "BlobType": blob_type,
        "ContainerName": container,
        "BlobName": blob_name,
        "ETag": etag,
    }, separators=(",", ":"))


def encode_queue_message(text: str) -> str:
    """Base64 of the UTF-8 text, as the Storage Queues extension writes its messages."""
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


@dataclass(frozen=True, slots=True)
class BlobTriggerBinding:
    spec: FunctionSpec
    pattern: BlobPathPattern
    connection: str


@dataclass(frozen=True, slots=True)
class _Candidate:
    binding: BlobTriggerBinding
    name: str
    etag: str
    blob_type: str
    binding_data: Mapping[str, str]

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.binding.spec.function_id, self.binding.pattern.container, self.name, self.etag)

    @property
    def path(self) -> str:
        return f"{self.binding.pattern.container}/{self.name}"


def _format_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


#: What the host puts in ``ModelBindingData`` for a deferred blob binding (the Storage Blobs
#: extension's ``BlobBindingData``): the worker hands it to the SDK-type converter.
MODEL_BINDING_VERSION = "1.0"
MODEL_BINDING_SOURCE = "AzureStorageBlobs"
MODEL_BINDING_CONTENT_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class ModelBindingData:
    """The fields of the worker's ``ModelBindingData`` message the converters read."""

    version: str
    source: str
    content_type: str
    content: str


def model_binding_data(connection: str, container: str, blob_name: str) -> ModelBindingData:
    content = json.dumps({"Connection": connection, "ContainerName": container,
                          "BlobName": blob_name}, separators=(",", ":"))
    return ModelBindingData(MODEL_BINDING_VERSION, MODEL_BINDING_SOURCE,
                            MODEL_BINDING_CONTENT_TYPE, content)


def sdk_type_converter(spec: FunctionSpec) -> tuple[Any, type] | None:
    """(converter, SDK type) when the trigger parameter is an SDK type such as ``BlobClient``.

    The worker defers such a binding (the host sends ``ModelBindingData`` — connection setting,
    container, blob name — instead of the content) when the annotation is a subclass of the
    extension base's ``SdkType`` and a converter is registered for the trigger. Without the
    extension installed no annotation can be one.
    """
    hint = _param_hint(spec, spec.trigger_param)
    try:
        from azurefunctions.extensions.base import SdkType, get_binding_registry
    except ImportError:
        return None
    if not (isinstance(hint, type) and issubclass(hint, SdkType)):
        return None
    converter = get_binding_registry().get(spec.trigger_type)
    return None if converter is None else (converter, hint)


def build_blob_argument(spec: FunctionSpec, data: bytes | None, *, path: str, uri: str,
                        properties: Mapping[str, Any], metadata: Mapping[str, str],
                        binding_data: Mapping[str, str]) -> Any:
    """The trigger parameter, built with the library's own converter as the worker does.

    ``data`` is None for a deferred (SDK-type) binding: the host never read the blob.
    """
    import azure.functions as func
    from azure.functions.meta import Datum

    trigger_metadata: dict[str, Datum] = {
        "BlobTrigger": Datum(path, "string"),
        "Uri": Datum(uri, "string"),
        "Properties": Datum(json.dumps(dict(properties)), "json"),
        "Metadata": Datum(json.dumps(dict(metadata)), "json"),
        "sys": Datum(json.dumps({"MethodName": spec.name,
                                 "UtcNow": datetime.now(UTC).isoformat(),
                                 "RandGuid": str(uuid.uuid4())}), "json"),
    }
    for key, value in binding_data.items():
        trigger_metadata[key] = Datum(value, "string")
    deferred = sdk_type_converter(spec)
    if deferred is not None:
        from azurefunctions.extensions.base import Datum as ExtensionDatum

        converter, pytype = deferred
        container, _, blob_name = path.partition("/")
        connection = str(spec.trigger.get("connection") or DEFAULT_CONNECTION)
        mbd = model_binding_data(connection, container, blob_name)
        return converter.decode(ExtensionDatum(mbd, "model_binding_data"),
                                trigger_metadata=trigger_metadata, pytype=pytype)
    if data is None:
        raise ValueError(f"function '{spec.name}': blob content is needed for this parameter")
    hint = _param_hint(spec, spec.trigger_param)
    if hint is bytes:
        return data
    if hint is str:
        return data.decode("utf-8")
    return func.blob.BlobConverter.decode(Datum(data, "bytes"), trigger_metadata=trigger_metadata)


def _param_hint(spec: FunctionSpec, name: str) -> Any:
    try:
        return typing.get_type_hints(spec.func).get(name)
    except Exception:  # unresolvable annotations just mean "no hint"
        return None


def blob_properties_json(props: Any) -> dict[str, Any]:
    """``Properties`` trigger metadata with the field names the worker and library read."""
    settings = props.content_settings
    md5 = settings.content_md5 if settings is not None else None
    blob_type = props.blob_type
    return {
        "ContentMD5": base64.b64encode(bytes(md5)).decode("ascii") if md5 else None,
        "ContentType": settings.content_type if settings is not None else None,
        "ContentEncoding": settings.content_encoding if settings is not None else None,
        "ETag": props.etag,
        "Created": _format_time(props.creation_time),
        "LastModified": _format_time(props.last_modified),
        "BlobType": getattr(blob_type, "value", str(blob_type)),
        "ContentLength": props.size,
        "Length": props.size,
    }


class BlobTriggerListener:
    """Polls the containers of all blob-triggered functions and drives their invocations."""

    def __init__(self, bindings: Iterable[BlobTriggerBinding], *, invoker: Invoker,
                 host_connection: str, host_id: str, poison_threshold: int,
                 max_parallelism: int, poll_interval: float, io: Executor) -> None:
        self._bindings = tuple(bindings)
        self._invoker = invoker
        self._host_connection = host_connection
        self._host_id = host_id
        self._threshold = poison_threshold
        self._semaphore = asyncio.Semaphore(max_parallelism)
        self.max_parallelism = max_parallelism
        self._poll_interval = poll_interval
        self._io_executor = io
        self._services: dict[str, BlobServiceClient] = {}
        self._done: set[tuple[str, str, str, str]] = set()
        self._inflight: dict[tuple[str, str, str, str], asyncio.Task[None]] = {}
        self._stopping = False
        self._missing_logged: set[str] = set()
        # Failures before an attempt could even be recorded (the receipt or the blob itself is
        # unreachable, e.g. a name the storage client cannot address): counted here so such a
        # blob poisons after the threshold instead of being retried on every poll forever.
        self._infra_failures: dict[tuple[str, str, str, str], int] = {}
        self.scans = 0

    @property
    def bindings(self) -> tuple[BlobTriggerBinding, ...]:
        return self._bindings

    async def _io(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io_executor, partial(function, *args, **kwargs))

    def _service(self, connection: str) -> BlobServiceClient:
        if connection not in self._services:
            self._services[connection] = blob_service(connection)
        return self._services[connection]

    # -- polling ------------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        hosts_ready = False
        while not stopping.is_set():
            try:
                if not hosts_ready:
                    await self._io(self._ensure_hosts_container)
                    hosts_ready = True
                await self.poll_once()
            except Exception:  # one bad scan must not end the listener
                log.exception("Blob scan failed; retrying on the next poll")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=self._poll_interval)

    def _ensure_hosts_container(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._service(self._host_connection).create_container(HOSTS_CONTAINER)

    async def poll_once(self) -> int:
        """List every watched container once and start work for new blobs; return how many."""
        started = 0
        for binding in self._bindings:
            for candidate in await self._io(self._list_candidates, binding):
                if candidate.key in self._done or candidate.key in self._inflight:
                    continue
                if self._stopping:
                    break
                task = asyncio.create_task(self._process(candidate),
                                           name=f"blob:{candidate.path}")
                self._inflight[candidate.key] = task
                started += 1
        self.scans += 1
        return started

    def _list_candidates(self, binding: BlobTriggerBinding) -> list[_Candidate]:
        from azure.core.exceptions import ResourceNotFoundError

        container = self._service(binding.connection).get_container_client(
            binding.pattern.container)
        found: list[_Candidate] = []
        try:
            for item in container.list_blobs(name_starts_with=binding.pattern.prefix or None):
                data = binding.pattern.match(item.name)
                if data is None:
                    continue
                blob_type = getattr(item.blob_type, "value", str(item.blob_type))
                found.append(_Candidate(binding, item.name, quoted_etag(str(item.etag)),
                                        blob_type, data))
        except ResourceNotFoundError:
            if binding.pattern.container not in self._missing_logged:
                self._missing_logged.add(binding.pattern.container)
                log.warning("Container '%s' watched by '%s' does not exist (yet)",
                            binding.pattern.container, binding.spec.name)
        return found

    # -- one blob -----------------------------------------------------------------------------

    async def _process(self, candidate: _Candidate) -> None:
        try:
            async with self._semaphore:
                if not self._stopping:
                    await self._process_receipt(candidate)
        except Exception:  # a bad blob never blocks the others
            failures = self._infra_failures.get(candidate.key, 0) + 1
            self._infra_failures[candidate.key] = failures
            if failures < self._threshold:
                log.exception("Processing blob '%s' for '%s' failed (%d of %d); it will be retried",
                              printable(candidate.path), candidate.binding.spec.name, failures,
                              self._threshold)
            else:
                log.exception("Processing blob '%s' for '%s' failed %d times before an attempt "
                              "could be recorded; giving up on it", printable(candidate.path),
                              candidate.binding.spec.name, failures)
                await self._poison_unreachable(candidate)
        finally:
            self._inflight.pop(candidate.key, None)

    async def _poison_unreachable(self, candidate: _Candidate) -> None:
        """Poison a blob that never got a receipt: a message, and no more polls of this ETag."""
        self._done.add(candidate.key)
        self._infra_failures.pop(candidate.key, None)
        spec = candidate.binding.spec
        body = poison_message(spec.function_id, candidate.blob_type,
                              candidate.binding.pattern.container, candidate.name, candidate.etag)
        try:
            await self._io(_send_poison, candidate.binding.connection, body)
        except Exception:  # the queue being down too must not end the listener
            log.exception("Poison message for blob '%s' could not be written",
                          printable(candidate.path))

    def _receipt_client(self, candidate: _Candidate) -> BlobClient:
        name = receipt_blob_name(self._host_id, candidate.binding.spec.function_id,
                                 candidate.etag, candidate.binding.pattern.container,
                                 candidate.name)
        return self._service(self._host_connection).get_blob_client(HOSTS_CONTAINER, name)

    async def _process_receipt(self, candidate: _Candidate) -> None:
        from azure.core.exceptions import HttpResponseError, ResourceExistsError

        receipt = self._receipt_client(candidate)
        metadata = await self._io(_read_metadata, receipt)
        if metadata is None:
            with contextlib.suppress(ResourceExistsError):
                await self._io(receipt.upload_blob, b"", overwrite=False,
                               metadata={INCOMPLETE_KEY: "true", ATTEMPTS_KEY: "0"})
            metadata = await self._io(_read_metadata, receipt)
        if metadata is None or metadata.get(INCOMPLETE_KEY, "").lower() != "true":
            self._done.add(candidate.key)
            return
        try:
            lease = await self._io(receipt.acquire_lease, lease_duration=LEASE_SECONDS)
        except HttpResponseError as exc:
            if exc.status_code == 409:  # another invocation (or host) holds it
                return
            raise
        renewer = asyncio.create_task(self._renew(lease))
        try:
            await self._attempts(candidate, receipt, lease)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            with contextlib.suppress(HttpResponseError):
                await self._io(lease.release)

    async def _renew(self, lease: BlobLeaseClient) -> None:
        while True:
            await asyncio.sleep(_RENEW_EVERY)
            try:
                await self._io(lease.renew)
            except Exception:  # a lost lease only risks a duplicate, logged
                log.warning("Could not renew a blob receipt lease", exc_info=True)

    async def _attempts(self, candidate: _Candidate, receipt: BlobClient,
                        lease: BlobLeaseClient) -> None:
        metadata = await self._io(_read_metadata, receipt)
        if metadata is None or metadata.get(INCOMPLETE_KEY, "").lower() != "true":
            self._done.add(candidate.key)
            return
        spec = candidate.binding.spec
        while True:
            attempts = int(metadata.get(ATTEMPTS_KEY, "0") or 0)
            if attempts >= self._threshold:
                # The last attempt failed but the host stopped before poisoning it.
                await self._poison(candidate, receipt, lease, metadata)
                return
            if self._stopping:
                return
            blob = await self._io(self._download, candidate)
            if blob is None:
                log.info("Blob '%s' was deleted or overwritten before '%s' ran; the receipt is "
                         "completed", printable(candidate.path), spec.name)
                await self._complete(candidate, receipt, lease, metadata)
                return
            attempts += 1
            metadata[ATTEMPTS_KEY] = str(attempts)
            # Persist the attempt before running it: a crash mid-invocation still counts.
            await self._io(receipt.set_blob_metadata, metadata, lease=lease)
            outcome = await self._invoke(candidate, blob)
            if outcome.succeeded:
                await self._complete(candidate, receipt, lease, metadata)
                return
            if attempts >= self._threshold:
                await self._poison(candidate, receipt, lease, metadata)
                return
            log.warning("Blob '%s' failed in '%s' (attempt %d of %d); retrying",
                        printable(candidate.path), spec.name, attempts, self._threshold)

    def _download(self, candidate: _Candidate) -> tuple[bytes | None, Any, str] | None:
        """This ETag's content and properties, or None if the blob is gone or was overwritten.

        A deferred (SDK-type) binding gets the properties only: the real host does not read the
        blob for it, so neither does this one.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        client = self._service(candidate.binding.connection).get_blob_client(
            candidate.binding.pattern.container, candidate.name)
        unchanged = MatchConditions.IfNotModified
        try:
            if sdk_type_converter(candidate.binding.spec) is not None:
                props = client.get_blob_properties(etag=candidate.etag, match_condition=unchanged)
                return None, props, client.url
            downloader = client.download_blob(etag=candidate.etag, match_condition=unchanged)
            data = downloader.readall()
        except (ResourceNotFoundError, ResourceModifiedError):
            return None
        return data, downloader.properties, client.url

    async def _invoke(self, candidate: _Candidate, blob: tuple[bytes | None, Any, str]) -> Outcome:
        data, props, uri = blob
        spec = candidate.binding.spec
        argument = build_blob_argument(
            spec, data, path=candidate.path, uri=uri, properties=blob_properties_json(props),
            metadata=dict(props.metadata or {}), binding_data=candidate.binding_data)
        return await self._invoker.invoke(
            spec, {spec.trigger_param: argument},
            reason=f"New blob detected(LogsAndContainerScan): {printable(candidate.path)}")

    async def _complete(self, candidate: _Candidate, receipt: BlobClient, lease: BlobLeaseClient,
                        metadata: dict[str, str]) -> None:
        metadata.pop(INCOMPLETE_KEY, None)
        await self._io(receipt.set_blob_metadata, metadata, lease=lease)
        self._done.add(candidate.key)

    async def _poison(self, candidate: _Candidate, receipt: BlobClient, lease: BlobLeaseClient,
                      metadata: dict[str, str]) -> None:
        spec = candidate.binding.spec
        body = poison_message(spec.function_id, candidate.blob_type,
                              candidate.binding.pattern.container, candidate.name, candidate.etag)
        await self._io(_send_poison, candidate.binding.connection, body)
        log.error("Blob '%s' failed %d times in '%s': message put on queue '%s'",
                  printable(candidate.path), self._threshold, spec.name, POISON_QUEUE)
        await self._complete(candidate, receipt, lease, metadata)

    # -- admin and shutdown -------------------------------------------------------------------

    async def invoke_path(self, spec: FunctionSpec, blob_path: str) -> Outcome | None:
        """Run ``spec`` once for ``container/blob`` now (admin API; no receipt, no retry)."""
        binding = next((b for b in self._bindings if b.spec is spec), None)
        container, _, name = blob_path.strip("/").partition("/")
        if binding is None or not name:
            return None
        props = await self._io(
            lambda: self._service(binding.connection).get_blob_client(
                container, name).get_blob_properties())
        candidate = _Candidate(binding, name, quoted_etag(str(props.etag)),
                               getattr(props.blob_type, "value", str(props.blob_type)),
                               binding.pattern.match(name) or {})
        blob = await self._io(self._download, candidate)
        if blob is None:
            return None
        return await self._invoke(candidate, blob)

    def stop_accepting(self) -> None:
        self._stopping = True

    async def drain(self, timeout: float) -> bool:
        """Wait for in-flight blobs to finish; True if all did before ``timeout``."""
        self.stop_accepting()
        tasks = list(self._inflight.values())
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending


def _read_metadata(receipt: BlobClient) -> dict[str, str] | None:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return dict(receipt.get_blob_properties().metadata or {})
    except ResourceNotFoundError:
        return None


def _send_poison(connection: str, body: str) -> None:
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.queue import TextBase64EncodePolicy

    service = queue_service(connection)
    queue = service.get_queue_client(POISON_QUEUE, message_encode_policy=TextBase64EncodePolicy())
    with contextlib.suppress(ResourceExistsError):
        queue.create_queue()
    queue.send_message(body)
