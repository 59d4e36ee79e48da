"""The SQLite store's file: its schema, how a job maps to a row, and a connection with its own thread."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from outlast.exceptions import ConfigError
from outlast.jobs import ErrorInfo, Job, JobStatus

T = TypeVar("T")

BUSY_TIMEOUT_MS = 15_000

SCHEMA = """
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

# Columns written back by `_save` after a transition (everything that can change).
MUTABLE = (
    "status",
    "started_at",
    "finished_at",
    "expires_at",
    "attempt",
    "progress",
    "result",
    "error",
    "run_after",
    "lease_until",
    "token",
    "worker",
    "cancel_requested",
    "last_seq",
    "webhook_progress_at",
)


def path_from_url(url: str) -> str:
    """`sqlite:///rel.db` -> `rel.db`, `sqlite:////abs/x.db` -> `/abs/x.db`."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ConfigError(f"a SQLite store URL looks like sqlite:///outlast.db, not {url!r}")
    path = url[len(prefix) :]
    if path == ":memory:":
        raise ConfigError("an in-memory SQLite database can't be shared by outlast's connections: use memory://")
    return path


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def job_from_row(row: sqlite3.Row) -> Job:
    error = loads(row["error"])
    return Job(
        id=row["id"],
        name=row["name"],
        input=json.loads(row["input"]),
        status=JobStatus(row["status"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        expires_at=row["expires_at"],
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        timeout_s=row["timeout_s"],
        retention_s=row["retention_s"],
        progress=loads(row["progress"]),
        result=loads(row["result"]),
        error=None if error is None else ErrorInfo.from_dict(error),
        owner=row["owner"] or None,
        idempotency_key=row["idempotency_key"],
        input_hash=row["input_hash"],
        run_after=row["run_after"],
        lease_until=row["lease_until"],
        token=row["token"],
        worker=row["worker"],
        cancel_requested=bool(row["cancel_requested"]),
        last_seq=row["last_seq"],
        webhook_url=row["webhook_url"],
        webhook_events=tuple(loads(row["webhook_events"]) or ()),
        webhook_progress_at=row["webhook_progress_at"],
    )


def column_values(job: Job) -> dict[str, Any]:
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


class Connection:
    """One sqlite3 connection, used only from its own thread."""

    def __init__(self, path: str, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"outlast-sqlite-{name}")
        self._path = path
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._conn = self._connect()
        return fn(self._conn)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` inside one BEGIN IMMEDIATE transaction."""

        def transaction(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                value = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return value

        return await self.run(transaction)

    async def close(self) -> None:
        def close(conn: sqlite3.Connection) -> None:
            conn.close()

        if self._conn is not None:
            await self.run(close)
            self._conn = None
        self._executor.shutdown(wait=True)
