"""The 303 chain of a long-running route, followed by real clients over a real socket."""

from __future__ import annotations

import json
import re
import subprocess
import time

import httpx
import pytest
import requests

pytestmark = pytest.mark.slow

GATEWAY = {"gateway_timeout": 3, "margin": 1}  # hold: 2 s


def test_curl_follows_the_chain_to_the_answer(serve):
    server = serve("examples.app:ot", **GATEWAY)
    started = time.monotonic()
    done = subprocess.run(
        ["curl", "-sS", "-L", "-v", "--max-time", "30", f"{server.url}/payload?delay=7"],
        capture_output=True,
        text=True,
        timeout=40,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"MESSAGE": "It took 7 seconds to generate this."}
    redirects = re.findall(r"< HTTP/1.1 303", done.stderr)
    assert len(redirects) >= 3
    assert 6.5 < elapsed < 12


def test_no_response_is_held_longer_than_the_hold(serve):
    server = serve("examples.app:ot", **GATEWAY)
    url = f"{server.url}/payload?delay=7"
    hops = []
    with httpx.Client(timeout=10) as client:
        while True:
            started = time.monotonic()
            response = client.get(url)
            hops.append(time.monotonic() - started)
            if response.status_code != 303:
                break
            url = str(response.url.join(response.headers["location"]))
    assert response.status_code == 200
    assert len(hops) >= 4
    assert max(hops) < 2.0 + 0.5  # the hold, plus scheduling slack


def test_requests_with_its_defaults(serve):
    server = serve("examples.app:ot", **GATEWAY)
    response = requests.get(f"{server.url}/payload", params={"delay": 5}, timeout=30)
    assert response.status_code == 200
    assert response.json() == {"MESSAGE": "It took 5 seconds to generate this."}
    assert [r.status_code for r in response.history] == [303, 303]


def test_httpx_following_redirects(serve):
    server = serve("examples.app:ot", **GATEWAY)
    response = httpx.get(f"{server.url}/payload?delay=5", follow_redirects=True, timeout=30)
    assert response.status_code == 200
    assert response.json() == {"MESSAGE": "It took 5 seconds to generate this."}
    locations = [r.headers["location"] for r in response.history]
    assert len(set(locations)) == len(locations) >= 2  # each hop is a distinct URL


def test_curl_resending_prefer_wait_0_on_every_hop_is_still_held_at_each(serve):
    """curl -L sends its -H headers again on every hop: the hops are held whatever `Prefer: wait` says."""
    server = serve("examples.app:ot", **GATEWAY)
    started = time.monotonic()
    done = subprocess.run(
        ["curl", "-sS", "-L", "-v", "--max-time", "30", "-H", "Prefer: wait=0", f"{server.url}/payload?delay=5"],
        capture_output=True,
        text=True,
        timeout=40,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"MESSAGE": "It took 5 seconds to generate this."}
    hops = re.findall(r"< HTTP/1.1 303", done.stderr)
    # The route answers 303 at once (its own request asked for no wait); each hop then holds up to 2 s.
    assert 3 <= len(hops) <= 5, len(hops)
    assert 4.5 < elapsed < 9


def test_the_last_allowed_hop_points_to_the_job_not_to_a_refused_hop(serve):
    server = serve(**GATEWAY)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        job = client.post("/jobs/sleep", json={"seconds": 30}, headers={"Prefer": "respond-async"}).json()
        before = client.get(f"/jobs/{job['id']}/result", params={"hop": 999_999, "wait": 0})
        assert before.status_code == 303
        assert before.headers["location"] == f"/jobs/{job['id']}/result?hop=1000000"
        started = time.monotonic()
        last = client.get(f"/jobs/{job['id']}/result", params={"hop": 1_000_000})
        assert 1.5 < time.monotonic() - started < 2.5  # held, as every hop
        assert last.status_code == 202, last.text
        assert last.headers["location"] == f"/jobs/{job['id']}"
        assert "retry-after" in last.headers
        assert last.json()["status"] == "running"
        beyond = client.get(f"/jobs/{job['id']}/result", params={"hop": 1_000_001})
        assert beyond.status_code == 400
