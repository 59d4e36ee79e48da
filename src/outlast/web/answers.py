"""Framework-neutral answers: what the HTTP edge, long-running routes and Flask views send.

An `Answer` is a status, headers and a body. Starlette endpoints send it as a
Starlette response (`Answer.starlette`), Flask views as a Flask one, so that the
same request gets the same answer whatever serves it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from outlast.jobs import Job, JobStatus
from outlast.web.links import job_json, job_url
from outlast.web.problems import MEDIA_TYPE, Problem

# The largest `hop` of a result chain. A hop there that is not answered with the outcome
# gets a `202` pointing to the job, never a `303` to a hop that would be refused.
MAX_HOP = 1_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes = b""
    media_type: str | None = None

    @classmethod
    def json(cls, value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Answer:
        return cls(status, dict(headers or {}), render_json(value), "application/json")

    @classmethod
    def problem(cls, problem: Problem) -> Answer:
        return cls(problem.status, dict(problem.headers or {}), render_json(problem.body()), MEDIA_TYPE)

    def starlette(self) -> Response:
        return Response(self.body, status_code=self.status, headers=dict(self.headers), media_type=self.media_type)


def render_json(value: Any) -> bytes:
    """JSON as Starlette's `JSONResponse` renders it: compact, UTF-8, no NaN."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def retry_after(job: Job) -> str:
    """Seconds a client should wait before asking again: longer for older jobs."""
    age_s = time.time() - job.created_at
    return str(max(1, min(10, math.ceil(age_s / 10))))


def accepted(base: str, job: Job, *, respond_async: bool = False) -> Answer:
    """`202` + `Location` + `Retry-After`, with the job object."""
    headers = {"Location": job_url(base, job.id), "Retry-After": retry_after(job)}
    if respond_async:
        headers["Preference-Applied"] = "respond-async"
    return Answer.json(job_json(base, job), 202, headers)


def see_other(base: str, job: Job, hop: int) -> Answer:
    """`303` to the next link of the result chain; each hop's URL is distinct."""
    headers = {"Location": job_url(base, job.id, f"/result?hop={hop}"), "Retry-After": retry_after(job)}
    return Answer(303, headers)


def terminal_result(job: Job) -> Answer:
    """What `/result` answers for a job that has ended."""
    if job.status is JobStatus.SUCCEEDED:
        return Answer.json(job.result)
    assert job.error is not None
    if job.status is JobStatus.CANCELED:
        return Answer.problem(Problem(409, "canceled", "The job was canceled", job.error.message))
    return Answer.problem(Problem(job.error.status, job.error.type, "The job failed", job.error.message))
