"""The OpenAPI 3.1 document of the protocol: every route, each public job's input, each long-running route.

One document for each way of serving:

- `ot.app()` and a Starlette app given to `ot.mount()`: `GET /openapi.json`
  (under the mount path) answers `document(...)`, with the long-running
  routes found among the app's routes;
- a FastAPI app given to `ot.mount()`: its own `app.openapi()` is wrapped
  (`merge_into_fastapi`) so that FastAPI's document gains outlast's paths, and
  its long-running routes gain their `202` and `303` answers.

Paths are relative to the app's root; behind a proxy prefix (`--root-path`,
`X-Forwarded-Prefix`) the document names it in `servers`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute, Mount, Route

if TYPE_CHECKING:
    from outlast.core import Outlast
    from outlast.registry import JobDefinition

# Set on the endpoint of a long-running route (web/long_running.py): the name of its job.
LONG_RUNNING_MARK = "outlast_job"

COMPONENTS = "#/components/"
JOB = {"$ref": COMPONENTS + "schemas/Job"}
STATUSES = ["queued", "running", "succeeded", "failed", "canceled"]


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"{COMPONENTS}{kind}/{name}"}


JOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "status", "created_at", "attempt", "links"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "status": _ref("schemas", "JobStatus"),
        "created_at": {"type": "string"},
        "started_at": {"type": ["string", "null"]},
        "finished_at": {"type": ["string", "null"]},
        "expires_at": {"type": ["string", "null"]},
        "attempt": {"type": "integer", "minimum": 1},
        "queue_position": {"type": ["integer", "null"]},
        "progress": {"type": ["object", "null"], "additionalProperties": True},
        "result": {"description": "The return value, once succeeded"},
        "error": {"anyOf": [_ref("schemas", "JobError"), {"type": "null"}]},
        "links": _ref("schemas", "JobLinks"),
        "webhook": {"type": "object", "additionalProperties": True},
    },
}

SCHEMAS: dict[str, Any] = {
    "Job": JOB_SCHEMA,
    "JobStatus": {"type": "string", "enum": STATUSES},
    "JobError": {
        "type": "object",
        "required": ["type", "message"],
        "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
    },
    "JobLinks": {
        "type": "object",
        "required": ["self", "result", "events", "cancel"],
        "properties": {name: {"type": "string"} for name in ("self", "result", "events", "cancel")},
    },
    "JobList": {
        "type": "object",
        "required": ["jobs", "next"],
        "properties": {"jobs": {"type": "array", "items": JOB}, "next": {"type": ["string", "null"]}},
    },
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "errors": {"type": "array", "items": _ref("schemas", "FieldError")},
        },
    },
    "FieldError": {
        "type": "object",
        "required": ["loc", "msg", "type"],
        "properties": {
            "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
            "msg": {"type": "string"},
            "type": {"type": "string"},
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
}

HEADERS: dict[str, Any] = {
    "Location": {"description": "Where to ask next", "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before asking again", "schema": {"type": "integer"}},
    "Preference-Applied": {
        "description": "The preference of Prefer that was honoured: respond-async, or wait=N",
        "schema": {"type": "string"},
    },
    "ETag": {"description": "The representation's validator, for If-None-Match", "schema": {"type": "string"}},
    "Cache-Control": {"description": "How caches may keep the response", "schema": {"type": "string"}},
    "Last-Modified": {"description": "When the file was written", "schema": {"type": "string"}},
    "Allow": {"description": "The methods this resource allows", "schema": {"type": "string"}},
    "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}},
    "Content-Range": {"description": "The bytes served, or the file's size", "schema": {"type": "string"}},
}


def _headers(*names: str) -> dict[str, Any]:
    return {name: _ref("headers", name) for name in names}


def _problem_response(description: str, *headers: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("schemas", "Problem")}},
    }
    if headers:
        response["headers"] = _headers(*headers)
    return response


RESPONSES: dict[str, Any] = {
    "Problem": _problem_response("A problem (RFC 9457)"),
    "Unauthorized": _problem_response("No API key, or an unknown one", "WWW-Authenticate"),
    "MethodNotAllowed": _problem_response("The method is not allowed here", "Allow"),
    "TooManyRequests": _problem_response("Too many submits: retry after Retry-After", "Retry-After"),
    "Unavailable": _problem_response(
        "The queue is full or the store did not answer: retry after Retry-After", "Retry-After"
    ),
    "NotModified": {
        "description": "The client's copy (If-None-Match) is current",
        "headers": _headers("ETag", "Cache-Control"),
    },
    "SeeOther": {
        "description": "Not finished yet: follow Location (the next hop of the chain), after Retry-After",
        "headers": _headers("Location", "Retry-After", "Cache-Control"),
    },
    "Accepted": {
        "description": "Accepted (Prefer: respond-async, or the wait ended first): the job goes on; poll Location",
        "headers": _headers("Location", "Retry-After", "Preference-Applied"),
        "content": {"application/json": {"schema": JOB}},
    },
}

_BY_STATUS = {401: "Unauthorized", 405: "MethodNotAllowed", 429: "TooManyRequests", 503: "Unavailable"}


def _problems(*statuses: int) -> dict[str, Any]:
    return {str(status): _ref("responses", _BY_STATUS.get(status, "Problem")) for status in statuses}


# Every request may meet the store away (503); the keyed ones, 401 and 403.
def _keyed(*statuses: int) -> dict[str, Any]:
    return _problems(*sorted({*statuses, 401, 403, 503}))


PARAMETERS: dict[str, Any] = {
    "JobId": {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 200}},
    "Wait": {
        "name": "wait",
        "in": "query",
        "description": "Seconds to wait for the job to end (capped at the hold)",
        "schema": {"type": "number", "minimum": 0},
    },
    "Prefer": {
        "name": "Prefer",
        "in": "header",
        "description": "respond-async, or wait=N (seconds, capped at the hold)",
        "schema": {"type": "string"},
    },
    "IdempotencyKey": {
        "name": "Idempotency-Key",
        "in": "header",
        "description": "The same key with the same input returns the same job; with another input, 422",
        # 1 to 255 printable characters, as the server accepts (ASCII: what every client can send).
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~][ -~]{0,254}$"},
    },
    "IfNoneMatch": {
        "name": "If-None-Match",
        "in": "header",
        "description": "The ETag of the copy the client has: 304 if it is current",
        "schema": {"type": "string"},
    },
}


def _params(*names: str) -> list[dict[str, str]]:
    return [_ref("parameters", name) for name in names]


def _json(schema: dict[str, Any], description: str, *headers: str) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = _headers(*headers)
    return response


JOB_LINKS = {
    "GetJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/id"}},
    "GetResult": {"operationId": "getResult", "parameters": {"job_id": "$response.body#/id"}},
    "CancelJob": {"operationId": "cancelJob", "parameters": {"job_id": "$response.body#/id"}},
}


def _submit(name: str, schema: dict[str, Any], doc: str | None) -> dict[str, Any]:
    accepted = {**RESPONSES["Accepted"], "links": JOB_LINKS}
    done = {**_json(JOB, "The job ended within the wait", "Preference-Applied"), "links": JOB_LINKS}
    return {
        "post": {
            "operationId": f"submit_{name}",
            "summary": f"Submit a {name!r} job",
            "description": doc or "",
            "parameters": _params("Prefer", "Wait", "IdempotencyKey"),
            "requestBody": {
                "required": bool(schema.get("required")),
                "content": {"application/json": {"schema": schema}},
            },
            "responses": {"200": done, "202": accepted, **_keyed(400, 413, 415, 422, 429)},
        }
    }


def _protocol_paths() -> dict[str, Any]:
    sse: dict[str, Any] = {"text/event-stream": {}}  # events: docs/events.md
    return {
        "/jobs": {
            "get": {
                "operationId": "listJobs",
                "summary": "List jobs, newest first",
                "parameters": [
                    {"name": "status", "in": "query", "schema": _ref("schemas", "JobStatus")},
                    {"name": "name", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    *_params("IfNoneMatch"),
                ],
                "responses": {
                    "200": _json(_ref("schemas", "JobList"), "A page of jobs", "ETag", "Cache-Control"),
                    "304": _ref("responses", "NotModified"),
                    **_keyed(400),
                },
            }
        },
        "/jobs/{job_id}": {
            "get": {
                "operationId": "getJob",
                "summary": "The job; long-polls with Prefer: wait=N or ?wait=N",
                "description": "405 (with Allow) if job_id is the name of a job: that path only takes POST.",
                "parameters": _params("JobId", "Wait", "Prefer", "IfNoneMatch"),
                "responses": {
                    "200": _json(JOB, "The job", "ETag", "Cache-Control"),
                    "304": _ref("responses", "NotModified"),
                    **_keyed(400, 404, 405),
                },
            },
            "delete": {
                "operationId": "deleteJob",
                "summary": "Forget a finished job, its result and its files",
                "parameters": _params("JobId"),
                "responses": {"204": {"description": "Forgotten"}, **_keyed(404, 405, 409)},
            },
        },
        "/jobs/{job_id}/result": {
            "get": {
                "operationId": "getResult",
                "summary": "The job's return value, or a 303 to wait again",
                "parameters": [
                    *_params("JobId", "Wait", "Prefer"),
                    {"name": "hop", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 1_000_000}},
                    *_params("IfNoneMatch"),
                ],
                "responses": {
                    "200": _json({}, "The return value itself", "ETag", "Cache-Control"),
                    "202": RESPONSES["Accepted"],
                    "303": _ref("responses", "SeeOther"),
                    "304": _ref("responses", "NotModified"),
                    **_keyed(400, 404, 409, 500),
                    "default": _ref("responses", "Problem"),
                },
            }
        },
        "/jobs/{job_id}/events": {
            "get": {
                "operationId": "getEvents",
                "summary": "Server-Sent Events of the job (resume with Last-Event-ID or ?after=)",
                "parameters": [
                    *_params("JobId"),
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 10**17 - 1},
                    },
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string", "pattern": "^[0-9]{0,17}$"}},
                ],
                "responses": {
                    "200": {"description": "The event stream (docs/events.md)", "content": sse},
                    "204": {"description": "The cursor is at or past the end"},
                    **_keyed(400, 404),
                },
            }
        },
        "/events": {
            "get": {
                "operationId": "getStatusEvents",
                "summary": "Every job's status changes, live, as Server-Sent Events (for dashboards)",
                "responses": {"200": {"description": "The event stream (docs/events.md)", "content": sse}, **_keyed()},
            }
        },
        "/jobs/{job_id}/cancel": {
            "post": {
                "operationId": "cancelJob",
                "summary": "Cancel the job",
                "parameters": _params("JobId"),
                "responses": {
                    "200": _json(JOB, "Canceled, or already ended"),
                    "202": _json(JOB, "Cancellation requested of a running job"),
                    **_keyed(404),
                },
            }
        },
        "/artifacts/{job_id}/{name}": {
            "get": {
                "operationId": "getArtifact",
                "summary": "A file a job stored, through its signed, expiring URL (the job gives it)",
                "security": [],
                "parameters": [
                    *_params("JobId"),
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "expires", "in": "query", "required": True, "schema": {"type": "string"}},
                    {"name": "sig", "in": "query", "required": True, "schema": {"type": "string"}},
                    {"name": "Range", "in": "header", "schema": {"type": "string"}},
                    {"name": "If-Range", "in": "header", "schema": {"type": "string"}},
                    {"name": "If-Modified-Since", "in": "header", "schema": {"type": "string"}},
                    *_params("IfNoneMatch"),
                ],
                "responses": {
                    "200": {
                        "description": "The file",
                        "headers": _headers("ETag", "Last-Modified", "Cache-Control"),
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "206": {
                        "description": "The ranges asked for",
                        "headers": _headers("Content-Range", "ETag", "Last-Modified"),
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "304": _ref("responses", "NotModified"),
                    **_problems(403, 404),
                    "416": _problem_response("The range is not in the file", "Content-Range"),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness",
                "security": [],
                "responses": {"200": _json(_ref("schemas", "Health"), "Alive")},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics of this process",
                "responses": {
                    "200": {
                        "description": "Prometheus text",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_problems(401, 403),
                },
            }
        },
    }


def _long_running_operation(
    definition: JobDefinition, path_params: set[str], method: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The operation of a long-running route (on Starlette: parameters from the query and the path)."""
    schema = definition.input_schema()
    defs = schema.pop("$defs", {})
    required = set(schema.get("required", []))
    parameters = [
        {
            "name": name,
            "in": "path" if name in path_params else "query",
            "required": name in path_params or name in required,
            "schema": _rewrite_refs(prop),
        }
        for name, prop in schema.get("properties", {}).items()
    ]
    operation = {
        "operationId": f"{definition.name}_{method}",
        "summary": (definition.fn.__doc__ or f"The long-running route of {definition.name!r}").strip().splitlines()[0],
        "parameters": [*parameters, *_params("Prefer", "IdempotencyKey")],
        "responses": long_running_responses(),
    }
    return operation, {key: _rewrite_refs(value) for key, value in defs.items()}


