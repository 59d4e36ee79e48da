"""The store protocol: the only thing in outlast that touches persistence.

Every store keeps jobs, their idempotency keys, leases with fencing tokens and
per-job numbered event logs, and publishes each event it writes to its `Hub`.
All stores pass the same contract suite (`tests/contract`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeGuard, runtime_checkable

from outlast.deliveries import Delivery, deliveries_for
from outlast.exceptions import InvalidRequest, StoreUnavailable
from outlast.hub import Hub
from outlast.jobs import Event, Job, JobStatus, Outcome

MAX_LIST_LIMIT = 500


@dataclasses.dataclass(slots=True, frozen=True)
class ListQuery:
    status: JobStatus | None = None
    name: str | None = None
    owner: str | None = None
    limit: int = 50
    cursor: str | None = None


@dataclasses.dataclass(slots=True, frozen=True)
class Page:
    jobs: list[Job]
    next: str | None


@dataclasses.dataclass(slots=True, frozen=True)
class HeartbeatResult:
    """What a heartbeat learnt: jobs whose cancellation was asked for, and leases lost."""

    cancel: frozenset[str] = frozenset()
    lost: frozenset[str] = frozenset()


class JobStore(Protocol):
    """What the core asks of a store. Every method is safe to call concurrently."""

    hub: Hub

    async def open(self) -> None:
        """Connect, create the schema if needed, start background listeners."""

    async def close(self) -> None: ...

    async def create(self, job: Job) -> tuple[Job, bool]:
        """Store a new queued job and its first `status` event.

        With `job.idempotency_key` set, a job already stored under the same key
        (and owner) is returned instead, with False; a different input under that
        key raises `IdempotencyConflict`.
        """

    async def get(self, job_id: str) -> Job | None:
        """The job (with `queue_position` while queued), or None."""

    async def list_jobs(self, query: ListQuery) -> Page:
        """Jobs newest first, a page at a time."""

    async def delete(self, job_id: str) -> bool:
        """Forget a terminal job and its events; False if unknown.

        Raises `JobNotFinished` for a job that is not terminal.
        """

    async def queue_length(self, name: str) -> int:
        """How many jobs of `name` are queued."""

    async def queue_positions(self, name: str, job_ids: Collection[str]) -> dict[str, int]:
        """Where these jobs stand in the queue of `name` (0 = next); jobs not queued are left out."""

    async def claim(self, worker: str, names: Collection[str], lease_s: float) -> Job | None:
        """Atomically take the next due job of one of `names`: it is running,
        leased to `worker` until now + `lease_s`, and `job.token` is its new
        fencing token."""

    async def heartbeat(self, leases: Mapping[str, int], lease_s: float) -> HeartbeatResult:
        """Extend the leases (job id -> token) still held."""

    async def cancel_requests(self, job_ids: Collection[str]) -> frozenset[str]:
        """Of these jobs, those whose cancellation was asked for (a cheap read)."""

    async def record(
        self, job_id: str, token: int, events: Sequence[tuple[str, dict[str, Any]]], progress: dict[str, Any] | None
    ) -> bool:
        """Append progress/log events for a running attempt; False if `token` is stale."""

    async def finish(self, job_id: str, token: int, outcome: Outcome) -> Job | None:
        """End an attempt; None (and nothing written) if `token` is stale."""

    async def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        """Stored events with seq > `after`, in order."""

    async def request_cancel(self, job_id: str) -> Job | None:
        """Queued: canceled at once. Running: flagged for its worker. Terminal: unchanged."""

    async def reclaim_expired(self) -> list[Job]:
        """Requeue (or fail with `worker_lost`) running jobs whose lease expired."""

    async def purge_expired(self) -> list[str]:
        """Forget terminal jobs past their `expires_at`; the ids that went."""

    # -- the webhook outbox (deliveries are written with the events that cause them)

    async def claim_deliveries(self, lease_s: float, limit: int) -> list[Delivery]:
        """Take due pending deliveries: each is not due again for `lease_s` (a crashed sender's are retried)."""

    async def save_delivery(self, delivery: Delivery) -> None:
        """Write back how an attempt went."""

    async def deliveries(self, job_id: str) -> list[Delivery]:
        """A job's deliveries, oldest first."""

    async def setting(self, name: str, value: str) -> str:
        """Store `value` under `name` unless one is there; return the stored one."""


@runtime_checkable
class StartsAtOnce(Protocol):
    """A store that can create a job already claimed, for a worker that is free now.

    Optional (the runner checks for it): it spares a sync request the queue's round trip.
    """

    async def create_started(self, job: Job, worker: str, names: Collection[str], lease_s: float) -> tuple[Job, bool]:
        """`create`, and in the same atomic step, unless a due job of one of `names`
        is queued (that one comes first), claim the new job for `worker` as `claim`
        would: running, leased, its token set, its queued and running events written."""
        ...


@runtime_checkable
class StoresRanJobs(JobStore, Protocol):
    """A store that can take a job that ran before anything was stored.

    Optional (the runner checks for it). A sync request that finds a free slot
    runs its job at once and writes nothing until it must: the job is written
    once, finished, if it ends within the request's wait, or running (leased by
    the worker that runs it) before the client is told where to find it.
    """

    async def put(self, job: Job, events: Sequence[Event]) -> None:
        """Write `job`, new to the store, as it is (running with its lease, or ended), with its
        numbered `events`, in one atomic step; then publish them. It has no idempotency key
        and no webhook: those take the queue."""
        ...


# -- a store that is away ----------------------------------------------------

# How each store's driver says "unreachable now" (Redis down or loading, SQLite locked by
# another writer, PostgreSQL restarting): each store module adds its test when it is imported,
# so that the core and the edge know no driver.
_UNAVAILABLE: list[Callable[[BaseException], bool]] = []


def unavailable_when(test: Callable[[BaseException], bool]) -> None:
    """Count the errors `test` accepts as the store being away for now (`store_unavailable`)."""
    _UNAVAILABLE.append(test)


def store_unavailable(exc: BaseException) -> StoreUnavailable | None:
    """A store's own error that means "unreachable now", as a `StoreUnavailable`; None for any other error."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if any(test(exc) for test in _UNAVAILABLE):
        return StoreUnavailable(f"the store cannot be reached now: {exc}")
    return None


# -- helpers shared by the stores --------------------------------------------


def holds_lease(job: Job | None, token: int) -> TypeGuard[Job]:
    """Whether the worker with `token` may still write to `job` (fencing).

    A worker whose lease ran out may still be running: once the job was claimed
    again (a new token) or ended, its late writes must be refused, or they would
    overwrite its successor's.
    """
    return job is not None and job.status is JobStatus.RUNNING and job.token == token


def next_event(job: Job, type: str, data: dict[str, Any]) -> tuple[Event, list[Delivery]]:
    """`job`'s next event, numbered, and the webhook deliveries it calls for.

    The store writes both in the transaction that changes the job, so a crash
    cannot keep the event and lose its delivery; once that is committed, it
    `publish`es the event.
    """
    job.last_seq += 1
    return Event(job.id, job.last_seq, type, data), deliveries_for(job, type, data, time.time())


def publish(hub: Hub, events: Iterable[Event]) -> None:
    """Tell this process's listeners of events already stored (a listener may read them back at once)."""
    for event in events:
        hub.publish(event)


def encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at, job.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, job_id = json.loads(raw)
        if not isinstance(job_id, str) or isinstance(created_at, bool) or not isinstance(created_at, (int, float)):
            raise ValueError
        job_id.encode()  # no lone surrogates
        if not math.isfinite(created_at):
            raise ValueError
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeError, RecursionError) as exc:
        raise InvalidRequest("the cursor is not one this server gave out") from exc
    return float(created_at), job_id


def page_of(jobs: list[Job], limit: int) -> Page:
    """`jobs` holds up to limit + 1 rows, newest first: the extra one says there is more."""
    if len(jobs) > limit:
        jobs = jobs[:limit]
        return Page(jobs, encode_cursor(jobs[-1]))
    return Page(jobs, None)
