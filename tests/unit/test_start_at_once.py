"""A sync submit on a process with a free worker runs at once, within the same limits as a claimed job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from outlast import JobStatus, Outlast
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
        async def blocked() -> None:
            await self.release.wait()


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
    assert await statuses(app.ot, job) == ["queued", "running", "succeeded"]


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


async def test_a_sync_submit_never_jumps_over_a_queued_job(app: App):
    older = Job.new("note", {"label": "older"}, max_attempts=1, retention_s=60)
    await app.ot.store.create(older)  # queued; the workers have not looked yet
    job, _ = await app.ot.submit("note", {"label": "newer"}, wait_s=5)
    assert job.status is JobStatus.SUCCEEDED
    assert app.ran == ["older", "newer"]


async def test_a_job_started_at_once_can_be_canceled(app: App):
    submit = asyncio.create_task(app.ot.submit("blocked", {}, wait_s=10))
    await asyncio.sleep(0.05)
    [job] = (await app.ot.list_jobs(status=JobStatus.RUNNING)).jobs
    await app.ot.cancel(job.id)
    held, _ = await submit
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
