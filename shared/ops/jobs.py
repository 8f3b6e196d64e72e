"""What every ops job shares: the run lock, the status store, the availability result, the
timer body.

The health timers (the two probes, the quota check, the tuning review) are siblings that never
import each other; each imports this module only. ``run_timer`` is the common timer body: it
logs ``past_due``, opens the request span, takes a blob lease per timer so runs never overlap
across instances (a skipped run is logged, not an error) and runs the job. ``ProbeResult`` is
one run's availability result (AppAvailabilityResults) and what the status container keeps;
``ProbeFailure`` its class, the first word of its message. ``StatusStore`` holds the JSON
documents of the status container (``STATUS_CONTAINER``): the probes' last results, the quota
check's status, the tuning overlay, the drift baseline.

Must never: let an exception from a job reach the Functions host unrecorded, or import a job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, Protocol

from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)

from shared import telemetry
from shared.errors import StorageError

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

    from shared.analysis.results import DocumentStore

logger = logging.getLogger(__name__)

#: Blob (in the status container) leased while timer ``<name>`` runs.
LOCK_PATH: Final = "locks/{name}"


class ProbeFailure(StrEnum):
    """Why a probe run failed: the first word of its availability message."""

    AUTH = "auth"  # 401/403 from Vision: key or role wrong
    THROTTLED = "throttled"  # 429 (or the monthly quota's 403 with Retry-After)
    TIMEOUT = "timeout"  # connect/read timeout, 408
    SERVER_ERROR = "server_error"  # 5xx
    UNREACHABLE = "unreachable"  # connection refused/reset, DNS, dropped mid-response
    WRONG_CONTENT = "wrong_content"  # 200 but unreadable body, or not the known answer
    CONFIG = "config"  # 404 endpoint, unsupported feature, bad settings
    REJECTED = "rejected"  # the service or the pipeline rejected the probe image
    STORAGE = "storage"  # e2e: upload/read/delete in storage failed
    DEADLINE = "deadline"  # e2e: no result document before the deadline
    UNEXPECTED = "unexpected"  # a bug; the exception type is in the message


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe run: what the availability row says, and what the status function reads."""

    name: str
    success: bool
    duration_ms: float
    message: str
    run_location: str
    started_at: datetime
    failure: ProbeFailure | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "success": self.success,
            "duration_ms": self.duration_ms,
            "message": self.message,
            "run_location": self.run_location,
            "started_at": self.started_at.isoformat(),
            "failure": self.failure.value if self.failure else None,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ProbeResult:
        failure = raw.get("failure")
        return cls(
            name=str(raw["name"]),
            success=bool(raw["success"]),
            duration_ms=float(raw["duration_ms"]),
            message=str(raw.get("message", "")),
            run_location=str(raw.get("run_location", "")),
            started_at=datetime.fromisoformat(str(raw["started_at"])),
            failure=ProbeFailure(failure) if failure else None,
        )


class StatusStore:
    """JSON documents in the status container (``STATUS_CONTAINER``) over a ``DocumentStore``."""

    def __init__(self, store: DocumentStore, container: str) -> None:
        self.store = store
        self.container = container

    def read_json(self, path: str) -> dict[str, Any] | None:
        body = self.store.read(self.container, path)
        if body is None:
            return None
        try:
            doc = json.loads(body)
        except ValueError:
            logger.warning("status document %s/%s is not JSON; ignored", self.container, path)
            return None
        return doc if isinstance(doc, dict) else None

    def write_json(self, path: str, doc: Mapping[str, Any]) -> None:
        body = json.dumps(doc, sort_keys=True, indent=1).encode("utf-8")
        self.store.write(self.container, path, body, {})


# --------------------------------------------------------------------------- no-overlap lock


class RunLock(Protocol):
    """A named lock across instances: ``hold(name)`` yields whether this run got it."""

    def hold(self, name: str) -> contextlib.AbstractContextManager[bool]: ...


class BlobLeaseLock:
    """One blob per timer in the status container, leased while the run lasts.

    The lease (15-60 s, ``HEALTH_LOCK_LEASE_SECONDS``) is renewed every third of its duration
    by a daemon thread, so a long run keeps it and a crashed instance frees it within one lease.
    """

    def __init__(self, container: ContainerClient, *, lease_seconds: int = 60) -> None:
        self._container = container
        self._lease_seconds = lease_seconds

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[bool]:
        blob = self._container.get_blob_client(LOCK_PATH.format(name=name))
        try:
            try:
                lease = blob.acquire_lease(lease_duration=self._lease_seconds)
            except ResourceNotFoundError:
                with contextlib.suppress(ResourceExistsError):
                    self._container.create_container()
                with contextlib.suppress(ResourceExistsError, HttpResponseError):
                    # 412 when another instance leased it between our two calls
                    blob.upload_blob(b"", overwrite=False)
                lease = blob.acquire_lease(lease_duration=self._lease_seconds)
        except HttpResponseError as exc:
            if exc.status_code == 409:  # LeaseAlreadyPresent: a run is in progress
                yield False
                return
            raise StorageError("taking the timer lock failed", reason="storage_lock") from exc
        except AzureError as exc:
            raise StorageError("taking the timer lock failed", reason="storage_lock") from exc
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self._lease_seconds / 3):
                try:
                    lease.renew()
                except AzureError as exc:
                    logger.warning("timer lock %s: renewal failed (%s)", name, type(exc).__name__)

        renewer = threading.Thread(target=renew, name=f"lock-{name}", daemon=True)
        renewer.start()
        try:
            yield True
        finally:
            stop.set()
            renewer.join(timeout=5)
            try:
                lease.release()
            except AzureError as exc:  # the lease then expires on its own
                logger.warning("timer lock %s: release failed (%s)", name, type(exc).__name__)


# --------------------------------------------------------------------------- timer runs

AvailabilitySink = Callable[[ProbeResult], None]


def track_probe_availability(result: ProbeResult) -> None:
    """The availability row of a run (never raises: telemetry swallows its own failures)."""
    telemetry.track_availability(
        result.name, result.success, result.duration_ms, message=result.message,
        run_location=result.run_location,
        properties={telemetry.ATTR_PROBE_NAME: result.name,
                    telemetry.ATTR_PROBE_FAILURE: result.failure.value if result.failure
                    else "none"},
        synthetic=True,
    )


def run_timer(
    function_name: str,
    job: Callable[[], None],
    *,
    past_due: bool,
    lock: RunLock,
    invocation_id: str | None = None,
) -> bool:
    """The body every health timer shares; returns whether ``job`` ran.

    ``past_due`` is logged and the job runs once (missed occurrences are not caught up). A run
    that finds the lock taken is skipped with an INFO log. Exceptions from the lock are the
    caller's to turn into a failed result.
    """
    if past_due:
        logger.info("%s: timer is past due; running once now", function_name)
    with (
        telemetry.invocation(function_name, trigger=telemetry.Trigger.TIMER,
                             invocation_id=invocation_id, synthetic=True),
        lock.hold(function_name) as acquired,
    ):
        if not acquired:
            logger.info("%s: previous run still in progress (lock held); this run skipped",
                        function_name)
            return False
        job()
        return True
