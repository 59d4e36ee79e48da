"""Fast jobs with real processes: a sync job that ends within its wait is written once, and still
readable at once everywhere; one that outlives it is stored before its id goes out; keys stay safe.

(The SIGKILL of a server whose job outlived its wait is in test_crashes.py, section 5.)
"""

from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.contract.conftest import REDIS_URL, drop_namespace, redis_or_skip
from tests.integration.test_crashes import query, wait_for_status, wait_until

pytestmark = pytest.mark.slow

TERMINAL = {"succeeded", "failed", "canceled"}


@pytest.fixture
def namespace() -> Any:
    redis_or_skip()
    name = "fast-" + secrets.token_hex(6)
    yield name
    asyncio.run(drop_namespace(name))


def test_a_sync_job_that_ended_is_read_back_at_once_on_another_redis_node(serve, namespace: str):
    store = f"{REDIS_URL}?namespace={namespace}"
    a, b = serve(store=store, workers=2), serve(store=store, workers=0)
    with httpx.Client(timeout=10) as client:
        for n in range(20):
            done = client.post(f"{a.url}/jobs/echo", json={"text": f"t{n}"}, headers={"Prefer": "wait=5"})
            assert done.status_code == 200 and done.json()["status"] == "succeeded"
            job = done.json()
            elsewhere = client.get(f"{b.url}/jobs/{job['id']}")  # the very next request, on the other node
            assert elsewhere.status_code == 200
            assert elsewhere.json()["status"] == "succeeded"
            assert client.get(f"{b.url}/jobs/{job['id']}/result").json() == [f"t{n}"]


def test_a_sync_job_is_written_once_with_its_events(serve, db_url: str):
    server = serve(workers=2)
    with httpx.Client(timeout=10) as client:
        done = client.post(
            f"{server.url}/jobs/sleep", json={"seconds": 0.3, "steps": 3}, headers={"Prefer": "wait=5"}
        ).json()
        assert done["status"] == "succeeded" and done["progress"]["current"] == 3
        events = client.get(f"{server.url}/jobs/{done['id']}/events", params={"after": 0})
    path = db_url.removeprefix("sqlite:///")
    rows = query(path, f"SELECT seq, type FROM events WHERE job_id = '{done['id']}' ORDER BY seq", read_only=True)
    assert [type for _, type in rows] == ["status", "progress", "progress", "progress", "status"]
    assert [seq for seq, _ in rows] == [1, 2, 3, 4, 5]
    assert "id: 5" in events.text  # the stream replays what was written


def test_a_retried_idempotency_key_never_makes_a_second_job_across_a_crash(serve, db_url: str):
    path = db_url.removeprefix("sqlite:///")
    server = serve(workers=2, lease=2)
    headers = {"Prefer": "wait=10", "Idempotency-Key": "order-42"}
    body = {"seconds": 3}
    with httpx.Client(timeout=10) as client, ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, f"{server.url}/jobs/sleep", json=body, headers=headers)

        def running() -> bool:
            return query(path, "SELECT COUNT(*) FROM jobs WHERE status = 'running'", read_only=True) == [(1,)]

        wait_until(running, 10)
        server.kill()  # while the client waits for its answer
        with pytest.raises(httpx.TransportError):
            first.result(timeout=10)

        restarted = serve(workers=2, lease=2)
        again = client.post(f"{restarted.url}/jobs/sleep", json=body, headers={**headers, "Prefer": "wait=0"})
        assert again.status_code == 202
        done = wait_for_status(client, restarted.url, again.json()["id"], TERMINAL, timeout=30)
        assert done["status"] == "succeeded"
        third = client.post(f"{restarted.url}/jobs/sleep", json=body, headers=headers)
        assert third.json()["id"] == done["id"]
    assert query(path, "SELECT COUNT(*) FROM jobs WHERE idempotency_key = 'order-42'", read_only=True) == [(1,)]
