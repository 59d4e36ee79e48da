"""The URLs in a job object: relative to where the protocol's routes are mounted."""

from __future__ import annotations

from typing import Any

from outlast.jobs import Job


def job_url(base: str, job_id: str, suffix: str = "") -> str:
    return f"{base.rstrip('/')}/jobs/{job_id}{suffix}"


def with_links(base: str, job: dict[str, Any]) -> dict[str, Any]:
    """A public job object (as `Job.to_public()` or a status event holds it), with its `links`."""
    url = job_url(base, job["id"])
    links = {"self": url, "result": f"{url}/result", "events": f"{url}/events", "cancel": f"{url}/cancel"}
    return {**job, "links": links}


def job_json(base: str, job: Job) -> dict[str, Any]:
    """The protocol's job object, with links under `base`."""
    return with_links(base, job.to_public())
