"""The Celery app of the Celery + Flower peer in the benchmarks (see bench/peer_celery.py).

It runs under the peer's own virtualenv (`.bench/celery-venv`), both in the
Celery worker and in Flower, so it imports nothing but Celery: not outlast,
not the project's virtualenv. Broker and result backend are the Redis URL in
`BENCH_CELERY_REDIS` (a database of its own, which the peer flushes).

Its tasks match what outlast's benchmarks run: `bench.noop` does nothing and
returns None; `bench.sleep` sleeps for a number of seconds.
"""

from __future__ import annotations

import os
import time

from celery import Celery

REDIS_URL = os.environ.get("BENCH_CELERY_REDIS", "redis://127.0.0.1:6379/15")

app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    # JSON only: no pickle on the wire or in the results.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # Results are the point (Flower's apply answers with them): keep them, for a bounded time.
    task_ignore_result=False,
    result_expires=600,
    # No task events: Flower's API (apply, async-apply, result) does not need them, and they cost the
    # worker and Flower about 2 ms of CPU per task; Flower runs with --enable_events=False to keep them off.
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]  # Celery ships no type hints
def noop() -> None:
    """No work: what is measured is the way there and back."""


@app.task(name="bench.sleep")  # type: ignore[untyped-decorator]  # Celery ships no type hints
def sleep(seconds: float) -> None:
    """Sleep for `seconds`: a job that takes time but no CPU."""
    time.sleep(seconds)
