"""What a SQLite store's file holds: its schema, its versions, and how a job maps to a row.

A job's row has a column for each field that a query or an index uses, its
input (JSON, written once with the job), and one JSON `record` for the rest
(the record the Redis store keeps too, from `outlast.jobs.job_record`), so a
new field of `Job` needs no SQL.

The schema is what `MIGRATIONS` build, in order, and its version is the file's
`PRAGMA user_version`: a store that opens a file brings it up to `VERSION` in
one transaction, and refuses a file from a newer outlast. A migration, once
released, never changes: a later schema is a new migration.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from outlast.exceptions import ConfigError
from outlast.jobs import Job, job_from_record, job_record
from outlast.stores._sqlite_db import dumps

# The fields of a job that queries and indexes use, each in a column of its own.
COLUMNS = (
    "id",
    "name",
    "status",
    "owner",
    "idempotency_key",
    "created_at",
    "run_after",
    "expires_at",
    "lease_until",
    "token",
    "cancel_requested",
)
_ROW = (*COLUMNS, "record")
INSERT_JOB = f"INSERT INTO jobs ({', '.join(_ROW)}, input) VALUES ({', '.join(f':{c}' for c in _ROW)}, :input)"
# Set when a job is created, never changed: an update leaves them, and their indexes, alone.
_FIXED = ("id", "name", "owner", "idempotency_key", "created_at")
UPDATE_JOB = f"UPDATE jobs SET {', '.join(f'{c} = :{c}' for c in _ROW if c not in _FIXED)} WHERE id = :id"
# A change of fields no query uses (a progress report) rewrites the record alone, and no index.
UPDATE_RECORD = "UPDATE jobs SET record = :record WHERE id = :id"


def job_row(job: Job) -> dict[str, Any]:
    """A job as a change writes its row: its columns, and the rest but the input as one JSON record.

    The input never changes, and is often the largest part of a job: it is
    serialised once, by `new_job_row`, not again at each progress report.
    """
    record = job_record(job)
    del record["input"]
    row = {column: record.pop(column) for column in COLUMNS}
    row["owner"] = row["owner"] or ""  # NULLs never collide in a UNIQUE index: '' keeps keys without owner unique
    row["record"] = dumps(record)
    return row


def new_job_row(job: Job) -> dict[str, Any]:
    """A new job's row, for `INSERT_JOB`: `job_row` and the input."""
    return {**job_row(job), "input": dumps(job.input)}


def job_from_row(row: sqlite3.Row) -> Job:
    """The job a row holds: `new_job_row` undone."""
    record = json.loads(row["record"])
    record.update((column, row[column]) for column in COLUMNS)
    record["input"] = json.loads(row["input"])
    record["owner"] = record["owner"] or None
    record["cancel_requested"] = bool(record["cancel_requested"])
    return job_from_record(record)


# -- versions -------------------------------------------------------------------------

_V1_JOBS = """CREATE TABLE IF NOT EXISTS jobs (
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
)"""
_V1_JOB_INDEXES = (
    """CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL""",
    "CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, name, qorder)",
    "CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (status, lease_until)",
    "CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS jobs_newest ON jobs (created_at DESC, id DESC)",
)
_V1_OTHERS = (
    """CREATE TABLE IF NOT EXISTS events (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    origin TEXT NOT NULL,
    UNIQUE (job_id, seq)
)""",
    """CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    record TEXT NOT NULL,
    state TEXT NOT NULL,
    next_at REAL NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_at)",
    "CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries (job_id)",
    "CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


def _create_v1(conn: sqlite3.Connection) -> None:
    """Version 1: every field of a job in a column of its own.

    Files made before schema versions are version 1 with a `user_version` of 0:
    this leaves their tables as they are (IF NOT EXISTS), and the next step upgrades them.
    """
    for statement in (_V1_JOBS, *_V1_JOB_INDEXES, *_V1_OTHERS):
        conn.execute(statement)


_V2_JOBS = """CREATE TABLE jobs (
    qorder INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    idempotency_key TEXT,
    created_at REAL NOT NULL,
    run_after REAL NOT NULL,
    expires_at REAL,
    lease_until REAL,
    token INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    input TEXT NOT NULL,
    record TEXT NOT NULL
)"""
# The columns of version 2 as that migration made them: fixed with it, whatever COLUMNS becomes later.
_V2_COLUMNS = (
    "qorder",
    "id",
    "name",
    "status",
    "owner",
    "idempotency_key",
    "created_at",
    "run_after",
    "expires_at",
    "lease_until",
    "token",
    "cancel_requested",
    "input",
)
_V2_INSERT = f"INSERT INTO jobs ({', '.join(_V2_COLUMNS)}, record) VALUES ({', '.join('?' for _ in _V2_COLUMNS)}, ?)"
# The columns of version 1 that held JSON text and move into the record, as JSON values.
_V1_JSON = ("progress", "result", "error", "webhook_events")


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    """Version 2: the fields of a job that no query uses, but its input, move into one JSON `record`.

    The table is rebuilt (keeping each job's place in its queue), and the indexes
    of version 1, on columns that stay, are made again.
    """
    conn.execute("ALTER TABLE jobs RENAME TO jobs_v1")
    conn.execute(_V2_JOBS)
    conn.executemany(_V2_INSERT, map(_v2_row, conn.execute("SELECT * FROM jobs_v1")))
    conn.execute("DROP TABLE jobs_v1")
    for statement in _V1_JOB_INDEXES:
        conn.execute(statement)


def _v2_row(row: sqlite3.Row) -> list[Any]:
    record = {column: value for column, value in zip(row.keys(), row, strict=True) if column not in _V2_COLUMNS}
    for column in _V1_JSON:
        record[column] = None if record[column] is None else json.loads(record[column])
    return [*(row[column] for column in _V2_COLUMNS), dumps(record)]


# MIGRATIONS[n] takes a file from version n to n + 1.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_create_v1, _v1_to_v2)
VERSION = len(MIGRATIONS)


def version(conn: sqlite3.Connection, path: str) -> int:
    """The file's schema version; `ConfigError` if it is newer than this outlast knows."""
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found > VERSION:
        raise ConfigError(
            f"{path} has schema version {found}, from a newer outlast; this one knows versions up to {VERSION}"
            " and cannot go back: upgrade outlast, or use another file"
        )
    return found


def upgrade(conn: sqlite3.Connection, path: str) -> None:
    """Bring the file up to `VERSION`, inside a `BEGIN IMMEDIATE` transaction the caller opened.

    The version is read again here, under the write lock: another process may
    have upgraded the file since this one looked.
    """
    for step in range(version(conn, path), VERSION):
        MIGRATIONS[step](conn)
        conn.execute(f"PRAGMA user_version = {step + 1}")
