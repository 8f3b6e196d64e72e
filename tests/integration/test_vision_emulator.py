"""The Vision emulator as a real process, driven by the unchanged azure-ai-vision-imageanalysis SDK.

Starts ``python -m devstack.vision`` on a free loopback port, waits for ``/healthz`` with a
deadline, and checks real analysis results, the service's error codes, tier limits and injected
faults end to end.
"""

from __future__ import annotations

import concurrent.futures
import http.server
import io
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.ai.vision.imageanalysis import ImageAnalysisClient
from azure.ai.vision.imageanalysis.models import VisualFeatures
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ServiceResponseError,
)
from PIL import Image, ImageDraw, ImageFont

from tests.support import sdk_sample
from tests.support.polling import WaitTimeout, wait_for

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLES = REPO_ROOT / "samples"
KEY = "integration-key"
ADMIN = {"Ocp-Apim-Subscription-Key": KEY}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Emulator:
    endpoint: str

    def client(self, key: str = KEY, **kwargs: Any) -> ImageAnalysisClient:
        return ImageAnalysisClient(self.endpoint, AzureKeyCredential(key), **kwargs)

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.request(method, self.endpoint + path, json=body, headers=ADMIN, timeout=10)
        response.raise_for_status()
        return response.json()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("vision") / "vision.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devstack.vision",
                "--port",
                str(port),
                "--key",
                KEY,
                "--tier",
                "S1",
                "--tps",
                "50",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            if process.poll() is not None:
                pytest.fail(f"emulator exited early:\n{log_path.read_text()}")
            try:
                return httpx.get(endpoint + "/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_for(healthy, timeout=60, interval=0.1, what="a healthy emulator")
        except WaitTimeout as exc:
            pytest.fail(f"{exc}:\n{log_path.read_text()}")
        yield Emulator(endpoint)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(autouse=True)
def clean_state(emulator: Emulator) -> None:
    emulator.admin("POST", "/admin/faults/reset")
    emulator.admin("PUT", "/admin/tier", {"tier": "S1", "tps": 50})
    emulator.admin("POST", "/admin/stats/reset")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def error_of(call: Any) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as caught:
        call()
    return caught.value


def inner_code(error: HttpResponseError) -> str | None:
    assert error.error is not None
    inner = error.error.innererror or {}
    return inner.get("code")


# --- real analysis ----------------------------------------------------------------------------
def test_read_returns_the_text_that_was_drawn(emulator: Emulator) -> None:
    drawn = ["Invoice 2048 paid", "VisionOps emulator"]
    image = Image.new("RGB", (800, 260), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=48)
    for row, text in enumerate(drawn):
        draw.text((30, 40 + 110 * row), text, fill="black", font=font)
    result = emulator.client().analyze(png_bytes(image), [VisualFeatures.READ])
    assert result.read is not None
    lines = [line for block in result.read.blocks for line in block.lines]
    assert [line.text for line in lines] == drawn
    words = [word for line in lines for word in line.words]
    assert [w.text for w in words] == " ".join(drawn).split()
    assert all(len(w.bounding_polygon) == 4 and 0 < w.confidence <= 1 for w in words)
    assert result.metadata.width == 800 and result.model_version == "2023-10-01"


def test_people_on_the_astronaut_portrait(emulator: Emulator) -> None:
    data = (SAMPLES / "astronaut.png").read_bytes()
    result = emulator.client().analyze(
        data,
        [VisualFeatures.PEOPLE, VisualFeatures.SMART_CROPS],
        smart_crops_aspect_ratios=[0.9, 1.33],
    )
    assert result.people is not None
    confident = [p for p in result.people.list if p.confidence >= 0.5]
    assert len(confident) == 1
    box = confident[0].bounding_box
    assert box.x <= 177 and box.x + box.width >= 272  # covers her face
    assert result.smart_crops is not None
    assert [c.aspect_ratio for c in result.smart_crops.list] == [0.9, 1.33]


def test_sdk_sample_against_the_documented_example(emulator: Emulator) -> None:
    """The SDK's own sample.jpg through the unchanged SDK, compared with the REST spec example."""
    responses: list[Any] = []
    result = emulator.client().analyze(
        sdk_sample.sample_jpg().read_bytes(),
        [VisualFeatures.PEOPLE, VisualFeatures.SMART_CROPS, VisualFeatures.READ],
        smart_crops_aspect_ratios=[0.9, 1.33],
        raw_response_hook=responses.append,
    )
    assert result.people is not None and result.smart_crops is not None and result.read
    confident = [p for p in result.people.list if p.confidence >= 0.5]
    assert len(confident) == 1 and confident[0].confidence >= 0.8
    b = confident[0].bounding_box
    assert sdk_sample.iou((b.x, b.y, b.width, b.height), sdk_sample.DOCUMENTED_PERSON) >= 0.7
    crops = [(c.bounding_box.x, c.bounding_box.y, c.bounding_box.width, c.bounding_box.height)
             for c in result.smart_crops.list]
    assert [c.aspect_ratio for c in result.smart_crops.list] == [0.9, 1.33]
    assert sdk_sample.iou(crops[0], sdk_sample.DOCUMENTED_CROP_0_9) >= 0.7
    assert sdk_sample.iou(crops[1], sdk_sample.DERIVED_CROP_1_33) >= 0.7
    lines = [line for block in result.read.blocks for line in block.lines]
    assert [line.text for line in lines] == list(sdk_sample.DOCUMENTED_LINES)
    assert [w.text for w in lines[2].words] == ["123", "456"]
    assert len(responses) == 1
    assert responses[0].http_response.headers["apim-request-id"]


def test_url_body_from_a_local_http_server(emulator: Emulator) -> None:
    payload = (SAMPLES / "rocket.jpg").read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/rocket.jpg"
        result = emulator.client().analyze_from_url(url, [VisualFeatures.PEOPLE])
        assert (result.metadata.width, result.metadata.height) == (640, 427)
        assert result.people is not None
        assert sum(p.confidence >= 0.5 for p in result.people.list) == 0
    finally:
        server.shutdown()
        server.server_close()
    remote = error_of(
        lambda: emulator.client().analyze_from_url(
            "https://example.com/cat.jpg", [VisualFeatures.READ]
        )
    )
    assert remote.status_code == 400 and inner_code(remote) == "InvalidImageUrl"


# --- the service's errors ---------------------------------------------------------------------
def test_oversized_body(emulator: Emulator) -> None:
    error = error_of(
        lambda: emulator.client().analyze(b"\0" * (20 * 1024 * 1024 + 1), [VisualFeatures.READ])
    )
    assert error.status_code == 400 and error.error is not None
    assert error.error.code == "InvalidRequest"
    assert "20971520" in error.error.message


def test_too_small_image(emulator: Emulator) -> None:
    tiny = png_bytes(Image.new("RGB", (40, 40), "white"))
    error = error_of(lambda: emulator.client().analyze(tiny, [VisualFeatures.READ]))
    assert error.status_code == 400 and error.error is not None
    assert error.error.code == "InvalidRequest" and inner_code(error) == "InvalidImageSize"


def test_non_image(emulator: Emulator) -> None:
    error = error_of(
        lambda: emulator.client().analyze(b"%PDF-1.7 not an image", [VisualFeatures.READ])
    )
    assert error.status_code == 400 and inner_code(error) == "InvalidImageFormat"


def test_wrong_key(emulator: Emulator) -> None:
    data = (SAMPLES / "coffee.png").read_bytes()
    with pytest.raises(ClientAuthenticationError) as caught:
        emulator.client(key="not-the-key").analyze(data, [VisualFeatures.READ])
    assert caught.value.status_code == 401
    assert caught.value.error is not None and caught.value.error.code == "401"
    assert caught.value.response is not None
    challenge = caught.value.response.headers["WWW-Authenticate"]
    assert f'realm="{emulator.endpoint}/computervision"' in challenge
    assert caught.value.response.headers["apim-request-id"]


def test_caption_is_not_computable_locally(emulator: Emulator) -> None:
    data = (SAMPLES / "chelsea.png").read_bytes()
    error = error_of(lambda: emulator.client().analyze(data, [VisualFeatures.CAPTION]))
    assert error.status_code == 400 and inner_code(error) == "NotSupportedVisualFeature"
    assert error.error is not None and "local Vision emulator" in error.error.message


# --- tier limits ------------------------------------------------------------------------------
def test_s1_rate_limit_under_a_burst(emulator: Emulator) -> None:
    tps = 4
    emulator.admin("PUT", "/admin/tier", {"tier": "S1", "tps": tps})
    image = png_bytes(Image.new("RGB", (64, 64), "gray"))
    clients = [emulator.client(retry_total=0) for _ in range(3 * tps)]
    barrier = threading.Barrier(len(clients))

    def call(client: ImageAnalysisClient) -> tuple[int, str | None, float]:
        barrier.wait()
        sent = time.monotonic()
        try:
            client.analyze(image, [VisualFeatures.SMART_CROPS])
        except HttpResponseError as error:
            assert error.response is not None
            return error.status_code or 0, error.response.headers.get("Retry-After"), sent
        return 200, None, sent

    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        outcomes = list(pool.map(call, clients))
    sent_times = [sent for _, _, sent in outcomes]
    span = max(sent_times) - min(sent_times)
    ok = sum(status == 200 for status, _, _ in outcomes)
    throttled = [retry for status, retry, _ in outcomes if status == 429]
    assert ok + len(throttled) == len(outcomes)
    assert throttled, "a 3x burst must be throttled"
    assert all(retry is not None and int(retry) >= 1 for retry in throttled)
    # At most `tps` calls per rolling second (no burst allowance); the sends took `span` s.
    assert 1 <= ok <= tps * max(1, math.ceil(span + 0.001))
    stats = emulator.admin("GET", "/admin/stats")
    assert stats["by_status"].get("429", 0) == len(throttled) == stats["blocked"]


# --- fault injection --------------------------------------------------------------------------
def test_injected_503_exhausts_the_sdk_retries(emulator: Emulator) -> None:
    emulator.admin("PUT", "/admin/faults", {"seed": 1, "error_rates": {"503": 1.0}})
    data = (SAMPLES / "coffee.png").read_bytes()
    client = emulator.client(retry_total=2, retry_backoff_factor=0.01)
    error = error_of(lambda: client.analyze(data, [VisualFeatures.SMART_CROPS]))
    assert error.status_code == 503
    stats = emulator.admin("GET", "/admin/stats")
    assert stats["by_status"] == {"503": 3}  # first call + 2 retries
    assert stats["faults"] == {"error": 3}


def test_outage_window_then_recovery(emulator: Emulator) -> None:
    data = (SAMPLES / "coffee.png").read_bytes()
    emulator.admin("PUT", "/admin/faults", {"outages": [{"start_in_s": 0, "duration_s": 3600}]})
    down = error_of(lambda: emulator.client(retry_total=0).analyze(data, [VisualFeatures.READ]))
    assert down.status_code == 503 and down.error is not None
    assert down.error.code == "ServiceUnavailable"
    emulator.admin(
        "PUT",
        "/admin/faults",
        {"outages": [{"start_in_s": 0, "duration_s": 3600, "mode": "reset"}]},
    )
    # The socket closes after the status line: the SDK sees a broken/incomplete response.
    with pytest.raises((ServiceResponseError, IncompleteReadError)):
        emulator.client(retry_total=0).analyze(data, [VisualFeatures.READ])
    emulator.admin("POST", "/admin/faults/reset")
    result = emulator.client().analyze(data, [VisualFeatures.SMART_CROPS])
    assert result.metadata.width == 600
