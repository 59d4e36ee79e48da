"""The store contract: what the runner and the edge rely on, for every store."""

from __future__ import annotations

import asyncio
import time

import pytest

from outlast.exceptions import IdempotencyConflict, InvalidRequest, JobNotFinished
from outlast.jobs import WORKER_LOST, ErrorInfo, Event, Job, JobStatus, Outcome
from outlast.stores import JobStore, ListQuery
from outlast.stores.base import StoresRanJobs


def new_job(name: str = "report", retention_s: float = 60.0, max_attempts: int = 3, **input: object) -> Job:
    return Job.new(name, dict(input), max_attempts=max_attempts, retention_s=retention_s)


async def test_create_then_get(store: JobStore):
    job, created = await store.create(new_job(rows=3))
    assert created
    got = await store.get(job.id)
    assert got is not None
    assert got.status is JobStatus.QUEUED
    assert got.input == {"rows": 3}
    assert got.attempt == 1
    assert got.queue_position == 0
    assert await store.get("j_missing") is None


async def test_first_event_is_the_queued_status(store: JobStore):
    job, _ = await store.create(new_job())
    [event] = await store.events(job.id)
    assert (event.seq, event.type, event.data["status"]) == (1, "status", "queued")


async def test_queue_position_counts_jobs_ahead_of_the_same_name(store: JobStore):
    jobs = [(await store.create(new_job()))[0] for _ in range(3)]
    await store.create(new_job(name="other"))
    positions = [(await store.get(j.id)).queue_position for j in jobs]  # type: ignore[union-attr]
    assert positions == [0, 1, 2]
    await store.claim("w", ["report"], 30)
    assert (await store.get(jobs[2].id)).queue_position == 1  # type: ignore[union-attr]


async def test_idempotency_key_returns_the_same_job(store: JobStore):
    first, created = await store.create(Job.new("r", {"a": 1}, max_attempts=3, retention_s=60, idempotency_key="k"))
    again, created_again = await store.create(
        Job.new("r", {"a": 1}, max_attempts=3, retention_s=60, idempotency_key="k")
    )
    assert created and not created_again
    assert again.id == first.id
    with pytest.raises(IdempotencyConflict):
        await store.create(Job.new("r", {"a": 2}, max_attempts=3, retention_s=60, idempotency_key="k"))
    other_owner, created_other = await store.create(
        Job.new("r", {"a": 1}, max_attempts=3, retention_s=60, idempotency_key="k", owner="someone")
    )
    assert created_other and other_owner.id != first.id


async def test_concurrent_creates_with_one_key_make_one_job(store: JobStore):
    results = await asyncio.gather(
        *(
            store.create(Job.new("r", {"a": 1}, max_attempts=3, retention_s=60, idempotency_key="same"))
            for _ in range(20)
        )
    )
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_claim_is_fifo_and_leases_the_job(store: JobStore):
    first, _ = await store.create(new_job())
    second, _ = await store.create(new_job())
    claimed = await store.claim("w1", ["report"], 30)
    assert claimed is not None
    assert claimed.id == first.id
    assert claimed.status is JobStatus.RUNNING
    assert claimed.worker == "w1"
    assert claimed.token == 1
    assert claimed.lease_until is not None and claimed.lease_until > time.time() + 25
    assert (await store.claim("w2", ["report"], 30)).id == second.id  # type: ignore[union-attr]
    assert await store.claim("w3", ["report"], 30) is None


async def test_claim_takes_only_the_names_asked_for(store: JobStore):
    await store.create(new_job(name="a"))
    assert await store.claim("w", ["b"], 30) is None
    assert await store.claim("w", [], 30) is None
    assert (await store.claim("w", ["b", "a"], 30)) is not None


async def test_concurrent_claims_never_share_a_job(store: JobStore):
    for _ in range(10):
        await store.create(new_job())
    claims = await asyncio.gather(*(store.claim(f"w{i}", ["report"], 30) for i in range(25)))
    ids = [job.id for job in claims if job is not None]
    assert len(ids) == 10
    assert len(set(ids)) == 10


