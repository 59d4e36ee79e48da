"""Apps for tests/integration/test_openapi.py: outlast mounted into a Starlette app and into a FastAPI app."""

from __future__ import annotations

import enum
from typing import Annotated

from fastapi import FastAPI, Query
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from outlast import Outlast


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


# -- Starlette, with the protocol's routes under /outlast -------------------------------

on_starlette = Outlast(store="memory://")


@on_starlette.job()
async def paint(colour: Colour = Colour.RED, coats: Annotated[int, Field(ge=1, le=5)] = 1) -> dict[str, str]:
    """Paint something."""
    return {"colour": colour.value}


@on_starlette.long_running()
async def payload(delay: Annotated[float, Field(ge=0, le=60)] = 0) -> dict[str, str]:
    """Wait, then answer."""
    return {"delay": str(delay)}


@on_starlette.long_running()
def item(item_id: int, colour: Colour | None = None) -> dict[str, object]:
    return {"item": item_id, "colour": None if colour is None else colour.value}


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world"})


# /healthz of its own: the tests' servers are ready when it answers.
starlette_app = Starlette(
    routes=[
        Route("/hello", hello),
        Route("/healthz", hello),
        Route("/payload", payload),
        Route("/items/{item_id:int}", item),
    ]
)
on_starlette.mount(starlette_app, "/outlast")


# -- FastAPI, with the protocol's routes at its root ------------------------------------

on_fastapi = Outlast(store="memory://")
fastapi_app = FastAPI(title="a FastAPI app with outlast")


class Job(BaseModel):  # a name outlast's document uses too
    title: str


@fastapi_app.post("/postings")
async def post_job(job: Job) -> Job:
    return job


@on_fastapi.job()
async def add(a: int, b: int = 0) -> int:
    return a + b


@fastapi_app.get("/slow")
@on_fastapi.long_running()
async def slow(delay: Annotated[float, Query(ge=0, le=60)] = 0) -> dict[str, str]:
    """Sleep, then say so."""
    return {"delay": str(delay)}


on_fastapi.mount(fastapi_app)
