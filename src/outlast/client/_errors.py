"""The client's exceptions, in the one tree of `outlast.exceptions`.

OutlastError
└── ClientError                 something went wrong on the client's side of the protocol
    ├── ServerUnavailable       the server could not be reached (or answered 502/503/504) in time: .retry_after_s
    ├── ProblemError            the server answered with a problem (RFC 9457): .status, .type, .detail
    │   ├── JobFailed           the job ended `failed`: .job, and the problem `/result` answered
    │   └── JobCanceled         the job ended `canceled`
    └── JobTimeout              the caller's timeout passed first: .job_id, .job (as last seen)
"""

from __future__ import annotations

from typing import Any

from outlast.exceptions import OutlastError


class ClientError(OutlastError):
    """The client could not do what was asked."""


class ServerUnavailable(ClientError):
    """The server could not be reached in time."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # the server's `Retry-After`, when it gave one


class ProblemError(ClientError):
    """The server answered with a problem."""

    def __init__(self, problem: dict[str, Any], *, status: int | None = None) -> None:
        self.problem = problem
        self.status = int(problem.get("status") or status or 0)
        self.type = str(problem.get("type", "about:blank"))
        self.title = str(problem.get("title", ""))
        self.detail = str(problem.get("detail", ""))
        self.errors: list[dict[str, Any]] = list(problem.get("errors") or [])
        super().__init__(f"{self.status} {self.title}: {self.detail}" if self.title else self.detail)


class JobFailed(ProblemError):
    """The job failed."""

    def __init__(self, problem: dict[str, Any], job: dict[str, Any]) -> None:
        super().__init__(problem)
        self.job = job


class JobCanceled(ProblemError):
    """The job was canceled."""

    def __init__(self, problem: dict[str, Any], job: dict[str, Any]) -> None:
        super().__init__(problem)
        self.job = job


class JobTimeout(ClientError):
    """The job did not end within the caller's timeout (it may still be running)."""

    def __init__(self, job_id: str | None, job: dict[str, Any] | None = None, timeout_s: float | None = None) -> None:
        self.job_id = job_id
        self.job = job
        where = f"job {job_id}" if job_id else "the submit"
        super().__init__(f"{where} did not end within {timeout_s:g} s" if timeout_s else f"{where} did not end in time")
