"""The Monitor emulator's per-caller query limits: rate window, concurrency queue, 429 answers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from devstack.monitor import DEFAULT_WORKSPACE_ID, MonitorConfig, create_app
from devstack.monitor.limits import LimitsError, QueryLimiter, QueryLimits, Throttled
from tests.support.clocks import FakeClock

QUERY = f"/v1/workspaces/{DEFAULT_WORKSPACE_ID}/query"


def test_rate_window_refuses_then_admits_when_the_oldest_leaves() -> None:
    clock = FakeClock()
    limiter = QueryLimiter(QueryLimits(rate_limit=3, rate_window_s=30), clock=clock)

    async def main() -> None:
        for i in range(3):
            clock.now += 1
            async with limiter.admit("Bearer a"):
                pass
            assert limiter.stats.admitted == i + 1
        with pytest.raises(Throttled) as caught:
            async with limiter.admit("Bearer a"):
                pass
        # the first query started at 1001; now is 1003: it leaves the window in 28 s
        assert caught.value.reason == "RateLimitExceeded"
        assert caught.value.retry_after_s == 28
        async with limiter.admit("Bearer other"):  # another identity has its own budget
            pass
        clock.now += 28
        async with limiter.admit("Bearer a"):
            pass

    asyncio.run(main())
    assert limiter.stats.throttled == {"RateLimitExceeded": 1}
    assert limiter.stats.admitted == 5


def test_a_batch_costs_each_of_its_queries() -> None:
    limiter = QueryLimiter(QueryLimits(rate_limit=5), clock=FakeClock())

    async def main() -> None:
        async with limiter.admit("Bearer a", cost=4):
            pass
        assert (limiter.stats.admitted, limiter.stats.queries) == (1, 4)
        with pytest.raises(Throttled):
            async with limiter.admit("Bearer a", cost=2):
                pass

    asyncio.run(main())


def test_concurrency_queues_fifo_then_refuses_a_full_queue() -> None:
    limiter = QueryLimiter(QueryLimits(max_concurrent=2, max_queued=2))
    order: list[int] = []

    async def main() -> None:
        release = asyncio.Event()

        async def query(i: int) -> None:
            async with limiter.admit("Bearer a"):
                order.append(i)
                await release.wait()

        tasks = [asyncio.create_task(query(i)) for i in range(4)]
        while limiter.stats.queued < 2:
            await asyncio.sleep(0)
        assert order == [0, 1]  # two run, two wait
        with pytest.raises(Throttled) as caught:
            async with limiter.admit("Bearer a"):
                pass
        assert caught.value.reason == "QueueFull"
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert order == [0, 1, 2, 3]
    assert limiter.stats.max_running == 2
    assert limiter.stats.admitted == 4


def test_a_query_that_waits_too_long_is_refused_and_frees_its_place() -> None:
    limiter = QueryLimiter(QueryLimits(max_concurrent=1, queue_timeout_s=0.05))

    async def main() -> None:
        hold = asyncio.Event()

        async def holder() -> None:
            async with limiter.admit("Bearer a"):
                await hold.wait()

        task = asyncio.create_task(holder())
        while limiter.stats.admitted < 1:
            await asyncio.sleep(0)
        with pytest.raises(Throttled) as caught:
            async with limiter.admit("Bearer a"):
                pass
        assert caught.value.reason == "QueueTimeout"
        hold.set()
        await task
        async with limiter.admit("Bearer a"):  # the slot came back
            pass

    asyncio.run(main())
    assert limiter.stats.admitted == 2


def test_limits_validate_every_field_at_once() -> None:
    with pytest.raises(LimitsError) as caught:
        QueryLimits(max_concurrent=0, rate_window_s=0)
    assert "max_concurrent" in str(caught.value) and "rate_window_s" in str(caught.value)
    with pytest.raises(LimitsError) as caught:
        QueryLimits().updated({"rate_limit": 2.5, "nope": 1, "max_queued": True})
    text = str(caught.value)
    assert "rate_limit" in text and "'nope'" in text and "max_queued" in text
    assert QueryLimits().updated({"rate_limit": 7}).rate_limit == 7


def test_the_app_answers_429_with_retry_after_and_reports_its_counts(tmp_path: Path) -> None:
    config = MonitorConfig(state_dir=tmp_path / "state",
                           limits=QueryLimits(rate_limit=2, rate_window_s=600))
    app = create_app(config)
    auth = {"Authorization": "Bearer local"}
    body = {"query": "AppTraces | count", "timespan": "PT1H"}

    async def main() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://emu") as c:
                assert (await c.post(QUERY, json=body, headers=auth)).status_code == 200
                assert (await c.post(QUERY, json=body, headers=auth)).status_code == 200
                refused = await c.post(QUERY, json=body, headers=auth)
                assert refused.status_code == 429
                assert 1 <= int(refused.headers["retry-after"]) <= 600
                assert refused.json()["error"]["innererror"]["code"] == "RateLimitExceeded"
                batch = {"requests": [{"id": "1", "workspace": DEFAULT_WORKSPACE_ID,
                                       "path": "/query", "method": "POST", "body": body}]}
                assert (await c.post("/v1/$batch", json=batch, headers=auth)).status_code == 429
                bad = await c.put("/admin/limits", content=json.dumps({"rate_limit": 0}))
                assert bad.status_code == 400
                raised = await c.put("/admin/limits", json={"rate_limit": 100})
                assert raised.json()["limits"]["rate_limit"] == 100
                assert raised.json()["stats"]["throttled"] == {"RateLimitExceeded": 2}
                ok = await c.post("/v1/$batch", json=batch, headers=auth)
                assert ok.status_code == 200 and ok.json()["responses"][0]["status"] == 200
                stats = (await c.get("/admin/limits")).json()["stats"]
                assert (stats["admitted"], stats["queries"]) == (3, 3)
                reset = await c.post("/admin/limits/stats/reset")
                assert reset.json()["stats"]["admitted"] == 0

    asyncio.run(main())
