"""outlast: long-running jobs behind any gateway timeout."""

from __future__ import annotations

from outlast.context import JobContext
from outlast.core import Outlast
from outlast.exceptions import (
    Cancelled,
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

__version__ = "0.1.0"

__all__ = [
    "Cancelled",
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
