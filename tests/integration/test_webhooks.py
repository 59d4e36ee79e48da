"""Webhooks from a real server to a real receiver: retries, restarts, redirects, 410."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

pytestmark = pytest.mark.slow

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Receiver:
    """An HTTP receiver on 127.0.0.1 that answers from a script and records what it got."""

    def __init__(self, answers: list[int | tuple[int, dict[str, str]]]) -> None:
        self.answers = answers
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.got = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.got:
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    answer = receiver.answers.pop(0) if receiver.answers else 200
                    receiver.got.notify_all()
                status, extra = answer if isinstance(answer, tuple) else (answer, {})
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", "/elsewhere")
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout_s: float = 15) -> None:
        with self.got:
            assert self.got.wait_for(lambda: len(self.requests) >= count, timeout_s), self.requests

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[[list[Any]], Receiver]]:
    made: list[Receiver] = []

    def make(answers: list[int | tuple[int, dict[str, str]]]) -> Receiver:
        made.append(Receiver(answers))
        return made[-1]

    yield make
    for r in made:
        r.close()


def env(backoff: str = "0,0.3,0.3,0.3,0.3") -> dict[str, str]:
    return {
        "OUTLAST_WEBHOOK_ALLOW": "127.0.0.0/8",
        "OUTLAST_WEBHOOK_BACKOFF": backoff,
        "OUTLAST_WEBHOOK_SECRET": SECRET,
    }


def submit(url: str, hook: str, events: str | None = None, **input: Any) -> dict[str, Any]:
    headers = {"Outlast-Webhook": hook, "Prefer": "respond-async"}
    if events:
        headers["Outlast-Webhook-Events"] = events
    response = httpx.post(f"{url}/jobs/sleep", json={"seconds": 0.1, **input}, headers=headers, timeout=10)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def deliveries(url: str, job_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx.get(f"{url}/jobs/{job_id}", timeout=5).json()["webhook"]["deliveries"]
    return found


def wait_state(url: str, job_id: str, state: str, timeout_s: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = deliveries(url, job_id)
        if found and found[-1]["state"] == state:
            return found[-1]
        time.sleep(0.05)  # the server's dispatcher works on its own schedule: poll its state
    raise AssertionError(deliveries(url, job_id))


def test_a_receiver_that_fails_twice_gets_three_deliveries_with_one_id(serve: Any, receiver: Any):
    hook = receiver([500, 503, 200])
    server = serve(env=env())
    job = submit(server.url, hook.url)
    hook.wait_for(3)
    ids = {headers["webhook-id"] for headers, _ in hook.requests}
    assert len(ids) == 1
    for headers, body in hook.requests:
        payload = Webhook(SECRET).verify(body, headers)
        assert set(payload) == {"type", "timestamp", "data"}
        assert payload["type"] == "job.succeeded"
        assert payload["data"]["id"] == job["id"]
        assert payload["data"]["status"] == "succeeded"
        assert "links" not in payload["data"]
        # RFC 3339, when the job ended (the same on every attempt of the delivery).
        assert payload["timestamp"].endswith("Z")
        stamped = datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00"))
        assert (
            abs(
                (
                    stamped - datetime.fromisoformat(payload["data"]["finished_at"].replace("Z", "+00:00"))
                ).total_seconds()
            )
            < 1
        )
    state = wait_state(server.url, job["id"], "delivered")
    assert (state["attempts"], state["last_status"]) == (3, 200)


@pytest.mark.parametrize("retry_after", ["soon", "\u00b2", "Fri, 31 Dec 99999 23:59:59 GMT"])
def test_an_unreadable_retry_after_is_one_failed_attempt_and_a_200_ends_it(serve: Any, receiver: Any, retry_after: str):
    hook = receiver([(503, {"Retry-After": retry_after}), (200, {"Retry-After": retry_after})])
    server = serve(env=env(backoff="0,0.3,60"))
    job = submit(server.url, hook.url)
    hook.wait_for(2)
    state = wait_state(server.url, job["id"], "delivered")
    assert (state["attempts"], state["last_status"]) == (2, 200)
    assert len(hook.requests) == 2
    assert len({headers["webhook-id"] for headers, _ in hook.requests}) == 1


def test_a_restart_between_attempts_still_delivers(serve: Any, receiver: Any):
    hook = receiver([500, 200])
    first = serve(env=env(backoff="0,2"))
    job = submit(first.url, hook.url)
    hook.wait_for(1)
    deadline = time.monotonic() + 10
    while deliveries(first.url, job["id"])[0]["attempts"] < 1:  # the first failure is stored
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.kill()  # before the second attempt, due 2 s later
    second = serve(env=env(backoff="0,2"))
    hook.wait_for(2)
    assert len({headers["webhook-id"] for headers, _ in hook.requests}) == 1
    assert wait_state(second.url, job["id"], "delivered")["last_status"] == 200


def test_redirects_are_failures_and_are_not_followed(serve: Any, receiver: Any):
    hook = receiver([302, 302, 302, 302, 302])
    server = serve(env=env(backoff="0,0.2,0.2"))
    job = submit(server.url, hook.url)
    state = wait_state(server.url, job["id"], "failed")
    assert state["last_status"] == 302
    assert len(hook.requests) == 3
    assert all(json.loads(body)["data"]["id"] == job["id"] for _, body in hook.requests)  # /elsewhere was never asked


def test_410_stops_delivery(serve: Any, receiver: Any):
    hook = receiver([410])
    server = serve(env=env())
    job = submit(server.url, hook.url, events="started, completed")
    hook.wait_for(1)
    wait_state(server.url, job["id"], "gone")
    states = {d["event"]: d["state"] for d in deliveries(server.url, job["id"])}
    assert states == {"started": "gone", "completed": "gone"}
    assert len(hook.requests) == 1


def test_events_filter_and_order(serve: Any, receiver: Any):
    hook = receiver([])
    server = serve(env=env())
    job = submit(server.url, hook.url, events="started, completed", seconds=0.5)
    hook.wait_for(2)
    bodies = [json.loads(body) for _, body in hook.requests]
    assert sorted(b["data"]["status"] for b in bodies) == ["running", "succeeded"]
    assert sorted(b["type"] for b in bodies) == ["job.started", "job.succeeded"]
    assert {d["event"] for d in deliveries(server.url, job["id"])} == {"started", "completed"}


def test_each_event_has_its_own_type_in_the_standard_webhooks_envelope(serve: Any, receiver: Any):
    hook = receiver([])
    server = serve(env=env())
    every = {"Outlast-Webhook": hook.url, "Outlast-Webhook-Events": "started, progress, completed"}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        failed = client.post("/jobs/fail", json={}, headers={**every, "Prefer": "wait=5"}).json()
        slow = client.post("/jobs/sleep", json={"seconds": 30, "steps": 30}, headers={**every, "Prefer": "wait=2"})
        client.post(f"/jobs/{slow.json()['id']}/cancel")
    hook.wait_for(5)  # failed: started, completed; slow: started, progress (one per 5 s), completed
    time.sleep(0.5)
    received: dict[str, list[str]] = {}
    for headers, body in hook.requests:
        payload = Webhook(SECRET).verify(body, headers)
        received.setdefault(payload["data"]["id"], []).append(payload["type"])
    assert received[failed["id"]] == ["job.started", "job.failed"]
    assert received[slow.json()["id"]] == ["job.started", "job.progress", "job.canceled"]
