"""`create_started`, for the stores that offer it: a job created already claimed, never ahead of a due one."""

from __future__ import annotations

import time

import pytest

from outlast.exceptions import IdempotencyConflict
from outlast.jobs import ErrorInfo, Job, JobStatus, Outcome
from outlast.stores import JobStore
from outlast.stores.base import StartsAtOnce


def new_job(name: str = "report", key: str | None = None, **input: object) -> Job:
    return Job.new(name, dict(input), max_attempts=3, retention_s=60.0, idempotency_key=key)


@pytest.fixture
def starter(store: JobStore) -> StartsAtOnce:
    if not isinstance(store, StartsAtOnce):
        pytest.skip("this store always queues")
    return store


async def test_with_nothing_queued_the_job_is_created_running(store: JobStore, starter: StartsAtOnce):
    with store.hub.listen_status() as listener:
        job, created = await starter.create_started(new_job(rows=1), "w1", ["report"], 30)
        heard = [(e.seq, e.data["status"]) for e in listener.drain() if e.job_id == job.id]
    assert created
    assert (job.status, job.worker, job.token, job.attempt) == (JobStatus.RUNNING, "w1", 1, 1)
    assert job.lease_until is not None and job.lease_until > time.time() + 20
    assert [(e.seq, e.data["status"]) for e in await store.events(job.id)] == [(1, "queued"), (2, "running")]
    assert heard == [(1, "queued"), (2, "running")]
    assert await store.claim("w2", ["report"], 30) is None  # nobody else can take it
    finished = await store.finish(job.id, job.token, Outcome.succeeded({"ok": True}))
    assert finished is not None and finished.status is JobStatus.SUCCEEDED


async def test_a_due_queued_job_is_never_jumped_over(store: JobStore, starter: StartsAtOnce):
    older, _ = await store.create(new_job())
    job, created = await starter.create_started(new_job(), "w1", ["report", "other"], 30)
    assert created and job.status is JobStatus.QUEUED and job.worker is None
    assert [e.data["status"] for e in await store.events(job.id)] == ["queued"]
    first = await store.claim("w1", ["report"], 30)
    assert first is not None and first.id == older.id


async def test_a_due_job_of_any_name_the_worker_serves_comes_first(store: JobStore, starter: StartsAtOnce):
    # (Which of two names a claim takes first is the store's choice: Redis rotates between them.)
    await store.create(new_job(name="other"))
    job, created = await starter.create_started(new_job(), "w1", ["report", "other"], 30)
    assert created and job.status is JobStatus.QUEUED and job.worker is None


async def test_jobs_of_names_the_worker_does_not_serve_or_not_yet_due_are_no_obstacle(
    store: JobStore, starter: StartsAtOnce
):
    await store.create(new_job(name="elsewhere"))
    retry_later, _ = await store.create(new_job())
    claimed = await store.claim("w0", ["report"], 30)
    assert claimed is not None and claimed.id == retry_later.id
    await store.finish(
        claimed.id, claimed.token, Outcome.retry(ErrorInfo("boom", "it broke", 500), time.time() + 60)
    )  # queued, not due
    job, created = await starter.create_started(new_job(), "w1", ["report"], 30)
    assert created and job.status is JobStatus.RUNNING


async def test_an_idempotency_key_returns_the_stored_job_untouched(store: JobStore, starter: StartsAtOnce):
    first, _ = await store.create(new_job(key="k", rows=1))
    again, created = await starter.create_started(new_job(key="k", rows=1), "w1", ["report"], 30)
    assert not created and again.id == first.id and again.status is JobStatus.QUEUED
    with pytest.raises(IdempotencyConflict):
        await starter.create_started(new_job(key="k", rows=2), "w1", ["report"], 30)


async def test_a_lapsed_lease_of_a_job_started_at_once_is_reclaimed(store: JobStore, starter: StartsAtOnce):
    job, _ = await starter.create_started(new_job(), "w1", ["report"], 0.01)
    time.sleep(0.05)
    [reclaimed] = await store.reclaim_expired()
    assert reclaimed.id == job.id and reclaimed.status is JobStatus.QUEUED and reclaimed.attempt == 2
    assert await store.finish(job.id, job.token, Outcome.succeeded(None)) is None  # the stale token is refused


async def test_a_job_started_at_once_has_its_started_webhook(store: JobStore, starter: StartsAtOnce):
    hooked = Job.new(
        "report", {}, max_attempts=3, retention_s=60, webhook_url="https://example.com/h",
        webhook_events=("started", "completed"),
    )  # fmt: skip
    job, created = await starter.create_started(hooked, "w1", ["report"], 30)
    assert created and job.status is JobStatus.RUNNING
    [started] = await store.claim_deliveries(lease_s=60, limit=10)
    assert (started.job_id, started.event, started.payload["data"]["status"]) == (job.id, "started", "running")
