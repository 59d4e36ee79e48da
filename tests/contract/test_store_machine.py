"""The store contract as a state machine: random sequences of submits, claims, heartbeats,
crashes, finishes (with live and stale tokens), cancels, reclaims, purges and deletes,
run against every store and checked after each step against a model of the lifecycle.

Each example gets a store of its own (a fresh SQLite file, Redis namespace or PostgreSQL schema) and
one event loop that drives it from Hypothesis' synchronous state machine.

Time: the stores read `time.time()`; here they read `CLOCK`, the real clock plus an
offset the machine moves forward (`wait`), so leases lapse, retries fall due and
retention runs out in whole virtual seconds, without sleeping and without races:
whether something is due never depends on how fast a step ran (Hypothesis needs the
same steps to behave the same when it replays them).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Coroutine
from typing import Any, ClassVar, NamedTuple, TypeVar
from unittest import mock

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from outlast.exceptions import IdempotencyConflict, JobNotFinished
from outlast.jobs import CANCELED, WORKER_LOST, ErrorInfo, Event, Job, JobStatus, Outcome, job_record
from outlast.stores import JobStore, ListQuery, MemoryStore, SQLiteStore, open_store
from outlast.stores import memory as memory_module
from outlast.stores import postgres as postgres_module
from outlast.stores import redis as redis_module
from outlast.stores import sqlite as sqlite_module
from outlast.stores.base import MAX_LIST_LIMIT, StoresRanJobs
from tests.contract.conftest import REDIS_URL, STORES, drop_namespace, drop_schema, redis_or_skip

T = TypeVar("T")

SETTINGS = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    # Shrinking a failure of a machine this size takes minutes (past the suite's timeout):
    # a failure is reported as found, up to 30 steps (and replayed first on the next run,
    # from .hypothesis/). Add Phase.shrink here to minimise it.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

WORKER = "w"
NAMES = ("a", "b")
# Virtual seconds. A step of real time is far below all of these, so a lease, a retry
# or a retention is either surely over or surely not whenever the machine looks.
WAIT_S = 100.0  # what `wait` moves the clock by
TICK_S = 0.001  # what `reclaim` moves it by: past leases of 0 s
LEASE_S = 250.0  # lapses after three waits
RETRY_DELAY_S = 50.0  # a retry due after one wait
LEASES = st.sampled_from([LEASE_S, LEASE_S, 0.0])  # 0 s: the lease has lapsed already
RETENTIONS = st.sampled_from([0.0, 150.0])  # purged at once, or after two waits
MAX_LIVE_JOBS = 4
FAILURE = ErrorInfo("boom", "it broke", 500)
FLAKY = ErrorInfo("flaky", "try again", 503)
RESULTS = ({"rows": 3}, [1, 2], 0, "", False)  # never None: a result exists iff the job succeeded
FINISHES = ("succeeded", "failed", "canceled", "retry_now", "retry_later")
SUBMITS = st.tuples(
    st.sampled_from(NAMES),  # name
    st.integers(1, 2),  # input value
    st.none() | st.sampled_from(["k1", "k2"]),  # idempotency key
    RETENTIONS,
    st.integers(1, 3),  # max attempts
)
Submit = tuple[str, int, str | None, float, int]


class Clock:
    """`time` as the stores see it: the real clock plus however far the machine moved it."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset


CLOCK = Clock()


class Lease(NamedTuple):
    """A fencing token as a worker holds it; `label` names the job in failing examples."""

    label: str
    token: int

    def __repr__(self) -> str:
        return f"{self.label}@{self.token}"


@dataclasses.dataclass
class Model:
    """What the store should say about one job. Times are virtual (`CLOCK.offset`)."""

    label: str
    id: str
    order: int  # submit order: claims are FIFO by it within a name
    name: str
    input: dict[str, Any]
    key: str | None
    retention_s: float
    max_attempts: int
    due: float
    status: JobStatus = JobStatus.QUEUED
    attempt: int = 1
    token: int = 0
    lease_until: float = 0.0
    expires: float = 0.0
    cancel_requested: bool = False
    progress: dict[str, Any] | None = None
    result: Any = None
    error_type: str | None = None
    events: int = 1
    gone: bool = False
    frozen: dict[str, Any] | None = None  # the stored job once it was first seen terminal
    attempt_seen: int = 1
    ran_first: bool = False  # put by a worker that ran it before it was stored

    def __repr__(self) -> str:
        return self.label


