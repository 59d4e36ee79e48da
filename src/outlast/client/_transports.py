"""How the client waits for a job to end: SSE, WebSocket, long-poll or polling.

Each follows one job until its terminal status, reporting what it sees to an
`on_update` callback, and survives dropped connections and a server that is
down for a while: it reconnects with backoff (`_backoff`) and resumes from the
last event it saw, until the caller's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal

import httpx

from outlast.client._backoff import Deadline, Retry
from outlast.client._errors import JobTimeout, ProblemError, ServerUnavailable
from outlast.retry_after import parse_retry_after

if TYPE_CHECKING:
    from outlast.client._async import AsyncJobHandle

Mode = Literal["auto", "sse", "ws", "long-poll", "poll"]
MODES: tuple[Mode, ...] = ("auto", "sse", "ws", "long-poll", "poll")
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
RETRYABLE_STATUS = frozenset({502, 503, 504})
LONG_POLL_S = 25.0  # the server caps it at its hold
POLL_MIN_S, POLL_MAX_S = 1.0, 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class JobEvent:
    """One event of a job, as SSE and the WebSocket deliver it."""

    job_id: str
    seq: int | None
    type: str
    data: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Update:
    """What `on_progress` is told: the job's status, progress and queue position."""

    job_id: str
    status: str
    progress: dict[str, Any] | None = None
    queue_position: int | None = None


OnUpdate = Callable[[Update], Any]