def long_running_responses() -> dict[str, Any]:
    """What a long-running route answers besides its own 200 (docs/protocol.md, "Long-running routes")."""
    return {
        "200": _json({}, "The handler's return value, when it ended within the wait"),
        "202": RESPONSES["Accepted"],
        "303": _ref("responses", "SeeOther"),
        **_keyed(400, 404, 409, 422, 429, 500),
        "default": _ref("responses", "Problem"),
    }


def long_running_routes(routes: Sequence[BaseRoute], prefix: str = "") -> Iterator[tuple[str, Route]]:
    """(path, route) of each long-running route among these, Mounts included."""
    for route in routes:
        if isinstance(route, Mount):
            yield from long_running_routes(route.routes, prefix + route.path)
        elif isinstance(route, Route) and getattr(route.endpoint, LONG_RUNNING_MARK, None):
            yield prefix + route.path_format, route


def document(
    ot: Outlast, *, routes: Sequence[BaseRoute] = (), base: str = "", server: str = "", fastapi: bool = False
) -> dict[str, Any]:
    """The OpenAPI document of the protocol's routes (under `base`), its public jobs and its long-running routes.

    `routes` are the app's, searched for long-running routes; `server` is the
    prefix a proxy serves the app under. With `fastapi`, the long-running
    routes are left out: FastAPI describes them (`merge_into_fastapi`).
    """
    base = base.rstrip("/")
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = copy.deepcopy(SCHEMAS)
    for name, definition in sorted(ot.registry.items()):
        if definition.public:
            schema = definition.input_schema()
            schemas.update(_rewrite_refs(schema.pop("$defs", {})))
            paths[f"{base}/jobs/{name}"] = _submit(name, _rewrite_refs(schema), definition.fn.__doc__)
    for path, operations in _protocol_paths().items():
        paths[base + path] = operations
    if not fastapi:
        for path, route in long_running_routes(routes):
            found = ot.registry.get(getattr(route.endpoint, LONG_RUNNING_MARK))
            if found is None:
                continue
            for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
                operation, defs = _long_running_operation(found, set(route.param_convertors), method.lower())
                schemas.update(defs)
                paths.setdefault(path, {})[method.lower()] = operation
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "outlast", "version": _version(), "description": "Long-running jobs behind any gateway."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": copy.deepcopy(RESPONSES),
            "parameters": copy.deepcopy(PARAMETERS),
            "headers": copy.deepcopy(HEADERS),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        **({"security": [{"bearer": []}]} if ot.keys.enabled else {}),
    }
    if server:
        doc["servers"] = [{"url": server}]
    return doc


