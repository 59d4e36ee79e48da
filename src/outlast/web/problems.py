"""RFC 9457 problem details: every error outlast answers with, mapped in one place."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

from outlast.exceptions import (
    ConfigError,
    Forbidden,
    IdempotencyConflict,
    InvalidInput,
    InvalidRequest,
    JobNotFinished,
    JobNotFound,
    ListingDisabled,
    OutlastError,
    QueueFull,
    RateLimited,
    StoreUnavailable,
    Unauthorized,
    UnknownJobName,
)
from outlast.stores.base import store_unavailable

logger = logging.getLogger("outlast.http")

MEDIA_TYPE = "application/problem+json"

# exception -> (status, type, title). The first matching class wins.
PROBLEMS: list[tuple[type[OutlastError], int, str, str]] = [
    (JobNotFound, 404, "not_found", "No such job"),
    (UnknownJobName, 404, "unknown_job", "No such job name"),
    (InvalidInput, 422, "invalid_input", "Invalid input"),
    (IdempotencyConflict, 422, "idempotency_conflict", "Idempotency-Key reused with another input"),
    (JobNotFinished, 409, "not_finished", "The job has not finished"),
    (QueueFull, 503, "queue_full", "The queue is full"),
    (StoreUnavailable, 503, "store_unavailable", "The job store is unavailable"),
    (RateLimited, 429, "rate_limited", "Too many submits"),
    (InvalidRequest, 400, "bad_request", "Bad request"),
    (Unauthorized, 401, "unauthorized", "Unauthorized"),
    (ListingDisabled, 403, "listing_disabled", "Listing jobs is off"),
    (Forbidden, 403, "forbidden", "Forbidden"),
    (ConfigError, 500, "server_error", "Server misconfigured"),
]

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    409: "Conflict",
    413: "Request body too large",
    414: "URI too long",
    415: "Unsupported media type",
    416: "Range not satisfiable",
    422: "Unprocessable content",
    426: "Upgrade required",
    429: "Too many requests",
    431: "Request header fields too large",
    500: "Internal server error",
    503: "Service unavailable",
}


class ProblemResponse(JSONResponse):
    media_type = MEDIA_TYPE


def problem(
    status: int,
    detail: str,
    *,
    type: str | None = None,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> ProblemResponse:
    title = title or TITLES.get(status, "Error")
    return Problem(status, type or _default_type(status), title, detail, errors, headers).response()


class HTTPProblem(Exception):
    """Raised inside an endpoint to answer with a problem."""

    def __init__(self, status: int, detail: str, *, type: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type
        self.headers = headers

    def response(self) -> ProblemResponse:
        return problem(self.status, self.detail, type=self.type, headers=self.headers)


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """What an error says to a client, whatever carries it (an HTTP response, a WebSocket message)."""

    status: int
    type: str
    title: str
    detail: str
    errors: list[dict[str, Any]] | None = None
    headers: Mapping[str, str] | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status, "detail": self.detail}
        if self.errors is not None:
            body["errors"] = self.errors
        return body

    def response(self) -> ProblemResponse:
        return ProblemResponse(self.body(), status_code=self.status, headers=dict(self.headers or {}))


def describe(exc: Exception) -> Problem:
    """The problem for any exception a request let through: the one mapping. Never a stack trace."""
    if isinstance(exc, HTTPProblem):
        status = exc.status
        return Problem(
            status, exc.type or _default_type(status), TITLES.get(status, "Error"), exc.detail, None, exc.headers
        )
    exc = store_unavailable(exc) or exc  # Redis down, SQLite locked: a 503 to retry, not a 500
    if isinstance(exc, OutlastError):
        for cls, status, type, title in PROBLEMS:
            if isinstance(exc, cls):
                if isinstance(exc, StoreUnavailable):
                    logger.warning("%s", exc.message)  # an outage: one line a request, no traceback
                elif status >= 500:
                    logger.error("%s", exc.message)
                errors = exc.errors if isinstance(exc, InvalidInput) else None
                return Problem(status, type, title, exc.message, errors, _headers(exc))
    if isinstance(exc, ClientDisconnect):
        # Expected, and any client can cause it: one line, never a traceback (nobody reads the answer).
        logger.info("the client disconnected before its request was read")
        return Problem(400, "client_disconnected", TITLES[400], "the client disconnected")
    logger.exception("unexpected error while serving a request", exc_info=exc)
    return Problem(500, "server_error", TITLES[500], "the server could not handle this request")


def _headers(exc: OutlastError) -> dict[str, str] | None:
    if isinstance(exc, (QueueFull, RateLimited, StoreUnavailable)):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    return None


def _default_type(status: int) -> str:
    return TITLES.get(status, "error").lower().replace(" ", "_")


def from_exception(exc: Exception) -> ProblemResponse:
    """The problem response for any exception an endpoint let through."""
    return describe(exc).response()
