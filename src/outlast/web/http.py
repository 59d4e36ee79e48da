"""The HTTP edge: the protocol's routes on Starlette (docs/protocol.md, "Endpoints")."""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from outlast.exceptions import ConfigError, ListingDisabled
from outlast.jobs import Job, JobStatus
from outlast.stores.base import MAX_LIST_LIMIT
from outlast.web import streams
from outlast.web.answers import MAX_HOP, accepted, see_other, terminal_result
from outlast.web.limits import ConnectionLimit
from outlast.web.links import job_json
from outlast.web.prefer import int_param, json_object, preferences
from outlast.web.problems import HTTPProblem, from_exception, problem
from outlast.web.ranges import file_response
from outlast.webhooks import parse_events

if TYPE_CHECKING:
    from outlast.core import Outlast

Endpoint = Callable[[Request], Awaitable[Response]]


def answers_problems(endpoint: Endpoint, ot: Outlast | None = None) -> Endpoint:
    """Turn any exception of an endpoint into its problem response.

    The endpoint answers within the hold of `ot` (by default the `Outlast`
    behind the app): a store that hangs or is away makes a `503
    store_unavailable`, not a response held past the gateway's timeout.
    Streams are bound only until their response starts.
    """

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        arrived = time.monotonic()
        try:
            serving = ot if ot is not None else getattr(request.app.state, "outlast", None)
            if serving is None:
                return await endpoint(request)
            return await serving.within_hold(endpoint(request), arrived=arrived)
        except Exception as exc:
            return from_exception(exc)

    return wrapper


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def client_address(connection: Request | WebSocket) -> str | None:
    """The client's address, for rate limits when auth is off."""
    return connection.client.host if connection.client else None


def base_of(request: Request) -> str:
    """Where the protocol's routes are: a `Mount` (or a proxy) extends `root_path`."""
    return str(request.scope.get("root_path", ""))


async def hold(ot: Outlast, job: Job, wait_s: float) -> Job:
    """Wait up to `wait_s`, capped at the hold, for the job to end."""
    wait_s = min(wait_s, ot.settings.hold_s)
    if wait_s > 0 and not job.is_terminal:
        return await ot.wait(job.id, wait_s)
    return job


