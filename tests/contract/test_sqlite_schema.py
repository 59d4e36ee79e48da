"""SQLite specifics: a job's row, the schema's versions, and upgrading a file made by an older outlast."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from outlast.deliveries import Delivery
from outlast.exceptions import ConfigError
from outlast.jobs import ErrorInfo, Event, Job, JobStatus, Outcome
from outlast.stores import SQLiteStore
from outlast.stores._sqlite_schema import (
    COLUMNS,
    INSERT_JOB,
    UPDATE_JOB,
    VERSION,
    job_from_row,
    job_row,
    new_job_row,
    upgrade,
)
from outlast.stores.base import ListQuery

# Version 1, as outlast wrote it before schema versions (user_version 0): kept verbatim.
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    qorder INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    expires_at REAL,
    attempt INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    timeout_s REAL,
    retention_s REAL NOT NULL,
    progress TEXT,
    result TEXT,
    error TEXT,
    owner TEXT NOT NULL DEFAULT '',
    idempotency_key TEXT,
    input_hash TEXT NOT NULL,
    run_after REAL NOT NULL,
    lease_until REAL,
    token INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    last_seq INTEGER NOT NULL DEFAULT 0,
    webhook_url TEXT,
    webhook_events TEXT,
    webhook_progress_at REAL NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, name, qorder);
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (status, lease_until);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_newest ON jobs (created_at DESC, id DESC);
CREATE TABLE IF NOT EXISTS events (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    origin TEXT NOT NULL,
    UNIQUE (job_id, seq)
);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    record TEXT NOT NULL,
    state TEXT NOT NULL,
    next_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_at);
CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries (job_id);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def v1_values(job: Job) -> dict[str, Any]:
    """A job's row as version 1 wrote it."""
    return {
        "id": job.id,
        "name": job.name,
        "status": job.status.value,
        "input": dumps(job.input),
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "expires_at": job.expires_at,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "timeout_s": job.timeout_s,
        "retention_s": job.retention_s,
        "progress": None if job.progress is None else dumps(job.progress),
        "result": dumps(job.result) if job.status is JobStatus.SUCCEEDED else None,
        "error": None if job.error is None else dumps(job.error.to_dict()),
        "owner": job.owner or "",
        "idempotency_key": job.idempotency_key,
        "input_hash": job.input_hash,
        "run_after": job.run_after,
        "lease_until": job.lease_until,
        "token": job.token,
        "worker": job.worker,
        "cancel_requested": int(job.cancel_requested),
        "last_seq": job.last_seq,
        "webhook_url": job.webhook_url,
        "webhook_events": dumps(list(job.webhook_events)),
        "webhook_progress_at": job.webhook_progress_at,
    }


@dataclasses.dataclass
class Stored:
    """A job as a version-1 file holds it: its row, its events, its deliveries."""

    job: Job
    events: list[Event]
    deliveries: list[Delivery] = dataclasses.field(default_factory=list)


def lived(job: Job, *steps: Callable[[Job], object]) -> Stored:
    """`job` after `steps`, with the status event each step wrote (and the first)."""
    log = [job.status_event()]
    for step in steps:
        step(job)
        log.append(job.status_event())
    job.last_seq = len(log)
    return Stored(job, [Event(job.id, seq, type, data) for seq, (type, data) in enumerate(log, start=1)])


def write_v1(path: Path, stored: list[Stored], settings: dict[str, str]) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(V1_SCHEMA)
        for item in stored:
            values = v1_values(item.job)
            columns = ", ".join(values)
            conn.execute(f"INSERT INTO jobs ({columns}) VALUES ({', '.join(f':{c}' for c in values)})", values)
            conn.executemany(
                "INSERT INTO events (job_id, seq, type, data, origin) VALUES (?, ?, ?, ?, 'old')",
                [(e.job_id, e.seq, e.type, dumps(e.data)) for e in item.events],
            )
            conn.executemany(
                "INSERT INTO deliveries (record, state, next_at, id, job_id) VALUES (?, ?, ?, ?, ?)",
                [(dumps(d.to_record()), d.state, d.next_at, d.id, d.job_id) for d in item.deliveries],
            )
        conn.executemany("INSERT INTO settings (name, value) VALUES (?, ?)", settings.items())


