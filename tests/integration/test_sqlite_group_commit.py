"""Group commit on a real SQLite file: writes waiting together share one transaction,
each is kept or rolled back alone, and no caller hears back before COMMIT."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from outlast.jobs import Job, Outcome
from outlast.stores import SQLiteStore
from outlast.stores._sqlite_db import Connection


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[tuple[Connection, Path]]:
    path = tmp_path / "group.db"
    conn = Connection(str(path), "w")
    await conn.write(lambda c: c.execute("CREATE TABLE t (k TEXT PRIMARY KEY)"))
    yield conn, path
    await conn.close()


def committed(path: Path) -> set[str]:
    """What another connection sees: only what was committed."""
    with contextlib.closing(sqlite3.connect(path)) as other:
        return {row[0] for row in other.execute("SELECT k FROM t")}


def insert(key: str) -> Callable[[sqlite3.Connection], str]:
    def fn(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t (k) VALUES (?)", (key,))
        return key

    return fn


def insert_then_raise(key: str) -> Callable[[sqlite3.Connection], str]:
    def fn(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t (k) VALUES (?)", (key,))
        raise ValueError(f"{key} changed its mind")

    return fn


@contextmanager
def commits_counted(conn: Connection) -> Iterator[list[str]]:
    statements: list[str] = []
    conn._connection().set_trace_callback(statements.append)
    try:
        yield statements
    finally:
        conn._connection().set_trace_callback(None)


async def held(conn: Connection) -> tuple[threading.Event, asyncio.Future[None]]:
    """Keep the connection's thread busy until the event is set, so writes pile up."""
    release = threading.Event()

    def wait(c: sqlite3.Connection) -> None:
        release.wait(10)

    blocker = asyncio.ensure_future(conn.run(wait))
    await asyncio.sleep(0.01)
    return release, blocker


async def test_writes_waiting_together_share_one_commit(db: tuple[Connection, Path]) -> None:
    conn, path = db
    release, blocker = await held(conn)
    with commits_counted(conn) as statements:
        writes = [asyncio.ensure_future(conn.write(insert(f"k{i}"))) for i in range(50)]
        await asyncio.sleep(0.01)
        release.set()
        assert await asyncio.gather(*writes) == [f"k{i}" for i in range(50)]
        await blocker
    assert statements.count("COMMIT") == 1
    assert committed(path) == {f"k{i}" for i in range(50)}


async def test_a_write_that_raises_is_rolled_back_alone(db: tuple[Connection, Path]) -> None:
    conn, path = db
    release, blocker = await held(conn)
    with commits_counted(conn) as statements:
        writes = [
            asyncio.ensure_future(conn.write(insert("before"))),
            asyncio.ensure_future(conn.write(insert_then_raise("bad"))),
            asyncio.ensure_future(conn.write(insert("after"))),
            asyncio.ensure_future(conn.write(insert("before"))),  # a duplicate key: IntegrityError
        ]
        await asyncio.sleep(0.01)
        release.set()
        results = await asyncio.gather(*writes, return_exceptions=True)
        await blocker
    assert results[0] == "before" and results[2] == "after"
    assert isinstance(results[1], ValueError)
    assert isinstance(results[3], sqlite3.IntegrityError)
    assert statements.count("COMMIT") == 1
    assert committed(path) == {"before", "after"}


async def test_a_failed_commit_fails_every_caller_of_the_group(db: tuple[Connection, Path]) -> None:
    conn, path = db
    # A deferred foreign key is checked at COMMIT: one orphan makes the COMMIT fail.
    await conn.write(lambda c: c.execute("CREATE TABLE child (k TEXT REFERENCES t (k) DEFERRABLE INITIALLY DEFERRED)"))
    await conn.run(lambda c: c.execute("PRAGMA foreign_keys = ON"))

    def orphan(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO child (k) VALUES ('nobody')")

    release, blocker = await held(conn)
    writes = [
        asyncio.ensure_future(conn.write(insert("a"))),
        asyncio.ensure_future(conn.write(orphan)),
        asyncio.ensure_future(conn.write(insert("b"))),
    ]
    await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*writes, return_exceptions=True)
    await blocker
    assert all(isinstance(result, sqlite3.IntegrityError) for result in results)
    assert committed(path) == set()
    # The connection is usable again, outside any transaction.
    assert await conn.write(insert("c")) == "c"
    assert committed(path) == {"c"}


async def test_no_caller_hears_back_before_its_write_is_committed(db: tuple[Connection, Path]) -> None:
    conn, path = db
    seen_uncommitted: list[str] = []

    async def write_and_look(key: str) -> None:
        await conn.write(insert(key))
        if key not in committed(path):  # read at once, on another connection
            seen_uncommitted.append(key)

    await asyncio.gather(*(write_and_look(f"k{i}") for i in range(300)))
    assert seen_uncommitted == []
    assert len(committed(path)) == 300


async def test_a_cancelled_caller_that_was_still_waiting_writes_nothing(db: tuple[Connection, Path]) -> None:
    conn, path = db
    release, blocker = await held(conn)
    kept = asyncio.ensure_future(conn.write(insert("kept")))
    dropped = asyncio.ensure_future(conn.write(insert("dropped")))
    await asyncio.sleep(0.01)
    dropped.cancel()
    release.set()
    assert await kept == "kept"
    await blocker
    assert committed(path) == {"kept"}


async def test_concurrent_creates_claims_and_finishes_all_land(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "jobs.db"))
    await store.open()
    try:
        jobs = [Job.new("noop", {"i": i}, max_attempts=1, retention_s=60) for i in range(200)]
        created = await asyncio.gather(*(store.create(job) for job in jobs))
        assert all(new for _, new in created)

        claimed = await asyncio.gather(*(store.claim("w", ["noop"], 30) for _ in range(250)))
        taken = [job for job in claimed if job is not None]
        assert sorted(job.id for job in taken) == sorted(job.id for job in jobs)  # each once, none left

        finished = await asyncio.gather(*(store.finish(j.id, j.token, Outcome.succeeded(j.input)) for j in taken))
        assert all(job is not None and job.result == job.input for job in finished)
        for job in jobs:
            stored = await store.get(job.id)
            assert stored is not None and stored.status == "succeeded"
            assert [e.type for e in await store.events(job.id)] == ["status", "status", "status"]
    finally:
        await store.close()
