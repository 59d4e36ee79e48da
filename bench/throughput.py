"""No-op jobs end to end over HTTP, in jobs per second: SQLite on one node against Redis and PostgreSQL on one
and two nodes.

    .venv/bin/python -m bench.throughput [--jobs 3000] [--concurrency 64] [--rounds 1]
        [--redis redis://127.0.0.1:6379/0] [--only redis]

Every request is `POST /jobs/noop` with `Prefer: wait=5`: the job is stored,
claimed, run, finished, and the held request answered `200` with the terminal
job. One asyncio httpx load generator sends `--jobs` of them from
`--concurrency` concurrent clients, after a warm-up, against each setup in turn:

- `sqlite, 1 node`: `outlast serve tests.apps:ot --store sqlite:///... --workers 8`
- `redis, 1 node`: the same on Redis (a fresh namespace), with its 8 embedded workers
- `redis, 2 nodes`: two such nodes (8 embedded workers each); client i talks to node i mod 2
- `redis, 2 API + 1 worker`: two `--workers 0` nodes and one `outlast worker --workers 16`
- `postgres, 1 node`, `postgres, 2 nodes`, `postgres, 2 API + 1 worker`: the same on PostgreSQL
  (`OUTLAST_TEST_POSTGRES`, a fresh schema, dropped after)

Prints a Markdown table: jobs per second (with `--rounds N`, the median round
and the range), latency, answers other than 200, and CPU per job of the outlast
processes, of the store's server (Redis from `INFO cpu`; PostgreSQL: its processes, from /proc) and
of the load generator itself. Every
process shares the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from bench import _postgres
from bench._servers import PYTHON, Server, machine, percentile, server

APP = "tests.apps:ot"
WARM_UP = 300
WORKERS = 8


@dataclass
class Setup:
    name: str
    store: str  # "sqlite", "redis" or "postgres"
    api_nodes: int
    api_workers: int
    worker_processes: int = 0  # `outlast worker --workers 2 * WORKERS` processes


SETUPS = [
    Setup("sqlite, 1 node", "sqlite", 1, WORKERS),
    Setup("redis, 1 node", "redis", 1, WORKERS),
    Setup("redis, 2 nodes", "redis", 2, WORKERS),
    Setup("redis, 2 API + 1 worker", "redis", 2, 0, worker_processes=1),
    Setup("postgres, 1 node", "postgres", 1, WORKERS),
    Setup("postgres, 2 nodes", "postgres", 2, WORKERS),
    Setup("postgres, 2 API + 1 worker", "postgres", 2, 0, worker_processes=1),
]


@dataclass
class Result:
    setup: Setup
    seconds: float
    latencies: list[float]
    statuses: Counter[int]
    client_cpu_s: float
    server_cpu_s: float
    redis_cpu_s: float | None  # the store server's: Redis's, or PostgreSQL's processes'
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def load(urls: list[str], jobs: int, concurrency: int) -> tuple[list[float], Counter[int]]:
    """`jobs` requests from `concurrency` clients (client i on urls[i % len(urls)]); latencies of the 200s.

    Each client has an httpx client of its own, with one connection: one pool
    of 64 connections shared by all costs httpx about three times the CPU per
    request, and the load generator, not the server, would be measured.
    """
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    remaining = iter(range(jobs))

    async def one_client(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, headers={"Prefer": "wait=5"}, timeout=30) as client:
            for _ in remaining:
                started = time.perf_counter()
                try:
                    response = await client.post("/jobs/noop", json={})
                except httpx.HTTPError as exc:
                    statuses[-1] += 1
                    print(f"  {url}: {type(exc).__name__}: {exc}")
                    continue
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one_client(urls[i % len(urls)]) for i in range(concurrency)))
    return latencies, statuses


@contextmanager
def running(setup: Setup, tmp: Path, redis_url: str) -> Iterator[list[Server]]:
    """The setup's processes until the block ends: the API nodes first, then the worker processes."""
    namespace = f"bench-{secrets.token_hex(4)}"
    schema = _postgres.new_schema()
    if setup.store == "sqlite":
        store = f"sqlite:///{tmp / 'bench.db'}"
    elif setup.store == "postgres":
        store = _postgres.store_url(_postgres.URL, schema)
    else:
        store = f"{redis_url}{'&' if '?' in redis_url else '?'}namespace={namespace}"
    with ExitStack() as stack:
        processes = []
        for i in range(setup.api_nodes):
            command = [PYTHON, "-m", "outlast", "serve", APP, "--store", store, "--workers", str(setup.api_workers)]
            processes.append(stack.enter_context(server(command, tmp / f"api-{i}.log")))
        for i in range(setup.worker_processes):
            command = [PYTHON, "-m", "outlast", "worker", APP, "--store", store, "--workers", str(2 * WORKERS)]
            processes.append(stack.enter_context(server(command, tmp / f"worker-{i}.log", port_flag=False)))
        try:
            yield processes
        finally:
            stack.close()
            if setup.store == "redis":
                drop(redis_url, namespace)
            if setup.store == "postgres":
                _postgres.drop_schema(_postgres.URL, schema)


