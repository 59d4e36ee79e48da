"""The runner: claims jobs, runs them, keeps their leases, reports how they ended.

One `Runner` runs up to `concurrency` jobs at once: async jobs on the event loop,
sync jobs in a thread pool of the same size. Beside them, one maintenance loop
renews leases (heartbeats), notices cancellations asked for from other
processes, requeues jobs whose worker was lost, and forgets expired jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from outlast.artifacts import ArtifactStorage, Signer, Source
from outlast.context import JobContext, Write
from outlast.exceptions import Canceled, JobError, RetryableError
from outlast.jobs import TIMEOUT, WORKER_LOST, ErrorInfo, Event, Job, JobStatus, Outcome, is_json
from outlast.metrics import Metrics
from outlast.outages import Outage
from outlast.registry import JobDefinition
from outlast.stores.base import JobStore, StartsAtOnce, StoresRanJobs

logger = logging.getLogger("outlast.runner")

IDLE_POLL_S = 1.0
TICK_S = 1.0
PURGE_EVERY_S = 60.0
DEFAULT_GRACE_S = 10.0
JOB_THREAD_PREFIX = "outlast-job"
# How long a sync request waits for a busy runner's slot before its job takes the queue.
SLOT_WAIT_S = 0.1


class Provisional:
    """A job run at once, before anything of it is stored: durability is paid only when it buys something.

    A sync request that finds a free slot here runs its job at once. Nothing is
    written while the client waits: the job's progress and logs are kept here,
    numbered as the store would number them. Then one of two things happens:

    - the job ends within the wait: it is written once, ended, with its events
      (`StoresRanJobs.put`, one statement that group commit shares), and only
      then is the client answered;
    - the wait is over first: `store_now()` writes it as it is, running and
      leased by this worker, before the client is given its id (`202` or `303`);
      from then on it is a job like any claimed one (heartbeats, reclaim after a
      crash).

    A crash before either loses only a request that was never answered.
    """

    def __init__(self, job: Job, store: StoresRanJobs, events: list[Event], lease_s: float) -> None:
        self.job = job
        self.store = store
        self.events = events
        self.lease_s = lease_s
        self.stored = False
        self._lock = asyncio.Lock()

    async def store_now(self) -> Job:
        """Write the job as it is now, unless it is written already; the job as it is then."""
        async with self._lock:
            if not self.stored:
                running = dataclasses.replace(self.job, lease_until=time.time() + self.lease_s)  # a full lease
                await self._put(running, self.events)
                return dataclasses.replace(running)
        return await self.store.get(self.job.id) or dataclasses.replace(self.job)

    async def record(
        self, job_id: str, token: int, events: Sequence[tuple[str, dict[str, Any]]], progress: dict[str, Any] | None
    ) -> bool:
        async with self._lock:
            if self.stored:
                return await self.store.record(job_id, token, events, progress)
            if progress is not None:
                self.job.progress = progress
            for type, data in events:
                self.events.append(_next(self.job, type, data))
            return True

    async def finish(self, job_id: str, token: int, outcome: Outcome) -> Job | None:
        async with self._lock:
            if not self.stored and outcome.status is JobStatus.QUEUED:
                await self._put(self.job, self.events)  # a retry: stored first, to be queued again
            if self.stored:
                return await self.store.finish(job_id, token, outcome)
            ended = dataclasses.replace(self.job)  # changed only once it is written
            outcome.apply(ended, time.time())
            last = _next(ended, *ended.status_event())
            last.job = dataclasses.replace(ended)
            await self._put(ended, [*self.events, last])
            return dataclasses.replace(ended)

    async def _put(self, job: Job, events: list[Event]) -> None:
        await self.store.put(job, events)
        self.job, self.events, self.stored = job, events, True


def _next(job: Job, type: str, data: dict[str, Any]) -> Event:
    """`job`'s next event, numbered as a store numbers it (a job run at once has no webhook)."""
    job.last_seq += 1
    return Event(job.id, job.last_seq, type, data)


