"""What a PostgreSQL store's schema holds: its tables, its versions, and how a job maps to a row.

Every table starts with `outlast_`, in the schema the URL names (`?schema=`)
or else the connection's current schema, so outlast's tables sit beside an
app's own. A job's row has a column for each field a query or an index uses,
its input (JSON text, written once with the job), and one JSON `record` for the
rest (the record every store keeps, from `outlast.jobs.job_record`), so a new
field of `Job` needs no SQL.

The schema is what `MIGRATIONS` build, in order; `outlast_schema_version` has
a row for each one applied. A node brings the schema up to `VERSION` when it
opens the store, in one transaction under an advisory lock (many nodes may
start at once: one migrates, the others wait, then find it done), and refuses a
schema from a newer outlast. A migration, once released, never changes: a
later schema is a new migration.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from outlast.exceptions import ConfigError
from outlast.jobs import Job, job_from_record, job_record

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
# Changed by a transition; the others are set when a job is created and never change.
_CHANGING = ("status", "run_after", "expires_at", "lease_until", "token", "cancel_requested", "record")

INSERT_JOB = (
    f"INSERT INTO outlast_jobs ({', '.join(COLUMNS)}, record, input)"
    f" VALUES ({', '.join(f'${n}' for n in range(1, len(COLUMNS) + 3))}) ON CONFLICT DO NOTHING RETURNING qorder"
)
UPDATE_JOB = (
    f"UPDATE outlast_jobs SET {', '.join(f'{c} = ${n}' for n, c in enumerate(_CHANGING, start=1))}"
    f" WHERE id = ${len(_CHANGING) + 1}"
)
# A change of fields no query uses (a progress report) rewrites the record alone.
UPDATE_RECORD = "UPDATE outlast_jobs SET record = $1 WHERE id = $2"

# The events of one change, and a NOTIFY for each (sent by PostgreSQL when the transaction commits).
# $5 the channel, $6 the start of each payload ("e <origin> <job id> "): the seq and the type follow.
# The NOTIFY of each event carries its data too when it is small (a payload is at most 8,000
# bytes): other nodes then need no read to relay it.
INSERT_EVENTS = """WITH written AS (
    INSERT INTO outlast_events (job_id, seq, type, data)
    SELECT $1, e.seq, e.type, e.data FROM unnest($2::integer[], $3::text[], $4::text[]) AS e(seq, type, data)
    RETURNING seq, type, data
)
SELECT count(pg_notify($5, $6 || seq || ' ' || type
    || CASE WHEN octet_length(data) <= 7000 THEN ' ' || data ELSE '' END)) FROM written"""

INSERT_DELIVERIES = """INSERT INTO outlast_deliveries (id, job_id, record, state, next_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::double precision[])"""
UPDATE_DELIVERIES = """UPDATE outlast_deliveries AS d SET record = u.record, state = u.state, next_at = u.next_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::double precision[]) AS u(id, record, state, next_at)
WHERE d.id = u.id"""

# A job, with its place in its queue while it is queued.
POSITION = (
    "CASE WHEN j.status = 'queued' THEN (SELECT count(*) FROM outlast_jobs q"
    " WHERE q.status = 'queued' AND q.name = j.name AND q.qorder < j.qorder) END AS position"
)
SELECT_JOB = f"SELECT j.*, {POSITION} FROM outlast_jobs j WHERE j.id = $1"

# The next due job of the first of the names (in the order given) whose queue has one, locked;
# jobs other claims hold are skipped. The nested loop stops at the first name that yields a row.
CLAIM = """SELECT j.* FROM unnest($1::text[]) AS n(name)
CROSS JOIN LATERAL (
    SELECT * FROM outlast_jobs
    WHERE status = 'queued' AND name = n.name AND run_after <= $2
    ORDER BY qorder LIMIT 1 FOR UPDATE SKIP LOCKED
) AS j
LIMIT 1"""
ANY_DUE = "SELECT 1 FROM outlast_jobs WHERE status = 'queued' AND name = ANY($1::text[]) AND run_after <= $2 LIMIT 1"


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def job_args(job: Job) -> list[Any]:
    """A job's changing columns, for `UPDATE_JOB`."""
    record = job_record(job)
    del record["input"]
    columns = {column: record.pop(column) for column in COLUMNS}
    columns["record"] = dumps(record)
    return [*(columns[column] for column in _CHANGING), job.id]