async def test_finish_writes_once_and_only_with_the_current_token(store: JobStore):
    job, _ = await store.create(new_job())
    claimed = await store.claim("w", ["report"], 30)
    assert claimed is not None
    assert await store.finish(job.id, claimed.token + 1, Outcome.succeeded("stale")) is None
    done = await store.finish(job.id, claimed.token, Outcome.succeeded({"ok": True}))
    assert done is not None
    assert done.status is JobStatus.SUCCEEDED
    assert done.result == {"ok": True}
    assert done.expires_at == pytest.approx(done.finished_at + 60)  # type: ignore[operator]
    assert await store.finish(job.id, claimed.token, Outcome.succeeded("twice")) is None
    stored = await store.get(job.id)
    assert stored is not None and stored.result == {"ok": True}
    statuses = [e.data["status"] for e in await store.events(job.id) if e.type == "status"]
    assert statuses == ["queued", "running", "succeeded"]


async def test_a_result_of_none_is_kept(store: JobStore):
    job, _ = await store.create(new_job())
    claimed = await store.claim("w", ["report"], 30)
    assert claimed is not None
    await store.finish(job.id, claimed.token, Outcome.succeeded(None))
    stored = await store.get(job.id)
    assert stored is not None
    assert stored.status is JobStatus.SUCCEEDED and stored.result is None


async def test_failure_keeps_its_error(store: JobStore):
    job, _ = await store.create(new_job())
    claimed = await store.claim("w", ["report"], 30)
    assert claimed is not None
    await store.finish(job.id, claimed.token, Outcome.failed(ErrorInfo("bad_thing", "it broke", 422)))
    stored = await store.get(job.id)
    assert stored is not None and stored.error is not None
    assert (stored.status, stored.error.type, stored.error.status) == (JobStatus.FAILED, "bad_thing", 422)
    assert stored.to_public()["error"] == {"type": "bad_thing", "message": "it broke"}


async def test_retry_requeues_with_attempt_plus_one_until_attempts_are_spent(store: JobStore):
    job, _ = await store.create(new_job(max_attempts=2))
    error = ErrorInfo("flaky", "try again", 503)
    claimed = await store.claim("w", ["report"], 30)
    assert claimed is not None
    retried = await store.finish(job.id, claimed.token, Outcome.retry(error, time.time() + 60))
    assert retried is not None
    assert (retried.status, retried.attempt) == (JobStatus.QUEUED, 2)
    assert await store.claim("w", ["report"], 30) is None  # not due yet
    await store.finish(job.id, claimed.token, Outcome.succeeded(1))  # the old token is stale now
    assert (await store.get(job.id)).status is JobStatus.QUEUED  # type: ignore[union-attr]


async def test_retry_due_now_is_claimed_again_and_last_attempt_fails(store: JobStore):
    job, _ = await store.create(new_job(max_attempts=2))
    error = ErrorInfo("flaky", "try again", 503)
    first = await store.claim("w", ["report"], 30)
    assert first is not None
    await store.finish(job.id, first.token, Outcome.retry(error, time.time()))
    second = await store.claim("w", ["report"], 30)
    assert second is not None and second.attempt == 2 and second.token == first.token + 1
    failed = await store.finish(job.id, second.token, Outcome.retry(error, time.time()))
    assert failed is not None
    assert (failed.status, failed.error.type) == (JobStatus.FAILED, "flaky")  # type: ignore[union-attr]


async def test_record_appends_numbered_events_and_progress(store: JobStore):
    job, _ = await store.create(new_job())
    claimed = await store.claim("w", ["report"], 30)
    assert claimed is not None
    progress = {"current": 1, "total": 2, "message": None}
    ok = await store.record(
        job.id, claimed.token, [("log", {"level": "info", "message": "hi"}), ("progress", progress)], progress
    )
    assert ok
    assert not await store.record(job.id, claimed.token + 1, [("log", {"level": "info", "message": "x"})], None)
    events = await store.events(job.id)
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert [e.type for e in events] == ["status", "status", "log", "progress"]
    assert [e.seq for e in await store.events(job.id, after=2)] == [3, 4]
    assert (await store.get(job.id)).progress == progress  # type: ignore[union-attr]


async def test_heartbeat_extends_leases_and_reports_cancel_and_loss(store: JobStore):
    a, _ = await store.create(new_job())
    b, _ = await store.create(new_job())
    ca = await store.claim("w", ["report"], 1)
    cb = await store.claim("w", ["report"], 1)
    assert ca is not None and cb is not None
    await store.request_cancel(a.id)
    result = await store.heartbeat({a.id: ca.token, b.id: cb.token + 7}, 60)
    assert result.cancel == {a.id}
    assert result.lost == {b.id}
    assert (await store.get(a.id)).lease_until > time.time() + 50  # type: ignore[operator, union-attr]
    assert await store.cancel_requests([a.id, b.id]) == {a.id}


async def test_cancel_queued_is_immediate_and_terminal_is_unchanged(store: JobStore):
    job, _ = await store.create(new_job())
    canceled = await store.request_cancel(job.id)
    assert canceled is not None and canceled.status is JobStatus.CANCELED
    assert canceled.to_public()["error"]["type"] == "canceled"
    again = await store.request_cancel(job.id)
    assert again is not None and again.status is JobStatus.CANCELED
    assert await store.claim("w", ["report"], 30) is None
    assert await store.request_cancel("j_missing") is None


async def test_cancel_running_only_flags_it(store: JobStore):
    job, _ = await store.create(new_job())
    await store.claim("w", ["report"], 30)
    flagged = await store.request_cancel(job.id)
    assert flagged is not None
    assert flagged.status is JobStatus.RUNNING and flagged.cancel_requested


async def test_expired_lease_is_reclaimed_then_fails_with_worker_lost(store: JobStore):
    job, _ = await store.create(new_job(max_attempts=2))
    first = await store.claim("w1", ["report"], 0.01)
    assert first is not None
    await asyncio.sleep(0.05)  # let the lease lapse: time passing is the event here
    [reclaimed] = await store.reclaim_expired()
    assert (reclaimed.status, reclaimed.attempt) == (JobStatus.QUEUED, 2)
    assert await store.finish(job.id, first.token, Outcome.succeeded("late")) is None  # fenced off
    second = await store.claim("w2", ["report"], 0.01)
    assert second is not None and second.attempt == 2
    await asyncio.sleep(0.05)
    [failed] = await store.reclaim_expired()
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None and failed.error.type == WORKER_LOST
    assert await store.reclaim_expired() == []


async def test_reclaim_leaves_live_leases_alone(store: JobStore):
    await store.create(new_job())
    await store.claim("w", ["report"], 30)
    assert await store.reclaim_expired() == []


async def test_delete_only_terminal_jobs(store: JobStore):
    job, _ = await store.create(new_job())
    with pytest.raises(JobNotFinished):
        await store.delete(job.id)
    await store.request_cancel(job.id)
    assert await store.delete(job.id)
    assert await store.get(job.id) is None
    assert await store.events(job.id) == []
    assert not await store.delete(job.id)


async def test_purge_forgets_expired_jobs_and_frees_their_key(store: JobStore):
    old = Job.new("r", {}, max_attempts=1, retention_s=0, idempotency_key="k")
    old, _ = await store.create(old)
    keep, _ = await store.create(new_job())
    await store.request_cancel(old.id)
    assert await store.purge_expired() == [old.id]
    assert await store.get(old.id) is None
    assert await store.get(keep.id) is not None
    again, created = await store.create(Job.new("r", {}, max_attempts=1, retention_s=0, idempotency_key="k"))
    assert created and again.id != old.id


async def test_list_pages_newest_first_with_filters(store: JobStore):
    made = []
    for i in range(7):
        job, _ = await store.create(new_job(name="a" if i % 2 else "b"))
        made.append(job.id)
    seen, cursor = [], None
    while True:
        page = await store.list_jobs(ListQuery(limit=3, cursor=cursor))
        seen += [j.id for j in page.jobs]
        if page.next is None:
            break
        cursor = page.next
    assert seen == list(reversed(made))
    only_a = await store.list_jobs(ListQuery(name="a"))
    assert {j.id for j in only_a.jobs} == set(made[1::2])
    await store.request_cancel(made[0])
    canceled = await store.list_jobs(ListQuery(status=JobStatus.CANCELED))
    assert [j.id for j in canceled.jobs] == [made[0]]
    with pytest.raises(InvalidRequest):
        await store.list_jobs(ListQuery(cursor="not-a-cursor!"))


async def test_listeners_hear_every_event_in_order(store: JobStore):
    job, _ = await store.create(new_job())
    with store.hub.listen(job.id) as listener:
        claimed = await store.claim("w", ["report"], 30)
        assert claimed is not None
        await store.record(job.id, claimed.token, [("log", {"level": "info", "message": "x"})], None)
        await store.finish(job.id, claimed.token, Outcome.succeeded(1))
        assert await listener.wait(1)
        events = listener.drain()
    assert [e.seq for e in events] == [2, 3, 4]
    assert events[-1].data["status"] == "succeeded"


async def test_terminal_status_never_changes(store: JobStore):
    job, _ = await store.create(new_job())
    claimed = await store.claim("w", ["report"], 30)
    assert claimed is not None
    await store.finish(job.id, claimed.token, Outcome.failed(ErrorInfo("x", "y")))
    await store.request_cancel(job.id)
    assert await store.finish(job.id, claimed.token, Outcome.succeeded(1)) is None
    assert (await store.get(job.id)).status is JobStatus.FAILED  # type: ignore[union-attr]


async def test_queue_positions_of_many_jobs_at_once(store: JobStore):
    jobs = [(await store.create(new_job()))[0] for _ in range(4)]
    await store.create(new_job(name="other"))
    await store.claim("w", ["report"], 30)
    positions = await store.queue_positions("report", [j.id for j in jobs])
    assert positions == {jobs[1].id: 0, jobs[2].id: 1, jobs[3].id: 2}
    assert await store.queue_positions("report", []) == {}
    assert await store.queue_positions("other", [jobs[1].id]) == {}


async def test_webhook_deliveries_are_written_with_their_events(store: JobStore):
    job = Job.new(
        "report", {}, max_attempts=3, retention_s=60, webhook_url="https://example.com/h",
        webhook_events=("started", "completed"),
    )  # fmt: skip
    job, _ = await store.create(job)
    claimed = await store.claim("w", ["report"], 30)
    assert claimed is not None
    await store.finish(job.id, claimed.token, Outcome.succeeded({"ok": 1}))
    deliveries = await store.claim_deliveries(lease_s=60, limit=10)
    assert sorted(d.event for d in deliveries) == ["completed", "started"]
    assert all(d.url == "https://example.com/h" and d.job_id == job.id for d in deliveries)
    completed = next(d for d in deliveries if d.event == "completed")
    assert completed.payload["type"] == "job.succeeded"
    assert completed.payload["data"]["status"] == "succeeded"
    assert completed.payload["data"]["result"] == {"ok": 1}
    assert await store.claim_deliveries(lease_s=60, limit=10) == []  # leased: not due again yet
    completed.state, completed.attempt, completed.last_status = "delivered", 1, 200
    await store.save_delivery(completed)
    states = {d.event: (d.state, d.attempt) for d in await store.deliveries(job.id)}
    assert states["completed"] == ("delivered", 1)
    assert states["started"] == ("pending", 0)
    await store.delete(job.id)
    assert await store.deliveries(job.id) == []


