"""Prometheus metrics, one registry per `Outlast` (served at `GET /metrics`)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

DURATION_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.submitted = Counter(
            "outlast_jobs_submitted", "Jobs accepted by this process.", ["name"], registry=self.registry
        )
        self.finished = Counter(
            "outlast_jobs_finished", "Attempts ended by this process's workers.", ["name", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.duration = Histogram(
            "outlast_job_duration_seconds", "How long attempts ran.", ["name"],
            buckets=DURATION_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.running = Gauge("outlast_jobs_running", "Jobs running in this process.", registry=self.registry)
        self.waiters = Gauge(
            "outlast_waiters", "Requests and streams waiting on a job in this process.", registry=self.registry
        )

    def watch(self, running: Callable[[], float], waiters: Callable[[], float]) -> None:
        """Read the two gauges from live state when scraped."""
        self.running.set_function(running)
        self.waiters.set_function(waiters)

    def render(self) -> bytes:
        return generate_latest(self.registry)