def user_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def new_job(number: int, now: float, **options: Any) -> Job:
    options = {"max_attempts": 3, "retention_s": 3600.0, "now": now, **options}
    return Job.new("report", {"rows": number, "note": "é ✓"}, **options)


def old_jobs() -> list[Stored]:
    """One job of each kind a file holds, written over time as outlast would have."""
    now = time.time() - 100
    first = lived(new_job(1, now, owner="alice", idempotency_key="k1"))
    second = lived(new_job(2, now + 1, timeout_s=12.5))
    retried = lived(
        new_job(3, now + 2, webhook_url="https://example.com/h", webhook_events=("started", "progress", "completed")),
        lambda j: j.start("w1", 30, now + 3),
        lambda j: j.requeue(now + 4, ErrorInfo("flaky", "try again", 503)),
        lambda j: j.start("w2", 3600, time.time()),
    )
    retried.job.progress = {"done": 0.1 + 0.2}
    retried.job.last_seq += 1
    retried.job.webhook_progress_at = now + 5.25
    retried.events.append(Event(retried.job.id, retried.job.last_seq, "progress", {"done": 0.1 + 0.2}))
    retried.job.cancel_requested = True
    payload = retried.job.to_public()
    retried.deliveries = [
        Delivery(
            "msg_a", retried.job.id, "https://example.com/h", "started", payload, now + 6, 2, "pending", 500, "a 500"
        )
    ]
    succeeded = lived(
        new_job(4, now + 7),
        lambda j: j.start("w1", 30, now + 8),
        lambda j: j.succeed({"total": 3.141592653589793, "items": [1, None, "x"]}, now + 9),
    )
    failed = lived(
        new_job(5, now + 10, owner="bob"),
        lambda j: j.start("w1", 30, now + 11),
        lambda j: j.fail(ErrorInfo("boom", "it broke", 502), now + 12),
    )
    canceled = lived(new_job(6, now + 13), lambda j: j.cancel(now + 14))
    return [first, second, retried, succeeded, failed, canceled]


@pytest.fixture
def v1_file(tmp_path: Path) -> tuple[Path, list[Stored]]:
    path = tmp_path / "old.db"
    stored = old_jobs()
    write_v1(path, stored, {"webhook_secret": "s3cret"})
    return path, stored