def merge_into_fastapi(ot: Outlast, app: Any, base: str) -> None:
    """Make a FastAPI app's `app.openapi()` describe outlast's routes too, and its long-running routes truly."""
    original: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema  # type: ignore[no-any-return]
        doc = original()
        ours = document(ot, base=base, fastapi=True)
        renamed = _rename_clashes(ours, doc.get("components", {}))
        components = doc.setdefault("components", {})
        for kind, entries in renamed["components"].items():
            components.setdefault(kind, {}).update(entries)
        if "security" in renamed:
            for operation in _operations(renamed["paths"]):
                operation.setdefault("security", renamed["security"])
        doc.setdefault("paths", {}).update(renamed["paths"])
        for path, route in long_running_routes(app.routes):
            for method in (route.methods or set()) - {"HEAD"}:
                operation = doc["paths"].get(path, {}).get(method.lower())
                if operation is None:
                    continue
                for status, response in long_running_responses().items():
                    if status not in operation.get("responses", {}):
                        operation.setdefault("responses", {})[status] = _rename(response, renamed["_renames"])
                present = {(p.get("name"), p.get("in")) for p in operation.get("parameters", []) if "name" in p}
                if ("Prefer", "header") not in present and ("prefer", "header") not in present:
                    operation.setdefault("parameters", []).extend(
                        _rename(_params("Prefer", "IdempotencyKey"), renamed["_renames"])
                    )
        app.openapi_schema = doc
        return doc

    app.openapi = openapi


