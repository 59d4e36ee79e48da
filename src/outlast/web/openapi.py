"""`GET /openapi.json`: the protocol as OpenAPI 3.1, with each registered job's input schema."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from outlast.core import Outlast

PROBLEM = {"$ref": "#/components/responses/Problem"}
JOB = {"$ref": "#/components/schemas/Job"}
ID_PARAM = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 200}}
WAIT_PARAM = {"name": "wait", "in": "query", "required": False, "schema": {"type": "number", "minimum": 0}}
PREFER = {"name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"}}

JOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "status", "created_at", "attempt", "links"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "status": {"enum": ["queued", "running", "succeeded", "failed", "canceled"]},
        "created_at": {"type": "string"},
        "started_at": {"type": ["string", "null"]},
        "finished_at": {"type": ["string", "null"]},
        "expires_at": {"type": ["string", "null"]},
        "attempt": {"type": "integer", "minimum": 1},
        "queue_position": {"type": ["integer", "null"]},
        "progress": {"type": ["object", "null"]},
        "result": {},
        "error": {"type": ["object", "null"]},
        "links": {"type": "object"},
        "webhook": {"type": "object"},
    },
}

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array"},
    },
}


def _job_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": JOB}}}


def _problems(*statuses: int) -> dict[str, Any]:
    return {str(status): PROBLEM for status in statuses}


def _submit(name: str, schema: dict[str, Any], doc: str | None) -> dict[str, Any]:
    location_link = {
        "GetJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/id"}},
        "GetResult": {"operationId": "getResult", "parameters": {"job_id": "$response.body#/id"}},
        "CancelJob": {"operationId": "cancelJob", "parameters": {"job_id": "$response.body#/id"}},
    }
    accepted = {**_job_response("Accepted: the job is queued or running"), "links": location_link}
    done = {**_job_response("The job ended within the wait"), "links": location_link}
    return {
        "post": {
            "operationId": f"submit_{name}",
            "summary": f"Submit a {name!r} job",
            "description": doc or "",
            "parameters": [
                PREFER,
                WAIT_PARAM,
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "The same key with the same input returns the same job; with another input, 422",
                    "schema": {"type": "string", "pattern": "^[!-~][ -~]{0,254}$"},
                },
            ],
            "requestBody": {
                "required": bool(schema.get("required")),
                "content": {"application/json": {"schema": schema}},
            },
            "responses": {"200": done, "202": accepted, **_problems(400, 401, 403, 413, 415, 422, 429, 503)},
        }
    }


def document(ot: Outlast) -> dict[str, Any]:
    """The OpenAPI document of this app's protocol routes and public jobs."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {"Job": JOB_SCHEMA, "Problem": PROBLEM_SCHEMA}
    for name, definition in sorted(ot.registry.items()):
        if definition.public:
            schema = definition.input_schema()
            schemas.update(schema.pop("$defs", {}))
            paths[f"/jobs/{name}"] = _submit(name, _rewrite_refs(schema), definition.fn.__doc__)
    paths["/jobs"] = {
        "get": {
            "operationId": "listJobs",
            "summary": "List jobs, newest first",
            "parameters": [
                {"name": "status", "in": "query", "schema": JOB_SCHEMA["properties"]["status"]},
                {"name": "name", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                {"name": "cursor", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "A page of jobs",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["jobs", "next"],
                                "properties": {
                                    "jobs": {"type": "array", "items": JOB},
                                    "next": {"type": ["string", "null"]},
                                },
                            }
                        }
                    },
                },
                **_problems(400, 401, 403),
            },
        }
    }
    paths["/jobs/{job_id}"] = {
        "get": {
            "operationId": "getJob",
            "summary": "The job; long-polls with Prefer: wait=N or ?wait=N",
            "parameters": [ID_PARAM, WAIT_PARAM, PREFER],
            "responses": {"200": _job_response("The job"), **_problems(400, 401, 403, 404)},
        },
        "delete": {
            "operationId": "deleteJob",
            "summary": "Forget a finished job, its result and its files",
            "parameters": [ID_PARAM],
            "responses": {"204": {"description": "Forgotten"}, **_problems(401, 403, 404, 409)},
        },
    }
    paths["/jobs/{job_id}/result"] = {
        "get": {
            "operationId": "getResult",
            "summary": "The job's return value, or a 303 to wait again",
            "parameters": [
                ID_PARAM,
                WAIT_PARAM,
                PREFER,
                {"name": "hop", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 1_000_000}},
            ],
            "responses": {
                "200": {"description": "The return value itself", "content": {"application/json": {"schema": {}}}},
                "202": _job_response("Not finished (Prefer: respond-async)"),
                "303": {"description": "Not finished yet: follow Location"},
                **_problems(400, 401, 403, 404, 409, 500),
                "default": PROBLEM,
            },
        }
    }
    paths["/jobs/{job_id}/events"] = {
        "get": {
            "operationId": "getEvents",
            "summary": "Server-Sent Events of the job (resume with Last-Event-ID or ?after=)",
            "parameters": [
                ID_PARAM,
                {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 10**17 - 1}},
                {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string", "pattern": "^[0-9]{0,17}$"}},
            ],
            "responses": {
                "200": {
                    "description": "The event stream (see docs/events.md)",
                    "content": {"text/event-stream": {}},
                },
                "204": {"description": "The cursor is at or past the end"},
                **_problems(400, 401, 403, 404),
            },
        }
    }
    paths["/jobs/{job_id}/cancel"] = {
        "post": {
            "operationId": "cancelJob",
            "summary": "Cancel the job",
            "parameters": [ID_PARAM],
            "responses": {
                "200": _job_response("Canceled, or already ended"),
                "202": _job_response("Cancellation requested of a running job"),
                **_problems(401, 403, 404),
            },
        }
    }
    paths["/healthz"] = {
        "get": {
            "operationId": "health",
            "summary": "Liveness",
            "responses": {
                "200": {"description": "Alive", "content": {"application/json": {"schema": {"type": "object"}}}}
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "outlast", "version": _version(), "description": "Long-running jobs behind any gateway."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                "Problem": {
                    "description": "A problem (RFC 9457)",
                    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                }
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        **({"security": [{"bearer": []}]} if ot.keys.enabled else {}),
    }


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
