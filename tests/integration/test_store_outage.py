"""A store that hangs: a SIGSTOPped private `redis-server` under a real `outlast serve`.

No request may be held past the hold (a gateway in front would answer 504):
while Redis is frozen, requests that need it answer `503 store_unavailable`
with `Retry-After` in time, and once it is back the server serves again.
"""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.contract.conftest import redis_or_skip
from tests.integration.test_redis_nodes import RedisServer

pytestmark = pytest.mark.slow

GATEWAY_TIMEOUT = 4
MARGIN = 1
HOLD_S = GATEWAY_TIMEOUT - MARGIN


@pytest.fixture
def frozen_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private `redis-server` (nothing kept) that the test may freeze with SIGSTOP."""
    redis_or_skip()
    server = RedisServer(tmp_path / "redis", durable=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def assert_store_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"] == "store_unavailable"
    # What a client behind the gateway sees: an answer before the gateway gives up on it.
    assert elapsed < HOLD_S + 1, f"answered after {elapsed:.2f} s, past the hold ({HOLD_S} s)"


def test_a_frozen_redis_answers_503_within_the_hold(frozen_redis: RedisServer, serve: Any) -> None:
    store = f"redis://127.0.0.1:{frozen_redis.port}/0?namespace=t-{secrets.token_hex(4)}"
    api = serve(store=store, workers=1, gateway_timeout=GATEWAY_TIMEOUT, margin=MARGIN)
    with httpx.Client(base_url=api.url, timeout=30) as client:
        earlier = client.post("/jobs/echo", json={"text": "before"}, headers={"Prefer": "wait=2"})
        assert earlier.status_code == 200, earlier.text
        job_id = earlier.json()["id"]

        frozen_redis.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            response = client.post("/jobs/echo", json={"text": "during"}, headers={"Prefer": "wait=10"})
            assert_store_unavailable(response, time.monotonic() - started)

            started = time.monotonic()
            response = client.get(f"/jobs/{job_id}")
            assert_store_unavailable(response, time.monotonic() - started)

            started = time.monotonic()
            response = client.get(f"/jobs/{job_id}", headers={"Prefer": "wait=10"})
            assert_store_unavailable(response, time.monotonic() - started)
        finally:
            frozen_redis.signal(signal.SIGCONT)

        # Redis is back: the server serves again (its pooled connections may need a moment).
        deadline = time.monotonic() + 20
        while True:
            response = client.post("/jobs/echo", json={"text": "after"}, headers={"Prefer": "wait=2"})
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            assert response.status_code == 503, response.text
            time.sleep(0.2)  # the store is reconnecting: nothing to await but its answer
        assert response.status_code == 200, response.text
        assert response.json()["result"] == ["after"]
        assert client.get(f"/jobs/{job_id}").json()["status"] == "succeeded"

    api.stop()
    log = api.output()
    assert "Task exception was never retrieved" not in log, log
    assert "Traceback" not in log, log
