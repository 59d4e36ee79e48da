"""Webhook deliveries: what the stores keep in their outbox, and when a job event makes one.

Deliveries are written in the same transaction as the event that causes them,
so none is lost to a crash; a dispatcher (`outlast.webhooks`) claims the due
ones, sends them, and writes back how it went.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

from outlast.jobs import TERMINAL, Job, isoformat

WEBHOOK_EVENTS = ("started", "progress", "completed")
DEFAULT_EVENTS = ("completed",)
PROGRESS_EVERY_S = 5.0  # progress webhooks are throttled to one per job this often

PENDING, DELIVERED, FAILED, GONE = "pending", "delivered", "failed", "gone"


@dataclasses.dataclass(slots=True)
class Delivery:
    """One webhook call (the same `id` on every retry of it)."""

    id: str
    job_id: str
    url: str
    event: str
    payload: dict[str, Any]
    next_at: float
    attempt: int = 0
    state: str = PENDING
    last_status: int | None = None
    last_error: str | None = None

    def to_public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event": self.event,
            "state": self.state,
            "attempts": self.attempt,
            "last_status": self.last_status,
            "last_error": self.last_error,
        }

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Delivery:
        return cls(**record)


def deliveries_for(job: Job, type: str, data: dict[str, Any], now: float) -> list[Delivery]:
    """The deliveries one new event of `job` calls for (none without a webhook)."""
    if job.webhook_url is None:
        return []
    event = None
    if type == "status":
        status = data.get("status")
        event = "started" if status == "running" else "completed" if status in {s.value for s in TERMINAL} else None
    elif type == "progress" and now - job.webhook_progress_at >= PROGRESS_EVERY_S:
        event = "progress"
    if event is None or event not in job.webhook_events:
        return []
    if event == "progress":
        job.webhook_progress_at = now
    payload = envelope(job, event, now)
    return [Delivery("msg_" + secrets.token_urlsafe(16), job.id, job.webhook_url, event, payload, next_at=now)]


def envelope(job: Job, event: str, now: float) -> dict[str, Any]:
    """The body of a delivery, in the Standard Webhooks envelope (docs/protocol.md, "Webhooks").

    `type` is `job.started`, `job.progress`, or for `completed` the terminal
    status: `job.succeeded`, `job.failed`, `job.canceled`; `timestamp` is when the
    event happened; `data` is the job object as that event left it.
    """
    kind = job.status.value if event == "completed" else event
    return {"type": f"job.{kind}", "timestamp": isoformat(now), "data": job.to_public()}
