"""Server-Sent Events (docs/protocol.md, "Events"), read from a real `outlast serve` over a socket, on a SQLite file."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

ASYNC = {"Prefer": "respond-async"}
TERMINAL = {"succeeded", "failed", "canceled"}
PROBLEM_TYPE = "application/problem+json"
HEARTBEAT_S = 15.0  # the protocol's longest silence
LEASE = 2  # seconds: a job whose server died is reclaimed soon after this


# -- helpers ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Message:
    """One SSE block (the lines up to a blank line), parsed strictly."""

    lines: tuple[str, ...]

    def fields(self, name: str) -> list[str]:
        prefix = f"{name}: "
        return [line.removeprefix(prefix) for line in self.lines if line.startswith(prefix)]

    @property
    def id(self) -> int | None:
        ids = self.fields("id")
        assert len(ids) <= 1, self.lines
        return int(ids[0]) if ids else None

    @property
    def event(self) -> str | None:
        events = self.fields("event")
        assert len(events) <= 1, self.lines
        return events[0] if events else None

    @property
    def data(self) -> Any:
        data = self.fields("data")
        assert len(data) == 1, f"one data line per event: {self.lines}"
        return json.loads(data[0])

    @property
    def is_comment(self) -> bool:
        return all(line.startswith(":") for line in self.lines)

    @property
    def is_retry(self) -> bool:
        return len(self.lines) == 1 and self.lines[0].startswith("retry: ")

    def key(self) -> tuple[int | None, str | None, str]:
        """What two deliveries of one event share: id, type, data."""
        return self.id, self.event, json.dumps(self.data, sort_keys=True)


async def messages(response: httpx.Response) -> AsyncGenerator[Message, None]:
    """The blocks of an event stream, as they arrive."""
    block: list[str] = []
    async for line in response.aiter_lines():
        if line:
            block.append(line)
        elif block:
            yield Message(tuple(block))
            block = []
    if block:
        yield Message(tuple(block))


def client_for(server: Any, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(30), **kwargs)


async def submit(client: httpx.AsyncClient, name: str, input: dict[str, Any] | None = None) -> dict[str, Any]:
    response = await client.post(f"/jobs/{name}", json=input or {}, headers=ASYNC)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


async def read_all(
    client: httpx.AsyncClient, job_id: str, *, headers: dict[str, str] | None = None, after: int | None = None
) -> tuple[httpx.Response, list[Message]]:
    """Every block of the job's stream until the server closes it."""
    params = {} if after is None else {"after": after}
    async with client.stream("GET", f"/jobs/{job_id}/events", headers=headers, params=params) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        received = [message async for message in messages(response)]
    return response, received


