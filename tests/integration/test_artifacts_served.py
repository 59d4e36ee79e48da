"""A 200 MB artifact over a real socket: streamed, with bounded server memory."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

MB = 1 << 20


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_200_mb_artifact_downloads_with_bounded_memory(serve: Any):
    server = serve()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        job = client.post("/jobs/big_file", json={"megabytes": 200}, headers={"Prefer": "wait=20"}).json()
        assert job["status"] == "succeeded", job
        url = job["result"]
        assert server.proc is not None
        before = rss_kb(server.proc.pid)
        peak = before
        digest = hashlib.sha256()
        size = 0
        with client.stream("GET", url) as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(200 * MB)
            for chunk in response.iter_bytes(MB):
                digest.update(chunk)
                size += len(chunk)
                peak = max(peak, rss_kb(server.proc.pid))
        assert size == 200 * MB
        expected = hashlib.sha256(bytes(range(256)) * 4096 * 200).hexdigest()
        assert digest.hexdigest() == expected
        assert peak - before < 50 * 1024  # well under the file's 200 MB

        tail = client.get(url, headers={"Range": f"bytes={200 * MB - 10}-"})
        assert tail.status_code == 206
        assert tail.content == (bytes(range(256)) * 4096)[-10:]
        assert client.delete(f"/jobs/{job['id']}").status_code == 204
        assert client.get(url).status_code == 404
