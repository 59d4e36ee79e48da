"""Long-running routes: a plain endpoint that may outlast the gateway.

The decorated handler runs as a job, its query and path parameters as input.
Fast, the client gets the handler's own response; slow, a `303 See Other` to
`/jobs/{id}/result?hop=1` and the chain that follows; with `Prefer:
respond-async`, `202` + `Location` at once (docs/protocol.md, "Long-running routes").

The endpoint this makes works on Starlette (it takes the request) and FastAPI
(its signature is the handler's, plus the request, so FastAPI validates and
documents the parameters as usual).
"""

from __future__ import annotations

import functools
import inspect
import math
import time
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import Request
from starlette.routing import Route

from outlast.admission import Caller
from outlast.jobs import JobStatus
from outlast.registry import JobDefinition
from outlast.web.answers import Answer, accepted, see_other, terminal_result
from outlast.web.http import client_address
from outlast.web.prefer import parse_prefer
from outlast.web.problems import Problem, from_exception

if TYPE_CHECKING:
    from outlast.core import Outlast

F = TypeVar("F", bound=Callable[..., Any])

REQUEST_PARAM = "outlast_request"


def long_running(
    ot: Outlast,
    path: str | None,
    *,
    methods: Sequence[str],
    name: str | None,
    timeout: float | None,
    max_attempts: int | None,
) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        # Not public: the job runs only through its route (and the route's own auth).
        definition = JobDefinition.from_function(
            fn, name=name, timeout_s=timeout, max_attempts=max_attempts, public=False
        )
        ot.add_job(definition)
        endpoint = _endpoint(ot, definition)
        if path is None:
            return typing.cast(F, endpoint)
        ot.routes.append(Route(path, endpoint, methods=list(methods), name=definition.name))
        return fn

    return decorate


def _endpoint(ot: Outlast, definition: JobDefinition) -> Callable[..., Any]:
    parameters = [alias for field in definition.input_model.model_fields.values() if (alias := field.alias) is not None]

    @functools.wraps(definition.fn)
    async def endpoint(*args: Any, **kwargs: Any) -> Any:
        arrived = time.monotonic()
        if len(args) == 1 and isinstance(args[0], Request) and not kwargs:
            # Starlette: parameters come from the query string and the path.
            request = args[0]
            if request.method == "HEAD":  # Starlette adds HEAD to GET routes: start no job for it
                return head_refused().starlette()
            given = {**request.query_params, **request.path_params}
            raw = {key: given[key] for key in parameters if key in given}
            as_response = True
        else:
            # FastAPI: it has validated the parameters of our signature already.
            request = kwargs.pop(REQUEST_PARAM)
            raw = kwargs
            as_response = False
        try:
            return await ot.within_hold(_serve(ot, definition, request, raw, as_response=as_response), arrived=arrived)
        except Exception as exc:
            return from_exception(exc)

    endpoint.__signature__ = _fastapi_signature(definition)  # type: ignore[attr-defined]
    del endpoint.__wrapped__
    return endpoint


async def _serve(
    ot: Outlast, definition: JobDefinition, request: Request, raw: dict[str, Any], *, as_response: bool
) -> Any:
    # The protocol's routes hang off the app's root, wherever this route is.
    base = str(request.scope.get("app_root_path", request.scope.get("root_path", ""))) + ot.mount_path
    caller = ot.admission.identify(request.headers.get("authorization"), client_address(request))
    prefer = request.headers.getlist("prefer")
    key = request.headers.get("idempotency-key")
    answer = await serve_route(ot, definition, caller, raw, prefer, key, base, as_response=as_response)
    return answer.starlette() if isinstance(answer, Answer) else answer


async def serve_route(
    ot: Outlast,
    definition: JobDefinition,
    caller: Caller,
    raw: dict[str, Any],
    prefer: list[str],
    key: str | None,
    base: str,
    *,
    as_response: bool,
) -> Any:
    """Run a long-running route's job: its result when fast, else the 303 chain (or 202).

    Returns an `Answer`, or with `as_response=False` (FastAPI) the job's own result
    when it succeeded within the hold, which FastAPI renders as it would the
    handler's return value.
    """
    prefs = parse_prefer(prefer)
    wait_s = prefs.wait_s if prefs.wait_s is not None else (0.0 if prefs.respond_async else math.inf)
    wait_s = min(wait_s, ot.settings.hold_s)
    # Submitted with its wait (a job under a known key is waited for too): a fast route runs at
    # once and is written once, ended (`Outlast.submit`).
    job, _ = await ot.admission.admit(caller, definition.name, raw, route=True, idempotency_key=key, wait_s=wait_s)
    if not job.is_terminal:
        if prefs.respond_async:
            return accepted(base, job, respond_async=True)
        return see_other(base, job, 1)
    if job.status is JobStatus.SUCCEEDED and not as_response:
        return job.result
    return terminal_result(job)


def head_refused() -> Answer:
    """`HEAD` on a long-running route: it would start a job whose answer no one reads."""
    return Answer.problem(
        Problem(
            405,
            "method_not_allowed",
            "Method not allowed",
            "HEAD does not run this route; use GET",
            headers={"Allow": "GET"},
        )
    )


def _fastapi_signature(definition: JobDefinition) -> inspect.Signature:
    """The handler's parameters (annotations resolved), without the context, plus the request."""
    signature = inspect.signature(definition.fn)
    hints = typing.get_type_hints(definition.fn, include_extras=True)
    params = [
        param.replace(annotation=hints.get(param.name, param.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
        for param in signature.parameters.values()
        if param.name != definition.context_param
    ]
    params.append(inspect.Parameter(REQUEST_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=Request))
    return inspect.Signature(params, return_annotation=inspect.Signature.empty)
