"""PostgreSQL for the benchmarks: a fresh schema per run (dropped after), and the server's CPU.

The server is `OUTLAST_TEST_POSTGRES` (default postgresql://postgres@127.0.0.1:5432/postgres), the one the
tests use. Its CPU is that of every process named `postgres` on this machine (the postmaster, its
helpers and the backends of the outlast processes measured), read from /proc: like Redis's, it is
part of the system measured.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

import asyncpg

from bench._servers import CLOCK_TICKS

URL = os.environ.get("OUTLAST_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def new_schema() -> str:
    return f"bench_{secrets.token_hex(4)}"


def store_url(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def ping(url: str) -> None:
    asyncio.run(_execute(url, "SELECT 1"))


def server_version(url: str) -> str:
    async def read() -> str:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    return asyncio.run(read())


def drop_schema(url: str, schema: str) -> None:
    asyncio.run(_execute(url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def cpu_s() -> float:
    """User + system CPU seconds of every `postgres` process alive now."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name != "postgres":
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS
