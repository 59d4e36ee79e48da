"""The Redis store's cost in round trips: a change of a job this process has seen is one script call."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from outlast.jobs import Event, Job, Outcome
from outlast.stores import open_store
from outlast.stores.redis import RedisStore
from tests.contract.conftest import REDIS_URL, drop_namespace, redis_or_skip


class Counted:
    """Counts the calls a store makes to Redis, by command (scripts as EVALSHA)."""

    def __init__(self, store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        client = store._redis
        original = client.execute_command

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(str(args[0]).upper())
            return await original(*args, **kwargs)

        monkeypatch.setattr(client, "execute_command", counted)

    def take(self) -> list[str]:
        calls, self.calls = self.calls, []
        return calls


@pytest.fixture
async def redis_store() -> AsyncIterator[RedisStore]:
    redis_or_skip()
    namespace = "trips-" + secrets.token_hex(6)
    store = open_store(f"{REDIS_URL}?namespace={namespace}")
    assert isinstance(store, RedisStore)
    await store.open()
    yield store
    await store.close()
    await drop_namespace(namespace)


def new_job() -> Job:
    return Job.new("report", {}, max_attempts=3, retention_s=60)


async def test_claim_record_and_finish_take_one_call_each(redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch):
    created, _ = await redis_store.create(new_job())
    counted = Counted(redis_store, monkeypatch)
    job = await redis_store.claim("w", ["report"], 30)
    assert job is not None and job.id == created.id
    assert counted.take() == ["EVALSHA", "EVALSHA"]  # the claim script (with the record), then the change
    assert await redis_store.record(job.id, job.token, [("log", {"message": "hi"})], {"current": 1})
    assert counted.take() == ["EVALSHA"]
    finished = await redis_store.finish(job.id, job.token, Outcome.succeeded(1))
    assert finished is not None and finished.result == 1
    assert counted.take() == ["EVALSHA"]


async def test_a_job_put_running_is_finished_in_one_call(redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch):
    job = new_job()
    job.start("w", 30, job.created_at)
    job.last_seq = 1
    await redis_store.put(job, [Event(job.id, 1, *job.status_event())])
    counted = Counted(redis_store, monkeypatch)
    assert await redis_store.finish(job.id, job.token, Outcome.succeeded(2)) is not None
    assert counted.take() == ["EVALSHA"]


async def test_a_change_made_elsewhere_costs_a_retry_never_a_wrong_write(redis_store: RedisStore):
    await redis_store.create(new_job())
    job = await redis_store.claim("w", ["report"], 30)
    assert job is not None
    namespace = redis_store.keys.prefix.removeprefix("outlast:").rstrip(":")
    other = RedisStore(redis_store.url, namespace=namespace)  # another node on the same data
    await other.open()
    try:
        await other.request_cancel(job.id)  # this process's copy of the job is stale now
    finally:
        await other.close()
    assert await redis_store.record(job.id, job.token, [], {"current": 2})
    stored = await redis_store.get(job.id)
    assert stored is not None and stored.cancel_requested and stored.progress == {"current": 2}
    assert [e.type for e in await redis_store.events(job.id)] == ["status", "status"]  # nothing lost or doubled
