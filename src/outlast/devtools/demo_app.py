"""The demo's app: the jobs of the articles behind outlast, served by one app.

    outlast demo                                   # behind a local 29 s gateway
    outlast serve outlast.devtools.demo_app:ot     # on its own

- `GET /payload?delay=40`: a plain-looking endpoint that takes `delay` seconds.
  `curl -L` gets its answer through the 303 chain, whatever the gateway.
- `GET /plain/payload?delay=40`: the same work as a plain endpoint, which a
  gateway cuts off (try it behind `outlast demo`).
- `POST /jobs/report` with `{"delay": 2000, "rows": 500}`: waits `delay`
  milliseconds, builds `rows` dummy rows, stores them as a CSV file, and
  returns a summary with the file's signed download URL, with progress.
- Over the WebSocket, `{"action": "generateReport", "delay": 2000,
  "amountOfRows": 500}`: the same report, by the names the seed article uses.
- `GET /`: a page that lists jobs live and generates reports.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from typing import Annotated, Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from outlast import JobContext, Outlast
from outlast.parsing import decimal_number

ot = Outlast()


@ot.long_running("/payload")
async def payload(delay: Annotated[float, Field(ge=0, le=3600)] = 60) -> dict[str, str]:
    """Sleep `delay` seconds, then say so."""
    await asyncio.sleep(delay)
    return {"MESSAGE": f"It took {delay:g} seconds to generate this."}


async def plain_payload(request: Request) -> JSONResponse:
    """The same work as `/payload`, as a plain endpoint: a gateway cuts it off."""
    delay = decimal_number(request.query_params.get("delay", "60"))  # no "inf", "nan" or "1_0"
    if delay is None:
        return JSONResponse({"detail": "delay must be a number of seconds"}, status_code=400)
    delay = min(delay, 3600)
    await asyncio.sleep(delay)
    return JSONResponse({"MESSAGE": f"It took {delay:g} seconds to generate this."})


ot.routes.append(Route("/plain/payload", plain_payload))


@ot.job()
async def report(
    ctx: JobContext,
    delay: Annotated[float, Field(ge=0, le=3_600_000, description="milliseconds to wait")] = 2000,
    rows: Annotated[int, Field(ge=0, le=1_000_000, description="rows to build")] = 500,
) -> dict[str, Any]:
    """Wait `delay` ms, build `rows` dummy rows, and summarise them."""
    steps = 20
    for step in range(steps):
        await asyncio.sleep(delay / 1000 / steps)
        ctx.progress(step + 1, steps, "waiting for the data")
    rng = random.Random(rows)
    amounts = [round(rng.uniform(1, 1000), 2) for _ in range(rows)]
    ctx.log(f"built {rows} rows")
    lines = ["row,amount", *(f"{i + 1},{amount:.2f}" for i, amount in enumerate(amounts))]
    download = await ctx.artifact("report.csv", ("\n".join(lines) + "\n").encode(), "text/csv")
    return {
        "rows": rows,
        "total": round(sum(amounts), 2),
        "mean": round(statistics.fmean(amounts), 2) if amounts else None,
        "max": max(amounts, default=None),
        "download": download,
    }


@ot.job(name="generateReport")
async def generate_report(
    ctx: JobContext,
    delay: Annotated[float, Field(ge=0, le=3_600_000)] = 2000,
    amountOfRows: Annotated[int, Field(ge=0, le=1_000_000)] = 500,
) -> dict[str, Any]:
    """The seed's WebSocket action: `{"action": "generateReport", "delay": 2000, "amountOfRows": 500}`."""
    return await report(ctx, delay=delay, rows=amountOfRows)


app = ot.app()
