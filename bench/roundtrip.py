"""A sync no-op job's round trip over HTTP, against a plain endpoint, in one run.

    .venv/bin/python -m bench.roundtrip [--requests 2000] [--concurrency 16]

Starts both servers (uvicorn, one process each, same settings), measures latency
at 1 client and throughput at N clients, prints a Markdown table with ratios.
The outlast server runs on a fresh SQLite file with its embedded workers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def server(args: list[str]) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [*args, "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.post(f"{url}/jobs/noop", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


async def latencies(url: str, requests: int) -> list[float]:
    samples = []
    async with httpx.AsyncClient(headers={"Prefer": "wait=5"}) as client:
        for _ in range(requests):
            started = time.perf_counter()
            response = await client.post(f"{url}/jobs/noop", json={})
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return samples


async def throughput(url: str, requests: int, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(headers={"Prefer": "wait=5"}, limits=limits, timeout=30) as client:
        remaining = iter(range(requests))

        async def loop() -> None:
            for _ in remaining:
                response = await client.post(f"{url}/jobs/noop", json={})
                assert response.status_code == 200, response.text

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return requests / (time.perf_counter() - started)


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1] if len(samples) > 1 else samples[0]


def measure(url: str, requests: int, concurrency: int) -> dict[str, float]:
    asyncio.run(latencies(url, 50))  # warm up
    lat = asyncio.run(latencies(url, requests))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    rate = asyncio.run(throughput(url, requests, concurrency))
    client_cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - before
    return {
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "rps": rate,
        "client_cpu_s": client_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        with server([python, "-m", "uvicorn", "bench.floor:app"]) as url:
            floor = measure(url, args.requests, args.concurrency)
        outlast_cmd = [python, "-m", "outlast", "serve", "tests.apps:ot", "--store", store, "--workers", "16"]
        with server(outlast_cmd) as url:
            ours = measure(url, args.requests, args.concurrency)
    print(f"| figure | plain endpoint | outlast (SQLite) | ratio |\n|---|---|---|---|")
    for key, label in [("p50_ms", "latency p50, 1 client (ms)"), ("p99_ms", "latency p99, 1 client (ms)")]:
        print(f"| {label} | {floor[key]:.2f} | {ours[key]:.2f} | {ours[key] / floor[key]:.2f}× |")
    label = f"throughput, {args.concurrency} clients (req/s)"
    print(f"| {label} | {floor['rps']:.0f} | {ours['rps']:.0f} | {ours['rps'] / floor['rps']:.2f}× |")
    print(f"\nload generator CPU during the throughput runs: {floor['client_cpu_s']:.1f} s and {ours['client_cpu_s']:.1f} s")


if __name__ == "__main__":
    main()