def drop(redis_url: str, namespace: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"outlast:{namespace}:*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])
    client.close()


def measure(setup: Setup, redis_url: str, jobs: int, concurrency: int) -> Result:
    with tempfile.TemporaryDirectory() as tmp, running(setup, Path(tmp), redis_url) as processes:
        urls = [p.url for p in processes[: setup.api_nodes]]
        asyncio.run(load(urls, WARM_UP, concurrency))  # connections, imports, the worker's first claim
        watcher = redis.Redis.from_url(redis_url) if setup.store == "redis" else None
        redis_before = redis_cpu_s(watcher) if watcher else 0.0
        postgres_before = _postgres.cpu_s() if setup.store == "postgres" else 0.0
        server_before = sum(p.cpu_s() for p in processes)
        client_before = own_cpu_s()
        started = time.perf_counter()
        latencies, statuses = asyncio.run(load(urls, jobs, concurrency))
        seconds = time.perf_counter() - started
        client_cpu = own_cpu_s() - client_before
        server_cpu = sum(p.cpu_s() for p in processes) - server_before
        redis_cpu = redis_cpu_s(watcher) - redis_before if watcher else None
        if setup.store == "postgres":
            redis_cpu = _postgres.cpu_s() - postgres_before
        if watcher:
            watcher.close()
        problems = [f"{p.log.name}: {line}" for p in processes for line in p.problems()]
    return Result(setup, seconds, latencies, statuses, client_cpu, server_cpu, redis_cpu, problems)


def table(rounds: dict[str, list[Result]], jobs: int, concurrency: int) -> str:
    """One row per setup, from its median round by jobs/s; the range over all rounds beside it."""
    rows = [
        "| setup | jobs/s | range | p50 (ms) | p99 (ms) | not 200 | outlast CPU/job (ms) | store CPU/job (ms) "
        "| load generator CPU (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for results in rounds.values():
        ranked = sorted(results, key=lambda r: r.rate)
        r = ranked[len(ranked) // 2]
        ms = [x * 1000 for x in r.latencies]
        others = sum(n for status, n in r.statuses.items() if status != 200)
        redis_ms = "n/a" if r.redis_cpu_s is None else f"{r.redis_cpu_s / jobs * 1000:.2f}"
        spread = f"{ranked[0].rate:.0f}-{ranked[-1].rate:.0f}"
        rows.append(
            f"| {r.setup.name} | {r.rate:.0f} | {spread} | {percentile(ms, 50):.1f} | {percentile(ms, 99):.1f} "
            f"| {others} | {r.server_cpu_s / jobs * 1000:.2f} | {redis_ms} | {r.client_cpu_s:.1f} |"
        )
    runs = len(next(iter(rounds.values())))
    return (
        "\n".join(rows) + f"\n\n{jobs} jobs per setup and round, {runs} round(s), {concurrency} concurrent clients;"
        f" {machine()}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--redis", default=os.environ.get("OUTLAST_TEST_REDIS", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--only", help="run only the setups whose name contains this")
    parser.add_argument("--rounds", type=int, default=1, help="run every setup this many times, interleaved")
    args = parser.parse_args()
    redis.Redis.from_url(args.redis, socket_connect_timeout=2).ping()  # fail now, not after the SQLite run
    setups = [setup for setup in SETUPS if not args.only or args.only in setup.name]
    rounds: dict[str, list[Result]] = {setup.name: [] for setup in setups}
    for round_number in range(1, args.rounds + 1):
        for setup in setups:
            print(f"{setup.name}, round {round_number} ...", flush=True)
            result = measure(setup, args.redis, args.jobs, args.concurrency)
            print(f"  {result.rate:.0f} jobs/s; answers {dict(result.statuses)}", flush=True)
            for line in result.problems[:20]:
                print(f"  ! {line}")
            rounds[setup.name].append(result)
    print()
    print(table(rounds, args.jobs, args.concurrency))


if __name__ == "__main__":
    main()
