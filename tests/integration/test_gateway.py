"""`outlast gateway`: the hard timeout reproduced, and beaten by long-running routes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import Process, Server, free_port

pytestmark = pytest.mark.slow


def start_gateway(tmp_path: Path, upstream: str, *flags: str) -> tuple[Process, str]:
    port = free_port()
    gateway = Process(["gateway", "--upstream", upstream, "--port", str(port), *flags], tmp_path / f"gw-{port}.log")
    gateway.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return gateway, url
        except httpx.TransportError:
            time.sleep(0.05)  # starting: nothing to await but its socket
    raise RuntimeError(gateway.output())


@pytest.fixture
def behind_gateway(serve: Any, tmp_path: Path) -> Iterator[tuple[Server, str, Process]]:
    server = serve("examples.app:ot", gateway_timeout=3, margin=1)
    gateway, url = start_gateway(tmp_path, server.url, "--timeout", "3", "--ws-idle", "1", "--ws-max", "3")
    yield server, url, gateway
    gateway.stop()


def test_a_plain_endpoint_gets_504_at_the_deadline(behind_gateway: tuple[Server, str, Process]):
    _, url, _ = behind_gateway
    started = time.monotonic()
    response = httpx.get(f"{url}/plain/payload?delay=7", timeout=20)
    assert response.status_code == 504
    assert 2.9 < time.monotonic() - started < 4.5


def test_the_long_running_route_succeeds_with_curl(behind_gateway: tuple[Server, str, Process]):
    _, url, _ = behind_gateway
    done = subprocess.run(
        ["curl", "-sS", "-L", "--max-time", "30", f"{url}/payload?delay=7"], capture_output=True, text=True, timeout=40
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"MESSAGE": "It took 7 seconds to generate this."}


def test_fast_answers_pass_through_untouched(behind_gateway: tuple[Server, str, Process]):
    _, url, _ = behind_gateway
    body = {"delay": 10, "rows": 3}
    through = httpx.post(f"{url}/jobs/report", json=body, headers={"Prefer": "wait=2"}, timeout=10)
    assert through.status_code == 200
    assert through.json()["result"]["rows"] == 3
    missing = httpx.get(f"{url}/jobs/j_nope", timeout=5)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


async def test_websockets_pass_through_with_idle_and_maximum_limits(behind_gateway: tuple[Server, str, Process]):
    _, url, _ = behind_gateway
    ws_url = url.replace("http", "ws", 1) + "/ws"
    async with connect(ws_url) as ws:
        await ws.send(json.dumps({"action": "generateReport", "delay": 200, "amountOfRows": 3}))
        async with asyncio.timeout(10):
            async for raw in ws:
                message = json.loads(raw)
                if message.get("event") == "status" and message["data"]["status"] == "succeeded":
                    assert message["data"]["result"]["rows"] == 3
                    break
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):  # idle for 1 s: closed
            async with asyncio.timeout(10):
                await ws.recv()
        assert time.monotonic() - started < 3


def test_the_flask_example_succeeds_through_the_gateway(serve: Any, tmp_path: Path):
    server = serve("examples.flask_app:app", gateway_timeout=3, margin=1)
    gateway, url = start_gateway(tmp_path, server.url, "--timeout", "3")
    try:
        assert httpx.get(f"{url}/hello", timeout=5).json() == {"hello": "from Flask"}
        done = subprocess.run(
            ["curl", "-sS", "-L", "-v", "--max-time", "30", f"{url}/payload?delay=7"],
            capture_output=True,
            text=True,
            timeout=40,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"MESSAGE": "It took 7 seconds to generate this."}
        assert done.stderr.count("< HTTP/1.1 303") >= 3
        fast = httpx.get(f"{url}/payload?delay=0.1", timeout=5)
        assert fast.status_code == 200
        assert fast.json() == {"MESSAGE": "It took 0.1 seconds to generate this."}
    finally:
        gateway.stop()


def test_each_response_carries_one_date_and_one_server(behind_gateway: tuple[Server, str, Process]):
    _, url, _ = behind_gateway
    for response in (httpx.get(f"{url}/healthz", timeout=5), httpx.get(f"{url}/jobs/j_nope", timeout=5)):
        names = [name.lower() for name, _ in response.headers.multi_items()]
        assert names.count("date") == 1 and names.count("server") == 1, response.headers


def test_a_stream_cut_at_the_deadline_is_one_log_line_not_a_traceback(behind_gateway: tuple[Server, str, Process]):
    _, url, gateway = behind_gateway
    job = httpx.post(f"{url}/jobs/report", json={"delay": 8000, "rows": 1}, timeout=5).json()
    started = time.monotonic()
    lines: list[str] = []

    def read_to_the_end() -> None:
        with httpx.stream("GET", f"{url}/jobs/{job['id']}/events", timeout=10) as stream:
            assert stream.status_code == 200
            lines.extend(stream.iter_lines())

    with pytest.raises(httpx.RemoteProtocolError):  # the body ends incomplete
        read_to_the_end()
    assert "retry: 2000" in lines
    assert 2.5 < time.monotonic() - started < 4.5  # cut at the gateway's 3 s, incomplete
    time.sleep(0.3)
    log = gateway.output()
    assert "Traceback" not in log and "ERROR" not in log, log
    assert log.count("cut") == 1, log
