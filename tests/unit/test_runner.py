"""The runner on the memory store: how jobs run, end, retry, time out and are canceled."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from outlast import JobContext, JobError, JobStatus, Outlast, RetryableError

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def ot() -> AsyncIterator[Outlast]:
    ot = Outlast(store="memory://", workers=2, lease=5)
    started = asyncio.Event()
    release = asyncio.Event()

    @ot.job()
    async def add(a: int, b: int) -> int:
        return a + b

    @ot.job()
    def sync_add(a: int, b: int) -> dict[str, Any]:
        return {"sum": a + b, "thread": threading.current_thread().name}

    @ot.job()
    async def chatty(ctx: JobContext, n: int) -> int:
        for i in range(n):
            ctx.progress(i + 1, n)
        await ctx.log("done")  # may be awaited, or not
        return n

    @ot.job()
    async def blocked() -> None:
        started.set()
        await release.wait()

    @ot.job()
    def sync_polite(ctx: JobContext) -> str:
        while not ctx.canceled:
            time.sleep(0.01)
        return "saw the cancel"

    @ot.job(timeout=0.2)
    async def slow() -> None:
        await asyncio.sleep(10)

    @ot.job(max_attempts=3, backoff=0.01)
    async def flaky(ctx: JobContext) -> int:
        if ctx.attempt < 3:
            raise RetryableError("not yet")
        return ctx.attempt

    @ot.job(max_attempts=2, retry_on=[ConnectionError], backoff=0.01)
    async def always_down() -> None:
        raise ConnectionError("upstream down")

    @ot.job()
    async def teapot() -> None:
        raise JobError("short and stout", type="teapot", status=418)

    @ot.job()
    async def crash() -> None:
        raise KeyError("missing")

    @ot.job()
    async def unserializable() -> object:
        return object()

    ot.test_events = (started, release)  # type: ignore[attr-defined]
    async with ot.lifespan():
        yield ot


async def run(ot: Outlast, name: str, input: dict[str, Any] | None = None, wait_s: float = 5):
    job, _ = await ot.submit(name, input or {})
    return await ot.wait(job.id, wait_s)


async def test_async_and_sync_jobs_succeed(ot: Outlast):
    assert (await run(ot, "add", {"a": 2, "b": 3})).result == 5
    job = await run(ot, "sync_add", {"a": 2, "b": 3})
    assert job.result["sum"] == 5
    assert job.result["thread"].startswith("outlast-job")


async def test_progress_is_coalesced_and_the_last_is_kept(ot: Outlast):
    job = await run(ot, "chatty", {"n": 100_000})
    assert job.status is JobStatus.SUCCEEDED
    assert job.progress == {"current": 100_000, "total": 100_000, "message": None}
    events = await ot.store.events(job.id)
    progress = [e for e in events if e.type == "progress"]
    assert 1 <= len(progress) <= 5
    assert progress[-1].data["current"] == 100_000
    assert [e.data["message"] for e in events if e.type == "log"] == ["done"]
    assert events[-1].type == "status"  # the terminal status comes after every report


async def test_cancel_interrupts_a_running_async_job(ot: Outlast):
    started, _ = ot.test_events  # type: ignore[attr-defined]
    job, _ = await ot.submit("blocked", {})
    await asyncio.wait_for(started.wait(), 5)
    assert (await ot.cancel(job.id)).status is JobStatus.RUNNING
    done = await ot.wait(job.id, 5)
    assert done.status is JobStatus.CANCELED


async def test_cancel_tells_a_running_sync_job(ot: Outlast):
    job, _ = await ot.submit("sync_polite", {})
    with ot.store.hub.listen(job.id) as listener:
        while (await ot.get(job.id)).status is not JobStatus.RUNNING:
            await listener.wait(5)
            listener.drain()
    await ot.cancel(job.id)
    done = await ot.wait(job.id, 5)
    assert done.status is JobStatus.CANCELED


async def test_timeout_fails_the_attempt(ot: Outlast):
    job = await run(ot, "slow")
    assert job.status is JobStatus.FAILED
    assert job.error is not None and (job.error.type, job.error.status) == ("timeout", 500)


async def test_retryable_errors_run_again_until_they_succeed(ot: Outlast):
    job = await run(ot, "flaky")
    assert (job.status, job.result, job.attempt) == (JobStatus.SUCCEEDED, 3, 3)


async def test_retry_on_spends_the_attempts_then_fails(ot: Outlast):
    job = await run(ot, "always_down")
    assert (job.status, job.attempt) == (JobStatus.FAILED, 2)
    assert job.error is not None and job.error.type == "ConnectionError"


async def test_job_errors_keep_their_type_and_status(ot: Outlast):
    job = await run(ot, "teapot")
    assert job.error is not None
    assert (job.error.type, job.error.status, job.error.message) == ("teapot", 418, "short and stout")
    crashed = await run(ot, "crash")
    assert crashed.error is not None and (crashed.error.type, crashed.error.status) == ("KeyError", 500)


async def test_a_result_that_is_not_json_fails_clearly(ot: Outlast):
    job = await run(ot, "unserializable")
    assert job.error is not None and job.error.type == "result_not_serializable"


async def test_no_more_than_workers_jobs_run_at_once(ot: Outlast):
    started, release = ot.test_events  # type: ignore[attr-defined]
    jobs = [(await ot.submit("blocked", {}))[0] for _ in range(4)]
    await asyncio.wait_for(started.wait(), 5)
    statuses = [(await ot.get(j.id)).status for j in jobs]
    assert statuses.count(JobStatus.RUNNING) == 2
    assert statuses.count(JobStatus.QUEUED) == 2
    release.set()
    for job in jobs:
        assert (await ot.wait(job.id, 5)).status is JobStatus.SUCCEEDED


async def test_waiters_are_woken_when_the_job_ends(ot: Outlast):
    started, release = ot.test_events  # type: ignore[attr-defined]
    job, _ = await ot.submit("blocked", {})
    await asyncio.wait_for(started.wait(), 5)
    waiter = asyncio.create_task(ot.wait(job.id, 10))
    while ot.store.hub.listener_count == 0:
        await asyncio.sleep(0)  # let the waiter subscribe
    ended_at = time.monotonic()
    release.set()
    done = await waiter
    assert done.status is JobStatus.SUCCEEDED
    assert time.monotonic() - ended_at < 0.5  # woken, not polling on a long interval


def test_the_old_spelling_of_canceled_still_works_and_warns():
    import outlast
    from outlast import Canceled

    with pytest.warns(DeprecationWarning, match="outlast.Canceled"):
        assert outlast.Cancelled is Canceled
