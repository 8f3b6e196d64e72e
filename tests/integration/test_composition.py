"""One set of clients per process: 100 status reports build one blob client and one query runner.

Every report reads the quota check's document and the tuning review's state from storage (a
real Azurite); the counts come from wrapping the app's own factories, the places a client is
built, not the SDKs.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devstack.azurite import AzuriteConfig
from shared import composition, settings
from shared.analysis import results
from shared.blueprints import status as status_bp
from shared.monitoring.logsquery import LogsQueryRunner
from tests.support.status_answers import FakeRunner, healthy_answers

pytestmark = pytest.mark.integration

CACHED: tuple[Any, ...] = (
    settings.get_settings, composition.blob_service_for, composition.credential_for,
    composition.get_review_context, composition.get_status_service,
    composition.get_query_runner,
)


@pytest.fixture
def app_env(azurite: AzuriteConfig, monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    for key, value in {
        "VISION_ENDPOINT": "http://127.0.0.1:9", "VISION_KEY": "k",
        "AzureWebJobsStorage": azurite.connection_string,
        "LOGS_WORKSPACE_ID": "00000000-0000-4000-8000-0000000010ca",
        "LOGS_QUERY_ENDPOINT": "http://127.0.0.1:9",
        "STATUS_CACHE_TTL_SECONDS": "30", "TUNING_MODE": "recommend",
    }.items():
        monkeypatch.setenv(key, value)
    built: Counter[str] = Counter()

    def counting(name: str, factory: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            built[name] += 1
            return factory(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(results, "blob_service_client",
                        counting("blob", results.blob_service_client))
    fake = FakeRunner(healthy_answers())
    monkeypatch.setattr(LogsQueryRunner, "from_settings",
                        classmethod(lambda cls, *a, **k: (built.update(["runner"]), fake)[1]))
    for cached in CACHED:
        cached.cache_clear()
    yield built
    for cached in CACHED:
        cached.cache_clear()


def test_a_hundred_reports_build_one_blob_client_and_one_runner(app_env: Counter[str]) -> None:
    service = composition.get_status_service()
    bodies = [service._core().to_json() for _ in range(100)]  # every one computed, no cache
    assert all(b["quota"]["source"] in ("none", "telemetry") for b in bodies)
    assert all("overlay" in b["tuning"] for b in bodies)  # read from storage each time
    for _ in range(100):  # and the HTTP path the dashboards poll
        code, _body, _headers = asyncio.run(status_bp.status_response(None, None))
        assert code in (200, 503)
    assert app_env == Counter({"blob": 1, "runner": 1})