class Follower:
    """Follows one job for one `wait()`: keeps the cursor, the retries, the callback.

    The job as last seen is kept on the handle, so that it is up to date when
    the wait ends early (a timeout, Ctrl-C).
    """

    def __init__(self, handle: AsyncJobHandle, deadline: Deadline, on_update: OnUpdate | None) -> None:
        self.handle = handle
        self.client = handle.client
        self.job_id = handle.id
        self.deadline = deadline
        self.on_update = on_update
        self.cursor = 0
        self.retry = Retry(self.client.backoff, deadline)

    @property
    def job(self) -> dict[str, Any]:
        return self.handle.job

    # -- shared -----------------------------------------------------------------------

    async def tell(self, update: Update) -> None:
        if self.on_update is not None:
            outcome = self.on_update(update)
            if asyncio.iscoroutine(outcome):
                await outcome

    async def saw_job(self, job: dict[str, Any]) -> None:
        self.handle.job = job
        await self.tell(Update(self.job_id, job["status"], job.get("progress"), job.get("queue_position")))

    async def saw_event(self, event: JobEvent) -> bool:
        """Take one event; True once the job is terminal."""
        if event.seq is not None:
            if event.seq <= self.cursor:
                return False  # already seen (a resumed stream may repeat nothing, but be safe)
            self.cursor = event.seq
        if event.type == "status":
            await self.saw_job(event.data)
            return event.data.get("status") in TERMINAL
        if event.type == "progress":
            await self.tell(Update(self.job_id, self.job["status"], event.data, None))
        elif event.type == "position":
            await self.tell(
                Update(self.job_id, self.job["status"], self.job.get("progress"), event.data.get("queue_position"))
            )
        return False

    async def pause(self, hint_s: float | None = None) -> None:
        """After a failure: back off, within the deadline or the patience."""
        await self.retry.pause(f"the server did not answer for job {self.job_id}", hint_s)

    def check_deadline(self) -> None:
        if self.deadline.expired():
            raise JobTimeout(self.job_id, self.job, self.deadline.timeout_s)

    async def refresh(self) -> dict[str, Any]:
        response = await self.client._request("GET", f"/jobs/{self.job_id}", deadline=self.deadline)
        job: dict[str, Any] = self.client._json_or_raise(response)
        await self.saw_job(job)
        return job

    # -- the transports ---------------------------------------------------------------------

    async def wait(self, mode: Mode) -> dict[str, Any]:
        if self.job["status"] in TERMINAL:
            return self.job
        try:
            if mode in ("auto", "sse"):
                return await self.sse(fallback=mode == "auto")
            if mode == "ws":
                return await self.websocket()
            if mode == "long-poll":
                return await self.long_poll()
            return await self.poll()
        except JobTimeout as exc:
            if exc.job_id is None:  # from a request that did not know which job it was for
                raise JobTimeout(self.job_id, self.job, self.deadline.timeout_s) from None
            raise

    async def sse(self, *, fallback: bool) -> dict[str, Any]:
        while True:
            self.check_deadline()
            hint_s = None
            try:
                async with contextlib.aclosing(self.client._sse(self.job_id, self.cursor, self.deadline)) as events:
                    async for event in events:
                        self.retry.succeeded()
                        if await self.saw_event(event):
                            return self.job
                # The stream ended without the terminal event: 204 (it has ended), or a proxy cut it.
                job = await self.refresh()
                if job["status"] in TERMINAL:
                    return job
                self.retry.answered()
            except ProblemError as exc:
                if fallback and exc.status in (404, 405, 501) and exc.type not in ("not_found",):
                    return await self.long_poll()  # a server or proxy without event streams
                raise
            except TimeoutError:
                raise JobTimeout(self.job_id, self.job, self.deadline.timeout_s) from None
            except httpx.TransportError:
                pass
            except ServerUnavailable as exc:
                hint_s = exc.retry_after_s
            await self.pause(hint_s)

    async def websocket(self) -> dict[str, Any]:
        from websockets.asyncio.client import connect
        from websockets.exceptions import WebSocketException

        url = self.client.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/ws"
        while True:
            self.check_deadline()
            try:
                async with asyncio.timeout(self.deadline.remaining()):
                    async with connect(url, additional_headers=self.client._auth_headers(), open_timeout=10) as ws:
                        await ws.send(json.dumps({"action": "subscribe", "id": self.job_id, "after": self.cursor}))
                        while True:  # not `async for`: it would leave an async generator for the GC to close
                            message = json.loads(await ws.recv())
                            if message.get("type") == "error":
                                raise ProblemError(message)
                            if message.get("type") == "ended":  # it had ended by the time we subscribed
                                await self.saw_job(message["job"])
                                return self.job
                            if message.get("type") != "event":
                                continue
                            self.retry.succeeded()
                            event = JobEvent(self.job_id, message["seq"], message["event"], message["data"])
                            if await self.saw_event(event):
                                return self.job
            except TimeoutError:
                raise JobTimeout(self.job_id, self.job, self.deadline.timeout_s) from None
            except (OSError, WebSocketException):
                pass
            await self.pause()

    async def long_poll(self) -> dict[str, Any]:
        while True:
            self.check_deadline()
            remaining = self.deadline.remaining()
            wait_s = LONG_POLL_S if remaining is None else max(0.0, min(LONG_POLL_S, remaining))
            response = await self.client._request(
                "GET", f"/jobs/{self.job_id}", params={"wait": f"{wait_s:.3f}"}, deadline=self.deadline
            )
            job: dict[str, Any] = self.client._json_or_raise(response)
            await self.saw_job(job)
            if job["status"] in TERMINAL:
                return job

    async def poll(self) -> dict[str, Any]:
        interval = POLL_MIN_S
        while True:
            self.check_deadline()
            response = await self.client._request("GET", f"/jobs/{self.job_id}", deadline=self.deadline)
            job: dict[str, Any] = self.client._json_or_raise(response)
            await self.saw_job(job)
            if job["status"] in TERMINAL:
                return job
            hinted = parse_retry_after(response.headers.get("retry-after"))
            interval = hinted if hinted is not None else min(POLL_MAX_S, interval * 1.5)
            delay = min(POLL_MAX_S, interval) * random.uniform(0.8, 1.2)
            remaining = self.deadline.remaining()
            if remaining is not None and remaining < delay:
                delay = max(0.0, remaining)
            await asyncio.sleep(delay)


async def parse_sse(lines: AsyncIterator[str], job_id: str) -> AsyncGenerator[JobEvent, None]:
    """Events of a text/event-stream (the subset the protocol uses)."""
    seq: int | None = None
    kind = "message"
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield JobEvent(job_id, seq, kind, json.loads("\n".join(data)))
            seq, kind, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "id":
            seq = int(value) if value.isdigit() else None
        elif field == "event":
            kind = value
        elif field == "data":
            data.append(value)