def _operations(paths: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for item in paths.values():
        for operation in item.values():
            if isinstance(operation, dict):
                yield operation


def _rename_clashes(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Our document with each component whose name FastAPI's uses for something else renamed `Outlast...`."""
    renames: dict[str, str] = {}
    for kind, entries in ours["components"].items():
        for name, value in entries.items():
            if name in theirs.get(kind, {}) and theirs[kind][name] != value:
                renames[f"{COMPONENTS}{kind}/{name}"] = f"{COMPONENTS}{kind}/Outlast{name}"
    renamed = _rename(ours, renames)
    for old, new in renames.items():
        kind, name = old.removeprefix(COMPONENTS).split("/")
        renamed["components"][kind][new.rsplit("/", 1)[1]] = renamed["components"][kind].pop(name)
    renamed["_renames"] = renames
    return renamed  # type: ignore[no-any-return]


def _rename(value: Any, renames: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            key: (renames.get(item, item) if key == "$ref" else _rename(item, renames)) for key, item in value.items()
        }
    if isinstance(value, list):
        return [_rename(item, renames) for item in value]
    return value


def _rewrite_refs(schema: Any) -> Any:
    """pydantic's `#/$defs/X` references, moved under components."""
    if isinstance(schema, dict):
        return {
            key: (value.replace("#/$defs/", "#/components/schemas/") if key == "$ref" else _rewrite_refs(value))
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_rewrite_refs(item) for item in schema]
    return schema


def _version() -> str:
    from outlast import __version__

    return __version__
