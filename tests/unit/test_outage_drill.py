"""A 10-minute Vision outage with images streaming in, on an injected clock (milliseconds).

The real client (SDK pipeline, our policies) over a fake transport that answers 503 until the
outage ends; the real pipeline, parking lot and re-drive over in-memory storage; a small host
loop that tries each trigger up to five times and then poisons it, as the Functions host does.
Checks: nothing poisoned, every image analysed exactly once for its current version with no
operator action, and the calls during the outage held to the breaker's probing rate.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import case_insensitive_dict

from shared.analysis.parking import ParkingLot, redrive
from shared.analysis.pipeline import Outcome, PipelineDeps, process_blob
from shared.analysis.results import ResultRepository
from shared.analysis.sources import SourceChanged, SourceVersion
from shared.analysis.vision import build_vision_client
from shared.settings import Settings
from tests.support import images
from tests.support.clocks import FakeClock
from tests.support.fakes import MemoryStore
from tests.support.vision import OK_BODY

OUTAGE_S = 600
UPLOAD_EVERY_S = 5
PROBE_INTERVAL_S = 5
BREAKER_FAILURES = 5
HOST_TRIES = 5
REDRIVE_EVERY_S = 10


class _Closable:
    def close(self) -> None:
        pass


class OutageTransport(HttpTransport):  # type: ignore[type-arg]
    """503 with ``Retry-After: 1`` until ``clock`` reaches ``ends_at``, then 200."""

    def __init__(self, clock: FakeClock, ends_at: float) -> None:
        self.clock, self.ends_at = clock, ends_at
        self.during: int = 0
        self.ok: int = 0

    def send(self, request: HttpRequest, **kwargs: Any) -> HttpResponseImpl:  # type: ignore[override]
        down = self.clock.now < self.ends_at
        if down:
            self.during += 1
        else:
            self.ok += 1
        body = json.dumps({"error": {"code": "ServiceUnavailable", "message": "down"}}
                          if down else OK_BODY).encode()

        def stream(**_: Any) -> Any:
            yield body

        response = HttpResponseImpl(
            request=request, internal_response=_Closable(), status_code=503 if down else 200,
            reason="fake", content_type="application/json",
            headers=case_insensitive_dict({"Content-Type": "application/json",
                                           **({"Retry-After": "1"} if down else {})}),
            stream_download_generator=stream,
        )
        response.read()
        return response

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> OutageTransport:
        return self

    def __exit__(self, *args: object) -> None:
        pass


@dataclass
class Storage:
    """The images container: name → (version, bytes); re-touching makes a new version."""

    blobs: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    triggers: deque[tuple[str, str]] = field(default_factory=deque)

    def upload(self, name: str, data: bytes) -> None:
        version = self.blobs.get(name, (0, b""))[0] + 1
        self.blobs[name] = (version, data)
        self.triggers.append((name, f"v{version}"))

    def current_etag(self, container: str, name: str) -> str | None:
        found = self.blobs.get(name)
        return None if found is None else f'"v{found[0]}"'

    def retouch(self, container: str, name: str, etag: str) -> str:
        assert etag == self.current_etag(container, name)
        self.upload(name, self.blobs[name][1])
        return f"v{self.blobs[name][0]}"


@dataclass
class StoredBlob:
    """One blob of ``Storage`` as the trigger hands it to the pipeline (``SourceBlob``)."""

    storage: Storage
    name: str
    container: str = "images"

    @property
    def uri(self) -> str | None:
        return None

    def properties(self) -> SourceVersion | None:
        found = self.storage.blobs.get(self.name)
        return None if found is None else SourceVersion(etag=f"v{found[0]}", size=len(found[1]))

    def read(self, etag: str | None, limit: int) -> bytes:
        found = self.storage.blobs.get(self.name)
        if found is None or (etag is not None and f"v{found[0]}" != etag):
            raise SourceChanged(None if found is None else f"v{found[0]}")
        return found[1]


def test_a_ten_minute_outage_ends_with_every_image_analysed_once() -> None:
    clock = FakeClock()
    start = clock.now
    transport = OutageTransport(clock, ends_at=start + OUTAGE_S)
    settings = Settings.from_env({
        "VISION_ENDPOINT": "http://127.0.0.1:7081", "VISION_KEY": "k",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "VISION_BREAKER_FAILURES": str(BREAKER_FAILURES),
        "VISION_PROBE_INTERVAL_SECONDS": str(PROBE_INTERVAL_S),
        "VISION_BACKOFF_BASE_SECONDS": "0.2", "VISION_BACKOFF_MAX_SECONDS": "2",
    })
    client = build_vision_client(settings.vision, transport=transport, clock=clock,
                                 sleep=clock.sleep, limiter_clock=clock)
    store, storage = MemoryStore(), Storage()
    repository = ResultRepository(store, results_container="results", failed_container="failed")
    lot = ParkingLot(store, "parked")
    deps = PipelineDeps(analyzer=client, repository=repository, features=("smartCrops",),
                        parking=lot, clock=clock)
    poisoned: list[str] = []
    outcomes: dict[str, int] = {}
    data = images.tiny_jpeg(1)
    uploads = OUTAGE_S // UPLOAD_EVERY_S
    next_redrive = start + REDRIVE_EVERY_S
    second = 0
    while second < OUTAGE_S + 300:
        clock.now = max(clock.now, start + second)
        if second % UPLOAD_EVERY_S == 0 and second // UPLOAD_EVERY_S < uploads:
            storage.upload(f"img/{second // UPLOAD_EVERY_S:04d}.jpg", data)
        while storage.triggers:
            name, _etag = storage.triggers.popleft()
            source = StoredBlob(storage, name)
            for tries in range(1, HOST_TRIES + 1):
                try:
                    outcome = process_blob(source, deps)
                except Exception:
                    if tries == HOST_TRIES:
                        poisoned.append(name)
                    continue
                outcomes[outcome.status.value] = outcomes.get(outcome.status.value, 0) + 1
                break
        if clock.now >= next_redrive:
            redrive(lot, blobs=storage, repository=repository, images_container="images",
                    gate=client.flow.breaker, batch=200)
            next_redrive = clock.now + REDRIVE_EVERY_S
        second += 1

    assert poisoned == []
    assert list(store.list_paths("parked")) == []
    names = sorted(storage.blobs)
    assert len(names) == uploads
    for name in names:
        current = storage.current_etag("images", name)
        assert repository.find_current("images", name, current) is not None, name
    assert transport.ok == uploads  # each image analysed exactly once, none twice
    assert outcomes[Outcome.ANALYZED.value] == uploads
    assert outcomes[Outcome.PARKED.value] >= uploads  # every image met the outage at least once
    # calls during the outage: the first failures until the breaker opened, then one probe per
    # interval (the probe is a re-driven image's call)
    bound = BREAKER_FAILURES + OUTAGE_S // PROBE_INTERVAL_S + 1
    assert 0 < transport.during <= bound
    print(f"\n  10-min outage, {uploads} images: {transport.during} calls during it"
          f" (bound {bound}), {outcomes}")
