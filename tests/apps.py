"""Apps the tests serve: jobs whose timing and failures the tests control."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from outlast import JobContext, JobError, Outlast, RetryableError

ot = Outlast(store="memory://", dashboard=True)  # the tests list jobs without API keys


@ot.job()
async def sleep(ctx: JobContext, seconds: float = 1.0, steps: int = 1) -> dict[str, Any]:
    """Sleep `seconds` in `steps` steps, reporting progress after each."""
    for step in range(steps):
        await asyncio.sleep(seconds / steps)
        ctx.progress(step + 1, steps, "sleeping")
    return {"slept": seconds, "attempt": ctx.attempt}


@ot.job()
def sync_sleep(ctx: JobContext, seconds: float = 1.0) -> dict[str, Any]:
    """A sync job that checks for cancellation while it sleeps."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ctx.raise_if_canceled()
        time.sleep(0.01)
    return {"slept": seconds}


@ot.job()
async def noop() -> None:
    return None


@ot.job()
async def echo(text: str, times: int = 1) -> list[str]:
    return [text] * times


@ot.job()
async def fail(message: str = "it went wrong", status: int = 500, type: str = "broken") -> None:
    raise JobError(message, type=type, status=status)


@ot.job(max_attempts=3, backoff=0.05)
async def flaky(ctx: JobContext, failures: int = 1) -> dict[str, int]:
    """Fails (retryably) on its first `failures` attempts."""
    if ctx.attempt <= failures:
        raise RetryableError(f"attempt {ctx.attempt} failed")
    return {"attempt": ctx.attempt}


@ot.job(timeout=0.5)
async def too_slow() -> None:
    await asyncio.sleep(30)


app = ot.app()


@ot.job()
async def big_file(ctx: JobContext, megabytes: int = 200) -> str:
    """Stores a file of `megabytes` MB, written from a stream, and returns its URL."""

    async def chunks() -> AsyncIterator[bytes]:
        block = bytes(range(256)) * 4096  # 1 MiB
        for _ in range(megabytes):
            yield block

    return await ctx.artifact("big.bin", chunks(), "application/octet-stream")