async def read_until(
    client: httpx.AsyncClient, job_id: str, last: int, *, headers: dict[str, str] | None = None
) -> list[Message]:
    """The job's stored events up to id `last`, then hang up (mid-job)."""
    received: list[Message] = []
    async with client.stream("GET", f"/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        async for message in messages(response):
            received.append(message)
            if message.id == last:
                break
    return received


def events_of(received: list[Message]) -> list[Message]:
    """The stored events (those with an id), checked for form."""
    stored = [message for message in received if message.id is not None]
    for message in stored:
        assert message.event in {"status", "progress", "log"}, message.lines
        assert isinstance(message.data, dict), message.lines
    return stored


def assert_contiguous(stored: list[Message], first: int = 1) -> None:
    ids = [message.id for message in stored]
    assert ids == list(range(first, first + len(ids))), f"gap or duplicate: {ids}"


def assert_ends_terminal(stored: list[Message], status: str = "succeeded") -> dict[str, Any]:
    last = stored[-1]
    assert last.event == "status", last.lines
    data: dict[str, Any] = last.data
    assert data["status"] == status, data
    assert all(m.event != "status" or m.data["status"] not in TERMINAL for m in stored[:-1])
    return data


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers.get("content-type", "").split(";")[0] == PROBLEM_TYPE, response.headers
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == status
    assert "Traceback" not in response.text
    return body


# -- 1. the stream's form ---------------------------------------------------------------


async def test_a_job_stream_has_the_headers_a_retry_line_and_numbered_events_and_closes_at_the_end(serve):
    server = serve()
    async with client_for(server) as client, asyncio.timeout(20):
        job = await submit(client, "sleep", {"seconds": 1, "steps": 5})
        response, received = await read_all(client, job["id"])

    assert response.headers["content-type"].split(";")[0] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"

    assert received[0].is_retry, received[0].lines
    assert int(received[0].lines[0].removeprefix("retry: ")) > 0
    assert not any(message.is_retry for message in received[1:])
    events = [message for message in received[1:] if not message.is_comment]
    for message in events:
        if message.event == "position":  # live only: no id
            assert message.id is None and set(message.data) == {"queue_position"}, message.lines
            continue
        assert message.id is not None, f"an event without id: {message.lines}"
        assert message.event is not None, message.lines
        assert [line.split(":", 1)[0] for line in message.lines] == ["id", "event", "data"], message.lines
    stored = events_of(received)
    assert_contiguous(stored)
    # The whole story: queued, running, 5 progress reports, succeeded.
    assert stored[0].event == "status" and stored[0].data["status"] == "queued"
    assert stored[0].data["id"] == job["id"]
    assert any(m.event == "status" and m.data["status"] == "running" for m in stored)
    progress = [m.data for m in stored if m.event == "progress"]
    assert progress and progress[-1] == {"current": 5, "total": 5, "message": "sleeping"}
    final = assert_ends_terminal(stored)
    assert final["result"] == {"slept": 1, "attempt": 1}
    assert received[-1] is stored[-1]  # nothing after the terminal event: the server closed the stream


# -- 2. resume ------------------------------------------------------------------------------


async def test_reconnecting_with_last_event_id_resumes_without_gap_or_duplicate(serve):
    server = serve()
    async with client_for(server) as client, asyncio.timeout(30):
        job = await submit(client, "sleep", {"seconds": 3, "steps": 30})
        cut = 6
        first = await read_until(client, job["id"], cut)
        assert first[-1].id == cut
        # The job goes on meanwhile; the client comes back where it left off.
        _, second = await read_all(client, job["id"], headers={"Last-Event-ID": str(cut)})
        _, replay = await read_all(client, job["id"], after=0)

    seen = events_of(first) + events_of(second)
    assert_contiguous(seen)
    assert events_of(second)[0].id == cut + 1
    assert_ends_terminal(seen)
    assert [m.key() for m in seen] == [m.key() for m in events_of(replay)]
    assert len(seen) > cut + 5  # the job was still reporting when the client came back


async def test_resume_across_a_server_killed_mid_job(serve):
    server = serve(workers=1, lease=LEASE)
    async with client_for(server) as client, asyncio.timeout(45):
        job = await submit(client, "sleep", {"seconds": 4, "steps": 40})
        cut = 5  # queued, running, three progress reports
        first = await read_until(client, job["id"], cut)
    assert first[-1].id == cut
    server.kill()

    server = serve(workers=1, lease=LEASE)  # the same SQLite file
    async with client_for(server) as client, asyncio.timeout(45):
        _, second = await read_all(client, job["id"], headers={"Last-Event-ID": str(cut)})
        _, replay = await read_all(client, job["id"], after=0)

    seen = events_of(first) + events_of(second)
    assert_contiguous(seen)
    final = assert_ends_terminal(seen)
    assert final["attempt"] == 2, final  # reclaimed after its lease, run again
    assert final["result"] == {"slept": 4, "attempt": 2}
    assert [m.key() for m in seen] == [m.key() for m in events_of(replay)]


# -- 3. 204, 404, 400 -----------------------------------------------------------------------


async def test_a_cursor_at_or_past_the_end_gets_204_an_unknown_id_404_a_bad_cursor_400(serve):
    server = serve()
    async with client_for(server) as client, asyncio.timeout(20):
        job = await submit(client, "echo", {"text": "hi"})
        _, received = await read_all(client, job["id"])
        last = events_of(received)[-1].id
        assert last is not None

        for headers, params in [
            ({"Last-Event-ID": str(last)}, {}),
            ({"Last-Event-ID": str(last + 7)}, {}),
            ({}, {"after": str(last)}),
        ]:
            response = await client.get(f"/jobs/{job['id']}/events", headers=headers, params=params)
            assert response.status_code == 204, (headers, params, response.text)
            assert response.content == b""

        # One short of the end: just the terminal event.
        _, tail = await read_all(client, job["id"], headers={"Last-Event-ID": str(last - 1)})
        assert [m.id for m in events_of(tail)] == [last]

        assert_problem(await client.get("/jobs/j_doesnotexist/events"), 404)
        for bad in ("abc", "-1", "1.5", "1e3"):
            response = await client.get(f"/jobs/{job['id']}/events", headers={"Last-Event-ID": bad})
            assert_problem(response, 400)


# -- 4. heartbeat ---------------------------------------------------------------------------


async def test_an_idle_stream_gets_a_ping_comment_within_15_seconds(serve):
    server = serve()
    async with client_for(server) as client:
        job = await submit(client, "sleep", {"seconds": 60, "steps": 1})
        quiet_since = time.monotonic()
        async with asyncio.timeout(HEARTBEAT_S + 5):
            async with client.stream("GET", f"/jobs/{job['id']}/events") as response:
                async for message in messages(response):
                    if message.is_comment:
                        assert message.lines == (": ping",)
                        break
                    if message.id is not None:
                        quiet_since = time.monotonic()  # the last event before the silence
        assert time.monotonic() - quiet_since <= HEARTBEAT_S + 2
        assert (await client.post(f"/jobs/{job['id']}/cancel")).status_code in (200, 202)


# -- 5. queue positions ---------------------------------------------------------------------


async def test_queued_subscribers_see_their_position_count_down_to_zero_then_running(serve):
    server = serve(workers=1)
    async with client_for(server) as client, asyncio.timeout(30):
        blocker = await submit(client, "sleep", {"seconds": 2})
        # Wait for the blocker to hold the only worker.
        async with client.stream("GET", f"/jobs/{blocker['id']}/events") as response:
            async for message in messages(response):
                if message.event == "status" and message.data["status"] == "running":
                    break
        queued = [await submit(client, "sleep", {"seconds": 0.5}) for _ in range(5)]

        async def positions_until_running(job_id: str) -> list[Message]:
            seen: list[Message] = []
            async with client.stream("GET", f"/jobs/{job_id}/events") as response:
                async for message in messages(response):
                    seen.append(message)
                    if message.event == "status" and message.data["status"] == "running":
                        break
            return seen

        streams = await asyncio.gather(*(positions_until_running(job["id"]) for job in queued))

    for ahead, seen in enumerate(streams):
        position_messages = [m for m in seen if m.event == "position"]
        for message in position_messages:
            assert message.id is None, f"a position event moved the cursor: {message.lines}"
            assert set(message.data) == {"queue_position"}
        positions = [m.data["queue_position"] for m in position_messages]
        assert positions, f"job {ahead}: no position events"
        assert positions[0] == ahead, f"job {ahead} started at {positions}"
        assert positions == sorted(positions, reverse=True), f"job {ahead}: not counting down: {positions}"
        assert positions[-1] == 0, f"job {ahead}: {positions}"
        # The positions come while queued, before the running status event, which ends the list.
        kinds = [m.event for m in seen if m.event != "progress"]
        last_position = len(kinds) - 1 - kinds[::-1].index("position")
        assert kinds[-1] == "status" and seen[-1].data["status"] == "running"
        assert all(kind == "status" for kind in kinds[last_position + 1 :])
        assert_contiguous(events_of(seen))


# -- 6. many subscribers --------------------------------------------------------------------


async def test_a_thousand_concurrent_subscribers_each_get_every_event_of_their_job(serve):
    jobs_n, per_job = 100, 10
    server = serve(workers=jobs_n)
    limits = httpx.Limits(max_connections=jobs_n * per_job + 100, max_keepalive_connections=jobs_n * per_job + 100)
    started = time.monotonic()
    async with client_for(server, limits=limits) as client, asyncio.timeout(60):
        jobs = await asyncio.gather(*(submit(client, "sleep", {"seconds": 3, "steps": 5}) for _ in range(jobs_n)))

        async def subscribe(job_id: str) -> list[Message]:
            _, received = await read_all(client, job_id)
            return received

        results = await asyncio.gather(*(subscribe(job["id"]) for job in jobs for _ in range(per_job)))
    elapsed = time.monotonic() - started

    assert len(results) == jobs_n * per_job
    for index, received in enumerate(results):
        job = jobs[index // per_job]
        stored = events_of(received)
        assert_contiguous(stored)
        final = assert_ends_terminal(stored)
        assert final["id"] == job["id"]
        currents = [m.data["current"] for m in stored if m.event == "progress"]
        assert currents == sorted(set(currents)) and currents[-1] == 5, currents  # progress may be coalesced
        assert all(m.event == "position" for m in received[1:] if m.id is None and not m.is_comment)
    for j in range(jobs_n):  # the ten subscribers of one job saw the same events
        group = [[m.key() for m in events_of(received)] for received in results[j * per_job : (j + 1) * per_job]]
        assert all(keys == group[0] for keys in group), f"subscribers of job {j} disagree"
    assert elapsed < 60


# -- 7. GET /events ------------------------------------------------------------------------


async def test_the_status_stream_shows_every_jobs_status_changes_without_results(serve):
    server = serve()
    async with (
        client_for(server) as client,
        asyncio.timeout(20),
        client.stream("GET", "/events") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].split(";")[0] == "text/event-stream"
        assert response.headers["cache-control"] == "no-cache"
        stream = messages(response)
        first = await anext(stream)
        assert first.is_retry, first.lines

        jobs = [await submit(client, "echo", {"text": f"job {n}", "times": 3}) for n in range(3)]
        wanted = {job["id"]: ["queued", "running", "succeeded"] for job in jobs}
        seen: dict[str, list[str]] = {job["id"]: [] for job in jobs}
        async for message in stream:
            if message.is_comment:
                continue
            assert message.event == "status", message.lines
            assert message.id is None, message.lines  # live only: nothing to resume
            data = message.data
            assert "result" not in data, data
            assert {"id", "name", "status"} <= data.keys()
            if data["id"] in seen:
                seen[data["id"]].append(data["status"])
            if seen == wanted:
                break
        await stream.aclose()
    assert seen == wanted
