"""`postgresql://user@host:5432/db?schema=NAME`: the store for many API and worker nodes on one PostgreSQL.

Every change of a job is one transaction: lock the job's row (`FOR UPDATE`),
apply the lifecycle of `outlast.jobs` in Python, write the row, its numbered
events and their webhook deliveries. A claim takes the next due job of one of
its names with `FOR UPDATE SKIP LOCKED`, so claims never wait on each other
nor share a job; the names go first in turn, so one busy queue starves none.

Events reach other nodes by `LISTEN`/`NOTIFY` (`outlast.stores._postgres_relay`).
Connection errors (a database restart, a killed backend) are retried a few
times within a second or so, then raised as `StoreUnavailable`
(`outlast.stores._postgres_conn`, which also creates and upgrades the schema
that `outlast.stores._postgres_schema` describes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from outlast.deliveries import Delivery
from outlast.exceptions import ConfigError, IdempotencyConflict, JobNotFinished, StoreUnavailable
from outlast.hub import Hub
from outlast.jobs import Event, Job, JobStatus, Outcome, lose_worker
from outlast.stores._postgres_conn import POOL_SIZE, Conn, Database
from outlast.stores._postgres_relay import Relay
from outlast.stores._postgres_schema import (
    ANY_DUE,
    CLAIM,
    INSERT_DELIVERIES,
    INSERT_EVENTS,
    INSERT_JOB,
    POSITION,
    SELECT_JOB,
    UPDATE_DELIVERIES,
    UPDATE_JOB,
    UPDATE_RECORD,
    channel,
    dumps,
    job_args,
    job_from_row,
    new_job_args,
    record_args,
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
)

logger = logging.getLogger("outlast.store")

T = TypeVar("T")

BATCH = 500  # jobs a purge or a reclaim takes per transaction


def _job_for_event(event: Event, job: Job) -> Event:
    event.job = dataclasses.replace(job)
    return event


class _Change:
    """What one transaction writes besides the job's row: events and webhook deliveries."""

    __slots__ = ("deliveries", "events")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.deliveries: list[Delivery] = []


