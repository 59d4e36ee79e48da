"""`follow()`: stored events, then live ones, with none lost or repeated; positions while queued."""

from __future__ import annotations

import asyncio

import pytest

from outlast import Outlast
from outlast.jobs import Event, Outcome
from outlast.web.streams import follow

pytestmark = pytest.mark.timeout(20)


async def collect(ot: Outlast, job_id: str, after: int = 0, until_seq: int | None = None) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(5):
        async for event in follow(ot, job_id, after, heartbeat_s=0.05):
            if event is not None:
                events.append(event)
                if until_seq is not None and event.seq == until_seq:
                    break
    return events


async def test_replay_then_live_then_end(ot: Outlast):
    job, _ = await ot.submit("work")
    claimed = await ot.store.claim("w", ["work"], 30)
    assert claimed is not None

    async def finish_later() -> None:
        await ot.store.record(job.id, claimed.token, [("log", {"level": "info", "message": "hi"})], None)
        await ot.store.finish(job.id, claimed.token, Outcome.succeeded(7))

    reader = asyncio.create_task(collect(ot, job.id))
    while not ot.store.hub.is_listened(job.id):
        await asyncio.sleep(0)
    await finish_later()
    events = [e for e in await reader if e.seq is not None]
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[-1].data["status"] == "succeeded"


async def test_resume_after_a_cursor(ot: Outlast):
    job, _ = await ot.submit("work")
    claimed = await ot.store.claim("w", ["work"], 30)
    assert claimed is not None
    await ot.store.finish(job.id, claimed.token, Outcome.succeeded(1))
    assert [e.seq for e in await collect(ot, job.id, after=1)] == [2, 3]


async def test_a_flood_that_overflows_the_live_buffer_is_read_back_in_order(ot: Outlast):
    job, _ = await ot.submit("work")
    claimed = await ot.store.claim("w", ["work"], 30)
    assert claimed is not None
    lines = [("log", {"level": "info", "message": str(i)}) for i in range(1000)]

    async def flood() -> None:
        await ot.store.record(job.id, claimed.token, lines, None)  # 1,000 events at once
        await ot.store.finish(job.id, claimed.token, Outcome.succeeded(None))

    reader = asyncio.create_task(collect(ot, job.id, after=2))
    while not ot.store.hub.is_listened(job.id):
        await asyncio.sleep(0)
    await flood()
    events = await reader
    assert [e.seq for e in events] == list(range(3, 1004))


async def test_positions_count_down_while_queued(ot: Outlast):
    jobs = [(await ot.submit("work"))[0] for _ in range(3)]
    seen: asyncio.Queue[object] = asyncio.Queue()

    async def watch() -> None:
        async for event in follow(ot, jobs[2].id, 1, heartbeat_s=0.05):
            if event is not None:
                seen.put_nowait(event.data["queue_position"] if event.type == "position" else event.data["status"])
                if event.type == "status":
                    return

    watcher = asyncio.create_task(watch())
    async with asyncio.timeout(5):
        assert await seen.get() == 2
        for expected in (1, 0, "running"):
            await ot.store.claim("w", ["work"], 30)
            assert await seen.get() == expected
        await watcher
