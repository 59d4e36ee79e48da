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
