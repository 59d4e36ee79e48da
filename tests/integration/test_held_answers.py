"""A held answer shows the job as it is when the answer goes out, not as it was when the request came in."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

JOB = {"seconds": 8, "steps": 40}  # progress every 0.2 s, for 8 s


def current(job: dict[str, Any]) -> int:
    assert job["progress"] is not None, job
    value: int = job["progress"]["current"]
    return value


@pytest.mark.parametrize("how", ["query", "prefer"])
def test_a_long_poll_answers_with_the_progress_of_the_moment(serve, how):
    server = serve(gateway_timeout=10, margin=2)
    with httpx.Client(base_url=server.url, timeout=20) as client:
        job = client.post("/jobs/sleep", json=JOB, headers={"Prefer": "respond-async"}).json()
        client.get(f"/jobs/{job['id']}", params={"wait": 1})  # let it start and report a little
        started = time.monotonic()
        if how == "query":
            held = client.get(f"/jobs/{job['id']}", params={"wait": 3})
        else:
            held = client.get(f"/jobs/{job['id']}", headers={"Prefer": "wait=3"})
        assert 2.5 < time.monotonic() - started < 4
        after = client.get(f"/jobs/{job['id']}")
    assert held.status_code == 200 and held.json()["status"] == "running", held.text
    # About 4 s in: some 20 of 40 steps done, and what a GET right after shows.
    assert current(held.json()) >= 15, held.json()["progress"]
    assert current(after.json()) - current(held.json()) <= 2, (held.json()["progress"], after.json()["progress"])


def test_the_202_after_a_wait_carries_the_progress_reached(serve):
    server = serve(gateway_timeout=10, margin=2)
    with httpx.Client(base_url=server.url, timeout=20) as client:
        submitted = client.post("/jobs/sleep", json=JOB, headers={"Prefer": "wait=3"})
        after = client.get(f"/jobs/{submitted.json()['id']}")
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["status"] == "running"
    assert current(submitted.json()) >= 10, submitted.json()["progress"]
    assert current(after.json()) - current(submitted.json()) <= 2


def test_a_job_still_queued_after_a_wait_shows_its_place_as_it_is_then(serve):
    server = serve(workers=1, gateway_timeout=10, margin=2)
    with httpx.Client(base_url=server.url, timeout=20) as client:
        first = client.post("/jobs/sleep", json={"seconds": 1.5}, headers={"Prefer": "respond-async"}).json()
        second = client.post("/jobs/sleep", json={"seconds": 5}, headers={"Prefer": "respond-async"}).json()
        third = client.post("/jobs/sleep", json={"seconds": 5}, headers={"Prefer": "respond-async"}).json()
        assert third["queue_position"] == 1, third
        held = client.get(f"/jobs/{third['id']}", params={"wait": 3}).json()  # `first` ends meanwhile
    assert first["id"] != second["id"]
    assert held["status"] == "queued" and held["queue_position"] == 0, held
