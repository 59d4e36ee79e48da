"""Following a job's events: the stored ones after a cursor, then live ones.

`follow()` is what both the Server-Sent Events endpoint and the WebSocket hub
stream from. It starts listening before it reads the store, so nothing that
happens in between is lost; it skips what it already sent, so nothing is
repeated; and when the live feed has a gap (a slow reader whose buffer
overflowed, an event relayed late from another node) it reads the gap back
from the store, which is the source of truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections.abc import AsyncGenerator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from outlast.jobs import TERMINAL, Event, Job, JobStatus
from outlast.parsing import whole_number
from outlast.stores.base import store_unavailable
from outlast.web.links import with_links
from outlast.web.problems import HTTPProblem

if TYPE_CHECKING:
    from outlast.core import Outlast
    from outlast.stores.base import JobStore

logger = logging.getLogger("outlast.http")

HEARTBEAT_S = 15.0  # the longest silence on a stream, whatever the hold
RETRY_MS = 2000
PAGE = 500
OWNER_CACHE = 10_000
IDLE_CHECK_S = 1.0
IDLE_CHECKS = 10_000
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
TERMINAL_VALUES = frozenset(status.value for status in TERMINAL)


def heartbeat_for(hold_s: float) -> float:
    """How long a stream stays silent before a ping: half the hold, at most `HEARTBEAT_S`.

    A proxy whose timeout the hold respects (gateway_timeout >= hold) then never
    sees a quiet stream go silent for as long as its timeout.
    """
    return min(HEARTBEAT_S, hold_s / 2)


def is_terminal_event(event: Event) -> bool:
    return event.type == "status" and event.data.get("status") in TERMINAL_VALUES


async def follow(
    ot: Outlast, job_id: str, after: int, *, heartbeat_s: float = HEARTBEAT_S
) -> AsyncGenerator[Event | None, None]:
    """The job's events with seq > `after`, in order, then live ones; None when idle for `heartbeat_s`.

    Ends after the terminal status event. `position` events (seq None) are
    passed through as they come.
    """
    # Thousands of these may be idle at once: the frame holds a cursor and a
    # listener, never the events it replayed nor the job it read.
    store = ot.store
    with store.hub.listen(job_id) as listener:
        watching: AbstractContextManager[None] | None = None
        watched = False
        cursor = after
        try:
            while True:
                async with contextlib.aclosing(_stored(ot, job_id, cursor)) as stored:
                    async for event in stored:
                        yield event
                        cursor = event.seq if event.seq is not None else cursor
                        if is_terminal_event(event):
                            return
                if not watched:
                    watched = True
                    watching, position = await _watch_position(ot, job_id)
                    if watching is not None:
                        yield Event(job_id, None, "position", {"queue_position": position})
                while True:  # live
                    if not await listener.wait(heartbeat_s):
                        yield None
                        last_seq = await _last_seq(ot, job_id)
                        if last_seq is None:
                            return  # the job is gone (deleted, or lost with its store): nothing more will come
                        if last_seq > cursor:
                            break  # a relayed event was lost: read it back from the store
                        continue
                    if store.hub.closing.is_set():
                        return  # shutting down: the client resumes elsewhere from its cursor
                    lagged = listener.lagged
                    gap = False
                    for event in listener.drain():
                        if event.seq is None:
                            yield event
                        elif event.seq == cursor + 1:
                            yield event
                            cursor = event.seq
                            if is_terminal_event(event):
                                return
                            if watching is not None and event.type == "status" and event.data.get("status") != "queued":
                                watching.__exit__(None, None, None)  # no longer queued: no more positions
                                watching = None
                        elif event.seq > cursor + 1:
                            gap = True
                            break
                    if gap or lagged:
                        break
        finally:
            if watching is not None:
                watching.__exit__(None, None, None)


async def _stored(ot: Outlast, job_id: str, cursor: int) -> AsyncGenerator[Event, None]:
    """The stored events after `cursor`, a page at a time."""
    while True:
        events = await ot.store.events(job_id, cursor, PAGE)
        for event in events:
            yield event
            cursor = event.seq if event.seq is not None else cursor
        if len(events) < PAGE:
            return


class _LastSeqs:
    """A store's jobs' last stored seqs, each read at most once per `IDLE_CHECK_S` however many idle streams ask.

    Every idle stream looks at the store once per heartbeat; ten thousand
    streams on one job then cost one read a second, not ten thousand.
    """

    def __init__(self) -> None:
        self._reads: dict[str, tuple[float, asyncio.Future[int | None]]] = {}

    async def get(self, store: JobStore, job_id: str) -> int | None:
        now = time.monotonic()
        entry = self._reads.get(job_id)
        if entry is None or entry[0] < now:
            if len(self._reads) >= IDLE_CHECKS:
                self._reads = {key: value for key, value in self._reads.items() if value[0] >= now}
            reading = asyncio.ensure_future(_read_last_seq(store, job_id))
            reading.add_done_callback(self._done)
            self._reads[job_id] = entry = (now + IDLE_CHECK_S, reading)
        return await asyncio.shield(entry[1])

    def _done(self, reading: asyncio.Future[int | None]) -> None:
        if reading.cancelled() or reading.exception() is not None:  # retrieved: the next caller reads again
            self._reads = {key: value for key, value in self._reads.items() if value[1] is not reading}


async def _read_last_seq(store: JobStore, job_id: str) -> int | None:
    job = await store.get(job_id)
    return None if job is None else job.last_seq


_last_seqs: weakref.WeakKeyDictionary[JobStore, _LastSeqs] = weakref.WeakKeyDictionary()


async def _last_seq(ot: Outlast, job_id: str) -> int | None:
    """The job's last stored seq, None if it is gone (see `_LastSeqs`)."""
    seqs = _last_seqs.get(ot.store)
    if seqs is None:
        seqs = _last_seqs[ot.store] = _LastSeqs()
    return await seqs.get(ot.store, job_id)


