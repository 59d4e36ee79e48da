"""Behind a real HAProxy whose `timeout server` is 5 s: quiet streams stay open, slow routes get through.

HAProxy closes a connection when the server has sent nothing for `timeout
server`, whatever the response. The node serves `examples.app:ot` with a hold
under that timeout (`--gateway-timeout 5 --margin 1.5`: 3.5 s), so its event
streams ping at least every 1.75 s and every held request answers in time.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import free_port

pytestmark = pytest.mark.slow

PROXY_TIMEOUT_S = 5
HOLD = {"gateway_timeout": PROXY_TIMEOUT_S, "margin": 1.5}  # hold: 3.5 s
START_TIMEOUT_S = 20.0

CONFIG = """\
global
    maxconn 256
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server {timeout}s
frontend outlast
    bind 127.0.0.1:{port}
    default_backend nodes
backend nodes
    server node1 127.0.0.1:{upstream}
"""


class HAProxy:
    def __init__(self, folder: Path, upstream: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        self.config = folder / "haproxy.cfg"
        self.config.write_text(CONFIG.format(timeout=PROXY_TIMEOUT_S, port=self.port, upstream=upstream))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, binary: str) -> None:
        with (self.folder / "haproxy.log").open("wb") as out:
            self.proc = subprocess.Popen([binary, "-db", "-f", str(self.config)], stdout=out, stderr=out)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited:\n{(self.folder / 'haproxy.log').read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # haproxy is starting: nothing to await but its socket
        raise RuntimeError("haproxy did not answer in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def haproxy(tmp_path: Path, serve: Any) -> Iterator[HAProxy]:
    binary = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if binary is None:
        pytest.skip("no haproxy (apt-get install haproxy)")
    server = serve("examples.app:ot", **HOLD)
    proxy = HAProxy(tmp_path, server.port)
    proxy.start(binary)
    yield proxy
    proxy.stop()


def test_haproxy_cuts_a_silent_response_at_its_timeout(haproxy: HAProxy) -> None:
    """The premise: a plain endpoint that says nothing for 7 s never gets through."""
    started = time.monotonic()
    response = httpx.get(f"{haproxy.url}/plain/payload?delay=7", timeout=20)
    assert response.status_code == 504
    assert PROXY_TIMEOUT_S - 0.5 < time.monotonic() - started < PROXY_TIMEOUT_S + 1.5


def test_a_quiet_event_stream_stays_open_past_twice_the_timeout_and_gets_its_end(haproxy: HAProxy) -> None:
    with httpx.Client(base_url=haproxy.url, timeout=30) as client:
        # The route's job sleeps 12 s in one go: after `running`, its stream has nothing to say.
        submitted = client.get("/payload", params={"delay": 12}, headers={"Prefer": "respond-async"})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        started = time.monotonic()
        pings: list[float] = []
        events: list[tuple[str, dict[str, Any]]] = []
        with client.stream("GET", f"/jobs/{job_id}/events") as stream:
            assert stream.status_code == 200
            kind = None
            for line in stream.iter_lines():
                if line == ": ping":
                    pings.append(time.monotonic() - started)
                elif line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: ") and kind is not None:
                    events.append((kind, json.loads(line.removeprefix("data: "))))
        elapsed = time.monotonic() - started

    assert elapsed > 2 * PROXY_TIMEOUT_S, f"the stream ended after {elapsed:.1f} s"
    kind, last = events[-1]
    assert kind == "status" and last["status"] == "succeeded", events[-1]
    assert last["result"] == {"MESSAGE": "It took 12 seconds to generate this."}
    gaps = [later - earlier for earlier, later in zip([0.0, *pings], pings, strict=False)]
    assert len(pings) >= 5 and max(gaps) < PROXY_TIMEOUT_S - 1, pings


def test_a_long_running_route_gets_through_by_its_303_chain(haproxy: HAProxy) -> None:
    started = time.monotonic()
    done = subprocess.run(
        ["curl", "-sS", "-L", "-v", "--max-time", "40", f"{haproxy.url}/payload?delay=9"],
        capture_output=True,
        text=True,
        timeout=50,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"MESSAGE": "It took 9 seconds to generate this."}
    assert len(re.findall(r"< HTTP/1.1 303", done.stderr)) >= 2
    assert "504" not in done.stderr
    assert 8.5 < elapsed < 15
