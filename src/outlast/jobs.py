"""The vocabulary every layer shares: a job, its status and lifecycle, its events.

The lifecycle lives here and nowhere else. Stores load a `Job`, call one of its
transition methods (which raise `InvalidTransition` for a change the protocol does
not allow) and persist the result together with the `status` event it produced.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from outlast.exceptions import InvalidTransition

JOB_ID_PREFIX = "j_"


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    def check_transition(self, new: JobStatus) -> None:
        if new not in TRANSITIONS[self]:
            raise InvalidTransition(f"a job cannot go from {self.value} to {new.value}")


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})

# The one table of allowed status changes (docs/protocol.md, "The job").
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELED}),
    # running -> queued only when a retry is due: a lost worker, a retryable error.
    JobStatus.RUNNING: frozenset({JobStatus.QUEUED, *TERMINAL}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
}


def new_job_id() -> str:
    """An opaque, URL-safe id with 128 bits from the system's CSPRNG."""
    return JOB_ID_PREFIX + secrets.token_urlsafe(16)


def isoformat(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def is_json(value: Any) -> bool:
    """Whether `value` can be stored and served as strict JSON (no NaN, valid UTF-8)."""
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
        return False
    return True


def input_fingerprint(name: str, input: dict[str, Any]) -> str:
    """What makes two submits "the same" for an Idempotency-Key."""
    return hashlib.sha256(canonical_json([name, input]).encode()).hexdigest()


@dataclasses.dataclass(slots=True)
class ErrorInfo:
    """Why a job failed or was canceled. `status` is what `/result` answers with."""

    type: str
    message: str
    status: int = 500

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "status": self.status}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorInfo:
        return cls(type=data["type"], message=data["message"], status=int(data.get("status", 500)))


CANCEL_MESSAGE = "the job was canceled"
WORKER_LOST = "worker_lost"
TIMEOUT = "timeout"
CANCELED = "canceled"


@dataclasses.dataclass(slots=True)
class Event:
    """One entry of a job's event log. `seq` is None only for live-only events.

    `job` is set on a status event published by the process that wrote it: the
    job as that write left it, so that waiters here need not read it back. It is
    shared by every listener: read it, don't change it.
    """

    job_id: str
    seq: int | None
    type: str
    data: dict[str, Any]
    job: Job | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(slots=True)
class Job:
    """A job as the store keeps it. `to_public()` is what clients see."""

    id: str
    name: str
    input: dict[str, Any]
    status: JobStatus = JobStatus.QUEUED
    created_at: float = dataclasses.field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    attempt: int = 1
    max_attempts: int = 3
    timeout_s: float | None = None
    retention_s: float = 86400.0
    progress: dict[str, Any] | None = None
    result: Any = None
    error: ErrorInfo | None = None
    owner: str | None = None
    idempotency_key: str | None = None
    input_hash: str = ""
    # Scheduling and leases: never shown to clients.
    run_after: float = 0.0
    lease_until: float | None = None
    token: int = 0
    worker: str | None = None
    cancel_requested: bool = False
    last_seq: int = 0
    queue_position: int | None = None
    # A webhook registered at submit, and when progress was last sent to it.
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] = ()
    webhook_progress_at: float = 0.0

    @classmethod
    def new(
        cls,
        name: str,
        input: dict[str, Any],
        *,
        max_attempts: int,
        retention_s: float,
        timeout_s: float | None = None,
        owner: str | None = None,
        idempotency_key: str | None = None,
        now: float | None = None,
        webhook_url: str | None = None,
        webhook_events: tuple[str, ...] = (),
    ) -> Job:
        now = time.time() if now is None else now
        return cls(
            id=new_job_id(),
            name=name,
            input=input,
            created_at=now,
            max_attempts=max_attempts,
            retention_s=retention_s,
            timeout_s=timeout_s,
            owner=owner,
            idempotency_key=idempotency_key,
            input_hash=input_fingerprint(name, input),
            run_after=now,
            webhook_url=webhook_url,
            webhook_events=webhook_events,
        )

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    # -- transitions: the only code that changes `status` --------------------

    def _move(self, new: JobStatus) -> None:
        self.status.check_transition(new)
        self.status = new

    def start(self, worker: str, lease_s: float, now: float) -> int:
        """queued -> running; returns the new fencing token."""
        self._move(JobStatus.RUNNING)
        self.token += 1
        self.worker = worker
        self.started_at = now
        self.lease_until = now + lease_s
        self.queue_position = None
        return self.token

    def requeue(self, run_after: float, error: ErrorInfo | None = None) -> None:
        """running -> queued for another attempt."""
        self._move(JobStatus.QUEUED)
        self.attempt += 1
        self.run_after = run_after
        self.started_at = None
        self.progress = None
        self.lease_until = None
        self.worker = None
        self.error = error

    def succeed(self, result: Any, now: float) -> None:
        self._move(JobStatus.SUCCEEDED)
        self.result = result
        self.error = None
        self._end(now)

    def fail(self, error: ErrorInfo, now: float) -> None:
        self._move(JobStatus.FAILED)
        self.error = error
        self._end(now)

    def cancel(self, now: float, message: str = CANCEL_MESSAGE) -> None:
        self._move(JobStatus.CANCELED)
        self.error = ErrorInfo(CANCELED, message, 409)
        self._end(now)

    def _end(self, now: float) -> None:
        self.finished_at = now
        self.expires_at = now + self.retention_s
        self.lease_until = None
        self.worker = None
        self.queue_position = None

    # -- views -----------------------------------------------------------------

    def to_public(self) -> dict[str, Any]:
        """The job object of the protocol, without `links` (the edge adds them)."""
        error = None
        if self.error is not None and self.status in (JobStatus.FAILED, JobStatus.CANCELED):
            error = {"type": self.error.type, "message": self.error.message}
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status.value,
            "created_at": isoformat(self.created_at),
            "started_at": isoformat(self.started_at),
            "finished_at": isoformat(self.finished_at),
            "expires_at": isoformat(self.expires_at),
            "attempt": self.attempt,
            "queue_position": self.queue_position if self.status is JobStatus.QUEUED else None,
            "progress": self.progress,
            "result": self.result if self.status is JobStatus.SUCCEEDED else None,
            "error": error,
            **({"webhook": {"url": self.webhook_url, "events": list(self.webhook_events)}} if self.webhook_url else {}),
        }

    def status_event(self) -> tuple[str, dict[str, Any]]:
        return "status", self.to_public()


