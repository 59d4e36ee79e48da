"""The client in process, against an app on the memory store (httpx's ASGI transport).

The ASGI transport gives a response once it is whole, so these use the modes
that need no open stream (poll, long-poll); tests/integration/test_client.py
covers every mode, SSE and WebSocket included, against a real server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from outlast import JobContext, JobError, Outlast
from outlast.client import AsyncClient, JobCanceled, JobFailed, ProblemError

pytestmark = pytest.mark.timeout(30)


def make() -> Outlast:
    ot = Outlast(store="memory://", workers=2, gateway_timeout=1.5, margin=0.5)  # a 1 s hold

    @ot.job()
    async def count(ctx: JobContext, to: int = 3, pause: float = 0.0) -> int:
        for n in range(to):
            await asyncio.sleep(pause)
            ctx.progress(n + 1, to)
        return to

    @ot.job()
    async def broken() -> None:
        raise JobError("no such report", type="missing_report", status=404)

    @ot.long_running("/slow")
    async def slow(seconds: float = 0.0) -> dict[str, float]:
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    return ot


@pytest.fixture(params=["poll", "long-poll"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[AsyncClient]:
    ot = make()
    transport = httpx.ASGITransport(app=ot.app())
    async with ot.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        yield AsyncClient("http://t", mode=request.param, http=http)


async def test_run_returns_the_result_with_progress(client: AsyncClient):
    seen: list[Any] = []
    assert await client.run("count", {"to": 3, "pause": 0.4}, on_progress=seen.append) == 3
    assert seen  # progress reached the caller


async def test_submit_then_wait_get_and_result(client: AsyncClient):
    handle = await client.submit("count", {"to": 2, "pause": 0.6})
    assert handle.status in ("queued", "running")
    assert await handle.result(timeout=10) == 2
    assert (await client.get(handle.id)).status == "succeeded"


async def test_a_failed_job_raises_its_problem(client: AsyncClient):
    with pytest.raises(JobFailed) as failed:
        await client.run("broken")
    assert failed.value.type == "missing_report" and failed.value.status == 404


async def test_cancel_ends_the_job_canceled(client: AsyncClient):
    handle = await client.submit("count", {"to": 50, "pause": 0.2})
    await handle.cancel()
    with pytest.raises(JobCanceled):
        await handle.result(timeout=10)


async def test_call_follows_the_303_chain_of_a_long_running_route(client: AsyncClient):
    response = await client.call("GET", "/slow", params={"seconds": 1.6}, timeout=15)  # past the 1 s hold
    assert response.status_code == 200 and response.json() == {"slept": 1.6}


async def test_unknown_names_and_bad_input_are_problems(client: AsyncClient):
    with pytest.raises(ProblemError) as unknown:
        await client.run("nope")
    assert unknown.value.status == 404
    with pytest.raises(ProblemError) as invalid:
        await client.run("count", {"to": "many"})
    assert invalid.value.status == 422
