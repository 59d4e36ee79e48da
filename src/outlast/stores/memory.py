"""`memory://`: a store in one process's memory, for tests and experiments.

Nothing survives the process. Every method runs without awaiting in the middle,
so on one event loop each is atomic.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from outlast.deliveries import PENDING, Delivery
from outlast.exceptions import IdempotencyConflict, JobNotFinished
from outlast.hub import Hub
from outlast.jobs import Event, Job, JobStatus, Outcome, lose_worker
from outlast.stores.base import (
    HeartbeatResult,
    ListQuery,
    Page,
    decode_cursor,
    holds_lease,
    next_event,
    page_of,
    publish,
)


class MemoryStore:
    def __init__(self) -> None:
        self.hub = Hub()
        self._jobs: dict[str, Job] = {}
        self._order: dict[str, int] = {}
        self._events: dict[str, list[Event]] = {}
        self._keys: dict[tuple[str | None, str], str] = {}
        self._counter = itertools.count()
        self._deliveries: dict[str, Delivery] = {}
        self._settings: dict[str, str] = {}

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _append(self, job: Job, type: str, data: dict[str, Any]) -> Event:
        event, deliveries = next_event(job, type, data)
        self._events[job.id].append(event)
        self._deliveries.update((delivery.id, delivery) for delivery in deliveries)
        return event

    def _publish(self, events: Sequence[Event]) -> None:
        publish(self.hub, events)

    def _status_event(self, job: Job) -> Event:
        job.queue_position = self._position(job)
        event = self._append(job, *job.status_event())
        return dataclasses.replace(event, job=copy.deepcopy(job))  # the log keeps no copy

    def _position(self, job: Job) -> int | None:
        if job.status is not JobStatus.QUEUED:
            return None
        mine = self._order[job.id]
        return sum(
            1
            for other in self._jobs.values()
            if other.status is JobStatus.QUEUED and other.name == job.name and self._order[other.id] < mine
        )

    async def create(self, job: Job) -> tuple[Job, bool]:
        if job.idempotency_key is not None:
            existing_id = self._keys.get((job.owner, job.idempotency_key))
            if existing_id is not None and existing_id in self._jobs:
                existing = self._jobs[existing_id]
                if existing.input_hash != job.input_hash:
                    raise IdempotencyConflict()
                return self._snapshot(existing), False
            self._keys[(job.owner, job.idempotency_key)] = job.id
        job = copy.deepcopy(job)
        self._jobs[job.id] = job
        self._order[job.id] = next(self._counter)
        self._events[job.id] = []
        event = self._status_event(job)
        self._publish([event])
        return self._snapshot(job), True

    async def create_started(self, job: Job, worker: str, names: Collection[str], lease_s: float) -> tuple[Job, bool]:
        now = time.time()
        waiting = any(
            j.status is JobStatus.QUEUED and j.name in names and j.run_after <= now for j in self._jobs.values()
        )
        stored, created = await self.create(job)  # never suspends: still one atomic step
        if not created or waiting:
            return stored, created
        live = self._jobs[stored.id]
        live.start(worker, lease_s, now)
        self._publish([self._status_event(live)])
        return copy.deepcopy(live), True

    async def put(self, job: Job, events: Sequence[Event]) -> None:
        self._jobs[job.id] = copy.deepcopy(job)
        self._order[job.id] = next(self._counter)
        self._events[job.id] = [dataclasses.replace(event, job=None) for event in events]
        self._publish(events)

    def _snapshot(self, job: Job) -> Job:
        job.queue_position = self._position(job)
        return copy.deepcopy(job)

    async def get(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        return None if job is None else self._snapshot(job)

    async def list_jobs(self, query: ListQuery) -> Page:
        jobs = sorted(self._jobs.values(), key=lambda j: (j.created_at, j.id), reverse=True)
        if query.cursor is not None:
            after = decode_cursor(query.cursor)
            jobs = [j for j in jobs if (j.created_at, j.id) < after]
        jobs = [
            j
            for j in jobs
            if (query.status is None or j.status is query.status)
            and (query.name is None or j.name == query.name)
            and (query.owner is None or j.owner == query.owner)
        ]
        return page_of([self._snapshot(j) for j in jobs[: query.limit + 1]], query.limit)

    async def delete(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        if job is None:
            return False
        if not job.is_terminal:
            raise JobNotFinished()
        self._forget(job)
        return True

    def _forget(self, job: Job) -> None:
        del self._jobs[job.id]
        del self._order[job.id]
        del self._events[job.id]
        if job.idempotency_key is not None:
            self._keys.pop((job.owner, job.idempotency_key), None)
        for delivery_id in [d.id for d in self._deliveries.values() if d.job_id == job.id]:
            del self._deliveries[delivery_id]

    async def queue_length(self, name: str) -> int:
        return sum(1 for j in self._jobs.values() if j.status is JobStatus.QUEUED and j.name == name)

    async def queue_positions(self, name: str, job_ids: Collection[str]) -> dict[str, int]:
        queue = sorted(
            (j for j in self._jobs.values() if j.status is JobStatus.QUEUED and j.name == name),
            key=lambda j: self._order[j.id],
        )
        wanted = set(job_ids)
        return {job.id: position for position, job in enumerate(queue) if job.id in wanted}

    async def claim(self, worker: str, names: Collection[str], lease_s: float) -> Job | None:
        now = time.time()
        due = [
            j for j in self._jobs.values() if j.status is JobStatus.QUEUED and j.name in names and j.run_after <= now
        ]
        if not due:
            return None
        job = min(due, key=lambda j: self._order[j.id])
        job.start(worker, lease_s, now)
        self._publish([self._status_event(job)])
        return copy.deepcopy(job)

    async def heartbeat(self, leases: Mapping[str, int], lease_s: float) -> HeartbeatResult:
        now = time.time()
        cancel, lost = set(), set()
        for job_id, token in leases.items():
            job = self._jobs.get(job_id)
            if not holds_lease(job, token):
                lost.add(job_id)
                continue
            job.lease_until = now + lease_s
            if job.cancel_requested:
                cancel.add(job_id)
        return HeartbeatResult(frozenset(cancel), frozenset(lost))

    async def cancel_requests(self, job_ids: Collection[str]) -> frozenset[str]:
        return frozenset(i for i in job_ids if (j := self._jobs.get(i)) is not None and j.cancel_requested)

    def _held(self, job_id: str, token: int) -> Job | None:
        job = self._jobs.get(job_id)
        return job if holds_lease(job, token) else None

    async def record(
        self, job_id: str, token: int, events: Sequence[tuple[str, dict[str, Any]]], progress: dict[str, Any] | None
    ) -> bool:
        job = self._held(job_id, token)
        if job is None:
            return False
        if progress is not None:
            job.progress = progress
        self._publish([self._append(job, type, data) for type, data in events])
        return True

    async def finish(self, job_id: str, token: int, outcome: Outcome) -> Job | None:
        job = self._held(job_id, token)
        if job is None:
            return None
        outcome.apply(job, time.time())
        self._publish([self._status_event(job)])
        return copy.deepcopy(job)

    async def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        return [copy.deepcopy(e) for e in self._events.get(job_id, []) if e.seq is not None and e.seq > after][:limit]

    async def request_cancel(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.status is JobStatus.QUEUED:
            job.cancel(time.time())
            self._publish([self._status_event(job)])
        elif job.status is JobStatus.RUNNING and not job.cancel_requested:
            job.cancel_requested = True
            self.hub.cancel_requested(job_id)
        return self._snapshot(job)

    async def reclaim_expired(self) -> list[Job]:
        now = time.time()
        expired = [
            j
            for j in self._jobs.values()
            if j.status is JobStatus.RUNNING and j.lease_until is not None and j.lease_until < now
        ]
        for job in expired:
            lose_worker(job, now)
            self._publish([self._status_event(job)])
        return [copy.deepcopy(j) for j in expired]

    async def purge_expired(self) -> list[str]:
        now = time.time()
        expired = [j for j in self._jobs.values() if j.expires_at is not None and j.expires_at <= now]
        for job in expired:
            self._forget(job)
        return [j.id for j in expired]

    async def claim_deliveries(self, lease_s: float, limit: int) -> list[Delivery]:
        now = time.time()
        due = [d for d in self._deliveries.values() if d.state == PENDING and d.next_at <= now][:limit]
        for delivery in due:
            delivery.next_at = now + lease_s
        return [copy.deepcopy(d) for d in due]

    async def save_delivery(self, delivery: Delivery) -> None:
        if delivery.id in self._deliveries:
            self._deliveries[delivery.id] = copy.deepcopy(delivery)

    async def deliveries(self, job_id: str) -> list[Delivery]:
        return [copy.deepcopy(d) for d in self._deliveries.values() if d.job_id == job_id]

    async def setting(self, name: str, value: str) -> str:
        return self._settings.setdefault(name, value)
