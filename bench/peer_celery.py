"""The peer in the benchmarks: Celery with Redis as broker and result backend, over HTTP through Flower's API.

    .venv/bin/python -m bench.peer_celery [--requests 200] [--pool threads] [--concurrency 8]

What users would run instead of outlast: a Celery worker and Flower (2.x),
whose API starts a task by name. `POST /api/task/apply/<task>` publishes it
and answers with its result; `POST /api/task/async-apply/<task>` answers with
its id, and `GET /api/task/result/<id>` is polled until it is ready. The app
is bench/celery_app.py: `bench.noop` (no work, returns None: the job
outlast's benchmarks run) and `bench.sleep`.

Celery and Flower live in a virtualenv of their own, `.bench/celery-venv`,
made with this Python's `-m venv` and filled with REQUIREMENTS by
`ensure_venv()`; neither process imports outlast.

Redis: the peer uses a database of its own (DB, 15: the URL given with its
database replaced), FLUSHDB before the worker starts and after both stop, so
it never sees nor leaves outlast's `outlast:*` keys in database 0.

How Flower waits: every Celery call an API handler makes (publishing, reading
a state, `apply`'s `result.get()`) runs in a thread of Flower's
ThreadPoolExecutor (default size: cores + 4) behind one asyncio.Semaphore of
5 (BlockingOperationRunner.max_blocking_operations, not an option). `apply`
blocks one of those threads and one of the 5 slots per request until the
task's result arrives (Redis pub/sub), so at most 5 applies are in flight
whatever the number of clients, and polls queue for the same slots. From 64
clients the p99 is near 2 s with every pool, while 5 clients see 100-200
ms: the wait is in front of the slots, not in the worker.

The best reasonable configuration for many tiny tasks on 2 cores, chosen by
jobs/s of `apply` from 64 clients (600 jobs; 3 rounds interleaved, one
start-up per round, on a busy shared machine; median and the rounds):

    prefork, concurrency 2   135  (66, 160, 135)
    prefork, concurrency 4   126  (64, 126, 150)
    threads, concurrency 8   145  (85, 145, 153)   <- the default
    gevent, concurrency 64   115  (115, 90, 115)
    eventlet, concurrency 64  88  (123, 88, 80)
    solo                     128  (128, 126, 140)

The spread within a pool is wider than between pools: Flower, not the worker,
is the limit. Threads also took the least CPU per job (4.2-4.5 ms, worker and
Flower together). Task events are off (the worker without them, Flower with
`--enable_events=False`): the API does not use them, and turning them off
cut CPU per job (prefork, 2) from about 6.7 ms to 4.4 ms without changing
jobs/s, so Flower's `--max-workers`/`--max-tasks` (its in-memory event state)
do not matter. Celery's defaults stay for prefetching (4 per pool slot) and the
broker pool (10 connections, more than Flower's 5 slots can use).

Run on its own, the module starts the peer and prints a short self-check:
sync applies and async-apply + polls, from 1 and 64 clients.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import redis

from bench._servers import CLOCK_TICKS, ROOT, free_port, machine, percentile, stop

REQUIREMENTS: list[str] = ["celery[redis]>=5.4", "flower>=2.0"]
VENV: Path = ROOT / ".bench" / "celery-venv"
DB = 15
POOL = "threads"
CONCURRENCY = 8
READY_S = 60.0
POLL_S = 0.010
DONE = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def ensure_venv() -> Path:
    """The peer's virtualenv python, after creating VENV and installing REQUIREMENTS if not done yet.

    A marker file in VENV lists what was installed; when it matches
    REQUIREMENTS nothing runs, so a second call costs a file read.
    """
    python = VENV / "bin" / "python"
    marker = VENV / "bench-requirements.txt"
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"installing {', '.join(REQUIREMENTS)} into {VENV} ...", flush=True)
    steps = [
        [sys.executable, "-m", "venv", str(VENV)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(step)} failed with {done.returncode}:\n{done.stdout}{done.stderr}")
    marker.write_text(wanted)
    return python


def peer_redis_url(redis_url: str, db: int = DB) -> str:
    """`redis_url` with its database replaced by `db`."""
    parts = urlsplit(redis_url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def _tree(pid: int) -> list[int]:
    """`pid` and its live descendants, from /proc/<pid>/task/*/children."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the thread or the process just ended
            continue
        for child in children:
            pids.extend(_tree(int(child)))
    return pids


def _tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and all its descendants, the exited and reaped ones included.

    Each live process counts its own time (fields 14, 15 of /proc/<pid>/stat)
    and that of the children it reaped (16, 17): a child is counted live or
    in its parent's fields, never both.
    """
    ticks = 0
    for member in _tree(pid):
        try:
            with open(f"/proc/{member}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(x) for x in fields[11:15])
    return ticks / CLOCK_TICKS


def _tree_rss_kb(pid: int) -> int:
    """VmRSS of `pid` and its live descendants (pages prefork children share with their parent count twice)."""
    total = 0
    for member in _tree(pid):
        try:
            with open(f"/proc/{member}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        except OSError:
            continue
    return total


@dataclass
class Peer:
    """A running Celery worker + Flower, as the benchmarks see it."""

    url: str  # Flower's base URL
    task: str  # the noop task's name, as Flower's paths want it
    sleep_task: str
    pids: list[int]  # Flower, the Celery worker's main process

    def cpu_s(self) -> float:
        """User + system CPU seconds so far of Flower and the worker with all its pool processes."""
        return sum(_tree_cpu_s(pid) for pid in self.pids)

    def rss_kb(self) -> int:
        """Resident memory of Flower and the worker with its pool processes, in KB."""
        return sum(_tree_rss_kb(pid) for pid in self.pids)


@contextmanager
def celery_flower(
    tmp: Path,
    redis_url: str = "redis://127.0.0.1:6379/0",
    *,
    pool: str = POOL,
    concurrency: int = CONCURRENCY,
) -> Iterator[Peer]:
    """A Celery worker and Flower on 127.0.0.1 until the block ends; their logs in `tmp`.

    Yields once Flower answers a first `apply` of the noop task, which proves
    the worker consumes too. Both run in their own session, so stopping them
    reaches the worker's pool processes as well.
    """
    python = ensure_venv()
    url = peer_redis_url(redis_url)
    flush(url)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),  # bench.celery_app, and nothing from the project's virtualenv
        "BENCH_CELERY_REDIS": url,
        # Flower 2.x answers 401 on every API path without this (or without --basic-auth / --auth).
        "FLOWER_UNAUTHENTICATED_API": "true",
    }
    env.pop("VIRTUAL_ENV", None)
    app = ["-m", "celery", "--app", "bench.celery_app"]
    commands = {
        "worker": [
            *app,
            "worker",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            "--loglevel=WARNING",
            # One worker on one machine: nothing to synchronise with at start-up or to gossip about.
            "--without-mingle",
            "--without-gossip",
        ],
        "flower": [
            *app,
            "flower",
            "--address=127.0.0.1",
            f"--port={port}",
            "--logging=warning",
            # Flower would otherwise switch the worker's task events on every 5 s (see celery_app.py).
            "--enable_events=False",
        ],
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, args in commands.items():
            with (tmp / f"celery-{name}.log").open("wb") as sink:
                procs.append(
                    subprocess.Popen(
                        [str(python), *args],
                        cwd=tmp,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        peer = Peer(f"http://127.0.0.1:{port}", "bench.noop", "bench.sleep", [procs[1].pid, procs[0].pid])
        _wait_ready(peer, procs, tmp)
        yield peer
    finally:
        for proc in procs:
            _stop(proc)
        flush(url)


def flush(url: str) -> None:
    """FLUSHDB the peer's own database (`url` is already the one peer_redis_url() gives)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    client.flushdb()
    client.close()


def _wait_ready(peer: Peer, procs: list[subprocess.Popen[bytes]], tmp: Path) -> None:
    deadline = time.monotonic() + READY_S
    with httpx.Client(base_url=peer.url, timeout=5) as client:
        while time.monotonic() < deadline:
            for proc in procs:
                if proc.poll() is not None:
                    logs = "\n".join(p.read_text(errors="replace") for p in sorted(tmp.glob("celery-*.log")))
                    command = proc.args if isinstance(proc.args, list) else [proc.args]
                    raise RuntimeError(f"{' '.join(map(str, command))} exited with {proc.returncode}:\n{logs}")
            try:
                response = client.post(f"/api/task/apply/{peer.task}", json={"timeout": 1})
                if response.status_code == 200 and response.json().get("state") == "SUCCESS":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"Celery + Flower did not run a task within {READY_S} s; logs in {tmp}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a warm shutdown for the worker), then SIGKILL to the whole session if it lingers."""
    stop(proc)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # pool processes left behind by a dead parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="jobs per pass")
    parser.add_argument("--redis", default=os.environ.get("OUTLAST_TEST_REDIS", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--pool", default=POOL)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    args = parser.parse_args()
    ensure_venv()

    async def apply(client: httpx.AsyncClient, task: str) -> int:
        """One job through `apply`; 1 request."""
        response = await client.post(f"/api/task/apply/{task}", json={})
        response.raise_for_status()
        return 1

    async def async_apply(client: httpx.AsyncClient, task: str) -> int:
        """One job through `async-apply`, then a poll every POLL_S until it is done; the requests it took.

        POLL_S (10 ms) is about a noop's round trip through `apply` from one
        client (6-9 ms), so a finished job waits at most one interval more for
        its poll. Polling faster mostly adds requests that queue for Flower's
        5 blocking slots, as the tasks themselves do; Flower's own long poll
        (`?timeout=`) would hold one of those slots per waiting client, so no
        more than 5 clients could wait at once.
        """
        response = await client.post(f"/api/task/async-apply/{task}", json={})
        response.raise_for_status()
        task_id = response.json()["task-id"]
        requests = 1
        while True:
            await asyncio.sleep(POLL_S)
            response = await client.get(f"/api/task/result/{task_id}")
            response.raise_for_status()
            requests += 1
            if response.json()["state"] in DONE:
                return requests

    async def load(peer: Peer, way: str, jobs: int, clients: int) -> tuple[float, list[float], int]:
        """`jobs` jobs from `clients` clients (one connection each); seconds, latencies, requests."""
        one = apply if way == "apply" else async_apply
        latencies: list[float] = []
        requests = 0
        remaining = iter(range(jobs))

        async def client_loop() -> None:
            nonlocal requests
            async with httpx.AsyncClient(base_url=peer.url, timeout=30) as client:
                for _ in remaining:
                    started = time.perf_counter()
                    sent = await one(client, peer.task)
                    requests += sent
                    latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(clients)))
        return time.perf_counter() - started, latencies, requests

    rows = [
        "| way | clients | jobs/s | p50 (ms) | p99 (ms) | requests/job | peer CPU/job (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        with celery_flower(Path(tmp), args.redis, pool=args.pool, concurrency=args.concurrency) as peer:
            print(f"{peer.url}: pool {args.pool}, concurrency {args.concurrency}; worker + Flower {peer.rss_kb()} KB")
            asyncio.run(load(peer, "apply", 50, 8))  # warm-up: connections, the pool's first tasks
            for way in ("apply", "async-apply"):
                for clients in (1, 64):
                    cpu_before = peer.cpu_s()
                    seconds, latencies, requests = asyncio.run(load(peer, way, args.requests, clients))
                    cpu = peer.cpu_s() - cpu_before
                    ms = [x * 1000 for x in latencies]
                    rows.append(
                        f"| {way} | {clients} | {len(ms) / seconds:.0f} | {percentile(ms, 50):.1f} "
                        f"| {percentile(ms, 99):.1f} | {requests / len(ms):.1f} | {cpu / len(ms) * 1000:.2f} |"
                    )
        problems = [
            f"{log.name}: {line}"
            for log in sorted(Path(tmp).glob("celery-*.log"))
            for line in log.read_text(errors="replace").splitlines()
            if any(w in line for w in ("Traceback", "ERROR", "WARNING"))
        ]
    print("\n".join(rows))
    print(f"\n{args.requests} jobs per pass; {machine()}.")
    for line in problems[:20]:
        print(f"! {line}")


if __name__ == "__main__":
    main()
