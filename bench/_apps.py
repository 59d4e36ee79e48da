"""The servers the push benchmarks run: an outlast app with a job that waits until released, and its floor.

`app` (served by `outlast serve bench._apps:app`) is outlast with one job,
`gate`, which waits until `POST /bench/release` names its key, then returns the
time it ended: `{"ended_at": time.time()}`. A client that gets the terminal
event knows when the job ended on the same clock as its own.

`floor` (served by `uvicorn bench._apps:floor`) is the least a server can do to
deliver the same thing over the same paths: no store, no jobs, no event log;
each waiter awaits an `asyncio.Event` and sends one message when it is set.
What outlast costs on top of it is outlast's own.

Both answer `GET /bench/listeners`: how many waiters are registered (for outlast,
the listeners of its hub), so that a benchmark knows every client is waiting.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from outlast import Outlast

# -- outlast -------------------------------------------------------------------------------

ot = Outlast(store="memory://")  # `--store` chooses the real one
_gates: dict[str, asyncio.Event] = {}


def _gate(key: str) -> asyncio.Event:
    return _gates.setdefault(key, asyncio.Event())


@ot.job()
async def gate(key: str) -> dict[str, float]:
    """Wait until released, then end at once, saying when."""
    await _gate(key).wait()
    _gates.pop(key, None)
    return {"ended_at": time.time()}


async def release(request: Request) -> Response:
    for key in (await request.json())["keys"]:
        _gate(key).set()
    return Response(status_code=204)


async def listeners(request: Request) -> Response:
    return JSONResponse({"listeners": ot.store.hub.listener_count})


app = Starlette(routes=[Route("/bench/release", release, methods=["POST"]), Route("/bench/listeners", listeners)])
ot.mount(app)


# -- the floor -----------------------------------------------------------------------------

TERMINAL = frozenset({"succeeded", "failed", "canceled"})


class _Floor:
    def __init__(self) -> None:
        self.events: dict[str, asyncio.Event] = {}
        self.ended_at: dict[str, float] = {}
        self.waiting = 0

    def event(self, key: str) -> asyncio.Event:
        return self.events.setdefault(key, asyncio.Event())

    async def wait(self, key: str, timeout_s: float | None = None) -> dict[str, Any] | None:
        self.waiting += 1
        try:
            async with asyncio.timeout(timeout_s):
                await self.event(key).wait()
        except TimeoutError:
            return None
        finally:
            self.waiting -= 1
        return {"id": key, "status": "succeeded", "result": {"ended_at": self.ended_at[key]}}


_floor = _Floor()


async def floor_submit(request: Request) -> Response:
    key = (await request.json())["key"]
    _floor.event(key)
    return JSONResponse({"id": key, "status": "running"}, status_code=202)


async def floor_release(request: Request) -> Response:
    for key in (await request.json())["keys"]:
        _floor.ended_at[key] = time.time()
        _floor.event(key).set()
    return Response(status_code=204)


async def floor_listeners(request: Request) -> Response:
    return JSONResponse({"listeners": _floor.waiting})


async def floor_status(request: Request) -> Response:
    key = request.path_params["job_id"]
    job = await _floor.wait(key, float(request.query_params.get("wait", "0")))
    return JSONResponse(job or {"id": key, "status": "running"})


async def floor_events(request: Request) -> Response:
    key = request.path_params["job_id"]

    async def stream() -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        job = await _floor.wait(key)
        yield f"id: 1\nevent: status\ndata: {json.dumps(job)}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


async def floor_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    tasks: set[asyncio.Task[None]] = set()

    async def follow(key: str) -> None:
        job = await _floor.wait(key)
        message = {"type": "event", "job_id": key, "seq": 1, "event": "status", "data": job}
        await websocket.send_text(json.dumps(message))

    try:
        while True:
            message = json.loads(await websocket.receive_text())
            if message.get("action") == "subscribe":
                task = asyncio.create_task(follow(message["id"]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    except WebSocketDisconnect:
        pass
    finally:
        for task in list(tasks):
            task.cancel()


floor = Starlette(
    routes=[
        Route("/jobs/gate", floor_submit, methods=["POST"]),
        Route("/jobs/{job_id}", floor_status),
        Route("/jobs/{job_id}/events", floor_events),
        WebSocketRoute("/ws", floor_ws),
        Route("/bench/release", floor_release, methods=["POST"]),
        Route("/bench/listeners", floor_listeners),
    ]
)
