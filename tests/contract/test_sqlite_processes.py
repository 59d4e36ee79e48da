"""SQLite specifics: several stores (as several processes) on one file."""

from __future__ import annotations

import asyncio
import sqlite3

from outlast.jobs import Event, Job, Outcome
from outlast.stores import SQLiteStore


def new_job() -> Job:
    return Job.new("report", {}, max_attempts=3, retention_s=60)


async def test_claims_from_two_connections_never_share_a_job(sqlite_pair: tuple[SQLiteStore, SQLiteStore]):
    first, second = sqlite_pair
    for _ in range(30):
        await first.create(new_job())
    claims = await asyncio.gather(
        *(store.claim(f"w{i}", ["report"], 30) for i in range(40) for store in (first, second))
    )
    ids = [job.id for job in claims if job is not None]
    assert len(ids) == 30
    assert len(set(ids)) == 30


async def test_events_written_by_another_process_reach_listeners(sqlite_pair: tuple[SQLiteStore, SQLiteStore]):
    writer, reader = sqlite_pair
    job, _ = await writer.create(new_job())
    with reader.hub.listen(job.id) as listener:
        claimed = await writer.claim("w", ["report"], 30)
        assert claimed is not None
        await writer.finish(job.id, claimed.token, Outcome.succeeded({"n": 1}))
        received: list[Event] = []
        while not received or received[-1].seq != 3:
            assert await listener.wait(5), "the poller never delivered the events"
            # The poller may still deliver the creation event it had not seen:
            # readers keep a cursor and skip what they already have.
            received += [e for e in listener.drain() if e.seq is not None and e.seq > 1]
    assert [e.seq for e in received] == [2, 3]
    assert received[-1].data["status"] == "succeeded"


async def test_the_file_is_in_wal_mode(sqlite_pair: tuple[SQLiteStore, SQLiteStore]):
    first, _ = sqlite_pair
    with sqlite3.connect(first.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
