"""Idle followers: what they read from the store at each heartbeat, and what that catches."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from outlast import Outlast
from outlast.jobs import Event, Outcome
from outlast.web.streams import follow, sse_bytes

pytestmark = pytest.mark.timeout(20)

HEARTBEAT_S = 0.05


async def until_listeners(ot: Outlast, count: int) -> None:
    while ot.store.hub.listener_count != count:
        await asyncio.sleep(0)


async def test_many_idle_followers_of_one_job_share_their_heartbeat_reads(ot: Outlast, monkeypatch: Any):
    job, _ = await ot.submit("work")
    pings = 0

    async def idle() -> None:
        nonlocal pings
        async for event in follow(ot, job.id, 0, heartbeat_s=HEARTBEAT_S):
            pings += event is None

    followers = [asyncio.create_task(idle()) for _ in range(100)]
    await until_listeners(ot, 100)
    reads = 0
    get = ot.store.get

    async def counted_get(job_id: str) -> Any:
        nonlocal reads
        reads += 1
        return await get(job_id)

    monkeypatch.setattr(ot.store, "get", counted_get)
    await asyncio.sleep(HEARTBEAT_S * 6)
    for follower in followers:
        follower.cancel()
    await asyncio.gather(*followers, return_exceptions=True)
    assert pings >= 100 * 3  # every follower pinged several times...
    assert 1 <= reads <= 2  # ...and they read the job once a second between them


async def test_an_event_the_hub_dropped_is_read_back_after_the_next_heartbeat(ot: Outlast, monkeypatch: Any):
    job, _ = await ot.submit("work")
    claimed = await ot.store.claim("w", ["work"], 30)
    assert claimed is not None

    async def reader() -> list[Event]:
        return [event async for event in follow(ot, job.id, 2, heartbeat_s=HEARTBEAT_S) if event is not None]

    task = asyncio.create_task(reader())
    await until_listeners(ot, 1)
    monkeypatch.setattr(ot.store.hub, "publish", lambda event: None)  # as if a relay from another node was lost
    await ot.store.finish(job.id, claimed.token, Outcome.succeeded(1))
    async with asyncio.timeout(5):
        received = await task  # ended: it found the terminal event in the store
    assert [(e.seq, e.data["status"]) for e in received] == [(3, "succeeded")]


def test_an_events_bytes_are_made_once_for_all_its_streams():
    event = Event("j1", 4, "status", {"id": "j1", "status": "succeeded"})
    first = sse_bytes(event, "/api")
    assert sse_bytes(event, "/api") is first
    assert first.startswith(b"id: 4\nevent: status\ndata: {") and first.endswith(b"\n\n")
    assert b'"events":"/api/jobs/j1/events"' in first
    assert sse_bytes(event, "") is not first  # another base, other links
    twin = Event("j1", 4, "status", {"id": "j1", "status": "succeeded"})
    assert sse_bytes(twin, "/api") == first
