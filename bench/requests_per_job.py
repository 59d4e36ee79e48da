"""HTTP requests per job for a job longer than the hold: the client's transports against naive polling.

    .venv/bin/python -m bench.requests_per_job [--jobs 3] [--seconds 8]

Serves `bench.counting_app:app` (tests.apps behind a middleware that counts
HTTP requests and WebSocket connections on the server's side) with a 2 s hold
(`--gateway-timeout 3 --margin 1`) on a fresh SQLite file, then runs the
`sleep` job (`--seconds`, one progress step a second) `--jobs` times, one after
the other, through `AsyncClient.run` in each mode (sse, ws, long-poll, poll),
through the 303 chain as `curl -L` follows it, and through naive polling: submit with `Prefer: respond-async`, then
`GET /jobs/{id}` and sleep 1 s until the job has ended. Prints a Markdown
table: what reached the server per job, and how long the result took.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench._servers import free_port, stop
from bench.counting_app import COUNTS_PATH
from outlast.client import AsyncClient, Mode

ROOT = Path(__file__).resolve().parents[1]
TRANSPORTS: tuple[Mode, ...] = ("sse", "ws", "long-poll", "poll")
TERMINAL = ("succeeded", "failed", "canceled")
TIMES = "\N{MULTIPLICATION SIGN}"


@contextmanager
def counting_server(store: str, log: Path) -> Iterator[str]:
    """`outlast serve bench.counting_app:app` with a 2 s hold, until the block ends; its URL."""
    port = free_port()
    command = [sys.executable, "-m", "outlast", "serve", "bench.counting_app:app", "--port", str(port)]
    command += ["--store", store, "--gateway-timeout", "3", "--margin", "1", "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited:\n{log.read_text(errors='replace')}")
            try:
                if httpx.get(f"{url}{COUNTS_PATH}", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start in 30 s")
            time.sleep(0.05)
        yield url
    finally:
        stop(proc)


async def counts(http: httpx.AsyncClient, url: str) -> dict[str, int]:
    response = await http.get(f"{url}{COUNTS_PATH}")
    response.raise_for_status()
    found: dict[str, int] = response.json()
    return found


async def naive_polling(url: str, job: dict[str, Any]) -> Any:
    """What a client without outlast's would do: submit, then GET the job every second."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        response = await http.post("/jobs/sleep", json=job, headers={"Prefer": "respond-async"})
        job_id = response.json()["id"]
        while True:
            state = (await http.get(f"/jobs/{job_id}")).json()
            if state["status"] in TERMINAL:
                return state["result"]
            await asyncio.sleep(1)


async def redirect_chain(url: str, job: dict[str, Any]) -> Any:
    """What `curl -L` does with a job's `Location`: submit, then follow the 303 chain of its result."""
    async with httpx.AsyncClient(base_url=url, timeout=30, follow_redirects=True, max_redirects=100) as http:
        response = await http.post("/jobs/sleep", json=job, headers={"Prefer": "respond-async"})
        result = await http.get(f"/jobs/{response.json()['id']}/result")
        result.raise_for_status()
        return result.json()


def with_client(url: str, mode: Mode) -> Callable[[dict[str, Any]], Awaitable[Any]]:
    async def run(job: dict[str, Any]) -> Any:
        async with AsyncClient(url, mode=mode) as client:
            return await client.run("sleep", job, timeout=120)

    return run


async def measure(
    url: str, run: Callable[[dict[str, Any]], Awaitable[Any]], jobs: int, seconds: float
) -> dict[str, float]:
    job = {"seconds": seconds, "steps": max(1, round(seconds))}
    http_counts, ws_counts, elapsed = [], [], []
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(jobs):
            before = await counts(http, url)
            started = time.monotonic()
            result = await run(job)
            elapsed.append(time.monotonic() - started)
            after = await counts(http, url)
            assert result == {"slept": seconds, "attempt": 1}, result
            http_counts.append(after["http"] - before["http"])
            ws_counts.append(after["websocket"] - before["websocket"])
    return {
        "http": statistics.fmean(http_counts),
        "ws": statistics.fmean(ws_counts),
        "elapsed": statistics.fmean(elapsed),
    }


async def bench(url: str, jobs: int, seconds: float) -> dict[str, dict[str, float]]:
    figures = {"naive polling, every 1 s": await measure(url, lambda job: naive_polling(url, job), jobs, seconds)}
    figures["303 chain (`curl -L`)"] = await measure(url, lambda job: redirect_chain(url, job), jobs, seconds)
    for mode in TRANSPORTS:
        figures[f"`{mode}`"] = await measure(url, with_client(url, mode), jobs, seconds)
    return figures


def table(figures: dict[str, dict[str, float]], seconds: float) -> str:
    baseline = figures["naive polling, every 1 s"]
    base_total = baseline["http"] + baseline["ws"]
    lines = [
        f"| how the client waits | HTTP requests | WebSocket connections | per job, in all | vs naive polling "
        f"| result after (s, job {seconds:g} s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in figures.items():
        total = row["http"] + row["ws"]
        lines.append(
            f"| {name} | {row['http']:.1f} | {row['ws']:.1f} | {total:.1f} | {total / base_total:.2f}{TIMES} "
            f"| {row['elapsed']:.2f} |"
        )
    return "\n".join(lines)


def run(jobs: int = 3, seconds: float = 8.0) -> dict[str, dict[str, float]]:
    """Start the counting server on a fresh SQLite file, measure every way of waiting, stop it."""
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        with counting_server(store, Path(tmp, "server.log")) as url:
            return asyncio.run(bench(url, jobs, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3, help="jobs per way of waiting (run one after the other)")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long each job runs")
    args = parser.parse_args()
    print(table(run(args.jobs, args.seconds), args.seconds))


if __name__ == "__main__":
    main()
