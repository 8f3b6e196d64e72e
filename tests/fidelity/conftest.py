"""One local stack for every fidelity case, and the pass/fail table printed at the end.

The stack: the Monitor emulator (seeded with one telemetry item of every kind the exporter
sends, timestamped just now) and the Vision emulator, each as its own process on a free
loopback port and each behind a loopback TLS proxy; a managed-identity token endpoint; a file
server for the sample image. Started once per session (``scope="session"``), stopped at the end.

Every case records its outcome with :func:`support.record`; the summary lists each one, and the run
fails when the suite was selected but not a single case reported.
"""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from devstack import procs
from tests.support import fidelity as support
from tests.support.fidelity import RESULTS, STARTED, VISION_KEY, Stack


def _envelope(kind: str, base_type: str, base: dict[str, Any], when: datetime,
              **tags: str) -> dict[str, Any]:
    return {
        "name": f"Microsoft.ApplicationInsights.{kind}", "iKey": str(uuid.UUID(int=0)),
        "time": when.isoformat().replace("+00:00", "Z"),
        "tags": {"ai.operation.id": uuid.uuid4().hex, "ai.cloud.role": "visionops-fidelity",
                 "ai.user.id": "user-1", "ai.session.id": "session-1", **tags},
        "data": {"baseType": base_type, "baseData": {"ver": 2, **base}},
    }


def seed_items(now: datetime) -> list[dict[str, Any]]:
    """One item of each telemetry kind (two requests: a fast success, a slow failure)."""
    t = now - timedelta(minutes=5)
    return [
        _envelope("Request", "RequestData", {
            "id": "r1", "name": "POST /api/analyze", "duration": "0.00:00:00.180",
            "responseCode": "200", "success": True}, t,
            **{"ai.operation.name": "POST /api/analyze", "ai.location.country": "Sweden"}),
        _envelope("Request", "RequestData", {
            "id": "r2", "name": "POST /api/analyze", "duration": "0.00:00:02.500",
            "responseCode": "500", "success": False}, t,
            **{"ai.operation.name": "POST /api/analyze", "ai.location.country": "Norway"}),
        _envelope("RemoteDependency", "RemoteDependencyData", {
            "id": "d1", "name": "POST /computervision/imageanalysis:analyze", "type": "HTTP",
            "target": "vision.local", "duration": "0.00:00:00.900", "resultCode": "429",
            "success": False}, t),
        _envelope("Message", "MessageData", {"message": "analysed blob", "severityLevel": 1}, t),
        _envelope("Exception", "ExceptionData", {"exceptions": [{
            "id": 1, "outerId": 0, "typeName": "ValueError", "message": "bad image",
            "hasFullStack": False, "stack": "Traceback ..."}], "severityLevel": 3}, t,
            **{"ai.device.type": "Browser"}),
        _envelope("Availability", "AvailabilityData", {
            "id": "a1", "name": "vision-probe", "duration": "0.00:00:00.300", "success": True,
            "runLocation": "local", "message": "ok", "size": 1024}, t),
        _envelope("Metric", "MetricData", {"metrics": [
            {"name": "vision.latency", "value": 420.0, "count": 3, "min": 100.0,
             "max": 200.0}]}, t),
        _envelope("Event", "EventData", {"name": "ImageAnalysed",
                                         "properties": {"outcome": "analysed"}}, t),
        _envelope("PageView", "PageViewData", {"id": "p1", "name": "status",
                                               "duration": "0.00:00:00.700"}, t,
                  **{"ai.device.type": "Browser"}),
        _envelope("Metric", "MetricData", {"metrics": [
            {"name": "\\Processor(_Total)\\% Processor Time", "value": 12.5}]}, t),
    ]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("fidelity")
    images = root / "images"
    images.mkdir()
    (images / "sample.jpg").write_bytes(
        (support.sdist("azure-ai-vision-imageanalysis") / "samples" / "sample.jpg").read_bytes())
    monitor_port, vision_port = procs.free_port(), procs.free_port()
    records = []
    with contextlib.ExitStack() as stop:
        _, monitor = procs.spawn(
            "monitor", [sys.executable, "-m", "devstack.monitor", "--port", str(monitor_port),
                        "--state-dir", str(root / "monitor")],
            log_path=root / "monitor.log", cwd=support.REPO_ROOT)
        records.append(monitor)
        _, vision = procs.spawn(
            "vision", [sys.executable, "-m", "devstack.vision", "--port", str(vision_port),
                       "--key", VISION_KEY, "--tps", "50"],
            log_path=root / "vision.log", cwd=support.REPO_ROOT)
        records.append(vision)
        for record_ in records:
            stop.callback(procs.stop, record_.pid)
        for port, what in ((monitor_port, "Monitor emulator"), (vision_port, "Vision emulator")):
            procs.wait_until(lambda p=port: procs.http_ok(f"http://127.0.0.1:{p}/healthz"),
                             timeout=90, what=what)
        cert = support.self_signed(root)
        monitor_tls = stop.enter_context(support.TlsProxy(monitor_port, cert))
        vision_tls = stop.enter_context(support.TlsProxy(vision_port, cert))
        tokens = stop.enter_context(support.TokenEndpoint())
        files = stop.enter_context(support.FileServer(images))
        seeded = httpx.post(f"http://127.0.0.1:{monitor_port}/v2.1/track",
                            content=json.dumps(seed_items(datetime.now(UTC))), timeout=30)
        assert seeded.status_code == 200, seeded.text
        yield Stack(
            monitor_port=monitor_port, vision_port=vision_port,
            monitor_https=f"https://127.0.0.1:{monitor_tls.port}",
            vision_https=f"https://127.0.0.1:{vision_tls.port}",
            image_base=f"http://127.0.0.1:{files.port}", tokens=tokens, cert=cert,
        )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "fidelity" in item.keywords:
        STARTED.append(item.nodeid)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not STARTED:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fidelity: behaves as against Azure?")
    width = max((len(o.case) for o in RESULTS), default=10)
    for suite in dict.fromkeys(o.suite for o in RESULTS):
        cases = [o for o in RESULTS if o.suite == suite]
        passed = sum(o.passed for o in cases)
        write(f"{suite}: {passed} of {len(cases)} pass")
        for o in cases:
            write(f"  {'PASS' if o.passed else 'FAIL'}  {o.case:<{width}}  {o.detail}")
    if not RESULTS:
        write("no fidelity case reported a result: the suite checked nothing")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if STARTED and not RESULTS:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
