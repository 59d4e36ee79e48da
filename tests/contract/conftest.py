"""Every store passes the same contract: these fixtures hand each test one of each kind."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from outlast.stores import JobStore, MemoryStore, SQLiteStore, open_store

STORES = ["memory", "sqlite", "redis"]
REDIS_URL = os.environ.get("OUTLAST_TEST_REDIS", "redis://127.0.0.1:6379/0")


def redis_or_skip() -> None:
    """Redis tests need a Redis; in CI (CI=true) its absence fails them rather than skips."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.exceptions.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"no Redis at {REDIS_URL} in CI: {exc}")
        pytest.skip(f"no Redis at {REDIS_URL}")


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
async def store(store_kind: str, tmp_path: Path) -> AsyncIterator[JobStore]:
    namespace = "test-" + secrets.token_hex(6)
    store: JobStore
    if store_kind == "memory":
        store = MemoryStore()
    elif store_kind == "sqlite":
        store = SQLiteStore(str(tmp_path / "jobs.db"))
    else:
        redis_or_skip()
        store = open_store(f"{REDIS_URL}?namespace={namespace}")
    await store.open()
    yield store
    await store.close()
    if store_kind == "redis":
        await drop_namespace(namespace)


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
