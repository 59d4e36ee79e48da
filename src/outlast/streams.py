"""Following a job's events: the stored ones after a cursor, then live ones.

`follow()` is what both the Server-Sent Events endpoint and the WebSocket hub
stream from. It starts listening before it reads the store, so nothing that
happens in between is lost; it skips what it already sent, so nothing is
repeated; and when the live feed has a gap (a slow reader whose buffer
overflowed, an event relayed late from another node) it reads the gap back
from the store, which is the source of truth.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from outlast.jobs import TERMINAL, Event, Job, JobStatus
from outlast.links import with_links
from outlast.problems import HTTPProblem

if TYPE_CHECKING:
    from outlast.core import Outlast

HEARTBEAT_S = 15.0
RETRY_MS = 2000
PAGE = 500
OWNER_CACHE = 10_000
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
TERMINAL_VALUES = frozenset(status.value for status in TERMINAL)


def is_terminal_event(event: Event) -> bool:
    return event.type == "status" and event.data.get("status") in TERMINAL_VALUES


async def follow(
    ot: Outlast, job_id: str, after: int, *, heartbeat_s: float = HEARTBEAT_S
) -> AsyncIterator[Event | None]:
    """The job's events with seq > `after`, in order, then live ones; None when idle for `heartbeat_s`.

    Ends after the terminal status event. `position` events (seq None) are
    passed through as they come.
    """
    store = ot.store
    with store.hub.listen(job_id) as listener, contextlib.ExitStack() as watching:
        cursor = after
        watched = False
        while True:
            while True:  # catch up from the store
                events = await store.events(job_id, cursor, PAGE)
                for event in events:
                    yield event
                    cursor = event.seq if event.seq is not None else cursor
                    if is_terminal_event(event):
                        return
                if len(events) < PAGE:
                    break
            if not watched:
                # Positions while queued: the job's current state says whether it is.
                job = await store.get(job_id)
                if job is not None and job.status is JobStatus.QUEUED:
                    watching.enter_context(ot.positions.watch(job_id, job.name, job.queue_position))
                    yield Event(job_id, None, "position", {"queue_position": job.queue_position})
                watched = True
            while True:  # live
                if not await listener.wait(heartbeat_s):
                    yield None
                    if await store.get(job_id) is None:
                        return  # the job is gone (deleted, or lost with its store): nothing more will come
                    break  # idle: look in the store too, in case a relayed event was lost
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
                        if event.type == "status" and event.data.get("status") != "queued":
                            watching.close()  # no longer queued: no more positions
                    elif event.seq > cursor + 1:
                        gap = True
                        break
                if gap or lagged:
                    break


# -- Server-Sent Events ---------------------------------------------------------------


def sse_message(event: Event, base: str | None = None) -> str:
    """One event in text/event-stream form; `status` data gets its links under `base`."""
    payload = with_links(base, event.data) if base is not None and event.type == "status" else event.data
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    head = "" if event.seq is None else f"id: {event.seq}\n"
    return f"{head}event: {event.type}\ndata: {data}\n\n"


def sse_cursor(request: Request) -> int:
    """`Last-Event-ID` (what a reconnecting EventSource sends), else `?after=`, else 0."""
    header, query = request.headers.get("last-event-id"), request.query_params.get("after")
    for raw in (header, query):
        if raw and (not raw.isdigit() or len(raw) > 17):
            raise HTTPProblem(400, "the cursor (Last-Event-ID or after) must be an event number", type="bad_request")
    return int(header or query or 0)


async def job_events(ot: Outlast, request: Request, job: Job) -> Response:
    """`GET /jobs/{id}/events` (PROTOCOL.md, "Events")."""
    after = sse_cursor(request)
    if job.is_terminal and after >= job.last_seq:
        return Response(status_code=204)  # stops a browser's EventSource from reconnecting

    base = str(request.scope.get("root_path", ""))

    async def stream() -> AsyncIterator[str]:
        yield f"retry: {RETRY_MS}\n\n"
        async for event in follow(ot, job.id, after):
            yield ": ping\n\n" if event is None else sse_message(event, base)

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


async def status_events(ot: Outlast, request: Request, owner: str | None) -> Response:
    """`GET /events`: every job's status changes, live only (a dashboard's job list).

    With auth on, only the jobs of the caller's key.
    """
    base = str(request.scope.get("root_path", ""))
    owners: dict[str, str | None] = {}

    async def visible(job_id: str) -> bool:
        if owner is None:
            return True
        if job_id not in owners:
            if len(owners) > OWNER_CACHE:
                owners.clear()
            job = await ot.store.get(job_id)
            owners[job_id] = None if job is None else job.owner
        return owners[job_id] == owner

    async def stream() -> AsyncIterator[str]:
        with ot.store.hub.listen_status() as listener:  # listening before the client hears anything
            yield f"retry: {RETRY_MS}\n\n"
            while True:
                if not await listener.wait(HEARTBEAT_S):
                    yield ": ping\n\n"
                    continue
                if ot.store.hub.closing.is_set():
                    return
                if listener.lagged:
                    yield "event: lagged\ndata: {}\n\n"  # some were dropped: reload the list
                for event in listener.drain():
                    if await visible(event.job_id):
                        yield sse_message(Event(event.job_id, None, "status", _summary(event.data)), base)

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


def _summary(job: dict[str, Any]) -> dict[str, Any]:
    # The whole job object, but not its result: a dashboard fetches that if it wants it.
    return {key: value for key, value in job.items() if key != "result"}
