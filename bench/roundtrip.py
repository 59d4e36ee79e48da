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
import tempfile
import time
from pathlib import Path

import httpx

from bench._servers import PYTHON, percentile, server

TIMES = "\N{MULTIPLICATION SIGN}"


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
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        with server([PYTHON, "-m", "uvicorn", "bench.floor:app"], Path(tmp, "floor.log")) as floor_server:
            floor = measure(floor_server.url, args.requests, args.concurrency)
        outlast_cmd = [PYTHON, "-m", "outlast", "serve", "tests.apps:ot", "--store", store, "--workers", "16"]
        with server(outlast_cmd, Path(tmp, "outlast.log")) as outlast_server:
            ours = measure(outlast_server.url, args.requests, args.concurrency)
    print("| figure | plain endpoint | outlast (SQLite) | ratio |\n|---|---|---|---|")
    for key, label in [("p50_ms", "latency p50, 1 client (ms)"), ("p99_ms", "latency p99, 1 client (ms)")]:
        print(f"| {label} | {floor[key]:.2f} | {ours[key]:.2f} | {ours[key] / floor[key]:.2f}{TIMES} |")
    label = f"throughput, {args.concurrency} clients (req/s)"
    print(f"| {label} | {floor['rps']:.0f} | {ours['rps']:.0f} | {ours['rps'] / floor['rps']:.2f}{TIMES} |")
    cpu = f"{floor['client_cpu_s']:.1f} s and {ours['client_cpu_s']:.1f} s"
    print(f"\nload generator CPU during the throughput runs: {cpu}")


if __name__ == "__main__":
    main()
