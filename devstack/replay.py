"""Re-queue poisoned and failed blobs.

``python -m devstack.replay [--poison] [--failed] [--dry-run] [--settings local.settings.json]
[--stack STATE_DIR]``

Sources of work:

* ``--poison``: messages in ``webjobs-blobtrigger-poison`` (base64 JSON written by the host:
  ``FunctionId``, ``BlobType``, ``ContainerName``, ``BlobName``, ``ETag``);
* ``--failed``: documents in the failed container (``source.container``/``source.name``),
  optionally only some error classes (``--class auth --class config``).

With neither flag, both. For each blob of the trigger container: if it is gone, or its current
version already has a result, the message/document is dropped; otherwise the blob is
*re-touched* — re-uploaded with the same bytes, content settings and metadata (plus
``replayed_at``) under ``If-Match`` on its ETag — which gives it a new ETag and raises a new
BlobCreated event, so the trigger (Event Grid or polling) fires again. Only then are the poison
message and the failed document removed, so an interrupted replay loses nothing.

An operator tool run from a checkout (locally or against Azure), never by the Functions host.
It needs ``azure-storage-queue`` for ``--poison``. Settings come from the environment, or from
a ``local.settings.json`` given with ``--settings``.

``UseDevelopmentStorage=true`` names no stack: it means whatever Azurite listens on the default
ports, which on a machine with two local stacks may be the wrong one. So replay never uses it
as it is: it asks the checkout's stack CLI (``python -m devstack [--state-dir D] status
--json``, ``D`` from ``--stack``) and talks to that stack's storage, or refuses (exit 2) when
no stack is running there. ``--stack`` with an explicit connection string refuses too unless the
string is that stack's.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from shared.analysis.results import DocumentStore, ResultRepository, normalize_etag
from shared.analysis.sources import BlobSourceBlobs, SourceBlobs
from shared.errors import StorageError
from shared.naming import printable
from shared.settings import STORAGE_CONNECTION, Settings, StorageConnection

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient

POISON_QUEUE = "webjobs-blobtrigger-poison"
#: The checkout replay runs from: where ``python -m devstack`` resolves.
_CHECKOUT: Final = Path(__file__).resolve().parents[1]
#: Exit code of a refused configuration (argparse uses the same for bad arguments).
EXIT_CONFIG: Final = 2


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    handle: object  # whatever the queue needs to delete it
    content: str


@dataclass(frozen=True, slots=True)
class PoisonRef:
    container: str
    name: str
    etag: str | None
    function_id: str | None


class PoisonQueue(Protocol):
    def receive(self) -> Iterator[QueuedMessage]: ...

    def delete(self, message: QueuedMessage) -> None: ...


def decode_poison(content: str) -> PoisonRef | None:
    """Parse a poison message (base64 JSON as the host writes it, or plain JSON)."""
    text = content.strip()
    with contextlib.suppress(binascii.Error, UnicodeDecodeError):
        text = base64.b64decode(text, validate=True).decode("utf-8")
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    container, name = body.get("ContainerName"), body.get("BlobName")
    if not isinstance(container, str) or not isinstance(name, str):
        return None
    etag = body.get("ETag")
    function_id = body.get("FunctionId")
    return PoisonRef(
        container=container,
        name=name,
        etag=etag if isinstance(etag, str) else None,
        function_id=function_id if isinstance(function_id, str) else None,
    )


@dataclass(frozen=True, slots=True)
class ReplayItem:
    origin: str  # "poison" | "failed"
    container: str
    name: str
    action: str  # requeued | already_done | missing | foreign | undecodable | filtered | error
    new_etag: str | None = None


class Replayer:
    def __init__(
        self,
        *,
        settings: Settings,
        blobs: SourceBlobs,
        store: DocumentStore,
        queue: PoisonQueue | None,
        dry_run: bool = False,
    ) -> None:
        self._settings = settings
        self._blobs = blobs
        self._store = store
        self._repo = ResultRepository.from_settings(store, settings)
        self._queue = queue
        self._dry_run = dry_run

    def replay_poison(self) -> Iterator[ReplayItem]:
        if self._queue is None:
            return
        for message in self._queue.receive():
            ref = decode_poison(message.content)
            if ref is None:
                yield ReplayItem("poison", "", "", "undecodable")
                continue
            item = self._replay("poison", ref.container, ref.name)
            if item.action not in ("foreign", "error") and not self._dry_run:
                self._queue.delete(message)
            yield item

    def replay_failed(self, classes: Sequence[str] = ()) -> Iterator[ReplayItem]:
        failed = self._settings.pipeline.failed_container
        for path in list(self._store.list_paths(failed)):
            raw = self._store.read(failed, path)
            source, error = _failed_source(raw)
            if source is None:
                yield ReplayItem("failed", failed, path, "undecodable")
                continue
            container, name = source
            if classes and error not in classes:
                yield ReplayItem("failed", container, name, "filtered")
                continue
            item = self._replay("failed", container, name)
            if item.action in ("missing", "already_done") and not self._dry_run:
                self._store.delete(failed, path)
            yield item

    def _replay(self, origin: str, container: str, name: str) -> ReplayItem:
        if container != self._settings.pipeline.images_container:
            return ReplayItem(origin, container, name, "foreign")
        etag = self._blobs.current_etag(container, name)
        if etag is None:
            return ReplayItem(origin, container, name, "missing")
        existing = self._repo.find_current(container, name, etag)
        if existing is not None and existing.container == self._settings.pipeline.results_container:
            return ReplayItem(origin, container, name, "already_done")
        if self._dry_run:
            return ReplayItem(origin, container, name, "requeued")
        try:
            new_etag = self._blobs.retouch(container, name, etag)
        except StorageError:
            # changed meanwhile or storage unavailable: keep the message/document for next time
            return ReplayItem(origin, container, name, "error")
        # the new version is analysed afresh; its stale failure must not linger meanwhile
        self._store.delete(self._settings.pipeline.failed_container, _doc_path(name))
        return ReplayItem(origin, container, name, "requeued", normalize_etag(new_etag))


def _doc_path(name: str) -> str:
    from shared.naming import result_path

    return result_path(name)


def _failed_source(raw: bytes | None) -> tuple[tuple[str, str] | None, str | None]:
    try:
        doc = json.loads(raw or b"")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, None
    source = doc.get("source") if isinstance(doc, dict) else None
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(source, dict):
        return None, None
    container, name = source.get("container"), source.get("name")
    if not isinstance(container, str) or not isinstance(name, str):
        return None, None
    error_class = error.get("class") if isinstance(error, dict) else None
    return (container, name), error_class if isinstance(error_class, str) else None


# --------------------------------------------------------------------------- Azure adapters


class StorageQueuePoison:
    """``PoisonQueue`` over azure-storage-queue (messages stay invisible while we work)."""

    def __init__(self, client: QueueClient, *, visibility_timeout: int = 300) -> None:
        self._client = client
        self._visibility_timeout = visibility_timeout

    def receive(self) -> Iterator[QueuedMessage]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            for message in self._client.receive_messages(
                messages_per_page=32, visibility_timeout=self._visibility_timeout
            ):
                yield QueuedMessage(handle=message, content=str(message.content))
        except ResourceNotFoundError:
            return

    def delete(self, message: QueuedMessage) -> None:
        self._client.delete_message(message.handle)  # type: ignore[arg-type]


def _queue_client(storage: StorageConnection) -> QueueClient:
    try:
        from azure.storage.queue import QueueClient
    except ImportError as exc:  # pragma: no cover - depends on the environment
        msg = "--poison needs azure-storage-queue (pip install azure-storage-queue)"
        raise SystemExit(msg) from exc
    if storage.connection_string is not None:
        return QueueClient.from_connection_string(storage.connection_string, POISON_QUEUE)
    account_url = storage.queue_service_uri or (storage.blob_service_uri or "").replace(
        ".blob.", ".queue.", 1
    )
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential(managed_identity_client_id=storage.client_id)
    return QueueClient(account_url, POISON_QUEUE, credential=credential)


class ReplayConfigError(Exception):
    """Replay cannot tell which storage it would talk to; the message says what to do."""


#: ``state_dir`` (``None``: the CLI's default) → the stack's ``status --json``, or ``None``.
StackStatus = Callable[[str | None], Mapping[str, Any] | None]


def is_development_storage(connection_string: str | None) -> bool:
    """``UseDevelopmentStorage=true`` (any case and spacing, with or without a proxy URI)."""
    normalized = "".join((connection_string or "").split()).lower()
    return "usedevelopmentstorage=true" in normalized


def devstack_status(state_dir: str | None) -> Mapping[str, Any] | None:
    """What ``python -m devstack status --json`` of this checkout says; ``None`` when it
    cannot say (no devstack here, or no JSON). A stopped stack is ``{"running": false}``."""
    argv = [sys.executable, "-m", "devstack"]
    if state_dir is not None:  # the CLI runs in the checkout: resolve against our own cwd
        argv += ["--state-dir", str(Path(state_dir).resolve())]
    argv += ["status", "--json"]
    try:
        run = subprocess.run(argv, cwd=_CHECKOUT, capture_output=True, text=True, timeout=60,
                             check=False)
        payload = json.loads(run.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def resolve_storage(
    env: Mapping[str, str], *, stack_dir: str | None, status: StackStatus = devstack_status
) -> tuple[dict[str, str], str | None]:
    """The environment replay runs with, and which local stack it talks to (``None``: none).

    Raises ``ReplayConfigError`` (see the module docstring). Never puts a connection string into
    a message: endpoints only.
    """
    configured = env.get(STORAGE_CONNECTION)
    development = is_development_storage(configured)
    if not development and stack_dir is None:
        return dict(env), None
    where = f"--stack {stack_dir}" if stack_dir is not None else "this checkout's default stack"
    named = (f"{STORAGE_CONNECTION}=UseDevelopmentStorage=true names no stack (it means any "
             "Azurite on the default ports)") if development else f"--stack {stack_dir}"
    payload = status(stack_dir)
    if payload is None:
        raise ReplayConfigError(
            f"{named}, and `python -m devstack status --json` could not say which stack runs"
            f" ({where}); run replay from a checkout, or set {STORAGE_CONNECTION} to an"
            " explicit connection string (BlobEndpoint=…;QueueEndpoint=…)")
    if not payload.get("running") or not payload.get("storage_connection_string"):
        raise ReplayConfigError(
            f"{named}, but no local stack is running ({where}); start it with `python -m"
            " devstack up`, name the one you mean with --stack STATE_DIR, or set"
            f" {STORAGE_CONNECTION} to an explicit connection string")
    stack_storage = str(payload["storage_connection_string"])
    if configured and not development and configured.strip() != stack_storage:
        raise ReplayConfigError(
            f"{STORAGE_CONNECTION} is not the storage of the stack named by --stack {stack_dir}"
            f" (blob {payload.get('blob_endpoint')}); drop one of the two")
    note = f"local stack {payload.get('state_dir')} (blob {payload.get('blob_endpoint')})"
    return {**env, STORAGE_CONNECTION: stack_storage}, note


def load_environment(settings_file: str | None) -> Mapping[str, str]:
    """``os.environ`` over the ``Values`` of a ``local.settings.json`` (env wins)."""
    values: dict[str, str] = {}
    if settings_file:
        loaded: Any = json.loads(Path(settings_file).read_text(encoding="utf-8"))
        raw = loaded.get("Values", {}) if isinstance(loaded, dict) else {}
        values = {str(k): str(v) for k, v in raw.items()}
    values.update(os.environ)
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.replay", description="Re-queue poisoned and failed blobs."
    )
    parser.add_argument("--poison", action="store_true", help="replay poison-queue messages")
    parser.add_argument("--failed", action="store_true", help="replay documents in failed/")
    parser.add_argument("--class", dest="classes", action="append", default=[],
                        help="with --failed: only this error class (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="show what would be done")
    parser.add_argument("--settings", help="a local.settings.json whose Values to use")
    parser.add_argument("--stack", metavar="STATE_DIR",
                        help="the local stack to talk to (its devstack --state-dir); needed when"
                             " two stacks run, used whenever storage is UseDevelopmentStorage")
    args = parser.parse_args(argv)
    both = not (args.poison or args.failed)

    from shared.analysis.results import BlobDocumentStore, blob_service_client

    try:
        env, stack_note = resolve_storage(load_environment(args.settings), stack_dir=args.stack,
                                          status=devstack_status)
    except ReplayConfigError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if stack_note is not None:
        print(f"replay: using the {stack_note}", file=sys.stderr)
    settings = Settings.from_env(env)
    service = blob_service_client(settings.storage)
    replayer = Replayer(
        settings=settings,
        blobs=BlobSourceBlobs(service),
        store=BlobDocumentStore(service),
        queue=StorageQueuePoison(_queue_client(settings.storage)) if both or args.poison else None,
        dry_run=args.dry_run,
    )
    counts: Counter[str] = Counter()
    items: list[Iterator[ReplayItem]] = []
    if both or args.poison:
        items.append(replayer.replay_poison())
    if both or args.failed:
        items.append(replayer.replay_failed(args.classes))
    for source in items:
        for item in source:
            counts[f"{item.origin}:{item.action}"] += 1
            print(f"{item.origin:7} {item.action:13} {item.container}/{printable(item.name)}")
    prefix = "would be " if args.dry_run else ""
    summary = ", ".join(f"{key}={value}" for key, value in sorted(counts.items())) or "nothing"
    print(f"replay {prefix}done: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
