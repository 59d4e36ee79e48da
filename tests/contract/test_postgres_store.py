"""What only the PostgreSQL store does: its schema and versions, schemas side by side, nodes that
start at once, LISTEN/NOTIFY between stores, a listening connection that drops, killed backends."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest

from outlast.exceptions import ConfigError, StoreUnavailable
from outlast.jobs import Event, Job, JobStatus, Outcome
from outlast.stores import open_store
from outlast.stores._postgres_schema import VERSION
from outlast.stores.base import store_unavailable
from outlast.stores.postgres import PostgresStore
from tests.contract.conftest import drop_schema

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def new_job(name: str = "report", **input: object) -> Job:
    return Job.new(name, dict(input), max_attempts=3, retention_s=60.0)


@pytest.fixture
async def schema(postgres_database: str) -> AsyncIterator[str]:
    name = "s_" + secrets.token_hex(6)
    yield name
    await drop_schema(postgres_database, name)


def store_at(database: str, schema: str) -> PostgresStore:
    store = open_store(f"{database}?schema={schema}")
    assert isinstance(store, PostgresStore)
    return store


async def wait_until(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)  # polling a condition another task makes true, bounded by the timeout


def test_urls():
    store = PostgresStore.from_url("postgres://app:secret@db:6543/jobs?schema=myapp&pool_size=4&sslmode=disable")
    assert (store.db.schema, store.db.pool_size) == ("myapp", 4)
    assert store.db.dsn == "postgresql://app:secret@db:6543/jobs?sslmode=disable"
    assert "secret" not in store.db.where
    with pytest.raises(ConfigError):
        PostgresStore.from_url("postgresql://db/jobs?schema=bad;name")
    with pytest.raises(ConfigError):
        PostgresStore.from_url("postgresql://db/jobs?schema=pg_mine")
    with pytest.raises(ConfigError):
        PostgresStore.from_url("postgresql://db/jobs?pool_size=0")


async def test_many_nodes_starting_at_once_migrate_once(postgres_database: str, schema: str):
    stores = [store_at(postgres_database, schema) for _ in range(6)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        conn = await asyncpg.connect(postgres_database)
        try:
            versions = await conn.fetch(f'SELECT version FROM "{schema}".outlast_schema_version ORDER BY version')
        finally:
            await conn.close()
        assert [row["version"] for row in versions] == list(range(1, VERSION + 1))
        job, _ = await stores[0].create(new_job())
        assert (await stores[5].get(job.id)) is not None
    finally:
        for store in stores:
            await store.close()


async def test_a_schema_from_a_newer_outlast_is_refused(postgres_database: str, schema: str):
    store = store_at(postgres_database, schema)
    assert await store.migrate() == (0, VERSION)
    assert await store.migrate() == (VERSION, VERSION)
    conn = await asyncpg.connect(postgres_database)
    try:
        await conn.execute(f'INSERT INTO "{schema}".outlast_schema_version (version) VALUES ($1)', VERSION + 1)
    finally:
        await conn.close()
    with pytest.raises(ConfigError, match="newer outlast"):
        await store_at(postgres_database, schema).open()


async def test_two_schemas_in_one_database_see_neither_the_jobs_nor_the_events_of_the_other(
    postgres_database: str, schema: str
):
    other_schema = schema + "_b"
    first, second = store_at(postgres_database, schema), store_at(postgres_database, other_schema)
    await first.open()
    await second.open()
    try:
        job, _ = await first.create(new_job())
        with second.hub.listen_status() as heard:
            await first.create(new_job())
            await asyncio.sleep(0.3)
            assert heard.drain() == []
        assert await second.get(job.id) is None
        assert await second.claim("w", ["report"], 30) is None
    finally:
        await first.close()
        await second.close()
        await drop_schema(postgres_database, other_schema)


@pytest.fixture
async def pair(postgres_database: str, schema: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one schema, as two nodes would have."""
    first, second = store_at(postgres_database, schema), store_at(postgres_database, schema)
    await first.open()
    await second.open()
    yield first, second
    await first.close()
    await second.close()


