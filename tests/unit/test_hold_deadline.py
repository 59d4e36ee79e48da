"""Every request answers within its hold, whatever the store does: a store that hangs, or is away, is a 503.

A store that hangs cannot be made in-process otherwise: `Flaky` wraps the
memory store, and its chosen methods hang (or raise) on demand. The real thing,
a SIGSTOPped Redis, is in tests/integration/test_store_outage.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import pytest
import redis.exceptions
from starlette.requests import Request

from outlast import Outlast
from outlast.exceptions import StoreUnavailable
from outlast.stores import JobStore
from outlast.stores import redis as _redis_store  # noqa: F401 (its errors count as the store being away)
from outlast.stores.base import store_unavailable

HOLD_S = 1.0  # gateway_timeout 2, margin 1


class Flaky:
    """The memory store, but the methods named in `hang` never return and those in `fail` raise `error`."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.hang: set[str] = set()
        self.fail: set[str] = set()
        self.error: Exception = ConnectionError()

    def __getattr__(self, name: str) -> Any:
        if name in self.hang:

            async def forever(*args: Any, **kwargs: Any) -> Any:
                await asyncio.Event().wait()

            return forever
        if name in self.fail:

            async def failing(*args: Any, **kwargs: Any) -> Any:
                raise self.error

            return failing
        return getattr(self.store, name)


@dataclasses.dataclass
class Served:
    ot: Outlast
    flaky: Flaky
    client: httpx.AsyncClient


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    ot = Outlast(store="memory://", workers=0, gateway_timeout=2, margin=1)

    @ot.job()
    async def work() -> None: ...

    @ot.long_running("/route")
    async def route() -> dict[str, str]:
        return {"ok": "yes"}

    app = ot.app()
    async with ot.lifespan():
        flaky = Flaky(ot.store)
        ot._store = cast(JobStore, flaky)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as client:
            yield Served(ot, flaky, client)


async def timed(request: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


def assert_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "store_unavailable"
    assert elapsed < HOLD_S, f"answered after {elapsed:.2f} s, past the hold"


async def test_a_create_that_hangs_answers_503_before_the_hold_ends(served):
    served.flaky.hang.add("create")
    response, elapsed = await timed(served.client.post("/jobs/work", json={}, headers={"Prefer": "wait=10"}))
    assert_unavailable(response, elapsed)
    assert elapsed > HOLD_S * 0.8  # it waited for the store as long as the hold allows


async def test_a_read_that_hangs_answers_503_before_the_hold_ends(served):
    job_id = (await served.client.post("/jobs/work", json={}, headers={"Prefer": "respond-async"})).json()["id"]
    served.flaky.hang.add("get")
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/result", f"/jobs/{job_id}/events"):
        response, elapsed = await timed(served.client.get(path, headers={"Prefer": "wait=10"}))
        assert_unavailable(response, elapsed)


async def test_a_long_running_route_whose_store_hangs_answers_503(served):
    served.flaky.hang.add("create")
    response, elapsed = await timed(served.client.get("/route"))
    assert_unavailable(response, elapsed)


async def test_waits_end_before_the_request_deadline(served):
    """A job that does not end (no workers) is answered 202 at the end of the wait, never 503."""
    response, elapsed = await timed(served.client.post("/jobs/work", json={}, headers={"Prefer": "wait=10"}))
    assert response.status_code == 202, response.text
    assert HOLD_S * 0.6 < elapsed < HOLD_S
    job_id = response.json()["id"]
    response, elapsed = await timed(served.client.get(f"/jobs/{job_id}", headers={"Prefer": "wait=10"}))
    assert response.status_code == 200 and response.json()["status"] == "queued"
    assert HOLD_S * 0.6 < elapsed < HOLD_S
    response, elapsed = await timed(served.client.get(f"/jobs/{job_id}/result"))
    assert response.status_code == 303
    assert HOLD_S * 0.6 < elapsed < HOLD_S


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
        sqlite3.OperationalError("database is locked"),
    ],
)
async def test_a_store_that_cannot_be_reached_answers_503_not_500(served, error, caplog):
    served.flaky.fail.update({"create", "get"})
    served.flaky.error = error
    response, elapsed = await timed(served.client.post("/jobs/work", json={}))
    assert_unavailable(response, elapsed)
    response, elapsed = await timed(served.client.get("/jobs/nope"))
    assert_unavailable(response, elapsed)
    assert not [r for r in caplog.records if r.exc_info], "an outage logs one line, no traceback"


async def test_other_errors_are_not_store_outages(served):
    served.flaky.fail.add("get")
    served.flaky.error = sqlite3.OperationalError("no such table: jobs")
    response = await served.client.get("/jobs/nope")
    assert response.status_code == 500
    assert store_unavailable(ValueError()) is None
    assert store_unavailable(TimeoutError()) is None  # a job's own timeout, say: not the store's


async def test_within_hold_is_for_any_coroutine(served):
    """What `answers_problems` and the Flask views use; a TimeoutError of the work's own is its own."""

    async def own_timeout() -> None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)

    with pytest.raises(TimeoutError):
        await served.ot.within_hold(own_timeout())
    with pytest.raises(StoreUnavailable):
        await served.ot.within_hold(asyncio.sleep(10), arrived=time.monotonic() - HOLD_S)  # no time left at all
    assert await served.ot.within_hold(asyncio.sleep(0, "done")) == "done"


async def test_answers_problems_finds_the_outlast_behind_the_app(served):
    from outlast.web.http import answers_problems

    async def endpoint(request: Request) -> Any:
        await asyncio.Event().wait()

    started = time.monotonic()
    response = await answers_problems(endpoint)(Request({"type": "http", "app": served.ot.app(), "headers": []}))
    assert response.status_code == 503
    assert time.monotonic() - started < HOLD_S


def test_a_loop_logs_one_line_per_outage(caplog):
    """Background loops (claims, heartbeats, positions, the Redis subscription) through an outage."""
    from outlast.outages import Outage

    outage = Outage(logging.getLogger("outlast.test"), "claiming jobs")
    caplog.set_level(logging.INFO, "outlast.test")
    delays = [outage.failed(redis.exceptions.ConnectionError("Connection refused")) for _ in range(10)]
    assert delays == sorted(delays) and delays[-1] == 5.0  # backoff, up to a cap
    outage.succeeded()
    outage.succeeded()
    assert [r.getMessage() for r in caplog.records] == [
        "claiming jobs: the store is unavailable (Connection refused); trying again until it is back",
        "claiming jobs: the store answers again",
    ]
    assert not [r for r in caplog.records if r.exc_info]
    caplog.clear()
    outage.failed(KeyError("a bug"))  # not an outage: a traceback each time
    outage.failed(KeyError("a bug"))
    assert len([r for r in caplog.records if r.exc_info]) == 2


async def test_a_stream_whose_store_is_away_ends_without_a_traceback(served, caplog):
    """Streams are not bound by the hold; when a read they need fails, they end and the client resumes."""
    job_id = (await served.client.post("/jobs/work", json={}, headers={"Prefer": "respond-async"})).json()["id"]
    served.flaky.fail.add("events")
    served.flaky.error = redis.exceptions.ConnectionError("Connection refused")
    response = await served.client.get(f"/jobs/{job_id}/events")
    assert response.status_code == 200
    assert response.text.startswith("retry:")
    assert not [r for r in caplog.records if r.exc_info]
