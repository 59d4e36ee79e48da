"""outlast: long-running jobs behind any gateway timeout.

The names below load on first use, so that `outlast.client` (which speaks only
HTTP) can be imported without the server's dependencies being loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from outlast.context import JobContext
    from outlast.core import Outlast
    from outlast.exceptions import (
        Canceled,
        ConfigError,
        IdempotencyConflict,
        InvalidInput,
        InvalidRequest,
        InvalidTransition,
        JobError,
        JobNotFinished,
        JobNotFound,
        OutlastError,
        QueueFull,
        RetryableError,
        UnknownJobName,
    )
    from outlast.jobs import Event, Job, JobStatus
    from outlast.settings import Settings

_WHERE = {
    "JobContext": "outlast.context",
    "Outlast": "outlast.core",
    "Event": "outlast.jobs",
    "Job": "outlast.jobs",
    "JobStatus": "outlast.jobs",
    "Settings": "outlast.settings",
    **dict.fromkeys(
        (
            "Canceled",
            "ConfigError",
            "IdempotencyConflict",
            "InvalidInput",
            "InvalidRequest",
            "InvalidTransition",
            "JobError",
            "JobNotFinished",
            "JobNotFound",
            "OutlastError",
            "QueueFull",
            "RetryableError",
            "UnknownJobName",
        ),
        "outlast.exceptions",
    ),
}

__all__ = [
    "Canceled",
    "ConfigError",
    "Event",
    "IdempotencyConflict",
    "InvalidInput",
    "InvalidRequest",
    "InvalidTransition",
    "Job",
    "JobContext",
    "JobError",
    "JobNotFinished",
    "JobNotFound",
    "JobStatus",
    "Outlast",
    "OutlastError",
    "QueueFull",
    "RetryableError",
    "Settings",
    "UnknownJobName",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "Cancelled":  # the old spelling: outlast.exceptions warns, and is asked each time
        return importlib.import_module("outlast.exceptions").Cancelled
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'outlast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