def record_args(job: Job) -> list[Any]:
    """For `UPDATE_RECORD`: the record alone."""
    record = job_record(job)
    for column in ("input", *COLUMNS):
        del record[column]
    return [dumps(record), job.id]


def new_job_args(job: Job) -> list[Any]:
    """A new job's row, for `INSERT_JOB`."""
    record = job_record(job)
    del record["input"]
    columns = [record.pop(column) for column in COLUMNS]
    columns[COLUMNS.index("owner")] = job.owner or ""  # '' keeps keys without owner unique (NULLs never collide)
    return [*columns, dumps(record), dumps(job.input)]


def job_from_row(row: Mapping[str, Any]) -> Job:
    """The job a row holds, with its queue position if the row has one."""
    record = json.loads(row["record"])
    record.update((column, row[column]) for column in COLUMNS)
    record["input"] = json.loads(row["input"])
    record["owner"] = record["owner"] or None
    job = job_from_record(record)
    if job.status.value == "queued" and "position" in row.keys():  # noqa: SIM118 (asyncpg's Record)
        job.queue_position = None if row["position"] is None else int(row["position"])
    return job


# -- versions -------------------------------------------------------------------------

_V1 = (
    """CREATE TABLE outlast_jobs (
    qorder bigint GENERATED BY DEFAULT AS IDENTITY,
    id text PRIMARY KEY,
    name text NOT NULL,
    status text NOT NULL,
    owner text NOT NULL DEFAULT '',
    idempotency_key text,
    created_at double precision NOT NULL,
    run_after double precision NOT NULL,
    expires_at double precision,
    lease_until double precision,
    token bigint NOT NULL DEFAULT 0,
    cancel_requested boolean NOT NULL DEFAULT false,
    input text NOT NULL,
    record text NOT NULL
)""",
    """CREATE UNIQUE INDEX outlast_jobs_idempotency ON outlast_jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL""",
    "CREATE INDEX outlast_jobs_queue ON outlast_jobs (name, qorder) WHERE status = 'queued'",
    "CREATE INDEX outlast_jobs_lease ON outlast_jobs (lease_until) WHERE status = 'running'",
    "CREATE INDEX outlast_jobs_expiry ON outlast_jobs (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE INDEX outlast_jobs_newest ON outlast_jobs (created_at DESC, id DESC)",
    """CREATE TABLE outlast_events (
    job_id text NOT NULL,
    seq integer NOT NULL,
    type text NOT NULL,
    data text NOT NULL,
    PRIMARY KEY (job_id, seq)
)""",
    """CREATE TABLE outlast_deliveries (
    n bigint GENERATED ALWAYS AS IDENTITY,
    id text PRIMARY KEY,
    job_id text NOT NULL,
    record text NOT NULL,
    state text NOT NULL,
    next_at double precision NOT NULL
)""",
    "CREATE INDEX outlast_deliveries_due ON outlast_deliveries (next_at) WHERE state = 'pending'",
    "CREATE INDEX outlast_deliveries_job ON outlast_deliveries (job_id, n)",
    "CREATE TABLE outlast_settings (name text PRIMARY KEY, value text NOT NULL)",
)

# MIGRATIONS[n] takes a schema from version n to n + 1.
MIGRATIONS: tuple[Sequence[str], ...] = (_V1,)
VERSION = len(MIGRATIONS)

VERSION_TABLE = """CREATE TABLE IF NOT EXISTS outlast_schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
READ_VERSION = "SELECT COALESCE(MAX(version), 0) FROM outlast_schema_version"


def check_version(found: int, where: str) -> int:
    if found > VERSION:
        raise ConfigError(
            f"{where} has outlast schema version {found}, from a newer outlast; this one knows versions up to"
            f" {VERSION} and cannot go back: upgrade outlast, or use another schema (?schema=)"
        )
    return found


def lock_key(schema: str) -> int:
    """The advisory lock that migrations of `schema` take (a bigint, the same in every process)."""
    digest = hashlib.sha256(f"outlast migrate {schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def channel(schema: str) -> str:
    """The NOTIFY channel of the jobs of `schema` (an identifier of at most 63 bytes)."""
    name = f"outlast_{schema}"
    if len(name.encode()) <= 63:
        return name
    return "outlast_" + hashlib.sha256(schema.encode()).hexdigest()[:40]
