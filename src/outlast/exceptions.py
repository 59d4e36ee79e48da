"""The exceptions outlast raises, in one tree.

    OutlastError
    ├── ConfigError              a setting or a registration is wrong
    ├── InvalidRequest           a request is malformed (a bad cursor, a bad wait)
    ├── JobNotFound              no job has that id (or it was forgotten)
    ├── UnknownJobName           no job is registered under that name
    ├── InvalidInput             the input does not fit the job's parameters
    ├── IdempotencyConflict      an Idempotency-Key reused with another input
    ├── InvalidTransition        a status change the lifecycle does not allow
    ├── JobNotFinished           an operation that needs a terminal job
    ├── QueueFull                the queue cannot take another job now
    ├── RateLimited              the caller submits faster than allowed
    ├── StoreUnavailable         the store cannot be reached, or does not answer within the hold
    ├── Unauthorized             no API key where one is needed
    ├── Forbidden                the API key is not known
    │   └── ListingDisabled      lists of jobs are off (no API keys, no dashboard)
    └── JobError                 raised by a job's code to fail with a chosen problem
        ├── RetryableError       ... or to be tried again, with backoff
        └── Canceled             the job stops because cancellation was asked for

The web edge maps each of them to its problem, for HTTP and the WebSocket
alike, in one place (`outlast.web.problems`).
"""

from __future__ import annotations

import warnings
from typing import Any


class OutlastError(Exception):
    """Something went wrong in outlast."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(OutlastError):
    """A setting or a registration is not valid."""


class InvalidRequest(OutlastError):
    """The request is malformed."""


class JobNotFound(OutlastError):
    """No job has that id, or it has been forgotten."""


class UnknownJobName(OutlastError):
    """No job is registered under that name."""


class InvalidInput(OutlastError):
    """The input does not fit the job's parameters."""

    def __init__(self, message: str | None = None, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class IdempotencyConflict(OutlastError):
    """This Idempotency-Key was already used for another job name or input."""


class InvalidTransition(OutlastError):
    """The job's lifecycle does not allow this status change."""


class JobNotFinished(OutlastError):
    """The job has not reached a terminal status yet."""


class QueueFull(OutlastError):
    """The queue cannot take another job now."""

    def __init__(self, message: str | None = None, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimited(OutlastError):
    """Too many submits: slow down."""

    def __init__(self, message: str | None = None, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StoreUnavailable(OutlastError):
    """The store cannot be reached now, or did not answer in time: try again later."""

    def __init__(self, message: str | None = None, retry_after_s: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unauthorized(OutlastError):
    """Send `Authorization: Bearer <key>`: this server needs an API key."""


class Forbidden(OutlastError):
    """This API key is not known."""


class ListingDisabled(Forbidden):
    """Listing jobs is off: use API keys (each key lists its own jobs) or turn the dashboard setting on."""


class JobError(OutlastError):
    """The job failed.

    Raise it from a job to fail with a problem of your choosing: `type` names the
    error (clients see it as the problem's `type`) and `status` is the HTTP status
    that `GET /jobs/{id}/result` answers with.
    """

    default_type = "job_error"

    def __init__(self, message: str | None = None, *, type: str | None = None, status: int = 500) -> None:
        super().__init__(message)
        if not 400 <= status <= 599:
            raise ValueError(f"status must be a 4xx or 5xx code, not {status}")
        self.type = type or self.default_type
        self.status = status


class RetryableError(JobError):
    """The job failed, but may succeed if it is tried again.

    The runner requeues the job with exponential backoff (or after `delay_s`, when
    given) until the job's `max_attempts` are spent; then it fails with this error.
    """

    default_type = "retryable_error"

    def __init__(
        self,
        message: str | None = None,
        *,
        delay_s: float | None = None,
        type: str | None = None,
        status: int = 503,
    ) -> None:
        super().__init__(message, type=type, status=status)
        self.delay_s = delay_s


class Canceled(JobError):
    """The job was canceled."""

    default_type = "canceled"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, status=409)


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated: use {new} (one spelling, as the status)", DeprecationWarning, stacklevel=3)


def __getattr__(name: str) -> Any:
    if name == "Cancelled":
        _deprecated("outlast.Cancelled", "outlast.Canceled")
        return Canceled
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
