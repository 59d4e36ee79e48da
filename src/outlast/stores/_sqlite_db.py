"""The SQLite store's file: its schema, how a job maps to a row, and a connection with its own thread."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from outlast.exceptions import ConfigError
from outlast.jobs import ErrorInfo, Job, JobStatus

T = TypeVar("T")

BUSY_TIMEOUT_MS = 15_000
# At most this many writes share one transaction, so that no caller waits on a huge one.
MAX_GROUP = 256

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


@dataclasses.dataclass(slots=True)
class _Write:
    """One caller's transaction body, and where its answer goes."""

    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    value: Any = None
    error: BaseException | None = None


class Connection:
    """One sqlite3 connection, used only from its own thread.

    Writes are committed in groups: the thread takes every write waiting at
    once and runs them in one `BEGIN IMMEDIATE ... COMMIT`, each inside its own
    savepoint, so one COMMIT (the costly part) serves many callers. A write
    that raises is rolled back alone; its callers learn of it, and the others
    are answered only once COMMIT has returned.
    """

    def __init__(self, path: str, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"outlast-sqlite-{name}")
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._pending: list[_Write] = []
        self._draining = False

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
        return fn(self._connection())

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` inside a `BEGIN IMMEDIATE` transaction (perhaps shared with other writes).

        `fn` sees the writes committed before it and none after; its value is
        returned once the transaction is committed. It must not commit, roll
        back or change the connection.
        """
        loop = asyncio.get_running_loop()
        write = _Write(fn, loop.create_future())
        with self._lock:
            self._pending.append(write)
            start, self._draining = not self._draining, True
        if start:
            try:
                self._executor.submit(self._drain)
            except RuntimeError:  # closed
                with self._lock:
                    self._pending.remove(write)
                    self._draining = False
                raise
        value: T = await write.future
        return value

    def _drain(self) -> None:
        """On the thread: commit waiting writes a group at a time until none is left."""
        while True:
            with self._lock:
                batch, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
                if not batch:
                    self._draining = False
                    return
            batch = [write for write in batch if not write.future.cancelled()]
            if batch:
                try:
                    self._commit(self._connection(), batch)
                except BaseException as exc:  # BEGIN or COMMIT failed: nothing of the group is kept
                    for write in batch:
                        write.error = exc
                self._answer(batch)

    @staticmethod
    def _commit(conn: sqlite3.Connection, batch: list[_Write]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if len(batch) == 1:  # alone: no savepoint needed, the transaction is the write's
                batch[0].value = batch[0].fn(conn)
            else:
                for write in batch:
                    _run_in_savepoint(conn, write)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _answer(batch: list[_Write]) -> None:
        """Resolve the callers' futures, with one hop to their event loop per group."""
        loops: dict[asyncio.AbstractEventLoop, list[_Write]] = {}
        for write in batch:
            loops.setdefault(write.future.get_loop(), []).append(write)
        for loop, writes in loops.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: no one is waiting any more
                loop.call_soon_threadsafe(_resolve, writes)

    async def close(self) -> None:
        def close(conn: sqlite3.Connection) -> None:
            conn.close()

        if self._conn is not None:
            await self.run(close)
            self._conn = None
        self._executor.shutdown(wait=True)


def _run_in_savepoint(conn: sqlite3.Connection, write: _Write) -> None:
    conn.execute("SAVEPOINT write")
    try:
        write.value = write.fn(conn)
    except Exception as exc:
        if not conn.in_transaction:
            raise  # SQLite rolled the whole transaction back (disk full, I/O error): the group fails
        conn.execute("ROLLBACK TO write")
        write.error = exc
    conn.execute("RELEASE write")


def _resolve(writes: list[_Write]) -> None:
    for write in writes:
        if write.future.done():
            continue  # its caller was cancelled meanwhile
        if write.error is not None:
            write.future.set_exception(write.error)
        else:
            write.future.set_result(write.value)
