"""An app for tests/integration/test_hostile_input.py: an untyped parameter and an unbounded long-running route."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI

from outlast import JobContext, Outlast

ot = Outlast(store="memory://")


@ot.job()
async def keep(value: Any = None) -> dict[str, Any]:
    """Returns what it was given, and its type."""
    return {"value": value, "type": type(value).__name__}


@ot.job()
async def nap(seconds: float = 0.0) -> float:
    await asyncio.sleep(seconds)
    return seconds


@ot.long_running("/nap")
async def nap_route(seconds: float = 0.0) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@ot.job()
async def small_file(ctx: JobContext, size: int = 100) -> str:
    """Stores a file of `size` bytes and returns its URL."""
    return await ctx.artifact("small.bin", bytes(i % 256 for i in range(size)), "application/octet-stream")


# The same unbounded route on FastAPI, which validates the query string itself first.
fastapi_ot = Outlast(store="memory://")
fastapi_app = FastAPI()
fastapi_ot.mount(fastapi_app)


@fastapi_app.get("/nap")
@fastapi_ot.long_running()
async def fastapi_nap(seconds: float = 0.0) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return {"slept": seconds}