@contextlib.asynccontextmanager
async def opened(path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(str(path))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def created_job() -> Job:
    return Job.new(
        "report",
        {"a": [1, 2.5, None]},
        max_attempts=5,
        retention_s=99.5,
        timeout_s=7.25,
        owner="carol",
        idempotency_key="key",
        now=1234.5,
        webhook_url="https://example.com/h",
        webhook_events=("started", "completed"),
    )


def every_field_set(job: Job) -> Job:
    """`job` changed until its every stored field differs from its default."""
    job.start("w", 30, 1240.0)
    job.requeue(1250.0, ErrorInfo("flaky", "again", 503))
    job.start("w2", 30, 1260.0)
    job.succeed({"ok": True}, 1270.0)
    # Not a state the lifecycle makes, but every field is set.
    job.progress, job.cancel_requested, job.last_seq, job.webhook_progress_at = {"p": 1}, True, 9, 1265.5
    job.lease_until, job.worker, job.error = 1290.0, "w2", ErrorInfo("flaky", "again", 503)
    return job


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        conn.row_factory = sqlite3.Row
        upgrade(conn, ":memory:")
        yield conn


def test_every_field_of_a_job_round_trips_through_its_row(conn: sqlite3.Connection):
    job = every_field_set(created_job())
    defaults = Job("j_x", "n", {})
    unset = [f.name for f in dataclasses.fields(Job) if getattr(job, f.name) == getattr(defaults, f.name)]
    assert unset == ["queue_position"], "set the new field above, so that this test covers it"
    conn.execute(INSERT_JOB, new_job_row(job))
    assert job_from_row(conn.execute("SELECT * FROM jobs").fetchone()) == job
    assert [row[1] for row in conn.execute("PRAGMA table_info(jobs)")] == ["qorder", *COLUMNS, "input", "record"]


def test_an_update_writes_every_field_a_change_can_make(conn: sqlite3.Connection):
    job = created_job()
    conn.execute(INSERT_JOB, new_job_row(job))
    changed = every_field_set(dataclasses.replace(job))
    conn.execute(UPDATE_JOB, job_row(changed))
    assert job_from_row(conn.execute("SELECT * FROM jobs").fetchone()) == changed


async def test_a_new_file_gets_the_current_version(tmp_path: Path):
    async with opened(tmp_path / "new.db"):
        pass
    assert user_version(tmp_path / "new.db") == VERSION


async def test_a_version_1_file_is_upgraded_losing_nothing(v1_file: tuple[Path, list[Stored]]):
    path, stored = v1_file
    async with opened(path) as store:
        assert user_version(path) == VERSION
        positions = {stored[0].job.id: 0, stored[1].job.id: 1}
        for item in stored:
            expected = dataclasses.replace(item.job, queue_position=positions.get(item.job.id))
            assert await store.get(item.job.id) == expected
            assert await store.events(item.job.id) == item.events
            assert await store.deliveries(item.job.id) == item.deliveries
        assert await store.setting("webhook_secret", "other") == "s3cret"
        page = await store.list_jobs(ListQuery(limit=100))
        assert [job.id for job in page.jobs] == [item.job.id for item in reversed(stored)]


async def test_an_upgraded_file_keeps_working(v1_file: tuple[Path, list[Stored]]):
    path, stored = v1_file
    first, second, retried = (item.job for item in stored[:3])
    async with opened(path) as store:
        again, created = await store.create(new_job(1, time.time(), owner="alice", idempotency_key="k1"))
        assert (again.id, created) == (first.id, False)
        newer, _ = await store.create(new_job(7, time.time()))
        claimed = [await store.claim("w3", ["report"], 30) for _ in range(3)]
        assert [job.id for job in claimed if job is not None] == [first.id, second.id, newer.id]  # queue order kept
        beat = await store.heartbeat({retried.id: retried.token}, 30)
        assert (beat.lost, beat.cancel) == (frozenset(), frozenset({retried.id}))
        assert await store.finish(retried.id, retried.token - 1, Outcome.succeeded(1)) is None  # fencing
        done = await store.finish(retried.id, retried.token, Outcome.canceled())
        assert done is not None and done.status is JobStatus.CANCELED
        events = await store.events(retried.id)
        assert [e.seq for e in events] == list(range(1, retried.last_seq + 2))
        assert [d.event for d in await store.deliveries(retried.id)] == ["started", "completed"]


async def test_a_file_from_a_newer_outlast_is_refused(tmp_path: Path):
    path = tmp_path / "newer.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {VERSION + 1}")
    store = SQLiteStore(str(path))
    with pytest.raises(ConfigError, match="newer outlast"):
        await store.open()
    assert user_version(path) == VERSION + 1
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []  # nothing written


async def test_an_upgrade_that_fails_leaves_the_file_as_it_was(v1_file: tuple[Path, list[Stored]]):
    path, stored = v1_file
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE jobs SET progress = 'not json' WHERE id = ?", (stored[-1].job.id,))
    with pytest.raises(json.JSONDecodeError):
        await SQLiteStore(str(path)).open()
    assert user_version(path) == 0
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT id, progress FROM jobs ORDER BY qorder").fetchall()  # version 1's columns
    assert [row[0] for row in rows] == [item.job.id for item in stored]
    assert rows[-1][1] == "not json"


OPEN_AND_COUNT = """
import asyncio, sys
from outlast.stores import ListQuery, SQLiteStore

async def main():
    store = SQLiteStore(sys.argv[1])
    await store.open()
    page = await store.list_jobs(ListQuery(limit=500))
    await store.close()
    print(len(page.jobs))

asyncio.run(main())
"""


async def test_processes_opening_an_old_file_at_once_upgrade_it_once(tmp_path: Path):
    path = tmp_path / "busy.db"
    now = time.time()
    stored = [lived(new_job(i, now + i)) for i in range(300)]
    write_v1(path, stored, {})
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as lock:
        lock.execute("BEGIN IMMEDIATE")  # each process reads version 1, then waits here for the write lock
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", OPEN_AND_COUNT, str(path), stdout=asyncio.subprocess.PIPE
            )
            for _ in range(4)
        ]
        await asyncio.sleep(1.0)
        lock.execute("ROLLBACK")
    outputs = [await process.communicate() for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0, 0]
    assert [out.decode().strip() for out, _ in outputs] == ["300"] * 4
    assert user_version(path) == VERSION
    async with opened(path) as store:
        assert await store.get(stored[0].job.id) == dataclasses.replace(stored[0].job, queue_position=0)
