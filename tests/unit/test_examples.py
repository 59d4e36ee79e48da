"""The examples behave as the README and docs/long-running-routes.md say, in-process on the memory store.

Each test configures an example's `Outlast` (a module global) for the memory
store and a 2 s hold (gateway_timeout 3, margin 1), and starts it for that test
only: a fresh memory store each time, so no test sees another's jobs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from examples import app as plain_example
from examples import fastapi_app as fastapi_example
from examples import flask_app as flask_example

from outlast import Outlast

pytestmark = pytest.mark.timeout(20)

HOLD_S = 2.0

# (the Outlast object, the ASGI app, the long-running path) of each example
EXAMPLES = {
    "outlast-app": (plain_example.ot, plain_example.app, "/payload"),
    "fastapi-app": (fastapi_example.ot, fastapi_example.app, "/slow"),
    "flask-app": (flask_example.ot, flask_example.app, "/payload"),
}


@pytest.fixture(params=sorted(EXAMPLES))
async def example(request: pytest.FixtureRequest) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    ot, app, path = EXAMPLES[request.param]
    async with started(ot), client_of(app) as client:
        yield client, path


def started(ot: Outlast, **settings: Any) -> contextlib.AbstractAsyncContextManager[Outlast]:
    # configure() refuses while outlast runs; each test starts it afresh after this.
    # (configure() can't unset a setting: a rate no test reaches stands for none)
    ot.configure(
        **{"store": "memory://", "gateway_timeout": 3, "margin": 1, "dashboard": True, "submit_rate": 1e6, **settings}
    )
    assert ot.settings.hold_s == HOLD_S
    return ot.lifespan()


def client_of(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_fast_call_gets_the_endpoints_own_json(example):
    client, path = example
    response = await client.get(path, params={"delay": 0.1})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"MESSAGE": "It took 0.1 seconds to generate this."}


async def test_slow_call_is_redirected_and_the_chain_ends_with_the_json(example):
    client, path = example
    response = await client.get(path, params={"delay": 2.5})
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/jobs/j_") and location.endswith("/result?hop=1")
    assert int(response.headers["retry-after"]) >= 1

    followed = await client.get(location)
    assert followed.status_code == 200
    assert followed.json() == {"MESSAGE": "It took 2.5 seconds to generate this."}


async def test_redirect_following_client_gets_the_json(example):
    client, path = example
    response = await client.get(path, params={"delay": 2.2}, follow_redirects=True)
    assert response.status_code == 200
    assert response.json() == {"MESSAGE": "It took 2.2 seconds to generate this."}
    assert len(response.history) == 1
    assert response.history[0].status_code == 303


async def test_respond_async_answers_202_with_location(example):
    client, path = example
    response = await client.get(path, params={"delay": 0.5}, headers={"Prefer": "respond-async"})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert response.headers["preference-applied"] == "respond-async"
    assert job["status"] in ("queued", "running")

    done = await client.get(response.headers["location"], headers={"Prefer": "wait=5"})
    assert done.json()["status"] == "succeeded"
    result = await client.get(job["links"]["result"])
    assert result.json() == {"MESSAGE": "It took 0.5 seconds to generate this."}


async def test_invalid_input_is_422_before_any_job(example):
    client, path = example
    response = await client.get(path, params={"delay": "soon"})
    assert response.status_code == 422
    listed = await client.get("/jobs")
    assert listed.json() == {"jobs": [], "next": None}


async def test_report_job_with_respond_async_then_polling():
    async with started(plain_example.ot), client_of(plain_example.app) as client:
        submitted = await client.post(
            "/jobs/report", json={"delay": 200, "rows": 1000}, headers={"Prefer": "respond-async"}
        )
        assert submitted.status_code == 202
        location = submitted.headers["location"]
        status = await client.get(location, headers={"Prefer": "wait=5"})
        job = status.json()
        assert job["status"] == "succeeded"
        assert job["progress"] == {"current": 20, "total": 20, "message": "waiting for the data"}
        result = await client.get(f"{location}/result")
        assert result.status_code == 200
        assert result.json()["rows"] == 1000


async def test_report_job_with_prefer_wait_answers_200():
    async with started(plain_example.ot), client_of(plain_example.app) as client:
        response = await client.post("/jobs/report", json={"delay": 100, "rows": 10}, headers={"Prefer": "wait=10"})
        assert response.status_code == 200
        assert response.headers["preference-applied"] == "wait=2"  # capped at the hold
        assert response.json()["result"]["rows"] == 10


async def test_fastapi_plain_endpoint_is_untouched():
    async with started(fastapi_example.ot), client_of(fastapi_example.app) as client:
        response = await client.get("/hello", params={"name": "you"})
        assert response.status_code == 200
        assert response.json() == {"hello": "you"}
        assert (await client.get("/healthz")).json() == {"status": "ok"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
async def test_every_kind_of_route_admits_alike(name: str):
    """Starlette, FastAPI and Flask routes: the same rate limit, key check and HEAD answer."""
    ot, app, path = EXAMPLES[name]
    async with started(ot, submit_rate=0.5), client_of(app) as client:
        statuses = [(await client.get(path, params={"delay": 0})).status_code for _ in range(3)]
        assert statuses == [200, 429, 429]
        limited = await client.get(path, params={"delay": 0})
        assert limited.headers["content-type"] == "application/problem+json"
        assert limited.json()["type"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1

    async with started(ot), client_of(app) as client:
        too_long = await client.get(path, params={"delay": 0}, headers={"Idempotency-Key": "k" * 400})
        assert too_long.status_code == 400
        assert too_long.headers["content-type"] == "application/problem+json"
        assert too_long.json()["type"] == "bad_request"

        head = await client.head(path, params={"delay": 0})
        assert head.status_code == 405
        assert (await client.get("/jobs")).json()["jobs"] == []  # neither started a job


async def test_flask_plain_view_is_untouched():
    async with started(flask_example.ot), client_of(flask_example.app) as client:
        response = await client.get("/hello")
        assert response.json() == {"hello": "from Flask"}