class Edge:
    """The protocol's endpoints for one `Outlast`."""

    def __init__(self, ot: Outlast) -> None:
        self.ot = ot

    def routes(self) -> list[BaseRoute]:
        e = functools.partial(answers_problems, ot=self.ot)
        return [
            Route("/jobs", e(self.list_jobs), methods=["GET"]),
            # One route for the three methods of /jobs/{x}, so a 405 lists all of them in Allow.
            Route("/jobs/{key}", e(self.job), methods=["GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"]),
            Route("/jobs/{job_id}/result", e(self.result), methods=["GET"]),
            Route("/jobs/{job_id}/cancel", e(self.cancel), methods=["POST"]),
            Route("/jobs/{job_id}/events", e(self.events), methods=["GET"]),
            Route("/events", e(self.status_events), methods=["GET"]),
            WebSocketRoute("/ws", self.websocket),
            Route("/ws", e(self.websocket_without_upgrade), methods=["GET", "HEAD"]),
            Route("/artifacts/{job_id}/{name}", e(self.artifact), methods=["GET"]),
            Route("/healthz", e(self.healthz), methods=["GET"]),
            Route("/metrics", e(self.metrics), methods=["GET"]),
            Route("/openapi.json", e(self.openapi), methods=["GET"]),
        ]

    def owner(self, request: Request) -> str | None:
        """Who asks (`Unauthorized`/`Forbidden` when auth is on and the key is missing or unknown)."""
        return self.ot.keys.owner(request.headers.get("authorization"))

    def lister(self, request: Request) -> str | None:
        """Who asks for a list of jobs: a key sees its own; without keys, only the `dashboard` setting opens lists."""
        owner = self.owner(request)
        if owner is None and not self.ot.settings.dashboard:
            raise ListingDisabled()
        return owner

    async def job(self, request: Request) -> Response:
        """`POST /jobs/{name}`, `GET /jobs/{id}`, `DELETE /jobs/{id}`."""
        key = request.path_params["key"]
        request.scope["path_params"].update(name=key, job_id=key)
        if request.method == "POST":
            return await self.submit(request)  # 404 for a name that is no job's
        definition = self.ot.registry.get(key)
        allowed = ("POST",) if definition is not None and definition.public else ("GET", "HEAD", "DELETE")
        if request.method not in allowed:
            raise HTTPProblem(405, f"{request.method} is not allowed here", headers={"Allow": ", ".join(allowed)})
        if request.method == "DELETE":
            return await self.delete(request)
        return await self.status(request)

    async def load(self, request: Request) -> Job:
        """The job in the path, if the caller may see it (404 otherwise, as if it did not exist)."""
        return await self.ot.get(request.path_params["job_id"], owner=self.owner(request))

    # -- endpoints -------------------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        name = request.path_params["name"]
        caller = self.ot.admission.identify(request.headers.get("authorization"), client_address(request))
        prefs = preferences(request)
        if prefs.wait_s is not None:
            wait_s = prefs.wait_s
        else:
            wait_s = 0.0 if prefs.respond_async else self.ot.settings.default_wait
        applied = min(wait_s, self.ot.settings.hold_s)
        job, _ = await self.ot.admission.admit(
            caller,
            name,
            lambda: json_object(request, self.ot.settings.max_body),  # read only once admitted
            idempotency_key=request.headers.get("idempotency-key"),
            webhook=request.headers.get("outlast-webhook"),
            webhook_events=parse_events(request.headers.get("outlast-webhook-events")),
            strict_json=True,
            wait_s=applied,
        )
        if not job.is_terminal or (prefs.respond_async and wait_s == 0):
            return accepted(base_of(request), job, respond_async=prefs.respond_async).starlette()
        headers = {"Preference-Applied": f"wait={_seconds(applied)}"} if applied > 0 else {}
        return JSONResponse(job_json(base_of(request), job), headers=headers)

    async def status(self, request: Request) -> Response:
        job = await hold(self.ot, await self.load(request), preferences(request).wait_s or 0.0)
        body = job_json(base_of(request), job)
        if job.webhook_url is not None:  # how its deliveries are going
            deliveries = await self.ot.store.deliveries(job.id)
            body["webhook"]["deliveries"] = [d.to_public() for d in deliveries]
        return JSONResponse(body)

    async def result(self, request: Request) -> Response:
        """`GET /jobs/{id}/result` (docs/protocol.md, "Result").

        A hop of the chain (a URL with `hop`) is held up to the hold whatever
        `Prefer: wait` says: clients that follow redirects send the first
        request's headers again on every hop, and `wait=0` there would run
        through the whole chain in milliseconds. `?wait` still counts: it is
        the URL's own.
        """
        job = await self.load(request)
        hop = int_param(request, "hop", 0, 0, MAX_HOP)
        prefs = preferences(request)
        if not job.is_terminal and prefs.respond_async:
            return accepted(base_of(request), job, respond_async=True).starlette()
        wait_s = prefs.wait_s
        if "hop" in request.query_params and "wait" not in request.query_params:
            wait_s = None
        job = await hold(self.ot, job, math.inf if wait_s is None else wait_s)
        if not job.is_terminal:
            if hop >= MAX_HOP:  # no hop after this one: poll the job instead
                return accepted(base_of(request), job).starlette()
            return see_other(base_of(request), job, hop + 1).starlette()
        return terminal_result(job).starlette()

    async def cancel(self, request: Request) -> Response:
        job = await self.ot.cancel((await self.load(request)).id)
        status = 202 if job.status is JobStatus.RUNNING else 200
        return JSONResponse(job_json(base_of(request), job), status_code=status)

    async def delete(self, request: Request) -> Response:
        await self.ot.delete((await self.load(request)).id)
        return Response(status_code=204)

    async def list_jobs(self, request: Request) -> Response:
        owner = self.lister(request)
        raw_status = request.query_params.get("status")
        try:
            status = None if raw_status is None else JobStatus(raw_status)
        except ValueError:
            choices = ", ".join(s.value for s in JobStatus)
            raise HTTPProblem(400, f"status must be one of {choices}", type="bad_request") from None
        page = await self.ot.list_jobs(
            status=status,
            owner=owner,
            name=request.query_params.get("name"),
            limit=int_param(request, "limit", 50, 1, MAX_LIST_LIMIT),
            cursor=request.query_params.get("cursor") or None,
        )
        return JSONResponse({"jobs": [job_json(base_of(request), job) for job in page.jobs], "next": page.next})

    async def events(self, request: Request) -> Response:
        return await streams.job_events(self.ot, request, await self.load(request))

    async def status_events(self, request: Request) -> Response:
        return await streams.status_events(self.ot, request, self.lister(request))

    async def websocket(self, websocket: WebSocket) -> None:
        from outlast.web.ws import websocket_endpoint  # ws builds on this module's job_json

        await websocket_endpoint(self.ot, websocket)

    async def websocket_without_upgrade(self, request: Request) -> Response:
        """`GET /ws` as plain HTTP: it is a WebSocket endpoint, and says how to reach it."""
        raise HTTPProblem(
            426, "/ws is a WebSocket endpoint: open it with a WebSocket handshake", headers={"Upgrade": "websocket"}
        )

    async def artifact(self, request: Request) -> Response:
        """A stored file, through its signed URL: 403 unless signed, unexpired and for this job."""
        job_id, name = request.path_params["job_id"], request.path_params["name"]
        storage, signer = self.ot.artifacts, self.ot.signer
        assert storage is not None and signer is not None
        query = request.query_params
        if not signer.verify(job_id, name, query.get("expires"), query.get("sig")):
            raise HTTPProblem(403, "the link is not valid, or has expired", type="forbidden")
        path = storage.path(job_id, name)
        if path is None:
            raise HTTPProblem(404, "no such file", type="not_found")
        media_type, headers = storage.media_type(job_id, name), request.headers
        return file_response(path, media_type, name, headers.get("range"), headers.get("if-range"))

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def openapi(self, request: Request) -> Response:
        from outlast.web.openapi import document

        if not self.ot.settings.openapi_public:
            self.owner(request)  # it names every job and its input: behind the key, when there are keys
        return JSONResponse(document(self.ot))

    async def metrics(self, request: Request) -> Response:
        self.owner(request)
        metrics = self.ot.metrics
        return Response(metrics.render(), media_type=metrics.content_type)