Snapshot = tuple[dict[str, Any] | None, list[Event]]


class StoreMachine(RuleBasedStateMachine):
    kind: ClassVar[str]
    database: ClassVar[str] = ""  # PostgreSQL: the URL of this run's database

    def __init__(self) -> None:
        super().__init__()
        CLOCK.offset = 0.0
        self.patches = contextlib.ExitStack()
        for module in (memory_module, sqlite_module, redis_module, postgres_module):
            self.patches.enter_context(mock.patch.object(module, "time", CLOCK))
        self.loop = asyncio.new_event_loop()
        self.tmp: str | None = None
        self.namespace: str | None = None
        self.schema: str | None = None
        self.store: JobStore
        try:
            if self.kind == "memory":
                self.store = MemoryStore()
            elif self.kind == "sqlite":
                self.tmp = tempfile.mkdtemp(prefix="outlast-machine-")
                self.store = SQLiteStore(os.path.join(self.tmp, "jobs.db"))
            elif self.kind == "postgres":
                self.schema = "machine_" + secrets.token_hex(6)
                self.store = open_store(f"{self.database}?schema={self.schema}")
            else:
                self.namespace = "machine-" + secrets.token_hex(6)
                self.store = open_store(f"{REDIS_URL}?namespace={self.namespace}")
            self.run(self.store.open())
        except BaseException:
            self.release()
            raise
        self.jobs: list[Model] = []
        self.by_id: dict[str, Model] = {}
        self.keys: dict[str, Model] = {}  # idempotency key -> the live job it names
        self.issued: list[Lease] = []  # every token ever handed out
        self.held: list[Lease] = []  # tokens live workers still hold

    # -- plumbing -----------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
            if self.namespace is not None:
                self.run(drop_namespace(self.namespace))
            if self.schema is not None:
                self.run(drop_schema(self.database, self.schema))
        finally:
            self.release()

    def release(self) -> None:
        try:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
            self.patches.close()
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def now(self) -> float:
        return CLOCK.offset

    def model(self, label: str) -> Model:
        return next(m for m in self.jobs if m.label == label)

    def live(self) -> list[Model]:
        return [m for m in self.jobs if not m.gone]

    def pick_job(self, data: st.DataObject) -> Model:
        """Any job ever submitted, a live one more often."""
        labels = [m.label for m in self.jobs]
        live = [m.label for m in self.live()] or labels
        return self.model(data.draw(st.sampled_from(live) | st.sampled_from(labels), label="job"))

    def valid(self, lease: Lease) -> bool:
        m = self.model(lease.label)
        return not m.gone and m.status is JobStatus.RUNNING and m.token == lease.token

    def stale(self) -> list[Lease]:
        return [lease for lease in self.issued if not self.valid(lease)]

    def current(self) -> list[Lease]:
        return [lease for lease in self.issued if self.valid(lease)]

    def pick_lease(self, data: st.DataObject) -> Lease:
        """Any token ever handed out, a current one more often."""
        return data.draw(st.sampled_from(self.current() or self.issued) | st.sampled_from(self.issued), label="lease")

    def lapsed(self, m: Model) -> bool:
        """Whether the lease of `m` has run out (by the time `reclaim` looks)."""
        return m.status is JobStatus.RUNNING and m.lease_until < self.now + TICK_S

    def expired(self, m: Model) -> bool:
        return m.status.is_terminal and m.expires <= self.now

    async def snapshot(self, m: Model) -> Snapshot:
        job = await self.store.get(m.id)
        return (None if job is None else job_record(job)), await self.store.events(m.id)

    def unchanged(self, m: Model, before: Snapshot) -> None:
        assert self.run(self.snapshot(m)) == before, f"a stale token changed {m}"

    def end(self, m: Model, status: JobStatus, error_type: str | None = None) -> None:
        m.status = status
        m.error_type = error_type
        m.expires = self.now + m.retention_s
        m.events += 1

    def requeue(self, m: Model, due: float, error_type: str | None) -> None:
        m.status = JobStatus.QUEUED
        m.attempt += 1
        m.due = due
        m.progress = None
        m.error_type = error_type
        m.events += 1

    # -- rules --------------------------------------------------------------------

    @initialize(jobs=st.lists(SUBMITS, min_size=1, max_size=3))
    def some_jobs(self, jobs: list[Submit]) -> None:
        for job in jobs:
            self.submit_one(*job)

    @precondition(lambda self: len(self.live()) < MAX_LIVE_JOBS)
    @rule(job=SUBMITS)
    def submit(self, job: Submit) -> None:
        self.submit_one(*job)

    def submit_one(self, name: str, value: int, key: str | None, retention_s: float, max_attempts: int) -> None:
        job = Job.new(
            name,
            {"x": value},
            max_attempts=max_attempts,
            retention_s=retention_s,
            idempotency_key=key,
            now=CLOCK.time(),
        )
        existing = None if key is None else self.keys.get(key)
        if existing is not None and (existing.name, existing.input) != (name, job.input):
            with pytest.raises(IdempotencyConflict):
                self.run(self.store.create(job))
            return
        stored, created = self.run(self.store.create(job))
        if existing is not None:
            assert not created and stored.id == existing.id, "an idempotency key named two jobs"
            return
        assert created and stored.id == job.id
        assert stored.status is JobStatus.QUEUED and stored.attempt == 1
        m = Model(
            label=f"job{len(self.jobs)}",
            id=job.id,
            order=len(self.jobs),
            name=name,
            input=job.input,
            key=key,
            retention_s=retention_s,
            max_attempts=max_attempts,
            due=self.now,
        )
        self.jobs.append(m)
        self.by_id[m.id] = m
        if key is not None:
            self.keys[key] = m

    @precondition(lambda self: len(self.live()) < MAX_LIVE_JOBS)
    @rule(
        job=SUBMITS,
        lease_s=LEASES,
        ended=st.none() | st.sampled_from(["succeeded", "failed", "canceled"]),
        result=st.sampled_from(RESULTS),
    )
    def put_ran(self, job: Submit, lease_s: float, ended: str | None, result: Any) -> None:
        """A job run at once by a worker before it was stored: written running (leased), or ended."""
        name, value, _, retention_s, max_attempts = job
        assert isinstance(self.store, StoresRanJobs)
        ran = Job.new(name, {"x": value}, max_attempts=max_attempts, retention_s=retention_s, now=CLOCK.time())
        ran.start(WORKER, lease_s, CLOCK.time())
        events = [Event(ran.id, 1, *ran.status_event())]
        if ended is not None:
            self.outcome(ended, result).apply(ran, CLOCK.time())
            events.append(Event(ran.id, 2, *ran.status_event()))
        ran.last_seq = len(events)
        self.run(self.store.put(ran, events))
        m = Model(
            label=f"job{len(self.jobs)}",
            id=ran.id,
            order=len(self.jobs),
            name=name,
            input=ran.input,
            key=None,
            retention_s=retention_s,
            max_attempts=max_attempts,
            due=self.now,
            status=JobStatus.RUNNING,
            token=1,
            lease_until=self.now + lease_s,
            ran_first=True,
        )
        self.jobs.append(m)
        self.by_id[m.id] = m
        if ended == "succeeded":
            m.result = result
            self.end(m, JobStatus.SUCCEEDED)
        elif ended is not None:
            self.end(m, JobStatus(ended), FAILURE.type if ended == "failed" else CANCELED)
        lease = Lease(m.label, m.token)
        self.issued.append(lease)
        if ended is None:
            self.held.append(lease)

    @precondition(lambda self: any(m.status is JobStatus.QUEUED for m in self.live()))
    @rule(names=st.sampled_from([("a",), ("b",), ("a", "b")]), lease_s=LEASES)
    def claim(self, names: tuple[str, ...], lease_s: float) -> None:
        claimed = self.run(self.store.claim(WORKER, names, lease_s))
        due = [m for m in self.live() if m.status is JobStatus.QUEUED and m.name in names and m.due <= self.now]
        if claimed is None:
            assert not due, f"claim found nothing while {due} were due"
            return
        m = self.by_id[claimed.id]
        assert m in due, f"claimed {m}, which is not a due queued job"
        ahead = [o for o in due if o.name == m.name and o.order < m.order]
        assert not ahead, f"claimed {m} before {ahead} (not FIFO)"
        assert claimed.status is JobStatus.RUNNING and claimed.worker == WORKER
        assert (claimed.token, claimed.attempt) == (m.token + 1, m.attempt)
        m.status = JobStatus.RUNNING
        m.token += 1
        m.lease_until = self.now + lease_s
        m.events += 1
        lease = Lease(m.label, m.token)
        self.issued.append(lease)
        self.held.append(lease)

    @precondition(lambda self: self.current())
    @rule(data=st.data(), lease_s=LEASES)
    def heartbeat(self, data: st.DataObject, lease_s: float) -> None:
        lease = self.pick_lease(data)
        m = self.model(lease.label)
        if not self.valid(lease):
            before = self.run(self.snapshot(m))
            beat = self.run(self.store.heartbeat({m.id: lease.token}, lease_s))
            assert beat.lost == {m.id} and not beat.cancel
            self.unchanged(m, before)
            return
        beat = self.run(self.store.heartbeat({m.id: lease.token}, lease_s))
        assert not beat.lost
        assert beat.cancel == ({m.id} if m.cancel_requested else set())
        m.lease_until = self.now + lease_s

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        """A worker dies: its lease is forgotten (and its token stale once the job is reclaimed)."""
        self.held.remove(data.draw(st.sampled_from(self.held), label="lease"))

    def outcome(self, finish: str, result: Any) -> Outcome:
        if finish == "succeeded":
            return Outcome.succeeded(result)
        if finish == "failed":
            return Outcome.failed(FAILURE)
        if finish == "canceled":
            return Outcome.canceled()
        return Outcome.retry(FLAKY, CLOCK.time() + (RETRY_DELAY_S if finish == "retry_later" else 0))

    def stale_finish(self, lease: Lease, outcome: Outcome) -> None:
        m = self.model(lease.label)
        before = self.run(self.snapshot(m))
        assert self.run(self.store.finish(m.id, lease.token, outcome)) is None, f"stale {lease} finished {m}"
        self.unchanged(m, before)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), finish=st.sampled_from(FINISHES), result=st.sampled_from(RESULTS))
    def finish(self, data: st.DataObject, finish: str, result: Any) -> None:
        """A worker that holds a lease ends its attempt (its token may have gone stale)."""
        lease = data.draw(st.sampled_from(self.held), label="lease")
        self.held.remove(lease)
        outcome = self.outcome(finish, result)
        if not self.valid(lease):
            self.stale_finish(lease, outcome)
            return
        m = self.model(lease.label)
        done = self.run(self.store.finish(m.id, lease.token, outcome))
        assert done is not None, f"{lease} is current but finish refused it"
        if outcome.status is JobStatus.SUCCEEDED:
            m.result = result
            self.end(m, JobStatus.SUCCEEDED)
        elif outcome.status is JobStatus.CANCELED or (outcome.status is JobStatus.QUEUED and m.cancel_requested):
            self.end(m, JobStatus.CANCELED, CANCELED)
        elif outcome.status is JobStatus.QUEUED and m.attempt < m.max_attempts:
            self.requeue(m, self.now + (RETRY_DELAY_S if finish == "retry_later" else 0), FLAKY.type)
        else:
            self.end(m, JobStatus.FAILED, FAILURE.type if outcome.status is JobStatus.FAILED else FLAKY.type)
        assert (done.status, done.attempt) == (m.status, m.attempt)

    @precondition(lambda self: self.stale())
    @rule(data=st.data(), finish=st.sampled_from(FINISHES), result=st.sampled_from(RESULTS))
    def finish_stale(self, data: st.DataObject, finish: str, result: Any) -> None:
        """A token from a crashed worker or an older attempt tries to write."""
        lease = data.draw(st.sampled_from(self.stale()), label="lease")
        self.stale_finish(lease, self.outcome(finish, result))

    @precondition(lambda self: self.current())
    @rule(data=st.data(), logs=st.integers(0, 2), progress=st.none() | st.integers(0, 9))
    def record(self, data: st.DataObject, logs: int, progress: int | None) -> None:
        lease = self.pick_lease(data)
        m = self.model(lease.label)
        events = [("log", {"level": "info", "message": f"line {i}"}) for i in range(logs)]
        value = None if progress is None else {"current": progress}
        if not self.valid(lease):
            before = self.run(self.snapshot(m))
            assert not self.run(self.store.record(m.id, lease.token, events, value)), f"stale {lease} recorded"
            self.unchanged(m, before)
            return
        assert self.run(self.store.record(m.id, lease.token, events, value))
        m.events += logs
        if value is not None:
            m.progress = value

    @precondition(lambda self: any(not m.status.is_terminal for m in self.live()))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        m = self.pick_job(data)
        got = self.run(self.store.request_cancel(m.id))
        if m.gone:
            assert got is None
            return
        if m.status is JobStatus.QUEUED:
            self.end(m, JobStatus.CANCELED, CANCELED)
        elif m.status is JobStatus.RUNNING:
            m.cancel_requested = True
        assert got is not None and got.status is m.status

    @precondition(lambda self: any(self.lapsed(m) for m in self.live()))
    @rule()
    def reclaim(self) -> None:
        CLOCK.offset += TICK_S  # past leases of 0 s
        expired = [m for m in self.live() if self.lapsed(m)]
        reclaimed = self.run(self.store.reclaim_expired())
        assert sorted(j.id for j in reclaimed) == sorted(m.id for m in expired)
        for job in reclaimed:
            m = self.by_id[job.id]
            if m.cancel_requested:
                self.end(m, JobStatus.CANCELED, CANCELED)
            elif m.attempt < m.max_attempts:
                self.requeue(m, self.now, None)
            else:
                self.end(m, JobStatus.FAILED, WORKER_LOST)
            assert (job.status, job.attempt) == (m.status, m.attempt)

    @precondition(lambda self: any(self.expired(m) for m in self.live()))
    @rule()
    def purge(self) -> None:
        expected = [m for m in self.live() if self.expired(m)]
        purged = self.run(self.store.purge_expired())
        assert sorted(purged) == sorted(m.id for m in expected)
        for m in expected:
            self.forget(m)

    @precondition(lambda self: any(m.status.is_terminal for m in self.live()))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        m = self.pick_job(data)
        if m.gone:
            assert self.run(self.store.delete(m.id)) is False
        elif not m.status.is_terminal:
            with pytest.raises(JobNotFinished):
                self.run(self.store.delete(m.id))
        else:
            assert self.run(self.store.delete(m.id)) is True
            self.forget(m)

    def forget(self, m: Model) -> None:
        m.gone = True
        if m.key is not None and self.keys.get(m.key) is m:
            del self.keys[m.key]

    def waiting(self) -> bool:
        """Whether moving the clock would change anything: a lease, a retry (even of a job
        ended since: stores may keep it scheduled), a retention."""
        now = self.now
        return any(
            (m.due > now)
            or (not m.gone and m.status is JobStatus.RUNNING and m.lease_until >= now)
            or (not m.gone and m.status.is_terminal and m.expires > now)
            for m in self.jobs
        )

    @precondition(lambda self: self.waiting())
    @rule()
    def wait(self) -> None:
        CLOCK.offset += WAIT_S

    # -- what must hold after every step -------------------------------------------

    @invariant()
    def store_agrees_with_the_model(self) -> None:
        self.run(self.check())

    async def check(self) -> None:
        for m in self.jobs:
            job = await self.store.get(m.id)
            events = await self.store.events(m.id)
            if m.gone:
                assert job is None and events == [], f"{m} came back after it was forgotten"
                continue
            assert job is not None, f"{m} vanished"
            assert job.status is m.status, f"{m} is {job.status.value}, expected {m.status.value}"
            assert job.attempt >= m.attempt_seen, f"the attempt of {m} went down"
            m.attempt_seen = job.attempt
            assert job.attempt == m.attempt
            assert job.token == m.token
            public = job.to_public()
            if job.status is JobStatus.SUCCEEDED:
                assert public["result"] is not None and public["result"] == m.result
            else:
                assert public["result"] is None, f"{m} has a result but is {job.status.value}"
            if job.status in (JobStatus.FAILED, JobStatus.CANCELED):
                assert public["error"] is not None and public["error"]["type"] == m.error_type
            else:
                assert public["error"] is None
            if job.status is JobStatus.RUNNING:
                assert job.cancel_requested == m.cancel_requested
            assert public["progress"] == m.progress
            if job.is_terminal:
                if m.frozen is None:
                    m.frozen = job_record(job)
                assert job_record(job) == m.frozen, f"terminal {m} changed"
            # events: numbered 1..n without gaps, the last status event is the job's status
            assert [e.seq for e in events] == list(range(1, m.events + 1)), f"events of {m}"
            assert job.last_seq == m.events
            statuses = [e.data for e in events if e.type == "status"]
            # a job's first status: queued, or running for one that ran before it was stored
            assert statuses[0]["status"] == (JobStatus.RUNNING if m.ran_first else JobStatus.QUEUED).value
            assert statuses[-1]["status"] == job.status.value
            assert statuses[-1]["attempt"] == job.attempt
            assert statuses[-1]["result"] == public["result"]
        page = await self.store.list_jobs(ListQuery(limit=MAX_LIST_LIMIT))
        assert page.next is None
        assert sorted(j.id for j in page.jobs) == sorted(m.id for m in self.live())
        # an idempotency key names one job at most: the one the model says
        keyed = collections.Counter(j.idempotency_key for j in page.jobs if j.idempotency_key is not None)
        assert all(n == 1 for n in keyed.values()), keyed
        assert {j.idempotency_key: j.id for j in page.jobs if j.idempotency_key is not None} == {
            key: m.id for key, m in self.keys.items()
        }


