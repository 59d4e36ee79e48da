"""`redis://host:6379/0?namespace=NAME`: the store for many API and worker nodes.

A job is one JSON document; its events a list; each job name has a queue (a
sorted set in submit order). Every change of a job is optimistic: read the
job, apply the lifecycle of `outlast.jobs` in Python, then write it all with a
compare-and-set script that runs only if the job is unchanged since the read
(else read again), so the rules live in one place for every store. Claiming is a
Lua script that pops the next job of the first non-empty queue (the names in
rotating order, so no queue starves the others) and leases it in the same
step; a crash between that pop and the transition to `running` leaves a lease
that expires, and the job goes back to its queue.

Events reach other nodes by pub/sub (`outlast.stores._redis_relay`); a node that
missed some (a reconnect) reads them back from the list, since every reader
keeps a cursor. Finished
jobs expire by TTL too, so nothing is left behind if no node purges. Every key
starts with `outlast:{namespace}:` (see `Keys`). Redis Cluster is not supported.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import itertools
import json
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from outlast.deliveries import PENDING, Delivery
from outlast.exceptions import ConfigError, IdempotencyConflict, JobNotFinished
from outlast.hub import Hub
from outlast.jobs import Event, Job, JobStatus, Outcome, job_from_record, job_record, lose_worker
from outlast.stores._redis_layout import (
    CAS,
    CLAIM,
    CLAIM_DELIVERIES,
    CREATE_STARTED,
    GET_JOB,
    PUT,
    Commands,
    Keys,
    dumps,
    job_document,
)
from outlast.stores._redis_relay import Relay
from outlast.stores.base import (
    HeartbeatResult,
    ListQuery,
    Page,
    decode_cursor,
    holds_lease,
    next_event,
    page_of,
    unavailable_when,
)

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError, WatchError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    # Redis that does not answer, or is loading its data: away for now.
    unavailable_when(lambda exc: isinstance(exc, (RedisConnectionError, RedisTimeoutError)))
except ImportError:  # pragma: no cover - the extra is not installed
    aioredis = None  # type: ignore[assignment]

logger = logging.getLogger("outlast.store")

DEFAULT_NAMESPACE = "default"
TTL_GRACE_S = 3600  # keys outlive `expires_at` by this much, so purge finds them first
SEEN_JOBS = 10_000  # records of live jobs kept to spare a read before a change (`_change`)
STALE_POPS = 16  # stale queue entries one claim skips before it gives up for this poll
SOCKET_TIMEOUT_S = 5.0
HEALTH_CHECK_S = 15.0


class _Change:
    """What one transaction writes besides the job: events, and other keys."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.ops: list[Callable[[Any], Any]] = []
        self.value: Any = None
        self.qorder = 0.0  # the job's place in the order of its queue


