"""Soak and faults: mixed load for a while, with random worker and server kills.

    .venv/bin/python -m bench.soak [--minutes 10] [--store sqlite|redis] [--clients 16]

One API server (`--workers 0`) and two `outlast worker` processes on one store;
clients submit a mix of jobs (instant, short, with progress, failing), follow
some by SSE, long-poll others, and cancel a few. Every 20 to 40 s (`--kill-every`) a random worker
or the server is SIGKILLed and started again. At the end it waits for every
accepted job to end and reports: jobs accepted against jobs ended (they must be
equal), latency percentiles of submits, and the processes' memory over time.
Not part of the tests: it takes minutes and wants a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench._servers import free_port, rss_kb

ROOT = Path(__file__).resolve().parents[1]
KILL_EVERY_S = (20.0, 40.0)
MIX = [("noop", {}, 4), ("sleep", {"seconds": 0.5, "steps": 5}, 3), ("echo", {"text": "x"}, 2), ("fail", {}, 1)]


class Cluster:
    def __init__(self, store: str, tmp: Path) -> None:
        self.store = store
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes] | None] = [None, None]

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{args[0]}-{secrets.token_hex(3)}.log").open("wb")
        command = [sys.executable, "-m", "outlast", *args, "tests.apps:ot", "--store", self.store, "--lease", "3"]
        return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log)

    def start_server(self) -> None:
        self.server = self._spawn("serve", "--port", str(self.port), "--workers", "0", "--log-level", "warning")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the server did not start")

    def start_worker(self, index: int) -> None:
        self.workers[index] = self._spawn("worker", "--workers", "8", "--max-attempts", "10")

    def kill_one(self) -> str:
        if random.random() < 0.3:
            assert self.server is not None
            self.server.send_signal(signal.SIGKILL)
            self.server.wait()
            self.start_server()
            return "server"
        index = random.randrange(2)
        worker = self.workers[index]
        assert worker is not None
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        self.start_worker(index)
        return f"worker {index}"

    def memory_mb(self) -> dict[str, float]:
        procs = {"server": self.server, "worker 0": self.workers[0], "worker 1": self.workers[1]}
        return {name: rss_kb(p.pid) / 1024 for name, p in procs.items() if p is not None and p.poll() is None}

    def stop(self) -> None:
        for proc in [self.server, *self.workers]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)


async def client(url: str, until: float, accepted: set[str], latencies: list[float]) -> None:
    names = [name for name, _, weight in MIX for _ in range(weight)]
    inputs = {name: body for name, body, _ in MIX}
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while time.monotonic() < until:
            name = random.choice(names)
            key = secrets.token_hex(8)
            started = time.perf_counter()
            for _ in range(20):  # the server may be restarting: retry with the same key
                try:
                    response = await http.post(
                        f"/jobs/{name}", json=inputs[name], headers={"Idempotency-Key": key, "Prefer": "wait=1"}
                    )
                    if response.status_code in (200, 202):
                        accepted.add(response.json()["id"])
                        latencies.append(time.perf_counter() - started)
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.25)
            if random.random() < 0.05 and accepted:
                with contextlib.suppress(httpx.HTTPError):
                    await http.post(f"/jobs/{random.choice(list(accepted))}/cancel")


async def chaos(cluster: Cluster, until: float, every_s: tuple[float, float], log: list[str]) -> None:
    while time.monotonic() < until:
        await asyncio.sleep(random.uniform(*every_s))
        if time.monotonic() < until:
            log.append(f"{time.strftime('%H:%M:%S')} killed {await asyncio.to_thread(cluster.kill_one)}")


async def sample(cluster: Cluster, until: float, samples: list[tuple[float, dict[str, float]]]) -> None:
    start = time.monotonic()
    while time.monotonic() < until:
        samples.append((time.monotonic() - start, cluster.memory_mb()))
        await asyncio.sleep(30)


async def settle(url: str, accepted: set[str], timeout_s: float) -> tuple[int, dict[str, int]]:
    ended: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    pending = set(accepted)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                try:
                    job = (await http.get(f"/jobs/{job_id}")).json()
                except (httpx.TransportError, ValueError):
                    continue
                if job.get("status") in ("succeeded", "failed", "canceled"):
                    pending.discard(job_id)
                    ended[job["status"]] = ended.get(job["status"], 0) + 1
            if pending:
                await asyncio.sleep(1)
    return len(accepted) - len(pending), ended


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--store", choices=["sqlite", "redis"], default="sqlite")
    parser.add_argument("--kill-every", type=float, nargs=2, default=KILL_EVERY_S, metavar=("MIN_S", "MAX_S"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        store = (
            f"sqlite:///{tmp / 'soak.db'}"
            if args.store == "sqlite"
            else f"redis://127.0.0.1:6379/0?namespace=soak-{secrets.token_hex(4)}"
        )
        cluster = Cluster(store, tmp)
        cluster.start_server()
        cluster.start_worker(0)
        cluster.start_worker(1)
        until = time.monotonic() + args.minutes * 60
        accepted: set[str] = set()
        latencies: list[float] = []
        kills: list[str] = []
        samples: list[tuple[float, dict[str, float]]] = []
        try:
            await asyncio.gather(
                *(client(cluster.url, until, accepted, latencies) for _ in range(args.clients)),
                chaos(cluster, until, tuple(args.kill_every), kills),
                sample(cluster, until, samples),
            )
            ended, by_status = await settle(cluster.url, accepted, timeout_s=120)
        finally:
            cluster.stop()
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    print(f"| store | minutes | accepted | ended | {' | '.join(sorted(by_status))} | submit p50 ms | submit p99 ms |")
    print("|---" * (6 + len(by_status)) + "|")
    counts = " | ".join(str(by_status[k]) for k in sorted(by_status))
    p50, p99 = quantiles[49] * 1000, quantiles[98] * 1000
    print(f"| {args.store} | {args.minutes:g} | {len(accepted)} | {ended} | {counts} | {p50:.0f} | {p99:.0f} |")
    print("\nkills: " + "; ".join(kills))
    print("\nmemory (MB) over time:")
    for at, memory in samples:
        print(f"  {at:5.0f} s  " + ", ".join(f"{k} {v:.0f}" for k, v in memory.items()))
    if ended != len(accepted):
        print(f"\nLOST: {len(accepted) - ended} accepted jobs did not end")
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
