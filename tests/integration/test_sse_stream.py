"""The event stream's own response, many at once, over a real socket: hang-ups free everything, ends are clean."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import uvicorn

from outlast import Outlast
from outlast.jobs import Outcome

pytestmark = pytest.mark.timeout(60)

STREAMS = 200
TERMINATOR = b"\r\n0\r\n\r\n"  # the last chunk of a chunked response: the server ended the stream itself


@dataclass
class Served:
    ot: Outlast
    port: int

    async def open(self, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"content-type: text/event-stream" in head.lower(), head
        return reader, writer

    async def until_listeners(self, count: int) -> None:
        while self.ot.store.hub.listener_count != count:
            await asyncio.sleep(0.01)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    ot = Outlast(store="memory://", workers=0, dashboard=True)

    @ot.job()
    async def work() -> None: ...

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(ot.app(), log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield Served(ot, sock.getsockname()[1])
    ot.shutting_down()
    server.should_exit = True
    await serving
    sock.close()


async def test_clients_that_hang_up_leave_no_listener_and_no_task_behind(served: Served):
    job, _ = await served.ot.submit("work")
    tasks_before = len(asyncio.all_tasks())
    async with asyncio.timeout(30):
        for _ in range(3):  # again and again: nothing accumulates
            connections = [await served.open(f"/jobs/{job.id}/events") for _ in range(STREAMS)]
            connections.append(await served.open("/events"))
            await served.until_listeners(STREAMS + 1)
            for _, writer in connections:
                writer.close()
            await served.until_listeners(0)
            while len(asyncio.all_tasks()) > tasks_before:
                await asyncio.sleep(0.01)
    assert not served.ot.store.hub.is_listened(job.id)


async def test_every_stream_gets_the_terminal_event_then_a_clean_end(served: Served):
    ot = served.ot
    job, _ = await ot.submit("work")
    async with asyncio.timeout(30):
        connections = [await served.open(f"/jobs/{job.id}/events") for _ in range(STREAMS)]
        await served.until_listeners(STREAMS)
        claimed = await ot.store.claim("w", ["work"], 30)
        assert claimed is not None
        await ot.store.finish(job.id, claimed.token, Outcome.succeeded({"n": 7}))
        bodies = [await reader.readuntil(TERMINATOR) for reader, _ in connections]  # the server ends each
        await served.until_listeners(0)
    for body in bodies:
        assert body.count(b"event: status") == 3, body  # queued, running, succeeded: each once
        assert b"id: 3\nevent: status\ndata: " in body
        assert b'"status":"succeeded"' in body and b'"result":{"n":7}' in body
        assert b"retry: 2000\n\n" in body
    for _, writer in connections:
        writer.close()


async def test_shutdown_ends_every_open_stream_at_once(served: Served):
    job, _ = await served.ot.submit("work")
    async with asyncio.timeout(10):
        connections = [await served.open(f"/jobs/{job.id}/events") for _ in range(20)]
        connections.append(await served.open("/events"))
        await served.until_listeners(21)
        served.ot.shutting_down()
        for reader, _ in connections:
            await reader.readuntil(TERMINATOR)
        await served.until_listeners(0)
    for _, writer in connections:
        writer.close()
