"""`sqlite:///path.db`: the embedded default, one file, safe for several processes on one host.

Each write runs whole inside a `BEGIN IMMEDIATE` transaction on a thread of its
own, so it is atomic against other coroutines and other processes alike; writes
waiting together share one transaction and its COMMIT (group commit). Readers use
a second connection and never wait for writers (WAL). Events written by other
processes on the same file reach this process's hub by a cheap poll of the events
table; events written here are published at once. A file written by an older
release is upgraded when opened (`outlast.stores._sqlite_schema`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from outlast.deliveries import Delivery
from outlast.exceptions import IdempotencyConflict, JobNotFinished
from outlast.hub import Hub
from outlast.jobs import Event, Job, JobStatus, Outcome, lose_worker
from outlast.stores._sqlite_db import Connection, dumps, path_from_url
from outlast.stores._sqlite_schema import (
    INSERT_JOB,
    UPDATE_JOB,
    UPDATE_RECORD,
    VERSION,
    job_from_row,
    job_row,
    new_job_row,
    upgrade,
    version,
)
from outlast.stores.base import (
    HeartbeatResult,
    ListQuery,
    Page,
    decode_cursor,
    holds_lease,
    next_event,
    page_of,
    publish,
    unavailable_when,
)

logger = logging.getLogger("outlast.store")

POLL_INTERVAL_S = 0.05
POLL_BATCH = 1000


def _last_event(conn: sqlite3.Connection) -> int:
    """Where the poller starts: events written before this store opened are no news to its listeners."""
    return int(conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM events").fetchone()[0])


def _locked(exc: BaseException) -> bool:
    """SQLite locked by another writer beyond the busy timeout: the store is away for now."""
    return isinstance(exc, sqlite3.OperationalError) and any(word in str(exc) for word in ("locked", "busy"))


unavailable_when(_locked)


class SQLiteStore:
    def __init__(self, path: str, *, poll_interval_s: float = POLL_INTERVAL_S) -> None:
        self.hub = Hub()
        self.path = path
        self.poll_interval_s = poll_interval_s
        self._origin = secrets.token_hex(8)
        self._writer = Connection(path, "w")
        self._reader = Connection(path, "r")
        self._poller: asyncio.Task[None] | None = None
        self._seen_rowid = 0
        # Jobs queued (here or by another process) since the last claim that found none:
        # while there may be work, a claim goes straight to the write.
        self._queued_count = 0
        self._queued_count_when_empty = 0

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        return cls(path_from_url(url))

    async def open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            await self._upgrade()
            self._seen_rowid = await self._writer.run(_last_event)
        except BaseException:
            await self.close()  # no thread or connection is left behind
            raise
        self._poller = asyncio.create_task(self._poll_events(), name="outlast-sqlite-poller")

    async def _upgrade(self) -> None:
        """Create the schema, or upgrade an older file's; refuse a newer one (`ConfigError`).

        A file already up to date costs one read, without the write lock.
        """
        if await self._writer.run(functools.partial(version, path=self.path)) != VERSION:
            await self._writer.write(functools.partial(upgrade, path=self.path))

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await self._writer.close()
        await self._reader.close()

    # -- helpers that run inside a transaction (on the writer's thread) --------

    def _append(self, conn: sqlite3.Connection, job: Job, type: str, data: dict[str, Any]) -> Event:
        event, deliveries = next_event(job, type, data)
        conn.execute(
            "INSERT INTO events (job_id, seq, type, data, origin) VALUES (?, ?, ?, ?, ?)",
            (job.id, event.seq, type, dumps(data), self._origin),
        )
        for delivery in deliveries:
            self._put_delivery(conn, delivery, insert=True)
        return event

    @staticmethod
    def _put_delivery(conn: sqlite3.Connection, delivery: Delivery, *, insert: bool = False) -> None:
        values = (dumps(delivery.to_record()), delivery.state, delivery.next_at, delivery.id)
        if insert:
            conn.execute(
                "INSERT INTO deliveries (record, state, next_at, id, job_id) VALUES (?, ?, ?, ?, ?)",
                (*values, delivery.job_id),
            )
        else:
            conn.execute("UPDATE deliveries SET record = ?, state = ?, next_at = ? WHERE id = ?", values)

    def _status_event(self, conn: sqlite3.Connection, job: Job, *, ahead: int | None = None) -> Event:
        job.queue_position = self._position(conn, job) if ahead is None else ahead
        event = self._append(conn, job, *job.status_event())
        event.job = dataclasses.replace(job)
        return event

    @staticmethod
    def _save(conn: sqlite3.Connection, job: Job) -> None:
        conn.execute(UPDATE_JOB, job_row(job))

    def _transition(self, conn: sqlite3.Connection, job: Job) -> Event:
        """Persist a job just moved to a new status, with its status event."""
        event = self._status_event(conn, job)
        self._save(conn, job)
        return event

    @staticmethod
    def _load(conn: sqlite3.Connection, job_id: str) -> Job | None:
        row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else job_from_row(row)

    @staticmethod
    def _position(conn: sqlite3.Connection, job: Job) -> int | None:
        if job.status is not JobStatus.QUEUED:
            return None
        row = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND name = ?"
            " AND qorder < (SELECT qorder FROM jobs WHERE id = ?)",
            (job.name, job.id),
        ).fetchone()
        return int(row[0])

    async def _any(self, sql: str, *params: Any) -> bool:
        """Whether `sql` (ending with a `?` for now) finds a row, on the reader."""

        def read(conn: sqlite3.Connection) -> bool:
            return conn.execute(sql, (*params, time.time())).fetchone() is not None

        return await self._reader.run(read)

    def _publish(self, events: Sequence[Event]) -> None:
        publish(self.hub, events)
        latest = {event.job_id: event.data for event in events if event.type == "status"}
        if any(data.get("status") == "queued" for data in latest.values()):
            self._queued_count += 1

    def _existing(self, conn: sqlite3.Connection, job: Job) -> Job | None:
        """The job already stored under `job`'s idempotency key, if any (`IdempotencyConflict` if its input differs)."""
        if job.idempotency_key is None:
            return None
        row = conn.execute(
            "SELECT * FROM jobs WHERE owner = ? AND idempotency_key = ?", (job.owner or "", job.idempotency_key)
        ).fetchone()
        if row is None:
            return None
        existing = job_from_row(row)
        if existing.input_hash != job.input_hash:
            raise IdempotencyConflict()
        existing.queue_position = self._position(conn, existing)
        return existing

    def _insert(self, conn: sqlite3.Connection, job: Job, start: tuple[str, float] | None) -> tuple[Job, list[Event]]:
        """Store a new job with its queued event; with `start` (worker, lease), claimed at once too."""
        created = dataclasses.replace(job)
        # Every job of its name queued now is ahead of it: the row it gets comes last.
        ahead = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND name = ?", (job.name,)).fetchone()
        events = [self._status_event(conn, created, ahead=int(ahead[0]))]
        if start is not None:
            worker, lease_s = start
            created.start(worker, lease_s, time.time())
            events.append(self._status_event(conn, created))
        conn.execute(INSERT_JOB, new_job_row(created))  # one row, written as it ends up
        return created, events

    # -- the protocol -----------------------------------------------------------

    async def create(self, job: Job) -> tuple[Job, bool]:
        def create(conn: sqlite3.Connection) -> tuple[Job, list[Event]]:
            existing = self._existing(conn, job)
            return (existing, []) if existing is not None else self._insert(conn, job, None)

        stored, events = await self._writer.write(create)
        self._publish(events)
        return stored, bool(events)

    async def create_started(self, job: Job, worker: str, names: Collection[str], lease_s: float) -> tuple[Job, bool]:
        marks = ", ".join("?" for _ in names)
        waiting = f"SELECT 1 FROM jobs WHERE status = 'queued' AND name IN ({marks}) AND run_after <= ? LIMIT 1"

        def create(conn: sqlite3.Connection) -> tuple[Job, list[Event]]:
            existing = self._existing(conn, job)
            if existing is not None:
                return existing, []
            jumps_the_queue = conn.execute(waiting, [*names, time.time()]).fetchone() is not None
            return self._insert(conn, job, None if jumps_the_queue else (worker, lease_s))

        stored, events = await self._writer.write(create)
        self._publish(events)
        return stored, bool(events)

    async def put(self, job: Job, events: Sequence[Event]) -> None:
        rows = [(event.job_id, event.seq, event.type, dumps(event.data), self._origin) for event in events]
        row = new_job_row(job)

        def put(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT INTO events (job_id, seq, type, data, origin) VALUES (?, ?, ?, ?, ?)", rows)
            conn.execute(INSERT_JOB, row)

        await self._writer.write(put)  # shares the commit of whatever else is being written
        self._publish(events)

    async def get(self, job_id: str) -> Job | None:
        def get(conn: sqlite3.Connection) -> Job | None:
            job = self._load(conn, job_id)
            if job is not None:
                job.queue_position = self._position(conn, job)
            return job

        return await self._reader.run(get)

    async def list_jobs(self, query: ListQuery) -> Page:
        clauses, params = [], []
        if query.cursor is not None:
            created_at, job_id = decode_cursor(query.cursor)
            clauses.append("(created_at < ? OR (created_at = ? AND id < ?))")
            params += [created_at, created_at, job_id]
        if query.status is not None:
            clauses.append("status = ?")
            params.append(query.status.value)
        if query.name is not None:
            clauses.append("name = ?")
            params.append(query.name)
        if query.owner is not None:
            clauses.append("owner = ?")
            params.append(query.owner)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM jobs {where} ORDER BY created_at DESC, id DESC LIMIT ?"
        params.append(query.limit + 1)

        def list_jobs(conn: sqlite3.Connection) -> list[Job]:
            jobs = [job_from_row(row) for row in conn.execute(sql, params)]
            for job in jobs:
                job.queue_position = self._position(conn, job)
            return jobs

        return page_of(await self._reader.run(list_jobs), query.limit)

    async def delete(self, job_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            job = self._load(conn, job_id)
            if job is None:
                return False
            if not job.is_terminal:
                raise JobNotFinished()
            self._forget(conn, [job_id])
            return True

        return await self._writer.write(delete)

    @staticmethod
    def _forget(conn: sqlite3.Connection, job_ids: Sequence[str]) -> None:
        conn.executemany("DELETE FROM events WHERE job_id = ?", [(i,) for i in job_ids])
        conn.executemany("DELETE FROM deliveries WHERE job_id = ?", [(i,) for i in job_ids])
        conn.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in job_ids])

    async def queue_length(self, name: str) -> int:
        def count(conn: sqlite3.Connection) -> int:
            return int(
                conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND name = ?", (name,)).fetchone()[0]
            )

        return await self._reader.run(count)

    async def queue_positions(self, name: str, job_ids: Collection[str]) -> dict[str, int]:
        ids = list(job_ids)
        if not ids:
            return {}
        marks = ", ".join("?" for _ in ids)
        sql = (
            "SELECT id, position FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY qorder) - 1 AS position"
            f" FROM jobs WHERE status = 'queued' AND name = ?) WHERE id IN ({marks})"
        )

        def read(conn: sqlite3.Connection) -> dict[str, int]:
            return {row[0]: int(row[1]) for row in conn.execute(sql, [name, *ids])}

        return await self._reader.run(read)

    async def claim(self, worker: str, names: Collection[str], lease_s: float) -> Job | None:
        if not names:
            return None
        marks = ", ".join("?" for _ in names)
        sql = (
            f"SELECT * FROM jobs WHERE status = 'queued' AND name IN ({marks}) AND run_after <= ?"
            " ORDER BY qorder LIMIT 1"
        )

        def claim(conn: sqlite3.Connection) -> tuple[Job, Event] | None:
            now = time.time()
            row = conn.execute(sql, [*names, now]).fetchone()
            if row is None:
                return None
            job = job_from_row(row)
            job.start(worker, lease_s, now)
            return job, self._transition(conn, job)

        queued_count = self._queued_count
        if queued_count == self._queued_count_when_empty:
            exists = f"SELECT 1 FROM jobs WHERE status = 'queued' AND name IN ({marks}) AND run_after <= ? LIMIT 1"
            if not await self._any(exists, *names):
                return None  # a cheap read first: idle workers don't take the write lock
        claimed = await self._writer.write(claim)
        if claimed is None:
            self._queued_count_when_empty = queued_count
            return None
        self._publish([claimed[1]])
        return claimed[0]

    async def heartbeat(self, leases: Mapping[str, int], lease_s: float) -> HeartbeatResult:
        if not leases:
            return HeartbeatResult()

        def heartbeat(conn: sqlite3.Connection) -> HeartbeatResult:
            until = time.time() + lease_s
            cancel, lost = set(), set()
            for job_id, token in leases.items():
                row = conn.execute(
                    "UPDATE jobs SET lease_until = ? WHERE id = ? AND status = 'running' AND token = ?"
                    " RETURNING cancel_requested",
                    (until, job_id, token),
                ).fetchone()
                if row is None:
                    lost.add(job_id)
                elif row[0]:
                    cancel.add(job_id)
            return HeartbeatResult(frozenset(cancel), frozenset(lost))

        return await self._writer.write(heartbeat)

    async def cancel_requests(self, job_ids: Collection[str]) -> frozenset[str]:
        if not job_ids:
            return frozenset()
        ids = list(job_ids)
        marks = ", ".join("?" for _ in ids)

        def read(conn: sqlite3.Connection) -> frozenset[str]:
            rows = conn.execute(f"SELECT id FROM jobs WHERE cancel_requested = 1 AND id IN ({marks})", ids)
            return frozenset(row[0] for row in rows)

        return await self._reader.run(read)

    def _held(self, conn: sqlite3.Connection, job_id: str, token: int) -> Job | None:
        job = self._load(conn, job_id)
        return job if holds_lease(job, token) else None

    async def record(
        self, job_id: str, token: int, events: Sequence[tuple[str, dict[str, Any]]], progress: dict[str, Any] | None
    ) -> bool:
        def record(conn: sqlite3.Connection) -> list[Event] | None:
            job = self._held(conn, job_id, token)
            if job is None:
                return None
            if progress is not None:
                job.progress = progress
            written = [self._append(conn, job, type, data) for type, data in events]
            conn.execute(UPDATE_RECORD, job_row(job))
            return written

        written = await self._writer.write(record)
        if written is None:
            return False
        self._publish(written)
        return True

    async def finish(self, job_id: str, token: int, outcome: Outcome) -> Job | None:
        def finish(conn: sqlite3.Connection) -> tuple[Job, Event] | None:
            job = self._held(conn, job_id, token)
            if job is None:
                return None
            outcome.apply(job, time.time())
            return job, self._transition(conn, job)

        finished = await self._writer.write(finish)
        if finished is None:
            return None
        self._publish([finished[1]])
        return finished[0]

    async def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        def read(conn: sqlite3.Connection) -> list[Event]:
            rows = conn.execute(
                "SELECT seq, type, data FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (job_id, after, limit),
            )
            return [Event(job_id, row[0], row[1], json.loads(row[2])) for row in rows]

        return await self._reader.run(read)

    async def request_cancel(self, job_id: str) -> Job | None:
        def cancel(conn: sqlite3.Connection) -> tuple[Job | None, Event | None]:
            job = self._load(conn, job_id)
            if job is None:
                return None, None
            if job.status is JobStatus.QUEUED:
                job.cancel(time.time())
                return job, self._transition(conn, job)
            if job.status is JobStatus.RUNNING and not job.cancel_requested:
                job.cancel_requested = True
                conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return job, None

        job, event = await self._writer.write(cancel)
        if event is not None:
            self._publish([event])
        elif job is not None and job.cancel_requested:
            self.hub.cancel_requested(job_id)
        return job

    async def reclaim_expired(self) -> list[Job]:
        def reclaim(conn: sqlite3.Connection) -> list[tuple[Job, Event]]:
            now = time.time()
            rows = conn.execute("SELECT * FROM jobs WHERE status = 'running' AND lease_until < ?", (now,)).fetchall()
            reclaimed = []
            for row in rows:
                job = job_from_row(row)
                lose_worker(job, now)
                reclaimed.append((job, self._transition(conn, job)))
            return reclaimed

        reclaimed = await self._writer.write(reclaim)
        self._publish([event for _, event in reclaimed])
        return [job for job, _ in reclaimed]

    async def purge_expired(self) -> list[str]:
        def purge(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT id FROM jobs WHERE expires_at <= ?", (time.time(),)).fetchall()
            ids = [row[0] for row in rows]
            self._forget(conn, ids)
            return ids

        return await self._writer.write(purge)

    # -- the webhook outbox -------------------------------------------------------------

    async def claim_deliveries(self, lease_s: float, limit: int) -> list[Delivery]:
        if not await self._any("SELECT 1 FROM deliveries WHERE state = 'pending' AND next_at <= ? LIMIT 1"):
            return []  # a cheap read first: idle processes don't take the write lock

        def claim(conn: sqlite3.Connection) -> list[Delivery]:
            now = time.time()
            rows = conn.execute(
                "SELECT record FROM deliveries WHERE state = 'pending' AND next_at <= ? ORDER BY next_at LIMIT ?",
                (now, limit),
            ).fetchall()
            claimed = [Delivery.from_record(json.loads(row[0])) for row in rows]
            for delivery in claimed:
                delivery.next_at = now + lease_s
                self._put_delivery(conn, delivery)
            return claimed

        return await self._writer.write(claim)

    async def save_delivery(self, delivery: Delivery) -> None:
        def save(conn: sqlite3.Connection) -> None:
            self._put_delivery(conn, delivery)

        await self._writer.write(save)

    async def deliveries(self, job_id: str) -> list[Delivery]:
        def read(conn: sqlite3.Connection) -> list[Delivery]:
            rows = conn.execute("SELECT record FROM deliveries WHERE job_id = ? ORDER BY rowid", (job_id,))
            return [Delivery.from_record(json.loads(row[0])) for row in rows]

        return await self._reader.run(read)

    async def setting(self, name: str, value: str) -> str:
        def put(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT OR IGNORE INTO settings (name, value) VALUES (?, ?)", (name, value))
            return str(conn.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()[0])

        return await self._writer.write(put)

    # -- events written by other processes ----------------------------------------

    async def _poll_events(self) -> None:
        def read(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            # Our own events were published when written: skip their data.
            return conn.execute(
                "SELECT rowid, job_id, seq, type, CASE WHEN origin = ? THEN NULL ELSE data END"
                " FROM events WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (self._origin, self._seen_rowid, POLL_BATCH),
            ).fetchall()

        while True:
            try:
                rows = await self._reader.run(read)
                for row in rows:
                    self._seen_rowid = row[0]
                    if row[4] is not None:
                        self._publish([Event(row[1], row[2], row[3], json.loads(row[4]))])
            except Exception:
                logger.exception("reading the events of other processes failed; retrying")
                rows = []
            if len(rows) < POLL_BATCH:
                await asyncio.sleep(self.poll_interval_s)
