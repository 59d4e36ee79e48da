"""The floor: a plain Starlette endpoint doing the same (no) work as the `noop` job."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def noop(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"status": "succeeded", "result": None})


app = Starlette(routes=[Route("/jobs/noop", noop, methods=["POST"])])
