"""The tuning rehearsals' stack settings, image streams and review calls
(test_tuning_rehearsal.py and test_tuning_timeout.py, each on its own stack so two workers can
run them at once). Every wait polls with a deadline.
"""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw

from shared.monitoring.logsquery import LogsQueryRunner
from shared.monitoring.status import CLIENT_OPTIONS
from shared.ops.tuning.review import load_kpi
from shared.settings import Settings
from tests.support.polling import wait_for
from tests.support.stack import BASE_SETTINGS, REPO_ROOT, PipelineStack

SETTINGS = {
    **BASE_SETTINGS,
    "VISION_FEATURES": "people",  # quick on the emulator: the scenarios are about calls
    "VISION_TIMEOUT_SECONDS": "30",
    "VISION_MAX_RETRIES": "4",
    "VISION_BACKOFF_BASE_SECONDS": "0.2",
    "VISION_BACKOFF_MAX_SECONDS": "1",
    "TUNING_MODE": "recommend",
    "TUNING_MIN_SAMPLES": "12",
    "TUNING_OVERLAY_TTL_SECONDS": "1",
    "TUNING_WINDOW_HOURS": "1",
    # The client's own safety nets stay out of the way, so each scenario exercises the setting
    # it is about: the breaker (5 failures in a row happen by chance at these fault rates) and
    # the retry budget (it would cap the very retries scenario 3 is meant to show as useless).
    "VISION_BREAKER_FAILURES": "1000",
    "VISION_RETRY_BUDGET_RATIO": "1.0",
}
SAMPLES = ("astronaut.png", "coffee.png", "chelsea.png")


def start_stack(state_dir: Path) -> PipelineStack:
    # the account allows more than the client's ceiling (10/s): a healthy stream sees no 429
    return PipelineStack(state_dir, SETTINGS, vision_tps=20)


def query_runner(stack: PipelineStack) -> LogsQueryRunner:
    """The app's own query runner, pointed at ``stack``'s Monitor emulator."""
    settings = Settings.from_env({**SETTINGS, "VISION_ENDPOINT": "http://127.0.0.1:9",
                                  "AzureWebJobsStorage": "UseDevelopmentStorage=true",
                                  "LOGS_QUERY_ENDPOINT": str(stack.endpoints["query_endpoint"]),
                                  "LOGS_WORKSPACE_ID": str(stack.endpoints["workspace_id"])})
    return LogsQueryRunner.from_settings(settings, client_options=CLIENT_OPTIONS)


def images(tag: str, count: int) -> list[tuple[str, bytes]]:
    """``count`` distinct JPEGs (256 px) from the bundled samples, each with its own mark, so
    the sticky fault (keyed on the bytes) picks images, not copies of one image."""
    out = []
    for i in range(count):
        with Image.open(REPO_ROOT / "samples" / SAMPLES[i % len(SAMPLES)]) as source:
            im = source.convert("RGB")
        im.thumbnail((256, 256))
        ImageDraw.Draw(im).rectangle((4, 4, 12 + i % 17, 12 + i // 17), fill=(i * 37 % 256, 0, 0))
        buffer = io.BytesIO()
        im.save(buffer, "JPEG", quality=90)
        out.append((f"tuning/{tag}-{i:03d}.jpg", buffer.getvalue()))
    return out


def reset_monitor(stack: PipelineStack) -> None:
    base = str(stack.endpoints["ingestion_endpoint"]).rstrip("/")
    httpx.post(f"{base}/admin/reset", timeout=30).raise_for_status()


def stream(stack: PipelineStack, runner: LogsQueryRunner, tag: str, count: int, *,
           timeout: float = 240, per_second: float | None = None,
           ) -> tuple[dict[str, str], datetime, datetime]:
    """Upload ``count`` images (all at once, or ``per_second`` as a steady arrival rate), wait
    until the host finished each and their telemetry arrived."""
    started = datetime.now(UTC)
    uploaded: dict[str, str] = {}
    for i, (name, data) in enumerate(images(tag, count)):
        if per_second is not None:  # pacing the arrivals, not waiting for an outcome
            time.sleep(max(0.0, started.timestamp() + i / per_second - time.time()))
        uploaded[name] = stack.upload(name, data)
    stack.wait_processed(uploaded, timeout=timeout)
    stack.wait_host_idle()
    ended = datetime.now(UTC) + timedelta(seconds=1)
    span = (started - timedelta(seconds=1), ended + timedelta(minutes=1))

    def arrived() -> bool:  # one request row per host attempt; at least one per image
        return load_kpi(runner, span).images >= count

    wait_for(arrived, timeout=60, what=f"telemetry of stream {tag}")
    return uploaded, started, ended


def kpi_p95(runner: LogsQueryRunner, started: datetime, ended: datetime) -> float:
    p95 = load_kpi(runner, (started - timedelta(seconds=1), ended + timedelta(minutes=1))).p95_ms
    assert p95 is not None
    return p95


def analysed_once(stack: PipelineStack, uploaded: dict[str, str]) -> None:
    docs = stack.documents(uploaded)
    assert {name: [d.container for d in found] for name, found in docs.items()} == {
        name: ["results"] for name in uploaded}


def review(stack: PipelineStack, mode: str) -> dict[str, Any]:
    response = httpx.post(f"{stack.endpoints['functions_url']}/api/tuning/review",
                          params={"mode": mode, "code": str(stack.endpoints["function_key"])},
                          timeout=120)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def changes(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["tunable"]: r for r in body["review"]["recommendations"] if r["change"]}


def tuning_state(stack: PipelineStack) -> dict[str, Any]:
    response = httpx.get(f"{stack.endpoints['functions_url']}/api/tuning",
                         params={"code": str(stack.endpoints["function_key"])}, timeout=30)
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    return state


def wait_overlay_in_force(stack: PipelineStack, seconds: float = 2.5) -> None:
    """The host reads the overlay once per TUNING_OVERLAY_TTL_SECONDS (1 s here)."""
    deadline = datetime.now(UTC) + timedelta(seconds=seconds)
    wait_for(lambda: datetime.now(UTC) >= deadline, timeout=seconds + 5, interval=0.2,
             what="one overlay TTL")


