"""The Vision emulator's HTTP surface in-process, on a fake clock (no test waits)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from devstack.vision import VisionConfig, create_app
from devstack.vision.clock import FakeClock
from tests.support.vision import ANALYZE, HEADERS, KEY, fast_analyzer, png


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(clock: FakeClock) -> Iterator[TestClient]:
    config = VisionConfig(key=KEY, tier="S1", tps=3)
    app = create_app(config, clock=clock, analyzer_factory=fast_analyzer)
    with TestClient(app) as test_client:
        yield test_client


def analyze(client: TestClient, features: str = "read", **extra: str) -> object:
    query = {"api-version": "2024-02-01", "features": features, **extra}
    return client.post(ANALYZE, params=query, content=png(), headers=HEADERS)


def test_health_and_read(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    response = analyze(client, "Read,smartCrops")
    assert response.status_code == 200
    body = response.json()
    assert body["metadata"] == {"width": 120, "height": 90}
    assert body["modelVersion"] == "2023-10-01"
    words = body["readResult"]["blocks"][0]["lines"][0]["words"]
    assert [w["text"] for w in words] == ["ok", "go"]
    assert len(body["smartCropsResult"]["values"]) == 1


def test_auth(client: TestClient) -> None:
    query = {"api-version": "2023-10-01", "features": "read"}
    wrong = client.post(
        ANALYZE,
        params=query,
        content=png(),
        headers={**HEADERS, "Ocp-Apim-Subscription-Key": "nope"},
    )
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "401"
    missing = client.post(
        ANALYZE, params=query, content=png(), headers={"Content-Type": "application/octet-stream"}
    )
    assert missing.status_code == 401 and "missing" in missing.json()["error"]["message"]
    bearer = client.post(
        ANALYZE,
        params=query,
        content=png(),
        headers={"Authorization": "Bearer any-token", "Content-Type": "application/octet-stream"},
    )
    assert bearer.status_code == 200
    assert client.get("/admin/stats", headers={"Authorization": "Bearer x"}).status_code == 401
    challenge = (
        'AzureApiManagementKey realm="http://testserver/computervision",'
        'name="Ocp-Apim-Subscription-Key",type="header"'
    )
    assert wrong.headers["WWW-Authenticate"] == challenge
    assert missing.headers["WWW-Authenticate"] == challenge


def test_every_response_carries_a_fresh_apim_request_id(client: TestClient) -> None:
    responses = [
        client.get("/healthz"),
        analyze(client),  # 200
        analyze(client, "tags"),  # 400
        client.post(ANALYZE, params={"api-version": "2024-02-01", "features": "read"}),  # 401
        client.get("/no/such/route"),  # 404
        client.get("/admin/stats", headers={"Ocp-Apim-Subscription-Key": KEY}),
    ]
    assert [r.status_code for r in responses] == [200, 200, 400, 401, 404, 200]
    ids = [r.headers["apim-request-id"] for r in responses]
    assert all(uuid.UUID(i).version == 4 for i in ids)
    assert len(set(ids)) == len(responses)
    assert {r.headers["x-content-type-options"] for r in responses} == {"nosniff"}


@pytest.mark.parametrize(
    ("extra", "status", "inner"),
    [
        ({"features": "caption"}, 400, "NotSupportedVisualFeature"),
        ({"features": "sparkles"}, 400, "NotSupportedVisualFeature"),
        ({"features": ""}, 400, "BadArgument"),
        ({"language": "xx"}, 400, "NotSupportedLanguage"),
        ({"smartcrops-aspect-ratios": "0.5"}, 400, "BadArgument"),
        ({"smartcrops-aspect-ratios": "1.9"}, 400, "BadArgument"),
        ({"gender-neutral-caption": "maybe"}, 400, "BadArgument"),
        ({"model-version": "2099-01-01"}, 400, "BadArgument"),
        ({"api-version": "2022-01-01"}, 404, None),
    ],
)
def test_parameter_errors(
    client: TestClient, extra: dict[str, str], status: int, inner: str | None
) -> None:
    query = {"api-version": "2023-10-01", "features": "read", **extra}
    response = client.post(ANALYZE, params=query, content=png(), headers=HEADERS)
    assert response.status_code == status
    error = response.json()["error"]
    assert error.get("innererror", {}).get("code") == inner


def test_s1_rate_limit_with_retry_after(client: TestClient, clock: FakeClock) -> None:
    statuses = [analyze(client).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    refused = analyze(client)
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "429"
    clock.advance(1.0)
    assert analyze(client).status_code == 200


def test_admin_tier_f0_quota(client: TestClient, clock: FakeClock) -> None:
    admin = {"Ocp-Apim-Subscription-Key": KEY}
    put = client.put(
        "/admin/tier",
        json={"tier": "F0", "per_minute": 2, "monthly_quota": 3, "reset_usage": True},
        headers=admin,
    )
    assert put.status_code == 200 and put.json()["tier"] == "F0"
    assert [analyze(client).status_code for _ in range(3)] == [200, 200, 429]
    assert int(analyze(client).headers["Retry-After"]) == 60
    clock.advance(60)
    assert analyze(client).status_code == 200  # third call of the month
    clock.advance(60)
    quota = analyze(client)
    assert quota.status_code == 403
    assert "Out of call volume quota" in quota.json()["error"]["message"]
    assert int(quota.headers["Retry-After"]) >= 1
    bad = client.put("/admin/tier", json={"tier": "P9", "tps": -1}, headers=admin)
    assert bad.status_code == 400 and len(bad.json()["error"]["details"]) == 2


def test_faults_errors_latency_and_stats(client: TestClient, clock: FakeClock) -> None:
    admin = {"Ocp-Apim-Subscription-Key": KEY}
    client.put("/admin/tier", json={"tier": "S1", "tps": 1000}, headers=admin)
    faults = {
        "seed": 11,
        "error_rates": {"503": 1.0},
        "retry_after_s": 2,
        "latency": {"distribution": "fixed", "ms": 1500},
    }
    assert client.put("/admin/faults", json=faults, headers=admin).status_code == 200
    response = analyze(client)
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    assert clock.slept == [1.5]  # latency applied through the injected clock, no real wait
    stats = client.get("/admin/stats", headers=admin).json()
    assert stats["by_status"]["503"] == 1
    assert stats["by_feature"]["read"]["503"] == 1
    assert stats["faults"] == {"error": 1, "latency": 1}
    assert client.post("/admin/faults/reset", headers=admin).json()["error_rates"] == {}
    assert analyze(client).status_code == 200
    invalid = client.put("/admin/faults", json={"error_rates": {"503": 2}}, headers=admin)
    assert invalid.status_code == 400


def test_outage_window_on_fake_clock(client: TestClient, clock: FakeClock) -> None:
    admin = {"Ocp-Apim-Subscription-Key": KEY}
    window = {"outages": [{"start_in_s": 10, "duration_s": 30}]}
    client.put("/admin/faults", json=window, headers=admin)
    assert analyze(client).status_code == 200
    clock.advance(10)
    down = analyze(client)
    assert down.status_code == 503 and down.json()["error"]["code"] == "ServiceUnavailable"
    clock.advance(30)
    assert analyze(client).status_code == 200


def test_corrupt_and_slow_responses(client: TestClient, clock: FakeClock) -> None:
    admin = {"Ocp-Apim-Subscription-Key": KEY}
    client.put("/admin/tier", json={"tier": "S1", "tps": 1000}, headers=admin)
    client.put("/admin/faults", json={"corrupt": {"rate": 1, "mode": "truncate"}}, headers=admin)
    truncated = analyze(client)
    assert truncated.status_code == 200
    with pytest.raises(ValueError):
        truncated.json()
    client.put(
        "/admin/faults", json={"corrupt": {"rate": 1, "mode": "wrong_content_type"}}, headers=admin
    )
    assert analyze(client).headers["content-type"].startswith("text/html")
    client.put(
        "/admin/faults",
        json={"slow_body": {"rate": 1, "chunk_bytes": 16, "interval_ms": 200}},
        headers=admin,
    )
    slow = analyze(client)
    assert slow.json()["metadata"]["width"] == 120
    assert len(clock.slept) >= 3 and set(clock.slept) == {0.2}


def test_hold_then_respond(client: TestClient, clock: FakeClock) -> None:
    admin = {"Ocp-Apim-Subscription-Key": KEY}
    client.put(
        "/admin/faults",
        json={"timeout": {"rate": 1, "hold_s": 45, "then": "respond"}},
        headers=admin,
    )
    assert analyze(client).status_code == 200
    assert clock.slept == [45]


def test_non_local_url_is_refused_without_network(client: TestClient) -> None:
    query = {"api-version": "2023-10-01", "features": "read"}
    response = client.post(
        ANALYZE,
        params=query,
        json={"url": "https://example.com/a.jpg"},
        headers={"Ocp-Apim-Subscription-Key": KEY},
    )
    assert response.status_code == 400
    assert response.json()["error"]["innererror"]["code"] == "InvalidImageUrl"


def test_the_ocr_thread_count_is_one_unless_asked_and_never_below_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from devstack.vision.__main__ import parse_args

    assert parse_args(["--port", "1", "--key", "k"]).ocr_threads == 1
    assert parse_args(["--port", "1", "--key", "k", "--ocr-threads", "2"]).ocr_threads == 2
    with pytest.raises(SystemExit) as exited:
        parse_args(["--port", "1", "--key", "k", "--ocr-threads", "0"])
    assert exited.value.code == 2
    assert "ocr_threads must be >= 1" in capsys.readouterr().err
