"""Limits answer clearly: 503 for a full queue or too many connections, 429 for a fast submitter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from outlast import Outlast


@asynccontextmanager
async def served(**settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with served_with(**settings) as (_, client):
        yield client


@asynccontextmanager
async def served_with(**settings: Any) -> AsyncIterator[tuple[Outlast, httpx.AsyncClient]]:
    ot = Outlast(store="memory://", workers=0, dashboard=True, **settings)

    @ot.job()
    async def work() -> None: ...

    transport = httpx.ASGITransport(app=ot.app())
    async with ot.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield ot, client


async def test_a_full_queue_answers_503_with_retry_after():
    async with served(max_queue=2) as client:
        for _ in range(2):
            assert (await client.post("/jobs/work", json={})).status_code == 202
        full = await client.post("/jobs/work", json={})
        assert full.status_code == 503
        assert full.headers["retry-after"] == "5"
        assert full.json()["type"] == "queue_full"
        first = (await client.get("/jobs")).json()["jobs"][0]["id"]
        await client.post(f"/jobs/{first}/cancel")
        assert (await client.post("/jobs/work", json={})).status_code == 202  # room again


async def test_a_fast_submitter_gets_429_with_retry_after():
    async with served(submit_rate=1) as client:
        statuses = [(await client.post("/jobs/work", json={})).status_code for _ in range(3)]
        assert statuses == [202, 202, 429]  # a burst of two, then one a second
        limited = await client.post("/jobs/work", json={})
        assert limited.headers["retry-after"] == "1"
        assert limited.json()["type"] == "rate_limited"


async def test_connections_beyond_the_limit_get_503_and_health_still_answers():
    async with served_with(max_connections=1) as (ot, client):
        job = (await client.post("/jobs/work", json={})).json()
        holding = asyncio.create_task(client.get(f"/jobs/{job['id']}?wait=1"))  # holds the only slot
        while not ot.store.hub.is_listened(job["id"]):
            await asyncio.sleep(0)  # until the long poll is waiting
        refused = await client.get("/jobs")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert (await client.get("/healthz")).status_code == 200
        assert (await holding).status_code == 200
        assert (await client.get("/jobs")).status_code == 200
