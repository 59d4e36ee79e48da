"""Every store passes the same contract: these fixtures hand each test one of each kind."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

from outlast.stores import JobStore, MemoryStore, SQLiteStore, open_store

STORES = ["memory", "sqlite", "redis", "postgres"]
T = TypeVar("T")
REDIS_URL = os.environ.get("OUTLAST_TEST_REDIS", "redis://127.0.0.1:6379/0")
# A server where the tests may create databases: each run of the tests makes its own and drops it after.
POSTGRES_URL = os.environ.get("OUTLAST_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def redis_or_skip() -> None:
    """Redis tests need a Redis; in CI (CI=true) its absence fails them rather than skips."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.exceptions.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"no Redis at {REDIS_URL} in CI: {exc}")
        pytest.skip(f"no Redis at {REDIS_URL}")


def blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to its end on a loop of its own, in a thread: callable with or without a running loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def postgres_or_skip() -> None:
    """PostgreSQL tests need a PostgreSQL; in CI (CI=true) its absence fails them rather than skips."""
    import asyncpg

    try:
        blocking(_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"no PostgreSQL at {POSTGRES_URL} in CI: {exc}")
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}")


def database_url(name: str) -> str:
    parts = urlsplit(POSTGRES_URL)
    return urlunsplit(parts._replace(path=f"/{name}"))


def create_database() -> str:
    """A fresh database (`outlast_test_<random>`): its name. Drop it with `drop_database`."""
    name = "outlast_test_" + secrets.token_hex(6)
    blocking(_admin(f"CREATE DATABASE {name}"))
    return name


def drop_database(name: str) -> None:
    blocking(_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh database for this run of the tests (dropped at the end): its URL. Each test takes a schema in it."""
    postgres_or_skip()
    name = create_database()
    try:
        yield database_url(name)
    finally:
        drop_database(name)


async def drop_schema(database_url: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def drop_namespace(namespace: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match=f"outlast:{namespace}:*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def store(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[JobStore]:
    namespace = "test-" + secrets.token_hex(6)
    schema = "test_" + secrets.token_hex(6)
    database = ""
    store: JobStore
    if store_kind == "memory":
        store = MemoryStore()
    elif store_kind == "sqlite":
        store = SQLiteStore(str(tmp_path / "jobs.db"))
    elif store_kind == "postgres":
        database = request.getfixturevalue("postgres_database")
        store = open_store(f"{database}?schema={schema}")
    else:
        redis_or_skip()
        store = open_store(f"{REDIS_URL}?namespace={namespace}")
    await store.open()
    yield store
    await store.close()
    if store_kind == "redis":
        await drop_namespace(namespace)
    if store_kind == "postgres":
        await drop_schema(database, schema)


@pytest.fixture
async def sqlite_pair(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, SQLiteStore]]:
    """Two stores on one SQLite file, as two processes on one host would have."""
    path = str(tmp_path / "shared.db")
    first, second = SQLiteStore(path, poll_interval_s=0.01), SQLiteStore(path, poll_interval_s=0.01)
    await first.open()
    await second.open()
    yield first, second
    await first.close()
    await second.close()


Factory = Callable[..., Awaitable[JobStore]]
