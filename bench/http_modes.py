"""No-op jobs end to end over HTTP, in every way a client can wait, against the floor and against Celery + Flower.

    .venv/bin/python -m bench.http_modes [--seconds 6] [--clients 64] [--only outlast-sqlite] [--no-peer]

Systems, each started fresh (one process per server, uvicorn with its default
HTTP and event loop implementations, the same for all):

- `plain`: the floor, a Starlette endpoint doing the same (no) work (`bench/floor.py`);
- `outlast-sqlite`: `outlast serve tests.apps:ot` on a fresh SQLite file, 8 embedded workers;
- `outlast-redis`: the same on Redis (a fresh namespace);
- `outlast-postgres`: the same on PostgreSQL (`OUTLAST_TEST_POSTGRES`, a fresh schema);
- `celery`: Celery with Redis as broker and backend, behind Flower's HTTP API
  (`bench/peer_celery.py`, in a virtualenv of its own).

How a client gets one no-op job's result, in each mode:

- `plain`: `POST /jobs/noop` to the floor, answered `200`;
- `sync`: `POST /jobs/noop` with `Prefer: wait=5`, answered `200` with the finished job;
- `202 + poll`: `POST` with `Prefer: respond-async` (`202` + `Location`), then `GET` the
  `Location` until the job has ended, at once and then every 20 ms;
- `303 chain`: `POST` with `Prefer: respond-async`, then `GET /jobs/{id}/result`, following
  `303`s, as `curl -L` does, to the result itself;
- `long-poll`: `POST` with `Prefer: respond-async`, then `GET /jobs/{id}` with `Prefer: wait=5`
  until the job has ended;
- `SSE`: `POST` with `Prefer: respond-async`, then `GET /jobs/{id}/events` to the terminal event;
- `WebSocket`: one connection per client; per job, a `submit` message and the job's events
  up to the terminal one;
- `Flower apply`: `POST /api/task/apply/<task>`, answered with the task's result;
- `Flower async-apply`: `POST /api/task/async-apply/<task>`, then `GET /api/task/result/<id>`
  at once and then every 20 ms until it is ready.

For every system and mode: latency at 1 client, then jobs/s and latency at
`--clients` concurrent clients, each for `--seconds`, after a warm-up; the
servers' CPU seconds per job (Redis or PostgreSQL included where it is part of the system)
and the load generator's own CPU. The load generator is `bench/_load.py` (a
minimal HTTP/1.1 client on asyncio) and `websockets` for WebSocket. Where one
request is the whole job (plain, sync, Flower apply), `wrk` measures too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from websockets.asyncio.client import ClientConnection, connect

from bench import _postgres
from bench._load import TERMINAL, Conn, HTTPError, Load, drive
from bench._servers import PYTHON, machine, percentile, server

APP = "tests.apps:ot"
WORKERS = 8
POLL_S = 0.02
WAIT = {"Prefer": "wait=5"}
ASYNC = {"Prefer": "respond-async"}
BODY = b"{}"

SYSTEMS = ("plain", "outlast-sqlite", "outlast-redis", "outlast-postgres", "celery")
MODES = {
    "plain": ("plain",),
    "outlast-sqlite": ("sync", "202 + poll", "303 chain", "long-poll", "SSE", "WebSocket"),
    "outlast-redis": ("sync", "202 + poll", "303 chain", "long-poll", "SSE", "WebSocket"),
    "outlast-postgres": ("sync", "202 + poll", "303 chain", "long-poll", "SSE", "WebSocket"),
    "celery": ("Flower apply", "Flower async-apply"),
}
WRK_MODES = {"plain", "sync", "Flower apply"}


@dataclass
class Target:
    """A running system: where to send jobs, and what it has cost in CPU so far."""

    url: str
    cpu_s: Callable[[], float]
    task: str = ""  # Celery's task name, for Flower's paths


def _redis_cpu_s(url: str) -> float:
    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        client.close()


def _drop_namespace(url: str, namespace: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"outlast:{namespace}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()


@contextmanager
def running(system: str, tmp: Path, redis_url: str) -> Iterator[Target]:
    """Start `system` fresh; stop it (and drop what it stored) when the block ends."""
    with ExitStack() as stack:
        if system == "plain":
            srv = stack.enter_context(server([PYTHON, "-m", "uvicorn", "bench.floor:app"], tmp / "plain.log"))
            yield Target(srv.url, srv.cpu_s)
        elif system.startswith("outlast-"):
            if system == "outlast-sqlite":
                store = f"sqlite:///{tmp / f'{secrets.token_hex(4)}.db'}"
            elif system == "outlast-postgres":
                schema = _postgres.new_schema()
                store = _postgres.store_url(_postgres.URL, schema)
                stack.callback(_postgres.drop_schema, _postgres.URL, schema)
            else:
                namespace = f"bench-{secrets.token_hex(4)}"
                store = f"{redis_url}{'&' if '?' in redis_url else '?'}namespace={namespace}"
                stack.callback(_drop_namespace, redis_url, namespace)
            command = [PYTHON, "-m", "outlast", "serve", APP, "--store", store, "--workers", str(WORKERS)]
            srv = stack.enter_context(server(command, tmp / f"{system}.log"))
            if system == "outlast-redis":
                yield Target(srv.url, lambda: srv.cpu_s() + _redis_cpu_s(redis_url))
            elif system == "outlast-postgres":
                yield Target(srv.url, lambda: srv.cpu_s() + _postgres.cpu_s())
            else:
                yield Target(srv.url, srv.cpu_s)
        elif system == "celery":
            from bench.peer_celery import celery_flower

            peer = stack.enter_context(celery_flower(tmp, redis_url))
            yield Target(peer.url, lambda: peer.cpu_s() + _redis_cpu_s(redis_url), task=peer.task)
        else:
            raise ValueError(f"unknown system {system!r}")


# -- one job, in each mode -------------------------------------------------------------------


def _ok(answer: Any, *statuses: int) -> Any:
    if answer.status not in statuses:
        raise HTTPError(f"{answer.status}: {answer.body[:200]!r}")
    return answer


async def plain(conn: Conn, target: Target) -> None:
    _ok(await conn.request("POST", "/jobs/noop", BODY), 200)


async def sync(conn: Conn, target: Target) -> None:
    job = _ok(await conn.request("POST", "/jobs/noop", BODY, WAIT), 200).json()
    if job["status"] != "succeeded":
        raise HTTPError(f"the job {job['status']}")


async def _submit(conn: Conn) -> str:
    job = _ok(await conn.request("POST", "/jobs/noop", BODY, ASYNC), 202).json()
    return str(job["id"])


async def poll(conn: Conn, target: Target) -> None:
    job_id = await _submit(conn)
    while _ok(await conn.request("GET", f"/jobs/{job_id}"), 200).json()["status"] not in TERMINAL:  # noqa: ASYNC110
        await asyncio.sleep(POLL_S)  # polling is what this mode measures


async def chain(conn: Conn, target: Target) -> None:
    path = f"/jobs/{await _submit(conn)}/result"
    for _ in range(100):
        answer = _ok(await conn.request("GET", path), 200, 303)
        if answer.status == 200:
            return
        path = answer.headers["location"]
    raise HTTPError("more than 100 redirects")


async def long_poll(conn: Conn, target: Target) -> None:
    job_id = await _submit(conn)
    while _ok(await conn.request("GET", f"/jobs/{job_id}", None, WAIT), 200).json()["status"] not in TERMINAL:
        pass


async def sse(conn: Conn, target: Target) -> None:
    job_id = await _submit(conn)
    data = await conn.terminal_event(f"/jobs/{job_id}/events")
    if data["status"] != "succeeded":
        raise HTTPError(f"the job {data['status']}")


async def websocket(ws: ClientConnection, target: Target) -> None:
    await ws.send('{"action": "submit", "name": "noop", "input": {}}')
    job_id = None
    async for raw in ws:
        message = json.loads(raw)
        if message["type"] == "accepted":
            job_id = message["job"]["id"]
        elif message["type"] == "error":
            raise HTTPError(str(message))
        elif (
            message["type"] == "event"
            and message["job_id"] == job_id
            and message["event"] == "status"
            and message["data"]["status"] in TERMINAL
        ):
            return


async def flower_apply(conn: Conn, target: Target) -> None:
    answer = _ok(await conn.request("POST", f"/api/task/apply/{target.task}", BODY), 200).json()
    if answer.get("state") != "SUCCESS":
        raise HTTPError(f"the task {answer.get('state')}")


async def flower_async(conn: Conn, target: Target) -> None:
    task_id = _ok(await conn.request("POST", f"/api/task/async-apply/{target.task}", BODY), 200).json()["task-id"]
    while True:
        answer = _ok(await conn.request("GET", f"/api/task/result/{task_id}"), 200).json()
        if answer.get("state") == "SUCCESS":
            return
        if answer.get("state") in ("FAILURE", "REVOKED"):
            raise HTTPError(f"the task {answer['state']}")
        await asyncio.sleep(POLL_S)


ONE_JOB: dict[str, Callable[[Any, Target], Awaitable[None]]] = {
    "plain": plain,
    "sync": sync,
    "202 + poll": poll,
    "303 chain": chain,
    "long-poll": long_poll,
    "SSE": sse,
    "WebSocket": websocket,
    "Flower apply": flower_apply,
    "Flower async-apply": flower_async,
}


async def _load(target: Target, mode: str, clients: int, seconds: float) -> Load:
    one = ONE_JOB[mode]
    if mode == "WebSocket":
        ws_url = "ws" + target.url.removeprefix("http") + "/ws"

        async def make() -> Any:
            return await connect(ws_url, compression=None, max_queue=None)

        async def close(session: Any) -> None:
            await session.close()
    else:

        async def make() -> Any:
            return Conn(target.url)

        async def close(session: Any) -> None:
            await session.close()

    async def job(session: Any) -> None:
        await one(session, target)

    return await drive(clients, seconds, make, job, close)


# -- wrk ---------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, path: str, headers: dict[str, str], connections: int, seconds: float) -> dict[str, Any]:
    """`wrk` POSTing `{}` to `path` over `connections` connections (one thread): its rate, latency and CPU."""
    script = "\n".join(
        [
            'wrk.method = "POST"',
            'wrk.body = "{}"',
            'wrk.headers["Content-Type"] = "application/json"',
            *(f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()),
        ]
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", f.name, url + path],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(f.name)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    percentiles = {
        int(p): float(v) * _UNITS[u] for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        "p50_ms": percentiles[50],
        "p99_ms": percentiles[99],
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "socket_errors": errors[1] if errors else "",
        "client_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }


# -- measuring ------------------------------------------------------------------------------


def _ms(load: Load, q: int) -> float | None:
    return round(percentile([x * 1000 for x in load.latencies], q), 3) if load.latencies else None


def measure_mode(target: Target, system: str, mode: str, clients: int, seconds: float) -> dict[str, Any]:
    """One system in one mode: 1 client, then `clients`; and wrk where one request is the whole job."""
    asyncio.run(_load(target, mode, min(clients, 8), min(seconds, 2.0)))  # warm-up
    alone = asyncio.run(_load(target, mode, 1, seconds / 2))
    cpu_before = target.cpu_s()
    many = asyncio.run(_load(target, mode, clients, seconds))
    server_cpu = target.cpu_s() - cpu_before
    row: dict[str, Any] = {
        "system": system,
        "mode": mode,
        "jobs_per_s": round(many.rate, 1),
        "p50_ms_1": _ms(alone, 50),
        "p99_ms_1": _ms(alone, 99),
        "p50_ms_n": _ms(many, 50),
        "p99_ms_n": _ms(many, 99),
        "clients": clients,
        "jobs": len(many.latencies),
        "errors": len(alone.errors) + len(many.errors),
        "error_sample": (alone.errors + many.errors)[:3],
        "requests_per_job": round(many.requests / len(many.latencies), 2) if many.latencies and many.requests else None,
        "server_cpu_ms_per_job": round(server_cpu / len(many.latencies) * 1000, 3) if many.latencies else None,
        "client_cpu_s": round(many.client_cpu_s, 2),
        "seconds": round(many.seconds, 2),
    }
    if mode in WRK_MODES and shutil.which("wrk"):
        path = "/jobs/noop" if mode != "Flower apply" else f"/api/task/apply/{target.task}"
        headers = WAIT if mode == "sync" else {}
        one = wrk(target.url, path, headers, 1, seconds / 2)
        cpu_before = target.cpu_s()
        n = wrk(target.url, path, headers, clients, seconds)
        server_cpu = target.cpu_s() - cpu_before
        row["wrk"] = {
            "jobs_per_s": round(n["rate"], 1),
            "p50_ms_1": one["p50_ms"],
            "p99_ms_1": one["p99_ms"],
            "p50_ms_n": n["p50_ms"],
            "p99_ms_n": n["p99_ms"],
            "non_2xx": one["non_2xx"] + n["non_2xx"],
            "socket_errors": n["socket_errors"],
            "server_cpu_ms_per_job": round(server_cpu / (n["rate"] * seconds) * 1000, 3) if n["rate"] else None,
            "client_cpu_s": round(n["client_cpu_s"], 2),
        }
    return row


def measure(
    systems: tuple[str, ...] = SYSTEMS,
    *,
    clients: int = 64,
    seconds: float = 6.0,
    redis_url: str = "redis://127.0.0.1:6379/0",
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Every mode of every system in `systems`: one JSON-able row each."""
    rows = []
    for system in systems:
        with tempfile.TemporaryDirectory() as tmp, running(system, Path(tmp), redis_url) as target:
            for mode in MODES[system]:
                started = time.monotonic()
                row = measure_mode(target, system, mode, clients, seconds)
                log(
                    f"  {system} / {mode}: {row['jobs_per_s']} jobs/s at {clients},"
                    f" p50 {row['p50_ms_1']} ms at 1 ({row['errors']} errors; {time.monotonic() - started:.0f} s)"
                )
                rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of `measure`'s rows, relative to the `plain` row's figures."""
    floor = next((r for r in rows if r["system"] == "plain"), None)
    clients = rows[0]["clients"] if rows else 64
    lines = [
        f"| system | mode | jobs/s at {clients} | vs plain | p50 / p99 ms at 1 | p50 / p99 ms at {clients} "
        "| requests/job | server CPU ms/job | load generator CPU s | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['jobs_per_s'] / floor['jobs_per_s']:.2f}x" if floor and floor["jobs_per_s"] else "n/a"
        lines.append(
            f"| {r['system']} | {r['mode']} | {r['jobs_per_s']:.0f} | {ratio} | {r['p50_ms_1']} / {r['p99_ms_1']} "
            f"| {r['p50_ms_n']} / {r['p99_ms_n']} | {r['requests_per_job']} | {r['server_cpu_ms_per_job']} "
            f"| {r['client_cpu_s']} | {r['errors']} |"
        )
    return "\n".join(lines)


def wrk_table(rows: list[dict[str, Any]]) -> str:
    floor = next((r["wrk"] for r in rows if r["system"] == "plain" and "wrk" in r), None)
    clients = rows[0]["clients"] if rows else 64
    lines = [
        f"| system | mode | jobs/s at {clients} | vs plain | p50 / p99 ms at 1 | p50 at 1 vs plain "
        f"| p50 / p99 ms at {clients} | server CPU ms/job | wrk CPU s | not 2xx |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        w = r.get("wrk")
        if not w:
            continue
        rate = f"{w['jobs_per_s'] / floor['jobs_per_s']:.2f}x" if floor else "n/a"
        lat = f"{w['p50_ms_1'] / floor['p50_ms_1']:.1f}x" if floor else "n/a"
        lines.append(
            f"| {r['system']} | {r['mode']} | {w['jobs_per_s']:.0f} | {rate} "
            f"| {w['p50_ms_1']:.3f} / {w['p99_ms_1']:.3f} "
            f"| {lat} | {w['p50_ms_n']:.2f} / {w['p99_ms_n']:.2f} | {w['server_cpu_ms_per_job']} "
            f"| {w['client_cpu_s']} | {w['non_2xx']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--redis", default=os.environ.get("OUTLAST_TEST_REDIS", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--only", action="append", choices=SYSTEMS, help="run only this system (repeatable)")
    parser.add_argument("--no-peer", action="store_true", help="leave Celery + Flower out")
    args = parser.parse_args()
    systems = tuple(args.only or [s for s in SYSTEMS if not (args.no_peer and s == "celery")])
    if "celery" in systems:
        from bench.peer_celery import ensure_venv

        ensure_venv()
    rows = measure(systems, clients=args.clients, seconds=args.seconds, redis_url=args.redis)
    print()
    print(table(rows))
    print()
    print(wrk_table(rows))
    print(f"\n{machine()}.")


if __name__ == "__main__":
    main()