@dataclasses.dataclass(slots=True)
class _Running:
    job: Job
    context: JobContext
    definition: JobDefinition
    target: JobStore | Provisional
    task: asyncio.Task[Outcome] | None = None
    thread: asyncio.Future[Any] | None = None
    cancel_requested: bool = False
    lost: bool = False


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Runner:
    def __init__(
        self,
        store: JobStore,
        registry: Mapping[str, JobDefinition],
        *,
        concurrency: int,
        lease_s: float,
        metrics: Metrics | None = None,
        artifacts: ArtifactStorage | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.metrics = metrics or Metrics()
        self.artifacts = artifacts
        self.signer = signer
        self.worker = worker_id()
        self._running: dict[str, _Running] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._threads = ThreadPoolExecutor(max_workers=max(concurrency, 1), thread_name_prefix=JOB_THREAD_PREFIX)
        self._tasks: list[asyncio.Task[None]] = []
        self._executions: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._unsubscribe = store.hub.on_cancel(self._cancel_local)
        self._starter = store if isinstance(store, StartsAtOnce) else None
        self._ran_jobs = store if isinstance(store, StoresRanJobs) else None
        self._slot_waiters = 0
        self._claims = Outage(logger, "claiming jobs")
        self._claim_backoff_s = 0.0
        self._maintenance = Outage(logger, "maintenance (heartbeats, reclaims, purges)")

    @property
    def running(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        loops = [self._maintain()]
        if self.concurrency > 0 and self.registry:
            loops.append(self._claim_loop())
        self._tasks = [asyncio.create_task(loop) for loop in loops]

    async def stop(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """Stop claiming; let running jobs finish within `grace_s`, then hand them back.

        A job handed back is queued again at once (attempt + 1, as for a lost
        worker) for another worker to take; its attempt here is stopped, and a
        late result from it is refused by the fencing token.
        """
        self._stopping.set()
        self.store.hub.work_available()  # wakes the claim loop so it sees _stopping
        if self._executions:
            await asyncio.wait(self._executions, timeout=grace_s)
        unfinished = {job_id: running.job.token for job_id, running in self._stored().items()}
        for running in self._running.values():
            running.context._cancel()  # sync jobs still in their threads: ask them to stop
        for task in [*self._executions, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._executions, *self._tasks, return_exceptions=True)
        await self._hand_back(unfinished)
        self._unsubscribe()
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _hand_back(self, leases: dict[str, int]) -> None:
        error = ErrorInfo(WORKER_LOST, "the worker stopped before the job ended", 500)
        for job_id, token in leases.items():
            try:
                await self.store.finish(job_id, token, Outcome.retry(error, time.time()))
                logger.warning("job %s: handed back for another worker", job_id)
            except Exception:
                logger.exception("job %s: could not be handed back; its lease will expire", job_id)

    # -- claiming ------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        names = list(self.registry)
        # Claims made at once: doubled while every claim finds a job, so that a
        # backlog fills the free slots in a few round trips; back to one when idle.
        want = 1
        while not self._stopping.is_set():
            await self._slots.acquire()
            held = 1
            while held < want and not self._slots.locked():
                await self._slots.acquire()  # free: returns at once
                held += 1
            jobs = await self._claim(names, held)
            for job in jobs:
                self._launch(job)
            for _ in range(held - len(jobs)):
                self._slots.release()
            want = min(2 * held, self.concurrency) if len(jobs) == held else 1
            if not jobs and not self._stopping.is_set():
                # Idle, or the store is away: then wait longer each time, up to a few seconds.
                await self.store.hub.wait_for_work(max(IDLE_POLL_S, self._claim_backoff_s))

    async def _claim(self, names: list[str], count: int) -> list[Job]:
        claims = [self.store.claim(self.worker, names, self.lease_s) for _ in range(count)]
        jobs = []
        failure: BaseException | None = None
        for outcome in await asyncio.gather(*claims, return_exceptions=True):
            if isinstance(outcome, Job):
                jobs.append(outcome)
            elif isinstance(outcome, BaseException):
                failure = outcome
        if failure is None:
            self._claims.succeeded()
            self._claim_backoff_s = 0.0
        else:
            self._claim_backoff_s = self._claims.failed(failure)
        return jobs

    async def create_started(self, job: Job) -> tuple[Job, bool] | None:
        """Create `job` and run it here at once, skipping the queue's round trip.

        Only with a free slot, and unless a due job this runner serves is queued
        (the store checks that in the same step, so no job is jumped over); the
        job is then leased, heartbeated, cancelable and retried like any claimed
        job. Otherwise it is created queued as usual. None: this runner can't
        (a store without the ability, no free slot, stopping, not its job).
        """
        starter = self._starter
        if starter is None or self._stopping.is_set() or self._slots.locked() or job.name not in self.registry:
            return None
        await self._slots.acquire()  # free: returns at once
        try:
            stored, created = await starter.create_started(job, self.worker, list(self.registry), self.lease_s)
        except BaseException:
            self._slots.release()
            raise
        if created and stored.status is JobStatus.RUNNING:
            self._launch(stored)
        else:
            self._slots.release()
        return stored, created

    async def run_at_once(self, job: Job, *, slot_wait_s: float = 0.0) -> Provisional | None:
        """Run `job` here at once, writing nothing yet (see `Provisional`); None if this runner can't.

        It can with a store that takes jobs that ran (`StoresRanJobs`), a slot,
        and a job it serves. With every slot busy, it waits up to `slot_wait_s`
        for one, in line with the claim loop, and with at most `concurrency`
        requests waiting so: short jobs then keep the fast path under load, and
        long ones soon take the queue, where any worker node may run them.
        """
        store = self._ran_jobs
        if store is None or self._stopping.is_set() or job.name not in self.registry:
            return None
        if not await self._take_slot(slot_wait_s):
            return None
        job.start(self.worker, self.lease_s, time.time())
        job.last_seq = 1
        started = Event(job.id, 1, *job.status_event())
        started.job = dataclasses.replace(job)
        provisional = Provisional(job, store, [started], self.lease_s)
        self._launch(job, provisional)
        return provisional

    async def _take_slot(self, wait_s: float) -> bool:
        if not self._slots.locked():
            await self._slots.acquire()  # free: returns at once
            return True
        if wait_s <= 0 or self._slot_waiters >= self.concurrency:
            return False
        self._slot_waiters += 1
        try:
            async with asyncio.timeout(wait_s):
                await self._slots.acquire()
        except TimeoutError:
            return False
        finally:
            self._slot_waiters -= 1
        if self._stopping.is_set():
            self._slots.release()
            return False
        return True

    def _launch(self, job: Job, target: JobStore | Provisional | None = None) -> None:
        """Run a job claimed for this worker; its slot is already taken."""
        execution = asyncio.create_task(self._execute(job, target or self.store), name=f"outlast-job-{job.id}")
        self._executions.add(execution)
        execution.add_done_callback(self._done)

    def _done(self, execution: asyncio.Task[None]) -> None:
        self._executions.discard(execution)
        self._slots.release()

    # -- running one job ------------------------------------------------------------

    async def _execute(self, job: Job, target: JobStore | Provisional) -> None:
        definition = self.registry[job.name]
        context = JobContext(
            job_id=job.id,
            name=job.name,
            attempt=job.attempt,
            loop=asyncio.get_running_loop(),
            save_artifact=functools.partial(self._save_artifact, job),
        )
        running = _Running(job, context, definition, target)
        self._running[job.id] = running
        write = functools.partial(target.record, job.id, job.token)
        flusher = asyncio.create_task(context._flush_loop(write))
        started = time.monotonic()
        try:
            outcome = await self._outcome(running)
            await _stop(flusher)
            if outcome is not None:
                await self._finish(running, write, outcome, time.monotonic() - started)
        finally:
            self._running.pop(job.id, None)
            await _stop(flusher)
            if running.thread is not None and not running.thread.done():
                # A sync job that timed out or was abandoned still holds its
                # thread: keep its slot until the thread is free again.
                logger.warning("job %s: waiting for its sync function to return", job.id)
                await asyncio.wait([running.thread])

    async def _save_artifact(
        self, job: Job, name: str, source: Source, media_type: str, expires_in_s: float | None
    ) -> str:
        if self.artifacts is None or self.signer is None:
            raise RuntimeError("no artifact storage is configured")
        await self.artifacts.save(job.id, name, source, media_type)
        return self.signer.url(job.id, name, expires_in_s or max(job.retention_s, 3600.0))

    async def _outcome(self, running: _Running) -> Outcome | None:
        """How the attempt ended; None if it was abandoned (lease lost, shutting down)."""
        running.task = asyncio.create_task(self._attempt(running))
        try:
            return await running.task
        except asyncio.CancelledError:
            if running.lost or self._stopping.is_set():
                return None  # the lease will expire and someone retries it
            current = asyncio.current_task()
            if running.cancel_requested and current is not None and not current.cancelling():
                return Outcome.canceled()  # canceled before the job's code even began
            raise

    async def _finish(self, running: _Running, write: Write, outcome: Outcome, duration_s: float) -> None:
        job = running.job
        if running.lost:
            logger.warning("job %s: lease lost, its outcome is dropped", job.id)
            return
        if running.cancel_requested and outcome.status is not JobStatus.CANCELED:
            outcome = Outcome.canceled()
        try:
            await running.context._drain(write)
            finished = await running.target.finish(job.id, job.token, outcome)
        except Exception:
            logger.exception("job %s: its outcome could not be stored", job.id)
            error = ErrorInfo("store_error", "the job's outcome could not be stored", 500)
            try:
                finished = await running.target.finish(job.id, job.token, Outcome.failed(error))
            except Exception:
                logger.exception("job %s: not even its failure could be stored; its lease will expire", job.id)
                return
        if finished is None:
            logger.warning("job %s: lease lost before it finished; its outcome is dropped", job.id)
            return
        self.metrics.duration.labels(job.name).observe(duration_s)
        self.metrics.finished.labels(job.name, finished.status.value).inc()
        if finished.status is JobStatus.QUEUED:
            # A retry: come back for it when it is due, not at the next idle poll.
            delay_s = max(0.0, finished.run_after - time.time())
            asyncio.get_running_loop().call_later(delay_s, self.store.hub.work_available)

    async def _attempt(self, running: _Running) -> Outcome:
        job, definition, context = running.job, running.definition, running.context
        try:
            arguments = definition.arguments(job.input)
        except Exception as exc:  # the stored input no longer fits the code
            return Outcome.failed(ErrorInfo("invalid_input", str(exc), 422))
        if definition.context_param is not None:
            arguments[definition.context_param] = context
        timeout = asyncio.timeout(definition.timeout_s)
        try:
            async with timeout:
                result = await self._call(running, arguments)
        except asyncio.CancelledError:
            if running.cancel_requested and not running.lost:
                return Outcome.canceled()
            raise
        except TimeoutError as exc:
            if not timeout.expired():
                return self._failure(job, definition, exc)
            context._cancel()  # a sync job's thread goes on: tell it to stop
            return Outcome.failed(ErrorInfo(TIMEOUT, f"the job ran longer than {definition.timeout_s:g} s", 500))
        except Exception as exc:
            return self._failure(job, definition, exc)
        if not is_json(result):
            message = f"the job returned a {type(result).__name__}, which is not JSON (no NaN, no lone surrogates)"
            return Outcome.failed(ErrorInfo("result_not_serializable", message, 500))
        return Outcome.succeeded(result)

    async def _call(self, running: _Running, arguments: dict[str, Any]) -> Any:
        definition = running.definition
        if definition.is_async:
            return await definition.fn(**arguments)
        call = functools.partial(contextvars.copy_context().run, definition.fn, **arguments)
        running.thread = asyncio.get_running_loop().run_in_executor(self._threads, call)
        # Shielded: a timeout or a cancel stops the wait, not the thread (which can't be stopped).
        return await asyncio.shield(running.thread)

    def _failure(self, job: Job, definition: JobDefinition, exc: BaseException) -> Outcome:
        if isinstance(exc, Canceled):
            return Outcome.canceled(exc.message)
        if isinstance(exc, JobError):
            error = ErrorInfo(exc.type, exc.message, exc.status)
        else:
            # The message may hold anything (a connection string, a user's data): it
            # goes to the log, and clients only learn the exception's type.
            error = ErrorInfo(type(exc).__name__, "the job raised an unexpected error", 500)
            logger.warning("job %s (%s) raised %s", job.id, job.name, type(exc).__name__, exc_info=exc)
        if isinstance(exc, (RetryableError, *definition.retry_on)):
            delay_s = exc.delay_s if isinstance(exc, RetryableError) and exc.delay_s is not None else None
            if delay_s is None:
                capped = min(definition.backoff_max_s, definition.backoff_s * 2 ** (job.attempt - 1))
                delay_s = random.uniform(capped / 2, capped)
            return Outcome.retry(error, time.time() + delay_s)
        return Outcome.failed(error)

    # -- cancellation --------------------------------------------------------------------

    def _cancel_local(self, job_id: str) -> None:
        running = self._running.get(job_id)
        if running is None or running.cancel_requested:
            return
        running.cancel_requested = True
        running.context._cancel()
        if running.definition.is_async and running.task is not None:
            running.task.cancel()

    def _abandon(self, job_id: str) -> None:
        running = self._running.get(job_id)
        if running is None:
            return
        running.lost = True
        running.context._cancel()
        if running.task is not None:
            running.task.cancel()

    # -- maintenance ------------------------------------------------------------------

    async def _maintain(self) -> None:
        heartbeat_every_s = self.lease_s / 3
        reclaim_every_s = min(self.lease_s / 2, 5.0)
        last_heartbeat = last_reclaim = last_purge = time.monotonic()
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), min(TICK_S, heartbeat_every_s))
                return
            except TimeoutError:
                pass
            now = time.monotonic()
            try:
                if now - last_heartbeat >= heartbeat_every_s:
                    last_heartbeat = now
                    await self._heartbeat()
                else:
                    for job_id in await self.store.cancel_requests(list(self._stored())):
                        self._cancel_local(job_id)
                if now - last_reclaim >= reclaim_every_s:
                    last_reclaim = now
                    for job in await self.store.reclaim_expired():
                        logger.warning("job %s: its worker was lost; now %s", job.id, job.status.value)
                if now - last_purge >= PURGE_EVERY_S:
                    last_purge = now
                    for job_id in await self.store.purge_expired():
                        if self.artifacts is not None:
                            self.artifacts.delete(job_id)  # artifacts go when their job goes
            except Exception as exc:
                self._maintenance.failed(exc)  # the next tick tries again
            else:
                self._maintenance.succeeded()

    def _stored(self) -> dict[str, _Running]:
        """The running jobs the store knows of (not those run at once and not written yet)."""
        return {
            job_id: running
            for job_id, running in self._running.items()
            if not isinstance(running.target, Provisional) or running.target.stored
        }

    async def _heartbeat(self) -> None:
        leases = {job_id: running.job.token for job_id, running in self._stored().items()}
        result = await self.store.heartbeat(leases, self.lease_s)
        for job_id in result.cancel:
            self._cancel_local(job_id)
        for job_id in result.lost:
            self._abandon(job_id)
