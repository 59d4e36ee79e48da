"""outlast inside a FastAPI app: one plain endpoint, one long-running endpoint.

    outlast serve examples.fastapi_app:app

- `GET /hello?name=you`: an ordinary FastAPI endpoint; outlast does not touch it.
- `GET /slow?delay=40`: takes `delay` seconds. Within the hold (25 s by default)
  the client gets the endpoint's JSON; past it, a `303 See Other` chain that
  `curl -L` follows to the same JSON.
- `ot.mount(app)` adds the job routes (`/jobs/...`, `/healthz`, `/metrics`)
  and starts and stops outlast with the app.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import FastAPI, Query

from outlast import Outlast

ot = Outlast()
app = FastAPI(title="outlast FastAPI example")


@app.get("/hello")
async def hello(name: str = "world") -> dict[str, str]:
    return {"hello": name}


@app.get("/slow")
@ot.long_running()
async def slow(delay: Annotated[float, Query(ge=0, le=3600)] = 40) -> dict[str, str]:
    """Sleep `delay` seconds, then say so."""
    await asyncio.sleep(delay)
    return {"MESSAGE": f"It took {delay:g} seconds to generate this."}


ot.mount(app)