async def _watch_position(ot: Outlast, job_id: str) -> tuple[AbstractContextManager[None] | None, int | None]:
    """If the job is queued, a watch on its position (entered: exit it), and the position."""
    job = await ot.store.get(job_id)
    if job is None or job.status is not JobStatus.QUEUED:
        return None, None
    watching = ot.positions.watch(job_id, job.name, job.queue_position)
    watching.__enter__()
    return watching, job.queue_position


# -- Server-Sent Events ---------------------------------------------------------------

RETRY = f"retry: {RETRY_MS}\n\n".encode()
PING = b": ping\n\n"
LAGGED = b"event: lagged\ndata: {}\n\n"
SSE_RAW_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in SSE_HEADERS.items()),
]
ENCODED_CACHE = 64


class EventStream(Response):
    """A `text/event-stream` response cheap enough to hold ten thousand open in one process.

    Starlette's `StreamingResponse` runs each stream in an anyio task group (a
    second task, cancel scopes, events): several KB per idle stream. This one
    writes from the request's own task; a pending `receive()`, re-armed by a
    callback, notices the client hanging up and cancels that task.
    """

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncGenerator[bytes, None]) -> None:  # no Response.__init__: no body to render
        self.chunks = chunks
        self.status_code = 200
        self.background = None
        self.raw_headers = list(SSE_RAW_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        task = asyncio.current_task()
        assert task is not None
        hung_up = _HangUp(task, receive)
        try:
            try:
                async with contextlib.aclosing(self.chunks) as chunks:
                    async for chunk in chunks:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except Exception as exc:
                if store_unavailable(exc) is None:
                    raise
                # The store is away: end the stream; the client resumes from its cursor (Last-Event-ID).
                logger.warning("a stream ends: %s", exc)
            # The last event may have gone to thousands of streams at once: let the
            # others write theirs before this one spends time on ending.
            await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not hung_up.gone or task.uncancel() > 0:
                raise
        finally:
            hung_up.stop()


class _HangUp:
    """Watches for the client hanging up, then cancels `task`.

    The watch is a task running the server's own `receive()`, re-armed by a
    callback until it says `http.disconnect`: no coroutine of outlast's, no
    task group.
    """

    __slots__ = ("gone", "receive", "receiving", "task")

    def __init__(self, task: asyncio.Task[Any], receive: Receive) -> None:
        self.task = task
        self.receive = receive
        self.gone = False
        self.receiving: asyncio.Future[Message] | None = None
        self._arm()

    def _arm(self) -> None:
        self.receiving = asyncio.ensure_future(self.receive())
        self.receiving.add_done_callback(self._received)

    def _received(self, receiving: asyncio.Future[Message]) -> None:
        if receiving.cancelled() or self.receiving is None:
            return
        if receiving.exception() is None and receiving.result()["type"] != "http.disconnect":
            self._arm()  # the (empty) request body: keep listening
            return
        self.gone = True
        self.receiving = None
        self.task.cancel()

    def stop(self) -> None:
        receiving, self.receiving = self.receiving, None
        if receiving is not None:
            receiving.cancel()


_encoded: dict[tuple[int, str | None], tuple[Event, bytes]] = {}


def sse_bytes(event: Event, base: str | None = None) -> bytes:
    """`sse_message()` encoded, once per event and base however many streams send it."""
    key = (id(event), base)
    cached = _encoded.get(key)
    if cached is not None and cached[0] is event:  # holding the event keeps its id from being reused
        return cached[1]
    encoded = sse_message(event, base).encode()
    if len(_encoded) >= ENCODED_CACHE:
        del _encoded[next(iter(_encoded))]
    _encoded[key] = (event, encoded)
    return encoded


def sse_message(event: Event, base: str | None = None) -> str:
    """One event in text/event-stream form; `status` data gets its links under `base`."""
    payload = with_links(base, event.data) if base is not None and event.type == "status" else event.data
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    head = "" if event.seq is None else f"id: {event.seq}\n"
    return f"{head}event: {event.type}\ndata: {data}\n\n"


def sse_cursor(request: Request) -> int:
    """`Last-Event-ID` (what a reconnecting EventSource sends), else `?after=`, else 0.

    An event number in ASCII digits; spaces around the header are dropped, and an
    empty header is no cursor (an EventSource that saw no id sends none). An
    empty `?after=` is refused.
    """
    header = (request.headers.get("last-event-id") or "").strip()
    cursor = 0
    for raw in (request.query_params.get("after"), header or None):  # the header, when given, wins
        if raw is not None:
            value = whole_number(raw, max_digits=17)
            if value is None:
                raise HTTPProblem(
                    400, "the cursor (Last-Event-ID or after) must be an event number", type="bad_request"
                )
            cursor = value
    return cursor


async def job_events(ot: Outlast, request: Request, job: Job) -> Response:
    """`GET /jobs/{id}/events` (docs/protocol.md, "Events")."""
    after = sse_cursor(request)
    if job.is_terminal and after >= job.last_seq:
        return Response(status_code=204)  # stops a browser's EventSource from reconnecting
    return EventStream(_job_chunks(ot, job.id, after, str(request.scope.get("root_path", ""))))


async def _job_chunks(ot: Outlast, job_id: str, after: int, base: str) -> AsyncGenerator[bytes, None]:
    yield RETRY
    heartbeat_s = heartbeat_for(ot.settings.hold_s)
    async with contextlib.aclosing(follow(ot, job_id, after, heartbeat_s=heartbeat_s)) as events:
        async for event in events:
            yield PING if event is None else sse_bytes(event, base)


async def status_events(ot: Outlast, request: Request, owner: str | None) -> Response:
    """`GET /events`: every job's status changes, live only (a dashboard's job list).

    With auth on, only the jobs of the caller's key.
    """
    base = str(request.scope.get("root_path", ""))
    owners: dict[str, str | None] = {}
    heartbeat_s = heartbeat_for(ot.settings.hold_s)

    async def visible(job_id: str) -> bool:
        if owner is None:
            return True
        if job_id not in owners:
            if len(owners) > OWNER_CACHE:
                owners.clear()
            job = await ot.store.get(job_id)
            owners[job_id] = None if job is None else job.owner
        return owners[job_id] == owner

    async def chunks() -> AsyncGenerator[bytes, None]:
        with ot.store.hub.listen_status() as listener:  # listening before the client hears anything
            yield RETRY
            while True:
                if not await listener.wait(heartbeat_s):
                    yield PING
                    continue
                if ot.store.hub.closing.is_set():
                    return
                if listener.lagged:
                    yield LAGGED  # some were dropped: reload the list
                for event in listener.drain():
                    if await visible(event.job_id):
                        yield sse_message(Event(event.job_id, None, "status", _summary(event.data)), base).encode()

    return EventStream(chunks())


def _summary(job: dict[str, Any]) -> dict[str, Any]:
    # The whole job object, but not its result: a dashboard fetches that if it wants it.
    return {key: value for key, value in job.items() if key != "result"}
