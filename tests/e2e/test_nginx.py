"""deploy/nginx.conf in front of two API nodes on one Redis, with one worker node, all real processes.

nginx runs as a private subprocess (its own prefix, logs and pid file in the
test's folder, in the foreground, as the current user), with the template's
placeholders filled as envsubst would (docs/deploy.md). The nodes serve `examples.app:ot` with a 2 s hold
(`--gateway-timeout 3 --margin 1`), and nginx's read timeout is those 3 s, so a
5 s request only gets through by the 303 chain.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.contract.conftest import REDIS_URL, drop_namespace, redis_or_skip
from tests.integration.conftest import ROOT, Process, Server, free_port

pytestmark = pytest.mark.slow

TEMPLATE = ROOT / "deploy" / "nginx.conf"
APP = "examples.app:ot"
GATEWAY_TIMEOUT = 3  # nginx's proxy_read_timeout, and the nodes' --gateway-timeout
MARGIN = 1  # so the hold is 2 s
MAX_BODY = 65536
START_TIMEOUT_S = 20.0
TERMINAL = {"succeeded", "failed", "canceled"}
ASYNC = {"Prefer": "respond-async"}

MAIN_CONF = """\
worker_processes 1;
error_log {prefix}/error.log notice;
{user}
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    # As many http blocks have: compress text. The event streams must still come live.
    gzip on;
    gzip_types text/event-stream application/json;
    include {prefix}/outlast.conf;
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("no nginx in CI (apt-get install nginx)")
        pytest.skip("no nginx (apt-get install nginx)")
    return found


def fill(template: str, values: dict[str, str]) -> str:
    """The template with each ${NAME} replaced, as envsubst would; every placeholder must be given."""
    filled = template
    for name, value in values.items():
        filled = filled.replace("${" + name + "}", value)
    code = "\n".join(line for line in filled.splitlines() if not line.lstrip().startswith("#"))
    left = re.findall(r"\$\{OUTLAST_\w+\}", code)
    assert not left, f"placeholders not filled: {left}"
    return filled