# -- assembling apps -----------------------------------------------------------------


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return problem(exc.status_code, exc.detail, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    return from_exception(exc)


DASHBOARD = Path(__file__).parent / "index.html"


async def _dashboard(request: Request) -> Response:
    return FileResponse(DASHBOARD, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})


def build_app(ot: Outlast, *, fallback: ASGIApp | None = None, **starlette_options: Any) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with ot.lifespan():
            yield

    routes = [*Edge(ot).routes(), *ot.routes]
    if ot.settings.dashboard:
        routes.append(Route("/", _dashboard, methods=["GET"]))
    if fallback is not None:
        routes.append(Mount("/", app=fallback))
    app = Starlette(
        middleware=[Middleware(ConnectionLimit, limit=ot.settings.max_connections)],
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_exception, Exception: _server_error},
        **starlette_options,
    )
    app.state.outlast = ot
    return app


def mount(ot: Outlast, app: ASGIApp, path: str = "") -> None:
    router = getattr(app, "router", None)
    if router is None or not hasattr(router, "lifespan_context"):
        raise ConfigError("ot.mount() takes a Starlette or FastAPI app")
    routes = Edge(ot).routes()
    path = path.rstrip("/")
    if path:
        router.routes.append(Mount(path, routes=routes))
    else:
        router.routes.extend(routes)
    ot.mount_path = path
    original = router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with ot.lifespan(), original(app) as state:
            yield state

    router.lifespan_context = lifespan
    app.state.outlast = ot  # type: ignore[attr-defined]


def find_outlast(app: Any) -> Outlast:
    """The `Outlast` behind an ASGI app made by `ot.app()` or given to `ot.mount()`."""
    from outlast.core import Outlast

    if isinstance(app, Outlast):
        return app
    state = getattr(app, "state", None)
    ot = getattr(state, "outlast", None)
    if isinstance(ot, Outlast):
        return ot
    raise ConfigError(f"{app!r} is neither an Outlast object nor an app built around one")
