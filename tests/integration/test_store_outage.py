"""A store that hangs: a SIGSTOPped private `redis-server` under a real `outlast serve`.

No request may be held past the hold (a gateway in front would answer 504):
while Redis is frozen, requests that need it answer `503 store_unavailable`
with `Retry-After` in time, and once it is back the server serves again.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.integration.conftest import free_port

pytestmark = pytest.mark.slow

GATEWAY_TIMEOUT = 4
MARGIN = 1
HOLD_S = GATEWAY_TIMEOUT - MARGIN


class FrozenRedis:
    """A private `redis-server` (nothing persisted) that the test can freeze with SIGSTOP."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        directory.mkdir()
        self.log = directory / "redis.log"
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory)]
        args += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=out)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while True:
                with contextlib.suppress(redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                    if client.ping():
                        return
                assert self.proc.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, f"redis-server not up in 10 s:\n{self.log.read_text()}"
                time.sleep(0.05)  # it is starting: nothing to await but its socket
        finally:
            client.close()

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def frozen_redis(tmp_path: Path) -> Iterator[FrozenRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server on PATH")
    server = FrozenRedis(tmp_path / "redis")
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


def test_a_frozen_redis_answers_503_within_the_hold(frozen_redis: FrozenRedis, serve: Any) -> None:
    store = f"redis://127.0.0.1:{frozen_redis.port}/0?namespace=t-{secrets.token_hex(4)}"
    api = serve(store=store, workers=1, gateway_timeout=GATEWAY_TIMEOUT, margin=MARGIN)
    with httpx.Client(base_url=api.url, timeout=30) as client:
        earlier = client.post("/jobs/echo", json={"text": "before"}, headers={"Prefer": "wait=2"})
        assert earlier.status_code == 200, earlier.text
        job_id = earlier.json()["id"]

        frozen_redis.proc.send_signal(signal.SIGSTOP)
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
            frozen_redis.proc.send_signal(signal.SIGCONT)

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
