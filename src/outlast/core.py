"""`Outlast`: settings, the job registry, the store and the runner, in one object."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from outlast.admission import Admission
from outlast.artifacts import ArtifactStorage, LocalStorage, Signer
from outlast.auth import ApiKeys
from outlast.deliveries import DEFAULT_EVENTS
from outlast.exceptions import (
    ConfigError,
    JobNotFound,
    QueueFull,
    StoreUnavailable,
    UnknownJobName,
)
from outlast.hub import Listener
from outlast.jobs import Job, JobStatus
from outlast.metrics import Metrics
from outlast.positions import PositionTracker
from outlast.registry import JobDefinition
from outlast.runner import SLOT_WAIT_S, Runner
from outlast.settings import Settings
from outlast.stores import JobStore, ListQuery, Page, open_store
from outlast.stores.base import store_unavailable
from outlast.webhooks import Dispatcher, Resolver, parse_networks, resolve_allowed, secret_for, system_resolver

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.routing import BaseRoute
    from starlette.types import ASGIApp

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# How much of a request's hold is kept back: a twentieth of it, up to this. A request's
# store calls stop one reserve before the hold ends (so its answer goes out in time), and its
# waits one more reserve before that (so the read after a wait fits too).
RESERVE_S = 0.25

# When the request being served must have its answer ready (time.monotonic()); None outside requests.
_answer_by: contextvars.ContextVar[float | None] = contextvars.ContextVar("outlast_answer_by", default=None)


class Outlast:
    """Long-running jobs behind any gateway.

        ot = Outlast(store="sqlite:///outlast.db", gateway_timeout=29)

        @ot.job()
        async def report(ctx: JobContext, delay: float = 5) -> dict: ...

        app = ot.app()

    Keywords are the settings of docs/protocol.md, "Settings"; `OUTLAST_*`
    variables override them, and the command line overrides both.
    """

    def __init__(self, **settings: Any) -> None:
        self.settings = Settings.load(settings)
        self.registry: dict[str, JobDefinition] = {}
        # Long-running routes declared with a path, served by `ot.app()`.
        self.routes: list[BaseRoute] = []
        # Where the protocol's routes are, relative to the app's root.
        self.mount_path = ""
        self.keys = ApiKeys(self.settings.api_keys)
        self.admission = Admission(self)
        self._app_built = False
        self.metrics = Metrics()
        self._store: JobStore | None = None
        self._runner: Runner | None = None
        self._positions: PositionTracker | None = None
        self._dispatcher: Dispatcher | None = None
        # How webhook hosts are resolved (at submit and at delivery); tests may swap it.
        self.webhook_resolver: Resolver = system_resolver
        self._loop: asyncio.AbstractEventLoop | None = None
        self.artifacts: ArtifactStorage | None = None
        self.signer: Signer | None = None
        self._started = 0

    # -- configuration -------------------------------------------------------------

    def configure(self, **flags: Any) -> None:
        """Apply settings on top of the current ones (the CLI's flags do this)."""
        if self._store is not None:
            raise ConfigError("settings cannot change while outlast is running")
        self.settings = self.settings.with_flags(flags)

    def job(
        self,
        name: str | None = None,
        *,
        timeout: float | None = None,
        max_attempts: int | None = None,
        retry_on: Sequence[type[BaseException]] = (),
        backoff: float = 1.0,
        backoff_max: float = 300.0,
        retention: float | None = None,
    ) -> Callable[[F], F]:
        """Register a function (async or sync) as a job, under its own name by default.

        Its parameters are the job's input, validated by pydantic from their
        annotations; a parameter annotated `JobContext` receives the context.
        `timeout` fails an attempt that runs longer (seconds); `retry_on` lists
        exceptions that make the job run again, with exponential `backoff`.
        """

        def register(fn: F) -> F:
            self.add_job(
                JobDefinition.from_function(
                    fn,
                    name=name,
                    timeout_s=timeout,
                    max_attempts=max_attempts,
                    retry_on=tuple(retry_on),
                    backoff_s=backoff,
                    backoff_max_s=backoff_max,
                    retention_s=retention,
                )
            )
            return fn

        return register

    def add_job(self, definition: JobDefinition) -> None:
        existing = self.registry.get(definition.name)
        if existing is not None and existing.fn is not definition.fn:
            raise ConfigError(f"a job named {definition.name!r} is already registered")
        self.registry[definition.name] = definition

    def definition(self, name: str) -> JobDefinition:
        try:
            return self.registry[name]
        except KeyError:
            raise UnknownJobName(f"no job is named {name!r}") from None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def store(self) -> JobStore:
        if self._store is None:
            raise ConfigError("outlast is not started: use `async with ot.lifespan():` or serve `ot.app()`")
        return self._store

    @property
    def positions(self) -> PositionTracker:
        if self._positions is None:
            raise ConfigError("outlast is not started")
        return self._positions

    async def start(self, *, workers: int | None = None) -> None:
        """Open the store and start the embedded workers (`workers` overrides the setting)."""
        if self._started:
            self._started += 1
            return
        self.keys = ApiKeys(self.settings.api_keys)
        self.admission = Admission(self)  # fresh submit rates for each run
        store = open_store(self.settings.store)
        await store.open()
        self._loop = asyncio.get_running_loop()
        self._started = 1
        self._store = store
        self._positions = PositionTracker(store)
        self._positions.start()
        secret = await secret_for(store, self.settings.webhook_secret)
        self._dispatcher = Dispatcher(
            store,
            secret,
            allow=parse_networks(self.settings.webhook_allow),
            backoff_s=self.settings.webhook_backoff,
            resolve=self.webhook_resolver,
        )
        self._dispatcher.start()
        concurrency = self.settings.workers if workers is None else workers
        self.artifacts = LocalStorage(self.settings.artifacts)
        self.signer = Signer.for_settings(self.settings.signing_key, self.settings.artifacts)
        runner = Runner(
            store,
            self.registry,
            concurrency=concurrency,
            lease_s=self.settings.lease,
            metrics=self.metrics,
            artifacts=self.artifacts,
            signer=self.signer,
        )
        self.metrics.watch(lambda: runner.running, lambda: store.hub.listener_count)
        self._runner = runner
        await runner.start()

    def shutting_down(self) -> None:
        """End every open stream now (they resume elsewhere): the server is going away."""
        if self._store is not None:
            self._store.hub.close()

    async def stop(self) -> None:
        if self._started == 0:
            return
        self._started -= 1
        if self._started > 0:
            return
        self.shutting_down()
        if self._runner is not None:
            await self._runner.stop()
            self._runner = None
        if self._positions is not None:
            await self._positions.stop()
            self._positions = None
        if self._dispatcher is not None:
            await self._dispatcher.stop()
            self._dispatcher = None
        if self._store is not None:
            await self._store.close()
            self._store = None

    def run_threadsafe(self, coroutine: Coroutine[Any, Any, T], *, arrived: float | None = None) -> T:
        """Run a coroutine on outlast's event loop from another thread (a WSGI view), and wait.

        With `arrived` (the request's `time.monotonic()`), it is bounded by the hold as `within_hold` says.
        """
        if self._loop is None:
            coroutine.close()
            raise ConfigError("outlast is not started: serve the app from ot.app()")
        work = coroutine if arrived is None else self.within_hold(coroutine, arrived=arrived)
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    async def within_hold(self, work: Awaitable[T], *, arrived: float | None = None) -> T:
        """Serve one request: done before its hold ends, however the store behaves.

        The request arrived at `arrived` (`time.monotonic()`, now by default).
        Waits inside end early enough for the read that follows them; a store
        call that hangs past the request's deadline is cancelled, and that, or
        a store that cannot be reached, raises `StoreUnavailable` (a `503` with
        `Retry-After`, never a gateway's `504`).
        """
        hold_s = self.settings.hold_s
        answer_by = (time.monotonic() if arrived is None else arrived) + hold_s - self._reserve_s
        token = _answer_by.set(answer_by)
        try:
            async with asyncio.timeout(max(0.0, answer_by - time.monotonic())) as scope:
                return await work
        except TimeoutError:
            if not scope.expired():
                raise
            raise StoreUnavailable(f"the store did not answer within the hold ({hold_s:g} s)") from None
        except Exception as exc:
            unavailable = store_unavailable(exc)
            if unavailable is None or unavailable is exc:
                raise
            raise unavailable from exc
        finally:
            _answer_by.reset(token)

    @property
    def _reserve_s(self) -> float:
        return min(RESERVE_S, self.settings.hold_s / 20)

    def _wait_until(self, wait_s: float) -> float:
        """When a wait of `wait_s` from now ends: earlier if the request served must answer before."""
        until = time.monotonic() + wait_s
        answer_by = _answer_by.get()
        if answer_by is not None:
            until = min(until, answer_by - self._reserve_s)
        return until

    @contextlib.asynccontextmanager
    async def lifespan(self, *, workers: int | None = None) -> AsyncIterator[Outlast]:
        await self.start(workers=workers)
        try:
            yield self
        finally:
            await self.stop()

    # -- jobs -----------------------------------------------------------------------------

    async def submit(
        self,
        name: str,
        input: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        owner: str | None = None,
        webhook: str | None = None,
        webhook_events: tuple[str, ...] = DEFAULT_EVENTS,
        strict_json: bool = False,
        wait_s: float = 0.0,
    ) -> tuple[Job, bool]:
        """Validate `input` and queue a job; returns it and whether it is new.

        `webhook` is a URL to `POST` the job to on `webhook_events`. With
        `wait_s`, waits up to that long for the job to end (and returns it as it
        is then); such a job starts at once on this process's workers when one
        is free, and without an idempotency key or a webhook it is not even
        written until it ends or the wait is over (see `runner.Provisional`). Raises `UnknownJobName`,
        `InvalidInput` (a webhook URL that may not be called too), or
        `IdempotencyConflict`.
        """
        definition = self.definition(name)
        validated = definition.validate(dict(input or {}), strict_json=strict_json)
        limit = self.settings.max_queue
        if limit is not None and idempotency_key is None and await self.store.queue_length(name) >= limit:
            raise QueueFull(f"{limit} jobs named {name!r} are queued already; try again later", retry_after_s=5)
        if webhook is not None:
            await resolve_allowed(webhook, parse_networks(self.settings.webhook_allow), self.webhook_resolver)
        job = Job.new(
            name,
            validated,
            max_attempts=definition.max_attempts or self.settings.max_attempts,
            retention_s=self.settings.retention if definition.retention_s is None else definition.retention_s,
            timeout_s=definition.timeout_s,
            owner=owner,
            idempotency_key=idempotency_key,
            webhook_url=webhook,
            webhook_events=webhook_events if webhook is not None else (),
        )
        if wait_s <= 0:
            return await self._create(job, start=False)
        deadline = self._wait_until(wait_s)
        # Listening before the job exists: none of its events can be missed, so none need reading back.
        with self.store.hub.listen(job.id) as listener:
            if idempotency_key is None and webhook is None and self._runner is not None:
                slot_wait_s = min(SLOT_WAIT_S, deadline - time.monotonic())
                provisional = await self._runner.run_at_once(job, slot_wait_s=slot_wait_s)
                if provisional is not None:  # nothing is written unless it must be (`Provisional`)
                    self.metrics.submitted.labels(job.name).inc()
                    ended = await self._until_terminal(listener, dataclasses.replace(provisional.job), deadline)
                    return (ended if ended.is_terminal else await provisional.store_now()), True
            stored, created = await self._create(job, start=True)
            if created:
                return await self._until_terminal(listener, stored, deadline), True
        return await self.wait(stored.id, deadline - time.monotonic()), False  # an earlier job with that key

    async def _create(self, job: Job, *, start: bool) -> tuple[Job, bool]:
        started = None if not start or self._runner is None else await self._runner.create_started(job)
        stored, created = await self.store.create(job) if started is None else started
        if created:
            self.metrics.submitted.labels(job.name).inc()
        return stored, created

    async def get(self, job_id: str, *, owner: str | None = None) -> Job:
        """The job; `JobNotFound` if there is none, or (with `owner`) if it is someone else's."""
        job = await self.store.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise JobNotFound(f"no job has the id {job_id!r}")
        return job

    async def wait(self, job_id: str, timeout_s: float) -> Job:
        """The job once it is terminal, or as it is after `timeout_s`.

        Woken by the store's notifications, never by polling.
        """
        deadline = self._wait_until(timeout_s)
        with self.store.hub.listen(job_id) as listener:
            return await self._until_terminal(listener, await self.get(job_id), deadline)

    async def _until_terminal(self, listener: Listener, job: Job, deadline: float) -> Job:
        """`job` as it is once terminal or at `deadline`; `listener` heard every event since it was read.

        The job returned is as it is when the wait ends, not as it was read: the
        status and progress events heard meanwhile are applied to it, and a job
        still queued is read again for its position in the queue.
        """
        while not job.is_terminal:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await listener.wait(remaining):
                break
            lagged = listener.lagged
            # Newer than the job in hand only: events of one job can arrive out of order (this
            # process's own, published after its write returns, and other nodes', relayed).
            fresh = sorted((e for e in listener.drain() if (e.seq or 0) > job.last_seq), key=lambda e: e.seq or 0)
            if lagged or any(e.type == "status" and e.job is None for e in fresh):
                job = await self.get(job.id)  # a gap, or a change another node made: the store has it
                continue
            for event in fresh:
                if event.type == "status" and event.job is not None:
                    # A job published by this process is as its write left it: no need to read it back.
                    job = dataclasses.replace(event.job)
                elif event.type == "progress":
                    job = dataclasses.replace(job, progress=dict(event.data), last_seq=event.seq or job.last_seq)
        if job.status is JobStatus.QUEUED:
            job = await self.get(job.id)  # its place in the queue is reckoned when it is read
        return job

    async def cancel(self, job_id: str) -> Job:
        job = await self.store.request_cancel(job_id)
        if job is None:
            raise JobNotFound(f"no job has the id {job_id!r}")
        return job

    async def delete(self, job_id: str) -> None:
        """Forget a terminal job, its result and its artifacts."""
        if not await self.store.delete(job_id):
            raise JobNotFound(f"no job has the id {job_id!r}")
        if self.artifacts is not None:
            self.artifacts.delete(job_id)

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        name: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        return await self.store.list_jobs(ListQuery(status=status, name=name, owner=owner, limit=limit, cursor=cursor))

    # -- the web edge ------------------------------------------------------------------

    def app(self, *, fallback: ASGIApp | None = None, **starlette_options: Any) -> Starlette:
        """An ASGI app serving the protocol's routes, which starts and stops outlast.

        With the `dashboard` setting on, `GET /` serves a page that lists jobs
        live and submits them. `fallback` serves every other path: e.g. a Flask
        app through `a2wsgi.WSGIMiddleware` (see `outlast.flask`).
        """
        from outlast.web.http import build_app

        self._app_built = True
        return build_app(self, fallback=fallback, **starlette_options)

    def mount(self, app: ASGIApp, path: str = "") -> None:
        """Add the protocol's routes (under `path`) to an existing Starlette or FastAPI app."""
        from outlast.web.http import mount

        mount(self, app, path)

    def long_running(
        self,
        path: str | None = None,
        *,
        methods: Sequence[str] = ("GET",),
        name: str | None = None,
        timeout: float | None = None,
        max_attempts: int | None = None,
    ) -> Callable[[F], F]:
        """Make an endpoint long-running (docs/protocol.md, "Long-running routes").

        With `path`, the route is added to `ot.app()`; without, decorate an
        endpoint of your own Starlette or FastAPI app.
        """
        from outlast.web.long_running import long_running

        if path is not None and self._app_built:
            raise ConfigError("declare long-running routes before calling ot.app(): it serves the routes it knew")
        return long_running(self, path, methods=methods, name=name, timeout=timeout, max_attempts=max_attempts)