class MemoryMachine(StoreMachine):
    kind = "memory"


class SQLiteMachine(StoreMachine):
    kind = "sqlite"


class RedisMachine(StoreMachine):
    kind = "redis"


class PostgresMachine(StoreMachine):
    kind = "postgres"


MACHINES: dict[str, type[StoreMachine]] = {
    "memory": MemoryMachine,
    "sqlite": SQLiteMachine,
    "redis": RedisMachine,
    "postgres": PostgresMachine,
}


@pytest.mark.parametrize("kind", STORES)
def test_store_state_machine(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "redis":
        redis_or_skip()
    if kind == "postgres":
        PostgresMachine.database = request.getfixturevalue("postgres_database")
    run_state_machine_as_test(MACHINES[kind], settings=SETTINGS)


async def test_replay_a_retry_canceled_before_it_was_due_does_not_block_the_queue(store: JobStore):
    """What the machine found (minimised): submit two jobs, claim the first, finish it with
    a retry due later, cancel it while it waits, let the retry time pass, claim: the
    second job is due, so the claim must take it."""
    first, _ = await store.create(Job.new("a", {"x": 1}, max_attempts=2, retention_s=60))
    second, _ = await store.create(Job.new("a", {"x": 2}, max_attempts=2, retention_s=60))
    claimed = await store.claim(WORKER, ["a"], 60)
    assert claimed is not None and claimed.id == first.id
    retried = await store.finish(first.id, claimed.token, Outcome.retry(FLAKY, time.time() + 0.02))
    assert retried is not None and retried.status is JobStatus.QUEUED
    canceled = await store.request_cancel(first.id)
    assert canceled is not None and canceled.status is JobStatus.CANCELED
    await asyncio.sleep(0.05)  # the retry the canceled job no longer has falls due
    taken = await store.claim(WORKER, ["a"], 60)
    assert taken is not None, "a due job was left in the queue"
    assert taken.id == second.id
