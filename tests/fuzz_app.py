"""The app the OpenAPI fuzzing runs against: jobs that end quickly and never fail by design."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from pydantic import Field

from outlast import JobContext, Outlast

ot = Outlast(store="memory://")


@ot.job()
async def echo(
    text: Annotated[str, Field(max_length=1000)], times: Annotated[int, Field(ge=0, le=10)] = 1
) -> list[str]:
    return [text] * times


@ot.job()
async def pause(ctx: JobContext, seconds: Annotated[float, Field(ge=0, le=0.2)] = 0.05) -> dict[str, Any]:
    await asyncio.sleep(seconds)
    ctx.progress(1, 1)
    return {"paused": seconds}


app = ot.app()
