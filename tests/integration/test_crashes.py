"""Crashes with real processes: SIGKILL of a server or a worker, cancellation and SIGTERM across processes."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

ASYNC = {"Prefer": "respond-async"}
LEASE = 2  # seconds: a lost job is reclaimed soon after this


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout} s: {predicate.__name__}")
        time.sleep(interval)  # polling between checks, bounded by the deadline


def db_path(db_url: str) -> str:
    return db_url.removeprefix("sqlite:///")


def query(path: str, sql: str, *, read_only: bool = False) -> list[tuple[Any, ...]]:
    """Run `sql` on the file with Python's own sqlite3 (read-only leaves a crashed file's WAL as it is)."""
    target, uri = (f"file:{path}?mode=ro", True) if read_only else (path, False)
    with contextlib.closing(sqlite3.connect(target, uri=uri, timeout=15)) as conn:
        return conn.execute(sql).fetchall()


def submit(client: httpx.Client, url: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"{url}/jobs/{name}", json=body, headers=ASYNC)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def get_job(client: httpx.Client, url: str, job_id: str) -> dict[str, Any]:
    response = client.get(f"{url}/jobs/{job_id}")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_for_status(client: httpx.Client, url: str, job_id: str, statuses: set[str], timeout: float) -> dict[str, Any]:
    def in_status() -> dict[str, Any] | None:
        job = get_job(client, url, job_id)
        return job if job["status"] in statuses else None

    in_status.__name__ = f"job {job_id} in {sorted(statuses)}"
    job: dict[str, Any] = wait_until(in_status, timeout)
    return job


# -- 1. the server dies while jobs are submitted and running -------------------------------------


def test_acknowledged_jobs_survive_a_server_killed_mid_load(serve, db_url):
    total, kill_after = 200, 100
    server = serve(workers=4, lease=LEASE)
    acked: list[str] = []
    errors: list[BaseException] = []
    halfway = threading.Event()

    def submitter() -> None:
        try:
            with httpx.Client(timeout=10) as client:
                for _ in range(total):
                    body = {"seconds": round(random.uniform(0.05, 0.3), 3)}
                    try:
                        response = client.post(f"{server.url}/jobs/sleep", json=body, headers=ASYNC)
                    except httpx.TransportError:
                        return  # the server is gone: this submit was never acknowledged
                    if response.status_code != 202:
                        errors.append(AssertionError(f"{response.status_code}: {response.text}"))
                        return
                    acked.append(response.json()["id"])
                    if len(acked) >= kill_after:
                        halfway.set()
        except BaseException as exc:  # reported by the test, never lost in the thread
            errors.append(exc)
        finally:
            halfway.set()

    thread = threading.Thread(target=submitter, daemon=True)
    thread.start()
    assert halfway.wait(30), "the first half was not submitted in 30 s"
    assert not errors, errors
    server.kill()
    thread.join(timeout=15)
    assert not thread.is_alive()
    assert not errors, errors
    assert kill_after <= len(acked) < total, f"{len(acked)} acknowledged before the kill"

    path = db_path(db_url)
    assert query(path, "PRAGMA integrity_check", read_only=True) == [("ok",)]
    running_at_crash = {row[0] for row in query(path, "SELECT id FROM jobs WHERE status = 'running'", read_only=True)}
    assert running_at_crash, "no job was running when the server died: the crash tested nothing"

    restarted = serve(workers=4, lease=LEASE)
    with httpx.Client(timeout=10) as client:
        rest = total - len(acked)
        acked += [submit(client, restarted.url, "sleep", {"seconds": 0.05})["id"] for _ in range(rest)]

        def all_acknowledged_succeeded() -> bool:
            response = client.get(f"{restarted.url}/jobs", params={"status": "succeeded", "limit": 500})
            assert response.status_code == 200, response.text
            succeeded = {job["id"] for job in response.json()["jobs"]}
            return set(acked) <= succeeded

        wait_until(all_acknowledged_succeeded, timeout=30, interval=0.25)
        assert len(set(acked)) == total
        for job_id in running_at_crash:
            job = get_job(client, restarted.url, job_id)
            assert job["status"] == "succeeded"
            assert job["attempt"] == 2  # reclaimed after its lease, run again
            assert job["result"]["attempt"] == 2

    assert query(path, "PRAGMA integrity_check") == [("ok",)]


# -- 2, 3. a worker dies mid-job -------------------------------------------------------------------


def start_and_kill_a_worker(serve, work, client: httpx.Client, **settings: Any) -> tuple[Any, str]:
    """An API without workers, a worker that takes a 3 s job and is SIGKILLed while running it."""
    api = serve(workers=0, lease=LEASE, **settings)
    worker = work(workers=1, lease=LEASE, **settings)
    job_id = submit(client, api.url, "sleep", {"seconds": 3})["id"]
    job = wait_for_status(client, api.url, job_id, {"running"}, timeout=20)
    assert job["attempt"] == 1
    worker.kill()
    return api, job_id


def test_a_job_whose_worker_was_killed_runs_again(serve, work):
    with httpx.Client(timeout=10) as client:
        api, job_id = start_and_kill_a_worker(serve, work, client)
        work(workers=1, lease=LEASE)
        job = wait_for_status(client, api.url, job_id, {"succeeded", "failed", "canceled"}, timeout=25)
        assert job["status"] == "succeeded", job
        assert job["attempt"] == 2
        assert job["result"] == {"slept": 3, "attempt": 2}
        result = client.get(f"{api.url}/jobs/{job_id}/result")
        assert result.status_code == 200
        assert result.json() == {"slept": 3, "attempt": 2}


def test_a_job_whose_worker_was_killed_fails_when_attempts_are_spent(serve, work):
    with httpx.Client(timeout=10) as client:
        api, job_id = start_and_kill_a_worker(serve, work, client, max_attempts=1)
        work(workers=1, lease=LEASE, max_attempts=1)
        job = wait_for_status(client, api.url, job_id, {"succeeded", "failed", "canceled"}, timeout=20)
        assert job["status"] == "failed", job
        assert job["attempt"] == 1
        assert job["error"]["type"] == "worker_lost"
        result = client.get(f"{api.url}/jobs/{job_id}/result")
        assert result.status_code == 500
        assert result.headers["content-type"].startswith("application/problem+json")
        problem = result.json()
        assert problem["type"] == "worker_lost"
        assert problem["status"] == 500


# -- 4. cancel on the API, the job runs in another process -------------------------------------------


def test_cancel_reaches_a_worker_in_another_process(serve, work):
    api = serve(workers=0)
    work(workers=1)
    with httpx.Client(timeout=10) as client:
        job_id = submit(client, api.url, "sync_sleep", {"seconds": 30})["id"]
        wait_for_status(client, api.url, job_id, {"running"}, timeout=20)
        asked = time.monotonic()
        response = client.post(f"{api.url}/jobs/{job_id}/cancel")
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "running"
        job = wait_for_status(client, api.url, job_id, {"succeeded", "failed", "canceled"}, timeout=5)
        assert job["status"] == "canceled", job
        assert time.monotonic() - asked < 5
        assert job["error"]["type"] == "canceled"
        result = client.get(f"{api.url}/jobs/{job_id}/result")
        assert result.status_code == 409
        assert result.json()["type"] == "canceled"


# -- 5. SIGTERM to an idle worker ----------------------------------------------------------------------


def test_an_idle_worker_exits_cleanly_on_sigterm(serve, work):
    api = serve(workers=0)
    worker = work(workers=1)
    with httpx.Client(timeout=10) as client:
        # A job the worker runs proves it is up, with its signal handlers in place; then it is idle.
        job_id = submit(client, api.url, "noop", {})["id"]
        job = wait_for_status(client, api.url, job_id, {"succeeded", "failed", "canceled"}, timeout=20)
        assert job["status"] == "succeeded", job
    worker.signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        code = worker.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not exit within 5 s of SIGTERM:\n{worker.output()}")
    assert code == 0, worker.output()
    assert time.monotonic() - started < 5
    assert "Traceback" not in worker.output()


# -- 5. a sync request's job, started at once on the server that took it -----------------------------


def test_a_job_started_at_once_is_run_again_when_its_server_is_killed(serve, db_url):
    server = serve(workers=2, lease=LEASE)
    with httpx.Client(timeout=10) as client:
        response = client.post(f"{server.url}/jobs/sleep", json={"seconds": 3}, headers={"Prefer": "wait=0.5"})
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["status"] == "running"  # no queue round trip: running when the hold ended
        assert job["attempt"] == 1
        server.kill()

        restarted = serve(workers=1, lease=LEASE)
        done = wait_for_status(client, restarted.url, job["id"], {"succeeded", "failed", "canceled"}, timeout=25)
        assert done["status"] == "succeeded", done
        assert done["attempt"] == 2
        assert done["result"] == {"slept": 3, "attempt": 2}
    rows = query(
        db_path(db_url), f"SELECT data FROM events WHERE job_id = '{job['id']}' AND type = 'status' ORDER BY seq"
    )
    # run at once, never written queued; then reclaimed, queued again, and run by the restarted server
    assert [json.loads(row[0])["status"] for row in rows] == ["running", "queued", "running", "succeeded"]
