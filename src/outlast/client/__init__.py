"""outlast's client: one call that returns a job's result, whatever the gateway.

    from outlast.client import Client

    with Client("http://127.0.0.1:8000") as client:
        summary = client.run("report", {"rows": 500}, timeout=120)

It speaks only the HTTP protocol (and the WebSocket), and imports nothing of
the server side.
"""

from __future__ import annotations

from outlast.client._async import AsyncClient, AsyncJobHandle
from outlast.client._errors import ClientError, JobCanceled, JobFailed, JobTimeout, ProblemError, ServerUnavailable
from outlast.client._sync import Client, JobHandle
from outlast.client._transports import JobEvent, Mode, Update

__all__ = [
    "AsyncClient",
    "AsyncJobHandle",
    "Client",
    "ClientError",
    "JobCanceled",
    "JobEvent",
    "JobFailed",
    "JobHandle",
    "JobTimeout",
    "Mode",
    "ProblemError",
    "ServerUnavailable",
    "Update",
]