class Nginx:
    """nginx in the foreground on a free port, with everything it writes under `prefix`."""

    def __init__(self, prefix: Path, upstreams: list[int]) -> None:
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log = prefix / "access.log"
        self.error_log = prefix / "error.log"
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / "temp" / sub).mkdir(parents=True)
        site = fill(
            TEMPLATE.read_text(),
            {
                "OUTLAST_LISTEN": f"127.0.0.1:{self.port}",
                "OUTLAST_API_1": f"127.0.0.1:{upstreams[0]}",
                "OUTLAST_API_2": f"127.0.0.1:{upstreams[1]}",
                "OUTLAST_GATEWAY_TIMEOUT": str(GATEWAY_TIMEOUT),
                "OUTLAST_MAX_BODY": str(MAX_BODY),
                "OUTLAST_ACCESS_LOG": str(self.access_log),
            },
        )
        (prefix / "outlast.conf").write_text(site)
        # As root, nginx's workers would switch to `nobody`, who can't enter the test's folder.
        user = "user root;" if os.geteuid() == 0 else ""
        (prefix / "nginx.conf").write_text(MAIN_CONF.format(prefix=prefix, user=user))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, binary: str) -> None:
        directives = f"daemon off; pid {self.prefix}/nginx.pid;"
        command = [binary, "-c", str(self.prefix / "nginx.conf"), "-p", str(self.prefix), "-g", directives]
        with (self.prefix / "stderr.log").open("wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=out)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # nginx is starting: nothing to await but its socket
        raise RuntimeError(f"nginx did not answer in {START_TIMEOUT_S} s:\n{self.logs()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)  # fast shutdown: open streams are cut
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def logs(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self.prefix / "stderr.log", self.error_log) if p.exists()]
        return "\n".join(parts)


@dataclass
class Stack:
    nginx: Nginx
    nodes: list[Server]
    worker: Process

    @property
    def url(self) -> str:
        return self.nginx.url


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two `outlast serve --workers 0` nodes and one `outlast worker` on a private Redis namespace, behind nginx."""
    binary = nginx_binary()
    redis_or_skip()
    namespace = "e2e-nginx-" + secrets.token_hex(6)
    store = f"{REDIS_URL}?namespace={namespace}"
    tmp = tmp_path_factory.mktemp("nginx")
    settings = {"store": store, "gateway_timeout": GATEWAY_TIMEOUT, "margin": MARGIN, "max_body": MAX_BODY}
    nodes = [Server(tmp, APP, {**settings, "workers": 0, "dashboard": True}) for _ in range(2)]
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in {**settings, "workers": 4}.items()]
    worker = Process(["worker", APP, *flags], tmp / "worker.log")
    nginx = Nginx(tmp / "nginx", [node.port for node in nodes])
    try:
        for node in nodes:
            node.start()
        worker.start()
        nginx.start(binary)
        yield Stack(nginx, nodes, worker)
    finally:
        nginx.stop()
        for process in [*nodes, worker]:
            process.stop()
        asyncio.run(drop_namespace(namespace))


# -- helpers ---------------------------------------------------------------------------


async def sse(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The events of a text/event-stream response: {"id": int | None, "event": str, "data": Any}."""
    block: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "event" in block:
                yield block
            block = {}
        elif line.startswith("id: "):
            block["id"] = int(line[4:])
        elif line.startswith("event: "):
            block.setdefault("id", None)
            block["event"] = line[7:]
        elif line.startswith("data: "):
            block["data"] = json.loads(line[6:])


async def submit_report(client: httpx.AsyncClient, delay_ms: int, rows: int = 10) -> str:
    response = await client.post("/jobs/report", json={"delay": delay_ms, "rows": rows}, headers=ASYNC)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def numbered(events: list[dict[str, Any]]) -> list[int]:
    return [e["id"] for e in events if e["id"] is not None]


# -- through nginx ---------------------------------------------------------------------


def test_curl_follows_the_303_chain_to_the_routes_answer(stack: Stack) -> None:
    """A 5 s request behind a 3 s gateway: curl -L gets the handler's own answer after two 303s."""
    curl = shutil.which("curl")
    assert curl is not None, "no curl (apt-get install curl)"
    command = [curl, "-sS", "-L", "--max-time", "30", "-w", "\n%{http_code} %{num_redirects}"]
    done = subprocess.run(
        [*command, f"{stack.url}/payload?delay=5"], capture_output=True, text=True, timeout=40, check=False
    )
    assert done.returncode == 0, done.stderr
    body, _, status_line = done.stdout.rpartition("\n")
    status, redirects = status_line.split()
    assert status == "200", done.stdout
    assert int(redirects) >= 2, done.stdout  # 0-2 s held, 303; 2-4 s held, 303; then the answer
    assert json.loads(body) == {"MESSAGE": "It took 5 seconds to generate this."}


async def test_sse_through_nginx_is_live_and_resumes_on_either_node(stack: Stack) -> None:
    async with asyncio.timeout(40), httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
        job_id = await submit_report(client, delay_ms=3000)
        events: list[dict[str, Any]] = []
        status_at_first_progress = None
        async with client.stream("GET", f"/jobs/{job_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for event in sse(response):
                events.append(event)
                if event["event"] == "progress" and status_at_first_progress is None:
                    # Not buffered: the first progress comes while the job still runs (it has 19 steps to go).
                    status_at_first_progress = (await client.get(f"/jobs/{job_id}")).json()["status"]
                if event["event"] == "status" and event["data"]["status"] in TERMINAL:
                    break
        assert status_at_first_progress == "running"
        assert events[-1]["data"]["status"] == "succeeded"
        seqs = numbered(events)
        assert seqs == list(range(1, len(seqs) + 1))

        # A client that lost its stream after event 2 resumes from its cursor, on whichever node nginx picks.
        for _ in range(2):  # round robin: one of these two reaches each node
            async with client.stream("GET", f"/jobs/{job_id}/events", headers={"Last-Event-ID": "2"}) as response:
                assert response.status_code == 200
                resumed = [event async for event in sse(response)]
            assert [e for e in resumed if e["id"] is not None] == [e for e in events if (e["id"] or 0) > 2]


async def test_status_stream_through_nginx_sees_jobs_submitted_on_the_other_node(stack: Stack) -> None:
    async with asyncio.timeout(30), httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
        async with client.stream("GET", "/events") as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith("retry: ")  # sent once the stream listens
            job_ids = [await submit_report(client, delay_ms=0, rows=1) for _ in range(2)]  # one per node
            ended: set[str] = set()
            block: list[str] = []
            async for line in lines:
                if line:
                    block.append(line)
                    continue
                if "event: status" in block:
                    job = json.loads(next(b for b in block if b.startswith("data: "))[6:])
                    if job["id"] in job_ids and job["status"] in TERMINAL:
                        ended.add(job["id"])
                        if ended == set(job_ids):
                            break
                block = []
        assert ended == set(job_ids)


async def test_websocket_through_nginx(stack: Stack) -> None:
    ws_url = "ws" + stack.url.removeprefix("http") + "/ws"
    async with asyncio.timeout(30), connect(ws_url) as ws:
        await ws.send(json.dumps({"action": "generateReport", "delay": 1000, "amountOfRows": 10, "ref": "r1"}))
        accepted = json.loads(await ws.recv())
        assert accepted["type"] == "accepted" and accepted["ref"] == "r1", accepted
        job_id = accepted["job"]["id"]
        events: list[dict[str, Any]] = []
        while True:
            message = json.loads(await ws.recv())
            assert message["type"] == "event" and message["job_id"] == job_id, message
            events.append(message)
            if message["event"] == "status" and message["data"]["status"] in TERMINAL:
                break
    assert events[-1]["data"]["status"] == "succeeded"
    assert events[-1]["data"]["result"]["rows"] == 10
    assert any(e["event"] == "progress" for e in events)
    seqs = [e["seq"] for e in events if e["seq"] is not None]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_client_max_body_size_matches_max_body(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
        padding = "x" * (MAX_BODY - len('{"rows":1,"pad":""}'))
        at_limit = f'{{"rows":1,"pad":"{padding}"}}'
        assert len(at_limit) == MAX_BODY
        headers = {"Content-Type": "application/json", **ASYNC}
        response = await client.post("/jobs/report", content=at_limit, headers=headers)
        assert response.status_code == 422, response.text  # through nginx; outlast refuses the unknown field
        assert response.headers["content-type"] == "application/problem+json"
        response = await client.post("/jobs/report", content=at_limit + " ", headers=headers)
        assert response.status_code == 413  # nginx's own answer


def test_requests_reach_both_nodes(stack: Stack) -> None:
    """nginx's access log names the node of each request ($upstream_addr): both serve."""
    marker = f"/healthz?probe={secrets.token_hex(4)}"
    for _ in range(4):
        assert httpx.get(stack.url + marker, timeout=5).status_code == 200
    wanted = {f"127.0.0.1:{node.port}" for node in stack.nodes}
    seen: set[str] = set()
    deadline = time.monotonic() + 10
    while seen != wanted and time.monotonic() < deadline:
        # nginx logs a request just after it answers it
        lines = [line for line in stack.nginx.access_log.read_text().splitlines() if marker in line]
        seen = {m for line in lines for m in re.findall(r"upstream=(\S+)", line)}
        if len(lines) < 4:
            time.sleep(0.05)
        else:
            break
    assert seen == wanted, stack.nginx.access_log.read_text()
