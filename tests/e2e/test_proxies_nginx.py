"""nginx serving outlast under a path prefix, and with proxy_cache in front: real nginx, real nodes.

- `/api/` → a node started with `--root-path /api` (nginx strips the prefix);
- `/edge/` → a node told the prefix by nginx in `X-Forwarded-Prefix` (it trusts 127.0.0.1);
- `/cached/` → the same node, through nginx's `proxy_cache` with `proxy_cache_valid 200 1m`.

The nodes serve `examples.app:ot` with a 2 s hold behind nginx's 3 s read timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_nginx import MAIN_CONF, START_TIMEOUT_S, nginx_binary
from tests.integration.conftest import Server, free_port

pytestmark = pytest.mark.slow

APP = "examples.app:ot"
SETTINGS = {"gateway_timeout": 3, "margin": 1, "workers": 4}

SITE = """\
proxy_cache_path {prefix}/cache levels=1 keys_zone=outlast_cache:1m;
server {{
    listen 127.0.0.1:{port};
    proxy_http_version 1.1;
    proxy_read_timeout 3s;

    location = /healthz {{ proxy_pass http://127.0.0.1:{root_path_node}; }}

    # The node knows its prefix (--root-path /api); nginx strips it.
    location /api/ {{
        proxy_pass http://127.0.0.1:{root_path_node}/;
    }}

    # nginx tells the node its prefix.
    location /edge/ {{
        proxy_pass http://127.0.0.1:{forwarded_node}/;
        proxy_set_header X-Forwarded-Prefix /edge;
    }}

    # A cache that keeps any 200 for a minute, unless the response says otherwise.
    location /cached/ {{
        proxy_pass http://127.0.0.1:{forwarded_node}/;
        proxy_set_header X-Forwarded-Prefix /cached;
        proxy_cache outlast_cache;
        proxy_cache_valid 200 1m;
        add_header X-Cache $upstream_cache_status always;
    }}
}}
"""


@dataclass
class Proxy:
    url: str
    proc: subprocess.Popen[bytes]
    prefix: Path


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    binary = nginx_binary()
    tmp = tmp_path_factory.mktemp("prefix")
    store = f"sqlite:///{tmp / 'outlast.db'}"
    root_path_node = Server(tmp, APP, {**SETTINGS, "store": store, "root_path": "/api"})
    forwarded_node = Server(tmp, APP, {**SETTINGS, "store": store})
    prefix = tmp / "nginx"
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "temp" / sub).mkdir(parents=True)
    port = free_port()
    site = SITE.format(prefix=prefix, port=port, root_path_node=root_path_node.port, forwarded_node=forwarded_node.port)
    (prefix / "outlast.conf").write_text(site)
    # As root, nginx's workers would switch to `nobody`, who can't enter the test's folder.
    user = "user root;" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(MAIN_CONF.format(prefix=prefix, user=user))
    command = [binary, "-c", str(prefix / "nginx.conf"), "-p", str(prefix), "-g", f"daemon off; pid {prefix}/pid;"]
    url = f"http://127.0.0.1:{port}"
    proc: subprocess.Popen[bytes] | None = None
    try:
        root_path_node.start()
        forwarded_node.start()
        with (prefix / "stderr.log").open("wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=out)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, (prefix / "stderr.log").read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)  # nginx is starting: nothing to await but its socket
        yield Proxy(url, proc, prefix)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        root_path_node.stop()
        forwarded_node.stop()


@pytest.mark.parametrize("prefix", ["/api", "/edge"])
def test_curl_follows_the_303_chain_under_the_prefix(proxy: Proxy, prefix: str):
    curl = shutil.which("curl")
    assert curl is not None, "no curl (apt-get install curl)"
    done = subprocess.run(
        [
            curl,
            "-sS",
            "-L",
            "--max-time",
            "30",
            "-w",
            "\n%{http_code} %{num_redirects}",
            f"{proxy.url}{prefix}/payload?delay=3",
        ],
        capture_output=True,
        text=True,
        timeout=40,
        check=False,
    )
    body, _, status_line = done.stdout.rpartition("\n")
    status, redirects = status_line.split()
    assert status == "200", done.stdout
    assert int(redirects) >= 1
    assert json.loads(body) == {"MESSAGE": "It took 3 seconds to generate this."}


@pytest.mark.parametrize("prefix", ["/api", "/edge"])
def test_location_and_every_link_carry_the_prefix(proxy: Proxy, prefix: str):
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        response = client.post(
            f"{prefix}/jobs/report", json={"delay": 100, "rows": 3}, headers={"Prefer": "respond-async"}
        )
        assert response.status_code == 202
        job = response.json()
        assert response.headers["location"] == f"{prefix}/jobs/{job['id']}"
        assert all(link.startswith(f"{prefix}/jobs/") for link in job["links"].values())
        status = client.get(response.headers["location"], params={"wait": 2}).json()
        assert status["status"] == "succeeded", status
        assert client.get(job["links"]["result"]).json()["rows"] == 3
        doc = client.get(f"{prefix}/openapi.json").json()
        assert doc["servers"] == [{"url": prefix}]


def test_a_caching_proxy_never_serves_a_stale_status(proxy: Proxy):
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        submitted = client.post(
            "/cached/jobs/report", json={"delay": 1500, "rows": 3}, headers={"Prefer": "respond-async"}
        )
        job_url = submitted.headers["location"]
        assert job_url.startswith("/cached/jobs/")
        seen: list[tuple[str, str]] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            response = client.get(job_url)
            seen.append((response.json()["status"], response.headers.get("x-cache", "")))
            if seen[-1][0] == "succeeded":
                break
            time.sleep(0.1)  # polling, as a client does
        assert seen[-1][0] == "succeeded", seen
        assert "running" in {status for status, _ in seen}
        assert {cache for _, cache in seen} <= {"MISS", "BYPASS", "EXPIRED", ""}, seen  # never a HIT
        for _ in range(5):  # what the cache served before, five times: now the truth each time
            again = client.get(job_url)
            assert again.json()["status"] == "succeeded"
            assert again.headers["x-cache"] != "HIT"
        # nginx's cache does not pass If-None-Match on; without a cache, the node's 304 comes through.
        status_url = job_url.replace("/cached/", "/edge/")
        etag = client.get(status_url).headers["etag"]
        not_modified = client.get(status_url, headers={"If-None-Match": etag})
        assert not_modified.status_code == 304
        # (nginx's gzip makes the tag it passes on weak: W/"...", which If-None-Match compares weakly.)
        assert not_modified.headers["etag"].removeprefix("W/") == etag.removeprefix("W/")