class PostgresStore:
    def __init__(self, dsn: str, *, schema: str | None = None, pool_size: int = POOL_SIZE) -> None:
        self.db = Database(dsn, schema=schema, pool_size=pool_size)
        self.hub = Hub()
        self.channel = ""
        self._origin = secrets.token_hex(8)
        self._relay: Relay | None = None
        self._rotation = 0

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """`postgresql://` or `postgres://`; `?schema=` and `?pool_size=` are the store's, the rest asyncpg's."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours = {name: value for name, value in query if name in ("schema", "pool_size")}
        rest = [(name, value) for name, value in query if name not in ours]
        dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(rest)))
        try:
            pool_size = int(ours.get("pool_size", POOL_SIZE))
        except ValueError:
            raise ConfigError(f"pool_size must be a whole number, not {ours['pool_size']!r}") from None
        if pool_size < 1:
            raise ConfigError("pool_size must be at least 1")
        return cls(dsn, schema=ours.get("schema") or None, pool_size=pool_size)

    # -- opening, migrating, closing ----------------------------------------------------

    async def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema (without opening the store); the versions before and after."""
        return await self.db.migrate()

    async def open(self) -> None:
        await self.db.migrate()
        schema = await self.db.open()
        self._relay = Relay(self.db, self.hub, self._origin, channel(schema))
        self.channel = self._relay.channel
        if not await self._relay.start():
            await self.close()
            raise ConfigError(f"cannot LISTEN on {self.db.where}")

    async def close(self) -> None:
        if self._relay is not None:
            await self._relay.stop()
            self._relay = None
        await self.db.close()

    # -- helpers that run inside a transaction -----------------------------------------

    @staticmethod
    def _append(job: Job, change: _Change, type: str, data: dict[str, Any]) -> Event:
        event, deliveries = next_event(job, type, data)
        change.events.append(event)
        change.deliveries += deliveries
        return event

    def _status(self, job: Job, change: _Change) -> None:
        _job_for_event(self._append(job, change, *job.status_event()), job)

    async def _write(self, conn: Conn, job_id: str, change: _Change) -> None:
        """The events and deliveries of a change, and a NOTIFY for each event."""
        if change.events:
            await conn.fetchval(
                INSERT_EVENTS,
                job_id,
                [event.seq for event in change.events],
                [event.type for event in change.events],
                [dumps(event.data) for event in change.events],
                self.channel,
                f"e {self._origin} {job_id} ",
            )
        if change.deliveries:
            ds = change.deliveries
            await conn.execute(
                INSERT_DELIVERIES,
                [d.id for d in ds],
                [d.job_id for d in ds],
                [dumps(d.to_record()) for d in ds],
                [d.state for d in ds],
                [d.next_at for d in ds],
            )

    async def _save(self, conn: Conn, job: Job, change: _Change) -> None:
        await conn.execute(UPDATE_JOB, *job_args(job))
        await self._write(conn, job.id, change)

    @staticmethod
    async def _locked(conn: Conn, job_id: str) -> Job | None:
        row = await conn.fetchrow("SELECT * FROM outlast_jobs WHERE id = $1 FOR UPDATE", job_id)
        return None if row is None else job_from_row(row)

    @staticmethod
    async def _position(conn: Conn, job: Job) -> int | None:
        if job.status is not JobStatus.QUEUED:
            return None
        found = await conn.fetchval(
            "SELECT count(*) FROM outlast_jobs WHERE status = 'queued' AND name = $1"
            " AND qorder < (SELECT qorder FROM outlast_jobs WHERE id = $2)",
            job.name,
            job.id,
        )
        return int(found)

    async def _existing(self, conn: Conn, job: Job) -> tuple[Job, bool] | None:
        """The job stored under `job`'s id (a retried create that had committed: True) or its key (False)."""
        row = await conn.fetchrow(SELECT_JOB, job.id)
        if row is not None:
            return job_from_row(row), True
        if job.idempotency_key is None:
            return None
        row = await conn.fetchrow(
            f"SELECT j.*, {POSITION} FROM outlast_jobs j WHERE j.owner = $1 AND j.idempotency_key = $2",
            job.owner or "",
            job.idempotency_key,
        )
        if row is None:
            return None
        existing = job_from_row(row)
        if existing.input_hash != job.input_hash:
            raise IdempotencyConflict()
        return existing, False

    async def _insert(
        self, conn: Conn, job: Job, start: tuple[str, float] | None
    ) -> tuple[Job, bool, list[Event]] | None:
        """Store a new job with its queued event (with `start`: claimed too); None if its id or key is taken."""
        created = dataclasses.replace(job)
        # Every job of its name queued now is ahead of it: the row it gets comes last.
        ahead = await conn.fetchval("SELECT count(*) FROM outlast_jobs WHERE status = 'queued' AND name = $1", job.name)
        created.queue_position = int(ahead)
        change = _Change()
        self._status(created, change)
        if start is not None:
            worker, lease_s = start
            created.start(worker, lease_s, time.time())
            self._status(created, change)
        if await conn.fetchval(INSERT_JOB, *new_job_args(created)) is None:
            return None
        await self._write(conn, created.id, change)
        return created, True, change.events

    async def _create(self, job: Job, start: Callable[[Conn], Awaitable[tuple[str, float] | None]] | None) -> Any:
        async def create(conn: Conn) -> tuple[Job, bool, list[Event]]:
            for _ in range(2):  # a second look: a job with that key committed between our read and our insert
                existing = await self._existing(conn, job)
                if existing is not None:
                    return existing[0], existing[1], []
                how = None if start is None else await start(conn)
                inserted = await self._insert(conn, job, how)
                if inserted is not None:
                    return inserted
            raise StoreUnavailable("the job's id or key was taken, then gone")

        stored, created, events = await self.db.tx(create)
        publish(self.hub, events)
        return stored, created

    # -- the protocol -----------------------------------------------------------------

    async def create(self, job: Job) -> tuple[Job, bool]:
        stored, created = await self._create(job, None)
        return stored, created

    async def create_started(self, job: Job, worker: str, names: Collection[str], lease_s: float) -> tuple[Job, bool]:
        async def start(conn: Conn) -> tuple[str, float] | None:
            jumps_the_queue = await conn.fetchval(ANY_DUE, list(names), time.time()) is not None
            return None if jumps_the_queue else (worker, lease_s)

        stored, created = await self._create(job, start)
        return stored, created

    async def put(self, job: Job, events: Sequence[Event]) -> None:
        change = _Change()
        change.events = list(events)

        async def put(conn: Conn) -> None:
            if await conn.fetchval(INSERT_JOB, *new_job_args(job)) is None:
                return  # a retry of a put whose commit got no answer, and had committed
            await self._write(conn, job.id, change)

        await self.db.tx(put, patient=True)  # a worker's outcome, as for `finish`
        publish(self.hub, events)

    async def get(self, job_id: str) -> Job | None:
        async def get(conn: Conn) -> Job | None:
            row = await conn.fetchrow(SELECT_JOB, job_id)
            return None if row is None else job_from_row(row)

        return await self.db.read(get)

    async def list_jobs(self, query: ListQuery) -> Page:
        clauses: list[str] = []
        params: list[Any] = []

        def param(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        if query.cursor is not None:
            created_at, job_id = decode_cursor(query.cursor)
            at = param(created_at)
            clauses.append(f"(j.created_at < {at} OR (j.created_at = {at} AND j.id < {param(job_id)}))")
        if query.status is not None:
            clauses.append(f"j.status = {param(query.status.value)}")
        if query.name is not None:
            clauses.append(f"j.name = {param(query.name)}")
        if query.owner is not None:
            clauses.append(f"j.owner = {param(query.owner)}")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        limit = param(query.limit + 1)
        sql = f"SELECT j.*, {POSITION} FROM outlast_jobs j {where} ORDER BY j.created_at DESC, j.id DESC LIMIT {limit}"

        async def read(conn: Conn) -> list[Job]:
            return [job_from_row(row) for row in await conn.fetch(sql, *params)]

        return page_of(await self.db.read(read), query.limit)

    async def delete(self, job_id: str) -> bool:
        async def delete(conn: Conn) -> bool:
            job = await self._locked(conn, job_id)
            if job is None:
                return False
            if not job.is_terminal:
                raise JobNotFinished()
            await self._forget(conn, [job_id])
            return True

        return await self.db.tx(delete)

    @staticmethod
    async def _forget(conn: Conn, job_ids: Sequence[str]) -> None:
        ids = list(job_ids)
        await conn.execute("DELETE FROM outlast_events WHERE job_id = ANY($1::text[])", ids)
        await conn.execute("DELETE FROM outlast_deliveries WHERE job_id = ANY($1::text[])", ids)
        await conn.execute("DELETE FROM outlast_jobs WHERE id = ANY($1::text[])", ids)

    async def queue_length(self, name: str) -> int:
        async def count(conn: Conn) -> int:
            return int(
                await conn.fetchval("SELECT count(*) FROM outlast_jobs WHERE status = 'queued' AND name = $1", name)
            )

        return await self.db.read(count)

    async def queue_positions(self, name: str, job_ids: Collection[str]) -> dict[str, int]:
        ids = list(job_ids)
        if not ids:
            return {}
        sql = (
            "SELECT id, position FROM (SELECT id, row_number() OVER (ORDER BY qorder) - 1 AS position"
            " FROM outlast_jobs WHERE status = 'queued' AND name = $1) AS q WHERE id = ANY($2::text[])"
        )

        async def read(conn: Conn) -> dict[str, int]:
            return {row["id"]: int(row["position"]) for row in await conn.fetch(sql, name, ids)}

        return await self.db.read(read)

    async def claim(self, worker: str, names: Collection[str], lease_s: float) -> Job | None:
        if not names:
            return None
        ordered = list(names)
        turn = self._rotation % len(ordered)
        self._rotation += 1
        ordered = ordered[turn:] + ordered[:turn]  # fair: each name goes first in turn

        async def any_due(conn: Conn) -> bool:
            return await conn.fetchval(ANY_DUE, ordered, time.time()) is not None

        if not await self.db.read(any_due):
            return None  # a cheap read first: idle workers open no transaction

        async def claim(conn: Conn) -> tuple[Job, list[Event]] | None:
            now = time.time()
            row = await conn.fetchrow(CLAIM, ordered, now)
            if row is None:
                return None
            job = job_from_row(row)
            job.start(worker, lease_s, now)
            change = _Change()
            self._status(job, change)
            await self._save(conn, job, change)
            return job, change.events

        claimed = await self.db.tx(claim)
        if claimed is None:
            return None
        publish(self.hub, claimed[1])
        return claimed[0]

    async def heartbeat(self, leases: Mapping[str, int], lease_s: float) -> HeartbeatResult:
        if not leases:
            return HeartbeatResult()
        ids = list(leases)

        async def heartbeat(conn: Conn) -> HeartbeatResult:
            rows = await conn.fetch(
                "UPDATE outlast_jobs AS j SET lease_until = $1"
                " FROM unnest($2::text[], $3::bigint[]) AS l(id, token)"
                " WHERE j.id = l.id AND j.status = 'running' AND j.token = l.token"
                " RETURNING j.id, j.cancel_requested",
                time.time() + lease_s,
                ids,
                [leases[job_id] for job_id in ids],
            )
            held = {row["id"] for row in rows}
            cancel = frozenset(row["id"] for row in rows if row["cancel_requested"])
            return HeartbeatResult(cancel, frozenset(set(ids) - held))

        return await self.db.read(heartbeat)  # one statement: atomic on its own

    async def cancel_requests(self, job_ids: Collection[str]) -> frozenset[str]:
        ids = list(job_ids)
        if not ids:
            return frozenset()

        async def read(conn: Conn) -> frozenset[str]:
            rows = await conn.fetch("SELECT id FROM outlast_jobs WHERE cancel_requested AND id = ANY($1::text[])", ids)
            return frozenset(row["id"] for row in rows)

        return await self.db.read(read)

    async def record(
        self, job_id: str, token: int, events: Sequence[tuple[str, dict[str, Any]]], progress: dict[str, Any] | None
    ) -> bool:
        async def record(conn: Conn) -> list[Event] | None:
            job = await self._locked(conn, job_id)
            if not holds_lease(job, token):
                return None
            if progress is not None:
                job.progress = progress
            change = _Change()
            for type, data in events:
                self._append(job, change, type, data)
            await conn.execute(UPDATE_RECORD, *record_args(job))
            await self._write(conn, job_id, change)
            return change.events

        written = await self.db.tx(record, patient=True)
        if written is None:
            return False
        publish(self.hub, written)
        return True

    async def finish(self, job_id: str, token: int, outcome: Outcome) -> Job | None:
        async def finish(conn: Conn) -> tuple[Job, list[Event]] | None:
            job = await self._locked(conn, job_id)
            if not holds_lease(job, token):
                return None
            outcome.apply(job, time.time())
            change = _Change()
            self._status(job, change)
            await self._save(conn, job, change)
            return job, change.events

        finished = await self.db.tx(finish, patient=True)
        if finished is None:
            return None
        publish(self.hub, finished[1])
        return finished[0]

    async def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        async def read(conn: Conn) -> list[Event]:
            rows = await conn.fetch(
                "SELECT seq, type, data FROM outlast_events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                job_id,
                after,
                limit,
            )
            return [Event(job_id, row["seq"], row["type"], json.loads(row["data"])) for row in rows]

        return await self.db.read(read)

    async def request_cancel(self, job_id: str) -> Job | None:
        async def cancel(conn: Conn) -> tuple[Job | None, list[Event], bool]:
            job = await self._locked(conn, job_id)
            if job is None:
                return None, [], False
            if job.status is JobStatus.QUEUED:
                job.cancel(time.time())
                change = _Change()
                self._status(job, change)
                await self._save(conn, job, change)
                return job, change.events, False
            if job.status is JobStatus.RUNNING and not job.cancel_requested:
                job.cancel_requested = True
                await conn.execute("UPDATE outlast_jobs SET cancel_requested = true WHERE id = $1", job_id)
                await conn.execute("SELECT pg_notify($1, $2)", self.channel, f"c {self._origin} {job_id}")
                return job, [], True
            return job, [], False

        job, events, flagged = await self.db.tx(cancel)
        publish(self.hub, events)
        if flagged:
            self.hub.cancel_requested(job_id)
        return job

    async def reclaim_expired(self) -> list[Job]:
        async def reclaim(conn: Conn) -> list[tuple[Job, list[Event]]]:
            now = time.time()
            rows = await conn.fetch(
                "SELECT * FROM outlast_jobs WHERE status = 'running' AND lease_until < $1"
                " ORDER BY lease_until LIMIT $2 FOR UPDATE SKIP LOCKED",
                now,
                BATCH,
            )
            reclaimed = []
            for row in rows:
                job = job_from_row(row)
                lose_worker(job, now)
                change = _Change()
                self._status(job, change)
                await self._save(conn, job, change)
                reclaimed.append((job, change.events))
            return reclaimed

        jobs: list[Job] = []
        while True:
            batch = await self.db.tx(reclaim)
            for job, events in batch:
                publish(self.hub, events)
                jobs.append(job)
            if len(batch) < BATCH:
                return jobs

    async def purge_expired(self) -> list[str]:
        async def purge(conn: Conn) -> list[str]:
            rows = await conn.fetch(
                "SELECT id FROM outlast_jobs WHERE expires_at <= $1"
                " ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                time.time(),
                BATCH,
            )
            ids = [row["id"] for row in rows]
            if ids:
                await self._forget(conn, ids)
            return ids

        purged: list[str] = []
        while True:  # in batches: one transaction never holds many rows, nor runs long
            ids = await self.db.tx(purge)
            purged += ids
            if len(ids) < BATCH:
                return purged

    # -- the webhook outbox -------------------------------------------------------------

    async def claim_deliveries(self, lease_s: float, limit: int) -> list[Delivery]:
        async def any_due(conn: Conn) -> bool:
            found = await conn.fetchval(
                "SELECT 1 FROM outlast_deliveries WHERE state = 'pending' AND next_at <= $1 LIMIT 1", time.time()
            )
            return found is not None

        if not await self.db.read(any_due):
            return []  # a cheap read first: idle processes open no transaction

        async def claim(conn: Conn) -> list[Delivery]:
            now = time.time()
            rows = await conn.fetch(
                "SELECT record FROM outlast_deliveries WHERE state = 'pending' AND next_at <= $1"
                " ORDER BY next_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                now,
                limit,
            )
            claimed = [Delivery.from_record(json.loads(row["record"])) for row in rows]
            for delivery in claimed:
                delivery.next_at = now + lease_s
            await self._put_deliveries(conn, claimed)
            return claimed

        return await self.db.tx(claim)

    @staticmethod
    async def _put_deliveries(conn: Conn, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            await conn.execute(
                UPDATE_DELIVERIES,
                [d.id for d in deliveries],
                [dumps(d.to_record()) for d in deliveries],
                [d.state for d in deliveries],
                [d.next_at for d in deliveries],
            )

    async def save_delivery(self, delivery: Delivery) -> None:
        async def save(conn: Conn) -> None:
            await self._put_deliveries(conn, [delivery])

        await self.db.read(save)

    async def deliveries(self, job_id: str) -> list[Delivery]:
        async def read(conn: Conn) -> list[Delivery]:
            rows = await conn.fetch("SELECT record FROM outlast_deliveries WHERE job_id = $1 ORDER BY n", job_id)
            return [Delivery.from_record(json.loads(row["record"])) for row in rows]

        return await self.db.read(read)

    async def setting(self, name: str, value: str) -> str:
        async def put(conn: Conn) -> str:
            stored = await conn.fetchval(
                "WITH put AS (INSERT INTO outlast_settings (name, value) VALUES ($1, $2)"
                " ON CONFLICT (name) DO NOTHING RETURNING value)"
                " SELECT value FROM put UNION ALL SELECT value FROM outlast_settings WHERE name = $1 LIMIT 1",
                name,
                value,
            )
            return str(stored)

        return await self.db.read(put)