@dataclasses.dataclass(slots=True, frozen=True)
class Outcome:
    """How one attempt of a job ended, as its runner reports it to the store."""

    status: JobStatus
    result: Any = None
    error: ErrorInfo | None = None
    retry_at: float | None = None

    @classmethod
    def succeeded(cls, result: Any) -> Outcome:
        return cls(JobStatus.SUCCEEDED, result=result)

    @classmethod
    def failed(cls, error: ErrorInfo) -> Outcome:
        return cls(JobStatus.FAILED, error=error)

    @classmethod
    def canceled(cls, message: str = CANCEL_MESSAGE) -> Outcome:
        return cls(JobStatus.CANCELED, error=ErrorInfo(CANCELED, message, 409))

    @classmethod
    def retry(cls, error: ErrorInfo, retry_at: float) -> Outcome:
        return cls(JobStatus.QUEUED, error=error, retry_at=retry_at)

    def apply(self, job: Job, now: float) -> None:
        """Move `job` to this outcome (a retry with no attempts left fails)."""
        if self.status is JobStatus.SUCCEEDED:
            job.succeed(self.result, now)
        elif self.status is JobStatus.CANCELED:
            job.cancel(now, self.error.message if self.error else CANCEL_MESSAGE)
        elif self.status is JobStatus.QUEUED and job.cancel_requested:
            job.cancel(now)  # a retry was due, but cancellation was asked for meanwhile
        elif self.status is JobStatus.QUEUED and job.attempt < job.max_attempts:
            assert self.error is not None
            assert self.retry_at is not None
            job.requeue(self.retry_at, self.error)
        else:
            assert self.error is not None
            job.fail(self.error, now)


def lose_worker(job: Job, now: float) -> None:
    """A running job whose lease expired: try again, or fail once attempts are spent."""
    if job.cancel_requested:
        job.cancel(now)
    elif job.attempt < job.max_attempts:
        job.requeue(now)
    else:
        job.fail(ErrorInfo(WORKER_LOST, "the worker running the job was lost", 500), now)


# What a store keeps of a job: every field but its place in the queue, which is worked out when read.
_RECORD_FIELDS = tuple(field.name for field in dataclasses.fields(Job) if field.name != "queue_position")


def job_record(job: Job) -> dict[str, Any]:
    """Every field of a job as plain JSON-ready values, the one mapping every store writes.

    The values are the job's own, not copies (`dataclasses.asdict` would copy
    the input and result on every write): serialise the record, don't change it.
    """
    record = {name: getattr(job, name) for name in _RECORD_FIELDS}
    record["status"] = job.status.value
    record["error"] = None if job.error is None else job.error.to_dict()
    record["webhook_events"] = list(job.webhook_events)
    return record


def job_from_record(record: dict[str, Any]) -> Job:
    """The job a record holds (fields it lacks, from older records, take their defaults)."""
    fields = {name: record[name] for name in Job.__dataclass_fields__ if name in record}
    fields["status"] = JobStatus(fields["status"])
    error = fields.get("error")
    fields["error"] = None if error is None else ErrorInfo.from_dict(error)
    fields["queue_position"] = None
    fields["webhook_events"] = tuple(fields.get("webhook_events") or ())
    return Job(**fields)
