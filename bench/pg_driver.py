"""asyncpg against psycopg 3 (with psycopg_pool) on the PostgreSQL store's hot path, same run, same database.

    .venv/bin/python -m bench.pg_driver [--url postgresql://postgres@127.0.0.1:5432/postgres] [--cycles 3000]
        [--concurrency 16] [--rounds 3]

One cycle is what a job costs the store: a create (insert the job and its first
event, and NOTIFY), a claim (`FOR UPDATE SKIP LOCKED` on the oldest due job of
its queue, update it, insert its event, NOTIFY) and a finish (update, event,
NOTIFY), each one transaction, as `outlast.stores.postgres` runs them.
`--concurrency` tasks run cycles over one pool of 10 connections per driver.
Each driver runs in a schema of its own, dropped at the end; the drivers
alternate over `--rounds` so that neither gets the warmer machine. Prints
cycles per second and this process's CPU per cycle (the database's CPU is not
counted: it runs the same statements for both).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import psycopg
import psycopg_pool

POOL = 10

SCHEMA = """
CREATE TABLE {s}.jobs (
    qorder bigint GENERATED ALWAYS AS IDENTITY,
    id text PRIMARY KEY,
    name text NOT NULL,
    status text NOT NULL,
    run_after double precision NOT NULL,
    lease_until double precision,
    token bigint NOT NULL DEFAULT 0,
    input text NOT NULL,
    record text NOT NULL
);
CREATE INDEX ON {s}.jobs (name, qorder) WHERE status = 'queued';
CREATE TABLE {s}.events (
    job_id text NOT NULL, seq integer NOT NULL, type text NOT NULL, data text NOT NULL, PRIMARY KEY (job_id, seq)
);
"""
INSERT = "INSERT INTO {s}.jobs (id, name, status, run_after, input, record) VALUES ($1, $2, 'queued', $3, $4, $5)"
EVENT = "INSERT INTO {s}.events (job_id, seq, type, data) VALUES ($1, $2, 'status', $3)"
NOTIFY = "SELECT pg_notify($1, $2)"
CLAIM = (
    "SELECT id, token, record FROM {s}.jobs WHERE status = 'queued' AND name = $1 AND run_after <= $2"
    " ORDER BY qorder LIMIT 1 FOR UPDATE SKIP LOCKED"
)
START = "UPDATE {s}.jobs SET status = 'running', token = $1, lease_until = $2, record = $3 WHERE id = $4"
FINISH = "UPDATE {s}.jobs SET status = 'succeeded', lease_until = NULL, record = $1 WHERE id = $2 AND token = $3"
RECORD = json.dumps({"attempt": 1, "max_attempts": 3, "retention_s": 86400.0, "progress": None, "result": None})


def _pg(sql: str) -> str:
    """$1 placeholders as psycopg's %s (every statement here numbers its parameters in order)."""
    for n in range(9, 0, -1):
        sql = sql.replace(f"${n}", "%s")
    return sql


async def _asyncpg(url: str, schema: str, cycles: int, concurrency: int) -> tuple[float, float]:
    pool = await asyncpg.create_pool(url, min_size=POOL, max_size=POOL)
    q = {name: sql.format(s=schema) for name, sql in _STATEMENTS.items()}

    async def cycle(n: int) -> None:
        job_id = f"j_{n}_{secrets.token_hex(4)}"
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(q["insert"], job_id, "bench", time.time(), '{"n": 1}', RECORD)
            await conn.execute(q["event"], job_id, 1, RECORD)
            await conn.execute(NOTIFY, schema, f"{job_id} 1")
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q["claim"], "bench", time.time())
            assert row is not None
            await conn.execute(q["start"], row["token"] + 1, time.time() + 30, RECORD, row["id"])
            await conn.execute(q["event"], row["id"], 2, RECORD)
            await conn.execute(NOTIFY, schema, f"{row['id']} 2")
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(q["finish"], RECORD, row["id"], row["token"] + 1)
            await conn.execute(q["event"], row["id"], 3, RECORD)
            await conn.execute(NOTIFY, schema, f"{row['id']} 3")

    try:
        return await _timed(cycle, cycles, concurrency)
    finally:
        await pool.close()


async def _psycopg(url: str, schema: str, cycles: int, concurrency: int) -> tuple[float, float]:
    pool = psycopg_pool.AsyncConnectionPool(url, min_size=POOL, max_size=POOL, open=False)
    await pool.open(wait=True)
    q = {name: _pg(sql.format(s=schema)) for name, sql in _STATEMENTS.items()}
    notify = _pg(NOTIFY)

    async def cycle(n: int) -> None:
        job_id = f"j_{n}_{secrets.token_hex(4)}"
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(q["insert"], (job_id, "bench", time.time(), '{"n": 1}', RECORD))
            await conn.execute(q["event"], (job_id, 1, RECORD))
            await conn.execute(notify, (schema, f"{job_id} 1"))
        async with pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(q["claim"], ("bench", time.time()))).fetchone()
            assert row is not None
            await conn.execute(q["start"], (row[1] + 1, time.time() + 30, RECORD, row[0]))
            await conn.execute(q["event"], (row[0], 2, RECORD))
            await conn.execute(notify, (schema, f"{row[0]} 2"))
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(q["finish"], (RECORD, row[0], row[1] + 1))
            await conn.execute(q["event"], (row[0], 3, RECORD))
            await conn.execute(notify, (schema, f"{row[0]} 3"))

    try:
        return await _timed(cycle, cycles, concurrency)
    finally:
        await pool.close()


_STATEMENTS = {"insert": INSERT, "event": EVENT, "claim": CLAIM, "start": START, "finish": FINISH}


async def _timed(cycle: Callable[[int], Awaitable[None]], cycles: int, concurrency: int) -> tuple[float, float]:
    counter = iter(range(cycles))

    async def runner() -> None:
        for n in counter:
            await cycle(n)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return cycles / wall, cpu / cycles * 1000


DRIVERS: dict[str, Callable[[str, str, int, int], Awaitable[tuple[float, float]]]] = {
    "asyncpg": _asyncpg,
    "psycopg": _psycopg,
}


async def measure(url: str, cycles: int, concurrency: int, rounds: int) -> dict[str, dict[str, Any]]:
    admin = await asyncpg.connect(url)
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in DRIVERS}
    try:
        for _ in range(rounds):
            for name, run in DRIVERS.items():
                schema = f"bench_{name}_{secrets.token_hex(4)}"
                await admin.execute(f"CREATE SCHEMA {schema}")
                await admin.execute(SCHEMA.format(s=schema))
                try:
                    figures[name].append(await run(url, schema, cycles, concurrency))
                finally:
                    await admin.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await admin.close()
    return {
        name: {
            "cycles_per_s": round(statistics.median(r for r, _ in runs)),
            "range": [round(min(r for r, _ in runs)), round(max(r for r, _ in runs))],
            "client_cpu_ms_per_cycle": round(statistics.median(c for _, c in runs), 3),
        }
        for name, runs in figures.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--cycles", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"psycopg {psycopg.__version__}, asyncpg {asyncpg.__version__}")
    figures = asyncio.run(measure(args.url, args.cycles, args.concurrency, args.rounds))
    print("| driver | create+claim+finish cycles/s (median, range) | client CPU ms per cycle |")
    print("| --- | ---: | ---: |")
    for name, row in figures.items():
        low, high = row["range"]
        print(f"| {name} | {row['cycles_per_s']} ({low}-{high}) | {row['client_cpu_ms_per_cycle']} |")


if __name__ == "__main__":
    main()