async def test_a_lapsed_delivery_lease_makes_it_due_again(store: JobStore):
    job = Job.new(
        "report", {}, max_attempts=3, retention_s=60, webhook_url="https://e.com", webhook_events=("completed",)
    )
    job, _ = await store.create(job)
    await store.request_cancel(job.id)
    [first] = await store.claim_deliveries(lease_s=0.01, limit=10)
    await asyncio.sleep(0.05)  # the sender "crashed": its lease lapses
    [again] = await store.claim_deliveries(lease_s=60, limit=10)
    assert again.id == first.id  # the same webhook-id on the retry


async def test_settings_keep_the_first_value(store: JobStore):
    assert await store.setting("secret", "a") == "a"
    assert await store.setting("secret", "b") == "a"


async def test_queue_length_counts_queued_jobs_of_a_name(store: JobStore):
    for _ in range(3):
        await store.create(new_job())
    await store.create(new_job(name="other"))
    await store.claim("w", ["report"], 30)
    assert await store.queue_length("report") == 2
    assert await store.queue_length("nothing") == 0


def ran_here(job: Job, lease_s: float, outcome: Outcome | None = None) -> tuple[Job, list[Event]]:
    """A job as a worker ran it before anything was stored, and its events (as `runner.Provisional` makes them)."""
    job.start("w", lease_s, time.time())
    events = [Event(job.id, 1, *job.status_event())]
    if outcome is not None:
        outcome.apply(job, time.time())
        events.append(Event(job.id, 2, *job.status_event()))
    job.last_seq = len(events)
    return job, events


async def test_put_stores_a_job_that_ran_and_ended(store: JobStore):
    assert isinstance(store, StoresRanJobs)
    job, events = ran_here(new_job(rows=1), 30, Outcome.succeeded({"rows": 1}))
    with store.hub.listen(job.id) as listener:
        await store.put(job, events)
        assert [e.seq for e in listener.drain()] == [1, 2]  # published once written
    got = await store.get(job.id)
    assert got is not None and got.status is JobStatus.SUCCEEDED and got.result == {"rows": 1}
    assert got.lease_until is None and got.expires_at is not None
    assert [(e.seq, e.data["status"]) for e in await store.events(job.id)] == [(1, "running"), (2, "succeeded")]
    assert [j.id for j in (await store.list_jobs(ListQuery())).jobs] == [job.id]
    assert await store.claim("w2", ["report"], 30) is None  # nothing to claim
    assert await store.delete(job.id)


async def test_put_stores_a_running_job_leased_to_its_worker(store: JobStore):
    assert isinstance(store, StoresRanJobs)
    job, events = ran_here(new_job(), 30)
    await store.put(job, events)
    got = await store.get(job.id)
    assert got is not None and got.status is JobStatus.RUNNING and got.token == job.token
    assert got.lease_until is not None and got.lease_until > time.time()
    assert await store.record(job.id, job.token, [("log", {"message": "hi"})], {"current": 1}) is True
    result = await store.heartbeat({job.id: job.token}, 30)
    assert result.lost == frozenset()
    finished = await store.finish(job.id, job.token, Outcome.succeeded(7))
    assert finished is not None and finished.status is JobStatus.SUCCEEDED
    assert [e.seq for e in await store.events(job.id)] == [1, 2, 3]


async def test_a_put_job_whose_lease_lapses_is_reclaimed_and_queued_last(store: JobStore):
    assert isinstance(store, StoresRanJobs)
    earlier, _ = await store.create(new_job(label="earlier"))
    job, events = ran_here(new_job(label="ran"), 0.01)
    await store.put(job, events)
    await asyncio.sleep(0.05)
    [reclaimed] = await store.reclaim_expired()
    assert reclaimed.id == job.id and reclaimed.status is JobStatus.QUEUED and reclaimed.attempt == 2
    first = await store.claim("w", ["report"], 30)
    second = await store.claim("w", ["report"], 30)
    assert (first.id, second.id) == (earlier.id, job.id)  # type: ignore[union-attr]