async def test_events_written_by_one_node_reach_the_listeners_of_the_other(pair):
    first, second = pair
    job, _ = await first.create(new_job())
    with second.hub.listen(job.id) as listener:
        claimed = await first.claim("w", ["report"], 30)
        assert claimed is not None
        await first.record(job.id, claimed.token, [("log", {"line": "x" * 20000})], {"current": 1})  # > 8 KB
        await first.finish(job.id, claimed.token, Outcome.succeeded({"ok": True}))
        heard: list[Event] = []
        async with asyncio.timeout(10):
            while not heard or heard[-1].data.get("status") != "succeeded":
                await listener.wait(5)
                heard += listener.drain()
    heard = [event for event in heard if event.seq != 1]  # the queued event may arrive before or after listening
    assert [event.seq for event in heard] == [2, 3, 4]
    assert heard[1].data["line"] == "x" * 20000


async def test_a_cancellation_reaches_the_node_running_the_job(pair):
    first, second = pair
    job, _ = await first.create(new_job())
    claimed = await first.claim("w", ["report"], 30)
    assert claimed is not None
    asked: list[str] = []
    first.hub.on_cancel(asked.append)
    await second.request_cancel(job.id)
    await wait_until(lambda: asked == [job.id])


async def _terminate(database: str, where: str) -> int:
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE datname = current_database() AND pid <> pg_backend_pid() AND {where}"
        )
        return len(rows)
    finally:
        await conn.close()


async def test_a_dropped_listen_connection_reconnects_and_no_listener_misses_an_event(postgres_database, pair):
    first, second = pair
    job, _ = await first.create(new_job())
    claimed = await first.claim("w", ["report"], 30)
    assert claimed is not None
    with second.hub.listen(job.id) as listener:
        # Kill the second node's LISTEN connection, and write while it is gone.
        assert await _terminate(postgres_database, "query LIKE 'LISTEN%' OR query = 'SELECT 1'") >= 1
        await first.record(job.id, claimed.token, [("log", {"line": "while away"})], None)
        await first.finish(job.id, claimed.token, Outcome.succeeded(1))
        heard: list[Event] = []
        async with asyncio.timeout(20):
            while not any(event.data.get("status") == "succeeded" for event in heard):
                await listener.wait(5)
                heard += listener.drain()
    # The last event reached it: a stream behind it reads the rest back from the store.
    assert heard[-1].seq == 4
    # And it hears the next events live again.
    other, _ = await first.create(new_job())
    with second.hub.listen(other.id) as listener:
        again = await first.claim("w", ["report"], 30)
        assert again is not None
        async with asyncio.timeout(10):
            while not listener.drain():
                await listener.wait(5)


async def test_killed_backends_cost_retries_not_errors(postgres_database, pair):
    first, _ = pair
    jobs = [(await first.create(new_job(n=n)))[0] for n in range(5)]
    # Every connection of every store to this database goes (the pools' and the listeners').
    assert await _terminate(postgres_database, "true") >= 2
    claimed = await first.claim("w", ["report"], 30)
    assert claimed is not None and claimed.id == jobs[0].id
    assert await first.finish(claimed.id, claimed.token, Outcome.succeeded(1)) is not None
    done = await first.get(jobs[0].id)
    assert done is not None and done.status is JobStatus.SUCCEEDED


async def test_an_unreachable_database_is_store_unavailable(postgres_database, schema):
    store = store_at(postgres_database, schema)
    await store.open()
    try:
        store.db._pool.terminate()  # as if every connection broke and none could be made again
        with pytest.raises(StoreUnavailable):
            await store.get("j_x")
    finally:
        store.db._pool = None
        await store.close()
    with pytest.raises(ConfigError, match="cannot reach"):
        await PostgresStore.from_url("postgresql://postgres@127.0.0.1:1/nowhere").open()


def test_asyncpg_connection_errors_are_store_unavailable():
    assert store_unavailable(asyncpg.exceptions.ConnectionDoesNotExistError("gone")) is not None
    assert store_unavailable(asyncpg.exceptions.AdminShutdownError("bye")) is not None
    assert store_unavailable(asyncpg.exceptions.UniqueViolationError("dup")) is None


def test_outlast_migrate(postgres_database: str, schema: str):
    url = f"{postgres_database}?schema={schema}"

    def migrate() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "outlast", "migrate", "--store", url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout.strip()

    assert migrate() == f"the schema went from version 0 to {VERSION}"
    assert migrate() == f"the schema is up to date (version {VERSION})"
