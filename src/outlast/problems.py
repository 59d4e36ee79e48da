"""RFC 9457 problem details: every error outlast answers with, mapped in one place."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from outlast.exceptions import (
    ConfigError,
    IdempotencyConflict,
    InvalidInput,
    InvalidRequest,
    JobNotFinished,
    JobNotFound,
    OutlastError,
    QueueFull,
    RateLimited,
    UnknownJobName,
)

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
    (RateLimited, 429, "rate_limited", "Too many submits"),
    (InvalidRequest, 400, "bad_request", "Bad request"),
    (ConfigError, 500, "server_error", "Server misconfigured"),
]

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
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
    body: dict[str, Any] = {
        "type": type or TITLES.get(status, "error").lower().replace(" ", "_"),
        "title": title or TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    return ProblemResponse(body, status_code=status, headers=dict(headers or {}))


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


def from_exception(exc: Exception) -> ProblemResponse:
    """The problem for any exception an endpoint let through. Never a stack trace."""
    if isinstance(exc, HTTPProblem):
        return exc.response()
    if isinstance(exc, OutlastError):
        for cls, status, type, title in PROBLEMS:
            if isinstance(exc, cls):
                if status >= 500:
                    logger.error("%s", exc.message)
                errors = exc.errors if isinstance(exc, InvalidInput) else None
                retry = exc.retry_after_s if isinstance(exc, (QueueFull, RateLimited)) else None
                headers = None if retry is None else {"Retry-After": str(max(1, math.ceil(retry)))}
                return problem(status, exc.message, type=type, title=title, errors=errors, headers=headers)
    logger.exception("unexpected error while serving a request", exc_info=exc)
    return problem(500, "the server could not handle this request", type="server_error")
