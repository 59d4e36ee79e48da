"""A sync submit on a process with a free worker runs at once, within the same limits as a claimed job.

Without an idempotency key or a webhook it is not even written until it must
be: once, ended, if it ends within the wait; running and leased if the wait is
over first (`runner.Provisional`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from outlast import JobContext, JobStatus, Outlast, RetryableError
from outlast.jobs import Event, Job, Outcome

pytestmark = pytest.mark.timeout(30)


class App:
    def __init__(self) -> None:
        self.ot = Outlast(store="memory://", workers=2, lease=5)
        self.ran: list[str] = []
        self.release = asyncio.Event()

        @self.ot.job()
        async def note(label: str) -> str:
            self.ran.append(label)
            return label

        @self.ot.job()
        async def blocked(ctx: JobContext) -> str:
            ctx.progress(1, 2, "halfway")
            await self.release.wait()
            return "released"

        @self.ot.job(max_attempts=3, backoff=0.01)
        async def flaky(ctx: JobContext) -> int:
            if ctx.attempt == 1:
                raise RetryableError("not yet")
            return ctx.attempt


@pytest.fixture
async def app() -> AsyncIterator[App]:
    app = App()
    async with app.ot.lifespan():
        yield app


async def statuses(ot: Outlast, job: Job) -> list[str]:
    return [e.data["status"] for e in await ot.store.events(job.id) if e.type == "status"]


async def test_a_sync_submit_runs_at_once_and_answers_with_the_result(app: App):
    job, created = await app.ot.submit("note", {"label": "a"}, wait_s=5)
    assert created and job.status is JobStatus.SUCCEEDED and job.result == "a"
    assert await statuses(app.ot, job) == ["running", "succeeded"]  # it was never queued


class Writes:
    """Counts the store's writes of one app."""

    def __init__(self, ot: Outlast, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        for name in ("create", "create_started", "put", "record", "finish"):
            original = getattr(ot.store, name)
            monkeypatch.setattr(ot.store, name, self._counting(name, original))

    def _counting(self, name: str, original: Any) -> Any:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return await original(*args, **kwargs)

        return counted


async def test_a_job_that_ends_within_its_wait_is_written_once(app: App, monkeypatch: pytest.MonkeyPatch):
    writes = Writes(app.ot, monkeypatch)
    job, _ = await app.ot.submit("note", {"label": "once"}, wait_s=5)
    assert writes.calls == ["put"]
    stored = await app.ot.get(job.id)  # readable at once, as answered
    assert stored.status is JobStatus.SUCCEEDED and stored.result == "once"
    assert stored.worker is None and stored.lease_until is None


async def test_a_job_that_outlives_its_wait_is_stored_running_and_leased_before_the_answer(app: App):
    await asyncio.sleep(0)
    job, _ = await app.ot.submit("blocked", {}, wait_s=1.5)
    assert job.status is JobStatus.RUNNING
    assert job.progress == {"current": 1, "total": 2, "message": "halfway"}  # as it is when answered
    stored = await app.ot.get(job.id)
    assert stored.status is JobStatus.RUNNING and stored.worker is not None
    assert stored.lease_until is not None
    assert stored.lease_until > time.time() + 4.5  # a full lease (5 s) from when it was written, not from its start
    assert [e.type for e in await app.ot.store.events(job.id)] == ["status", "progress"]
    app.release.set()
    done = await app.ot.wait(job.id, 5)  # from here on, a job like any claimed one
    assert done.status is JobStatus.SUCCEEDED and done.result == "released"


async def test_a_retry_stores_the_job_and_queues_it_again(app: App):
    job, _ = await app.ot.submit("flaky", {}, wait_s=5)
    assert job.status is JobStatus.SUCCEEDED and job.result == 2
    assert await statuses(app.ot, job) == ["running", "queued", "running", "succeeded"]


async def test_an_idempotency_key_takes_the_durable_path(app: App, monkeypatch: pytest.MonkeyPatch):
    writes = Writes(app.ot, monkeypatch)
    job, _ = await app.ot.submit("note", {"label": "keyed"}, wait_s=5, idempotency_key="k1")
    assert job.status is JobStatus.SUCCEEDED
    assert writes.calls[0] == "create_started" and "put" not in writes.calls
    again, created = await app.ot.submit("note", {"label": "keyed"}, wait_s=5, idempotency_key="k1")
    assert not created and again.id == job.id


async def test_the_worker_limit_holds_for_jobs_started_at_once(app: App):
    holders = [asyncio.create_task(app.ot.submit("blocked", {}, wait_s=10)) for _ in range(2)]
    await asyncio.sleep(0.05)
    job, _ = await app.ot.submit("note", {"label": "third"}, wait_s=0.1)
    assert job.status is JobStatus.QUEUED  # both workers are busy: it waits its turn
    assert app.ran == []
    app.release.set()
    for holder in holders:
        held, _ = await holder
        assert held.status is JobStatus.SUCCEEDED
    done = await app.ot.wait(job.id, 5)
    assert done.status is JobStatus.SUCCEEDED and app.ran == ["third"]


async def test_a_queued_job_still_runs_beside_a_sync_job_run_at_once(app: App):
    older = Job.new("note", {"label": "older"}, max_attempts=1, retention_s=60)
    await app.ot.store.create(older)  # queued; the workers have not looked yet
    job, _ = await app.ot.submit("note", {"label": "newer"}, wait_s=5)
    assert job.status is JobStatus.SUCCEEDED
    assert (await app.ot.wait(older.id, 5)).status is JobStatus.SUCCEEDED
    assert sorted(app.ran) == ["newer", "older"]


async def test_a_job_started_at_once_can_be_canceled_once_its_id_is_out(app: App):
    job, _ = await app.ot.submit("blocked", {}, wait_s=0.1)  # the answer that names it: stored by then
    await app.ot.cancel(job.id)
    held = await app.ot.wait(job.id, 5)
    assert held.status is JobStatus.CANCELED


async def test_a_waiter_takes_the_newest_status_whatever_order_the_events_arrive_in() -> None:
    """On Redis, another node's events (relayed, no job attached) can reach this process before
    its own event of the job's creation (published once its write returns): the late `queued`
    event must not win over the `succeeded` one heard before it."""
    ot = Outlast(store="memory://", workers=0)

    @ot.job()
    async def note(label: str) -> str:
        return label

    async with ot.lifespan():
        queued, _ = await ot.store.create(Job.new("note", {"label": "x"}, max_attempts=1, retention_s=60))
        claimed = await ot.store.claim("elsewhere", ["note"], 30)
        assert claimed is not None
        await ot.store.finish(claimed.id, claimed.token, Outcome.succeeded("x"))
        [_, _, ended] = await ot.store.events(queued.id)
        with ot.store.hub.listen(queued.id) as listener:
            ot.store.hub.publish(Event(queued.id, ended.seq, "status", ended.data))  # relayed: no job
            ot.store.hub.publish(Event(queued.id, 1, "status", {"status": "queued"}, job=queued))  # late
            job = await ot._until_terminal(listener, queued, time.monotonic() + 5)
    assert job.status is JobStatus.SUCCEEDED and job.result == "x"