class RedisStore:
    def __init__(self, url: str, *, namespace: str = DEFAULT_NAMESPACE) -> None:
        if aioredis is None:
            raise ConfigError("the Redis store needs redis-py: pip install 'outlast[redis]'")
        self.hub = Hub()
        self.url = url
        self.keys = Keys(namespace)
        # Any: redis-py types each reply as a union that ignores decode_responses.
        self._redis: Any = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=HEALTH_CHECK_S,
            # A pooled connection left over from before a Redis restart fails once: retry it.
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 5),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self._claim = self._redis.register_script(CLAIM)
        self._cas = self._redis.register_script(CAS)
        self._get_job = self._redis.register_script(GET_JOB)
        self._create_started = self._redis.register_script(CREATE_STARTED)
        self._put = self._redis.register_script(PUT)
        self._claim_deliveries = self._redis.register_script(CLAIM_DELIVERIES)
        self._rotation = itertools.count()
        self._events = Relay(self._redis, self.keys, self.hub)
        # The records of live jobs as this process last wrote or read them: a change of one is
        # then one round trip (`_change`). Bounded; a stale one costs a retry, never a wrong write.
        self._seen: collections.OrderedDict[str, str] = collections.OrderedDict()

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        namespace = query.pop("namespace", [DEFAULT_NAMESPACE])[0]
        if not namespace or not all(c.isalnum() or c in "-_." for c in namespace):
            raise ConfigError(f"a Redis namespace is letters, digits, '-', '_' and '.', not {namespace!r}")
        rest = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        return cls(rest, namespace=namespace)

    async def open(self) -> None:
        try:
            await self._redis.ping()
        except RedisError as exc:
            raise ConfigError(f"cannot reach Redis at {self.url}: {exc}") from exc
        await self._events.start()

    async def close(self) -> None:
        await self._events.stop()
        await self._redis.aclose()

    # -- one job, one transaction ----------------------------------------------------

    async def _change(
        self, job_id: str, apply: Callable[[Job, _Change], bool], seen: str | None = None
    ) -> tuple[Job | None, _Change]:
        """Let `apply` change the job (False: write nothing), and write it all atomically.

        One round trip when this process saw the job last (it wrote it, or read
        it): the compare-and-set script writes only if the job is still as seen.
        Otherwise the script answers with the job as it is, and `apply` runs again
        on that: a read first only for a job this process has not seen.
        """
        key = self.keys.job(job_id)
        raw = self._seen.pop(job_id, None) if seen is None else seen
        if raw is None:
            raw = await self._redis.get(key)
        while True:
            change = _Change()
            if not raw:
                return None, change
            record = json.loads(raw)
            change.qorder = float(record.get("qorder") or 0)
            job = job_from_record(record)
            if not apply(job, change):
                self._remember(job, raw)
                return job, change
            commands = Commands()
            document = job_document(job, record.get("qorder"))
            commands.set(key, document)
            for event in change.events:
                commands.rpush(self.keys.events(job_id), dumps([event.type, event.data]))
            for op in change.ops:
                op(commands)
            self._events.publish_in(commands, change.events)
            written, *now = await self._cas(keys=[key], args=[raw, dumps(commands.written)])
            if not written:
                raw = now[0]
                continue
            self._remember(job, document)
            if job.is_terminal and change.events and change.events[-1].type == "status":
                # Waiters here take the ended job from its event instead of reading it back.
                change.events[-1] = dataclasses.replace(change.events[-1], job=dataclasses.replace(job))
            self._events.published(change.events)
            return job, change

    def _remember(self, job: Job, raw: str) -> None:
        """Keep the job's record as this process last saw it, while it is queued or running."""
        if job.is_terminal:
            return
        self._seen[job.id] = raw
        while len(self._seen) > SEEN_JOBS:
            self._seen.popitem(last=False)

    def _append(self, job: Job, change: _Change, type: str, data: dict[str, Any]) -> None:
        event, deliveries = next_event(job, type, data)
        change.events.append(event)
        for delivery in deliveries:
            change.ops.append(functools.partial(self._put_delivery, delivery=delivery, new=True))

    def _put_delivery(self, pipe: Any, *, delivery: Delivery, new: bool = False) -> None:
        keys = self.keys
        pipe.set(keys.delivery(delivery.id), dumps(delivery.to_record()))
        if delivery.state == PENDING:
            pipe.zadd(keys.deliveries_due, {delivery.id: delivery.next_at})
        else:
            pipe.zrem(keys.deliveries_due, delivery.id)
        if new:
            pipe.rpush(keys.job_deliveries(delivery.job_id), delivery.id)

    def _status(self, job: Job, change: _Change) -> None:
        """The status event of a transition, and the indexes that follow the new status."""
        self._append(job, change, *job.status_event())
        keys = self.keys
        change.ops.append(lambda pipe: pipe.zrem(keys.leases, job.id))
        if job.is_terminal:
            assert job.expires_at is not None
            change.ops.append(lambda pipe: pipe.zrem(keys.queue(job.name), job.id))
            change.ops.append(lambda pipe: pipe.zadd(keys.expiry, {job.id: job.expires_at}))
            expire_at = int(job.expires_at + TTL_GRACE_S)
            change.ops.append(lambda pipe: pipe.expireat(keys.job(job.id), expire_at))
            change.ops.append(lambda pipe: pipe.expireat(keys.events(job.id), expire_at))

    def _transitioned(self, job: Job, qorder: float, change: _Change) -> None:
        """After a transition: its status event, and the job back in a queue if it is queued again."""
        self._status(job, change)
        if job.status is JobStatus.QUEUED:
            self._requeue_ops(job, qorder, change)

    def _requeue_ops(self, job: Job, qorder: float, change: _Change) -> None:
        keys = self.keys
        if job.run_after > time.time():
            member = f"{job.name}\n{qorder}\n{job.id}"
            change.ops.append(lambda pipe: pipe.zadd(keys.delayed, {member: job.run_after}))
        else:
            change.ops.append(lambda pipe: pipe.zadd(keys.queue(job.name), {job.id: qorder}))

    async def _qorder(self, job_id: str) -> float:
        raw = await self._redis.get(self.keys.job(job_id))
        return float(json.loads(raw).get("qorder") or 0) if raw else 0.0

    # -- the protocol -----------------------------------------------------------------

    async def create(self, job: Job) -> tuple[Job, bool]:
        keys = self.keys
        idem = None if job.idempotency_key is None else keys.idempotency(job.owner, job.idempotency_key)
        async with self._redis.pipeline(transaction=False) as first:
            # The queue order, and the queue's length for the position: one round trip.
            qorder, position = await first.incr(keys.counter).zcard(keys.queue(job.name)).execute()
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    if idem is not None:
                        await pipe.watch(idem)
                        existing_id = await pipe.get(idem)
                        if existing_id is not None:
                            existing = await self.get(existing_id)
                            if existing is not None:
                                await pipe.reset()
                                if existing.input_hash != job.input_hash:
                                    raise IdempotencyConflict()
                                return existing, False
                    job.last_seq = 1
                    job.queue_position = position
                    event = Event(job.id, 1, *job.status_event(), job=dataclasses.replace(job))
                    pipe.multi()
                    document = job_document(job, qorder)
                    pipe.set(keys.job(job.id), document)
                    pipe.rpush(keys.events(job.id), dumps([event.type, event.data]))
                    pipe.zadd(keys.queue(job.name), {job.id: qorder})
                    pipe.zadd(keys.jobs, {job.id: job.created_at})
                    if idem is not None:
                        pipe.set(idem, job.id)
                    self._events.publish_in(pipe, [event])
                    await pipe.execute()
                except WatchError:
                    continue
                self._remember(job, document)
                self._events.published([event])
                return job, True

    async def create_started(self, job: Job, worker: str, names: Collection[str], lease_s: float) -> tuple[Job, bool]:
        keys = self.keys
        started = dataclasses.replace(job, queue_position=0)  # nothing queued: it would be next
        queued, _ = next_event(started, *started.status_event())  # a queued event calls for no webhook
        queued.job = dataclasses.replace(started)
        now = time.time()
        started.start(worker, lease_s, now)
        running, deliveries = next_event(started, *started.status_event())
        running.job = dataclasses.replace(started)
        events = [queued, running]
        commands = Commands()
        for delivery in deliveries:
            self._put_delivery(commands, delivery=delivery, new=True)
        idem = "" if job.idempotency_key is None else keys.idempotency(job.owner, job.idempotency_key)
        assert started.lease_until is not None
        args: list[str | float] = [now, keys.queue_prefix, dumps(list(names)), job.id, job.created_at]
        args += [started.lease_until, dumps(job_record(started)), keys.events_channel, dumps(commands.written)]
        for event in events:
            args += [dumps([event.type, event.data]), self._events.message(event)]
        outcome = await self._create_started(
            keys=[idem, keys.delayed, keys.job(job.id), keys.events(job.id), keys.leases, keys.jobs, keys.counter],
            args=args,
        )
        if outcome != "started":  # a retry of a known key, or a due job first: as `create` does
            return await self.create(job)
        self._events.published(events)
        return started, True

    async def put(self, job: Job, events: Sequence[Event]) -> None:
        keys = self.keys
        lease_until = "" if job.lease_until is None or job.status is not JobStatus.RUNNING else job.lease_until
        expires: list[str | float] = ["", ""]
        if job.is_terminal:
            assert job.expires_at is not None
            expires = [job.expires_at, int(job.expires_at + TTL_GRACE_S)]
        record = dumps(job_record(job))
        args: list[str | float] = [record, job.id, job.created_at, lease_until, *expires]
        args.append(keys.events_channel)
        for event in events:
            args += [dumps([event.type, event.data]), self._events.message(event)]
        job_keys = [keys.job(job.id), keys.events(job.id), keys.jobs, keys.counter, keys.leases, keys.expiry]
        qorder = await self._put(keys=job_keys, args=args)
        self._remember(job, f'{record[:-1]},"qorder":{qorder}}}')  # as the script wrote it
        self._events.published(events)

    async def get(self, job_id: str) -> Job | None:
        found = await self._get_job(keys=[self.keys.job(job_id), self.keys.leases], args=[self.keys.queue_prefix])
        if not found:
            return None
        raw, extra = found
        job = job_from_record(json.loads(raw))
        if job.status is JobStatus.QUEUED:
            job.queue_position = None if extra is None else int(extra)
        elif job.status is JobStatus.RUNNING:
            job.lease_until = None if extra is None else float(extra)
        return job

    async def list_jobs(self, query: ListQuery) -> Page:
        high: float | str = "+inf"
        after: tuple[float, str] | None = None
        if query.cursor is not None:
            after = decode_cursor(query.cursor)
            high = after[0]
        found: list[Job] = []
        offset, batch = 0, max(50, query.limit * 2)
        while len(found) <= query.limit:
            ids: list[str] = await self._redis.zrevrangebyscore(self.keys.jobs, high, "-inf", start=offset, num=batch)
            if not ids:
                break
            offset += len(ids)
            for job in await asyncio.gather(*(self.get(job_id) for job_id in ids)):
                if job is None or (after is not None and (job.created_at, job.id) >= after):
                    continue
                if query.status is not None and job.status is not query.status:
                    continue
                if (query.name is not None and job.name != query.name) or (
                    query.owner is not None and job.owner != query.owner
                ):
                    continue
                found.append(job)
        found.sort(key=lambda j: (j.created_at, j.id), reverse=True)
        return page_of(found[: query.limit + 1], query.limit)

    async def delete(self, job_id: str) -> bool:
        job = await self.get(job_id)
        if job is None:
            return False
        if not job.is_terminal:
            raise JobNotFinished()
        await self._forget([job])
        return True

    async def _forget(self, jobs: Sequence[Job]) -> None:
        keys = self.keys
        deliveries = {job.id: await self._redis.lrange(keys.job_deliveries(job.id), 0, -1) for job in jobs}
        async with self._redis.pipeline(transaction=True) as pipe:
            for job in jobs:
                pipe.delete(keys.job(job.id), keys.events(job.id), keys.job_deliveries(job.id))
                for delivery_id in deliveries[job.id]:
                    pipe.delete(keys.delivery(delivery_id))
                    pipe.zrem(keys.deliveries_due, delivery_id)
                pipe.zrem(keys.jobs, job.id)
                pipe.zrem(keys.expiry, job.id)
                if job.idempotency_key is not None:
                    pipe.delete(keys.idempotency(job.owner, job.idempotency_key))
            await pipe.execute()

    async def queue_length(self, name: str) -> int:
        return int(await self._redis.zcard(self.keys.queue(name)))

    async def queue_positions(self, name: str, job_ids: Collection[str]) -> dict[str, int]:
        ids = list(job_ids)
        if not ids:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.zrank(self.keys.queue(name), job_id)
            ranks = await pipe.execute()
        return {job_id: int(rank) for job_id, rank in zip(ids, ranks, strict=True) if rank is not None}

    async def claim(self, worker: str, names: Collection[str], lease_s: float) -> Job | None:
        if not names:
            return None
        ordered = list(names)
        turn = next(self._rotation) % len(ordered)
        ordered = ordered[turn:] + ordered[:turn]  # fair: each name goes first in turn

        def start(job: Job, change: _Change) -> bool:
            if job.status is not JobStatus.QUEUED:
                return False  # canceled meanwhile
            job.start(worker, lease_s, time.time())
            self._append(job, change, *job.status_event())
            return True

        # A popped id can be stale: a job canceled while its retry waited in `delayed`, or
        # purged since. It is dropped, and the next one is tried, so it never hides a due job.
        for _ in range(STALE_POPS):
            now = time.time()
            args: list[str | float] = [now, now + lease_s, self.keys.queue_prefix, self.keys.job_prefix, *ordered]
            popped = await self._claim(keys=[self.keys.delayed, self.keys.leases], args=args)
            if not popped:
                return None
            job_id, raw = popped
            job, change = await self._change(job_id, start, seen=raw)
            if job is not None and job.status is JobStatus.RUNNING and job.worker == worker and change.events:
                return job
            await self._redis.zrem(self.keys.leases, job_id)
        return None

    async def heartbeat(self, leases: Mapping[str, int], lease_s: float) -> HeartbeatResult:
        if not leases:
            return HeartbeatResult()
        ids = list(leases)
        raws = await self._redis.mget([self.keys.job(job_id) for job_id in ids])
        cancel, lost, held = set(), set(), []
        for job_id, raw in zip(ids, raws, strict=True):
            job = None if raw is None else job_from_record(json.loads(raw))
            if not holds_lease(job, leases[job_id]):
                lost.add(job_id)
                continue
            held.append(job_id)
            if job.cancel_requested:
                cancel.add(job_id)
        if held:
            until = time.time() + lease_s
            await self._redis.zadd(self.keys.leases, dict.fromkeys(held, until), xx=True)
        return HeartbeatResult(frozenset(cancel), frozenset(lost))

    async def cancel_requests(self, job_ids: Collection[str]) -> frozenset[str]:
        ids = list(job_ids)
        if not ids:
            return frozenset()
        raws = await self._redis.mget([self.keys.job(job_id) for job_id in ids])
        return frozenset(
            job_id for job_id, raw in zip(ids, raws, strict=True) if raw and json.loads(raw)["cancel_requested"]
        )

    async def record(
        self, job_id: str, token: int, events: Sequence[tuple[str, dict[str, Any]]], progress: dict[str, Any] | None
    ) -> bool:
        def record(job: Job, change: _Change) -> bool:
            if not holds_lease(job, token):
                return False
            if progress is not None:
                job.progress = progress
            for type, data in events:
                self._append(job, change, type, data)
            change.value = True
            return True

        _, change = await self._change(job_id, record)
        return bool(change.value)

    async def finish(self, job_id: str, token: int, outcome: Outcome) -> Job | None:
        def finish(job: Job, change: _Change) -> bool:
            if not holds_lease(job, token):
                return False
            outcome.apply(job, time.time())
            self._transitioned(job, change.qorder, change)
            change.value = True
            return True

        job, change = await self._change(job_id, finish)
        return job if change.value else None

    async def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[Event]:
        raws = await self._redis.lrange(self.keys.events(job_id), after, after + limit - 1)
        events = []
        for seq, raw in enumerate(raws, start=after + 1):
            type, data = json.loads(raw)
            events.append(Event(job_id, seq, type, data))
        return events

    async def request_cancel(self, job_id: str) -> Job | None:
        def cancel(job: Job, change: _Change) -> bool:
            if job.status is JobStatus.QUEUED:
                job.cancel(time.time())
                self._status(job, change)
                return True
            if job.status is JobStatus.RUNNING and not job.cancel_requested:
                job.cancel_requested = True
                change.value = "flagged"
                return True
            return False

        job, change = await self._change(job_id, cancel)
        if change.value == "flagged":
            self.hub.cancel_requested(job_id)
            await self._redis.publish(self.keys.cancel_channel, job_id)
        return None if job is None else await self.get(job_id) or job

    async def reclaim_expired(self) -> list[Job]:
        expired: list[str] = await self._redis.zrangebyscore(self.keys.leases, "-inf", time.time())
        reclaimed = []
        for job_id in expired:
            job = await self._reclaim(job_id, await self._qorder(job_id))
            if job is not None:
                reclaimed.append(job)
        return reclaimed

    async def _reclaim(self, job_id: str, qorder: float) -> Job | None:
        keys = self.keys

        def lose(job: Job, change: _Change) -> bool:
            change.ops.append(lambda pipe: pipe.zrem(keys.leases, job.id))
            if job.status is JobStatus.QUEUED:
                # Popped by a claim that never made it running: back to its queue.
                self._requeue_ops(job, qorder, change)
            elif job.status is JobStatus.RUNNING:
                lose_worker(job, time.time())
                self._transitioned(job, qorder, change)
                change.value = True
            return True

        job, change = await self._change(job_id, lose)
        if job is None:
            await self._redis.zrem(keys.leases, job_id)
        return job if change.value else None

    async def purge_expired(self) -> list[str]:
        ids: list[str] = await self._redis.zrangebyscore(self.keys.expiry, "-inf", time.time())
        jobs = [job for job in await asyncio.gather(*(self.get(job_id) for job_id in ids)) if job is not None]
        await self._forget(jobs)
        gone = {job.id for job in jobs}
        if len(gone) < len(ids):  # already expired by TTL: drop them from the indexes
            await self._redis.zrem(self.keys.expiry, *[i for i in ids if i not in gone])
            await self._redis.zrem(self.keys.jobs, *[i for i in ids if i not in gone])
        return list(ids)

    # -- the webhook outbox -------------------------------------------------------------

    async def claim_deliveries(self, lease_s: float, limit: int) -> list[Delivery]:
        now = time.time()
        ids = await self._claim_deliveries(keys=[self.keys.deliveries_due], args=[now, now + lease_s, limit])
        if not ids:
            return []
        raws = await self._redis.mget([self.keys.delivery(i) for i in ids])
        claimed = [Delivery.from_record(json.loads(raw)) for raw in raws if raw]
        for delivery in claimed:
            delivery.next_at = now + lease_s
        return claimed

    async def save_delivery(self, delivery: Delivery) -> None:
        if not await self._redis.exists(self.keys.delivery(delivery.id)):
            return  # its job is gone
        async with self._redis.pipeline(transaction=True) as pipe:
            self._put_delivery(pipe, delivery=delivery)
            await pipe.execute()

    async def deliveries(self, job_id: str) -> list[Delivery]:
        ids = await self._redis.lrange(self.keys.job_deliveries(job_id), 0, -1)
        if not ids:
            return []
        raws = await self._redis.mget([self.keys.delivery(i) for i in ids])
        return [Delivery.from_record(json.loads(raw)) for raw in raws if raw]

    async def setting(self, name: str, value: str) -> str:
        await self._redis.hsetnx(self.keys.settings, name, value)
        return str(await self._redis.hget(self.keys.settings, name))
