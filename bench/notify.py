"""Notification latency: a job ends, how long until each waiting client has its terminal event.

    .venv/bin/python -m bench.notify [--clients 1000] [--jobs 100] [--interval-ms 20]

Starts two servers (one process each, uvicorn, same WebSocket settings):
`outlast serve bench._apps:app` on a fresh SQLite file, with as many embedded
workers as jobs so that every job is running when it is released; and the floor,
`uvicorn bench._apps:floor`, which serves the same paths with no store at all.
With `--across`, a third setup, `outlast-postgres, 2 nodes`: two outlast nodes on
PostgreSQL (`OUTLAST_TEST_POSTGRES`, a fresh schema): the jobs are submitted to,
run on and released on the first; the clients wait on the second, which has no
workers and learns of the ends by LISTEN/NOTIFY.

For each transport (SSE, WebSocket, long-poll), each way the jobs end, and each
server: submit `--jobs` jobs that wait until released, open `--clients` clients
(spread evenly over the jobs), wait until the server has registered every one of
them, then release the jobs, either one every `--interval-ms` (each release
wakes clients/jobs clients) or all at once (every client is woken in the same
moment). A job records `time.time()` as it ends and returns it; the latency of
one client is the time it has the terminal event (the SSE `data:` line, the
WebSocket message, the long-poll response) minus that, on the same clock.
Prints a Markdown table; the load generator's CPU time (this process) and the
server's (from /proc) are measured over the delivery, from the first release to
the last client served.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import ssl
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from bench import _postgres
from bench._servers import PYTHON, Server, machine, percentile, raise_nofile, server

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
TRANSPORTS = ("sse", "ws", "longpoll")
TRANSPORT_NAMES = {"sse": "SSE", "ws": "WebSocket", "longpoll": "long-poll"}
MODES = ("stagger", "burst")
POOL = 50  # connections per httpx client (see one_run)
OPENING = 100  # connections being opened at once (the listen backlog is finite)
OPEN_TIMEOUT_S = 60.0
DELIVERY_TIMEOUT_S = 30.0
LONG_POLL_WAIT_S = 25  # the default hold: a client not answered in time asks again
ACROSS = "outlast-postgres, 2 nodes"


@dataclass
class Outcome:
    latency_s: float | None = None
    error: str | None = None
    out_of_order: int = 0
    repolls: int = 0


@dataclass
class Run:
    transport: str
    mode: str
    server: str
    clients: int
    outcomes: list[Outcome] = field(default_factory=list)
    registered: int = 0
    open_s: float = 0.0
    delivery_s: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0

    @property
    def latencies_ms(self) -> list[float]:
        return sorted(o.latency_s * 1000 for o in self.outcomes if o.latency_s is not None)

    @property
    def errors(self) -> Counter[str]:
        return Counter(o.error for o in self.outcomes if o.error is not None)


# -- the three clients: each returns once it has the terminal event ------------------------


def _terminal_latency(job: dict[str, object], received: float) -> float | None:
    if job.get("status") not in TERMINAL:
        return None
    result = job["result"]
    assert isinstance(result, dict), job
    return received - float(result["ended_at"])


async def sse_client(http: httpx.AsyncClient, base: str, job_id: str, opening: asyncio.Semaphore) -> Outcome:
    outcome = Outcome()
    await opening.acquire()
    opened = False
    try:
        async with http.stream("GET", f"{base}/jobs/{job_id}/events") as response:
            opening.release()
            opened = True
            if response.status_code != 200:
                return Outcome(error=f"HTTP {response.status_code}")
            event, last_seq = "", 0
            async for line in response.aiter_lines():
                if line.startswith("data: ") and event == "status":
                    received = time.time()
                    latency = _terminal_latency(json.loads(line[6:]), received)
                    if latency is not None:
                        outcome.latency_s = latency
                        return outcome
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("id: "):
                    seq = int(line[4:])
                    outcome.out_of_order += seq != last_seq + 1
                    last_seq = seq
        outcome.error = "stream closed before the terminal event"
    except httpx.HTTPError as exc:
        outcome.error = type(exc).__name__
    finally:
        if not opened:
            opening.release()
    return outcome


async def ws_client(base: str, job_id: str, opening: asyncio.Semaphore) -> Outcome:
    outcome = Outcome()
    try:
        async with opening:
            ws = await connect(f"{base}/ws", open_timeout=OPEN_TIMEOUT_S, max_size=None)
            await ws.send(json.dumps({"action": "subscribe", "id": job_id}))
        async with ws:
            last_seq = 0
            async for raw in ws:
                received = time.time()
                message = json.loads(raw)
                if message["type"] == "subscribed":  # the answer to the subscribe; its events follow
                    continue
                if message["type"] != "event":
                    outcome.error = f"{message['type']} {message.get('status')}"
                    return outcome
                if message["seq"] is not None:
                    outcome.out_of_order += message["seq"] != last_seq + 1
                    last_seq = message["seq"]
                if message["event"] == "status":
                    latency = _terminal_latency(message["data"], received)
                    if latency is not None:
                        outcome.latency_s = latency
                        return outcome
        outcome.error = "closed before the terminal event"
    except (OSError, TimeoutError) as exc:
        outcome.error = type(exc).__name__
    except Exception as exc:  # websockets' own errors (closed with a code, bad handshake)
        outcome.error = f"{type(exc).__name__}: {exc}"[:80]
    return outcome


async def longpoll_client(http: httpx.AsyncClient, base: str, job_id: str) -> Outcome:
    outcome = Outcome()
    try:
        while True:
            response = await http.get(f"{base}/jobs/{job_id}", params={"wait": LONG_POLL_WAIT_S})
            received = time.time()
            if response.status_code != 200:
                return Outcome(error=f"HTTP {response.status_code}")
            latency = _terminal_latency(response.json(), received)
            if latency is not None:
                outcome.latency_s = latency
                return outcome
            outcome.repolls += 1
    except httpx.HTTPError as exc:
        outcome.error = type(exc).__name__
    return outcome


# -- one run ---------------------------------------------------------------------------------


async def _listeners(control: httpx.AsyncClient, base: str) -> int:
    count: int = (await control.get(f"{base}/bench/listeners")).json()["listeners"]
    return count


async def _submit(control: httpx.AsyncClient, base: str, keys: list[str]) -> list[str]:
    async def one(key: str) -> str:
        response = await control.post(f"{base}/jobs/gate", json={"key": key}, headers={"Prefer": "respond-async"})
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    ids = [await one(key) for key in keys]
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    while time.monotonic() < deadline:  # every job running (the floor's always are)
        statuses = [(await control.get(f"{base}/jobs/{job_id}")).json()["status"] for job_id in ids]
        if all(status == "running" for status in statuses):
            return ids
        await asyncio.sleep(0.2)
    raise RuntimeError(f"jobs not all running after {OPEN_TIMEOUT_S} s: {Counter(statuses)}")


async def one_run(
    srv: Server, name: str, transport: str, mode: str, args: argparse.Namespace, follow: Server | None = None
) -> Run:
    """One run; with `follow`, the clients wait on that node while the jobs run on `srv`."""
    run = Run(TRANSPORT_NAMES[transport], mode, name, args.clients)
    watch = follow or srv
    keys = [f"{secrets.token_hex(4)}-{i}" for i in range(args.jobs)]
    # httpx's pool does work in proportion to its connections on every request and
    # release: with 1,000 in one pool the load generator, not the server, is what
    # is measured. So: pools of POOL connections (they share one TLS context,
    # unused on http:// but costly to make 1,000 times).
    tls = ssl.create_default_context()
    limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
    timeout = httpx.Timeout(OPEN_TIMEOUT_S + DELIVERY_TIMEOUT_S + LONG_POLL_WAIT_S)
    pools = [httpx.AsyncClient(limits=limits, timeout=timeout, verify=tls) for _ in range(-(-args.clients // POOL))]
    async with contextlib.AsyncExitStack() as stack:
        control = await stack.enter_async_context(httpx.AsyncClient(timeout=10, verify=tls))
        for pool in pools:
            await stack.enter_async_context(pool)
        ids = await _submit(control, srv.url, keys)
        before = await _listeners(control, watch.url)
        opening = asyncio.Semaphore(OPENING)
        clients: dict[str, Callable[[int], Coroutine[Any, Any, Outcome]]] = {
            "sse": lambda i: sse_client(pools[i // POOL], watch.url, ids[i % len(ids)], opening),
            "ws": lambda i: ws_client(watch.ws_url, ids[i % len(ids)], opening),
            "longpoll": lambda i: longpoll_client(pools[i // POOL], watch.url, ids[i % len(ids)]),
        }
        started = time.perf_counter()
        tasks = [asyncio.create_task(clients[transport](i)) for i in range(args.clients)]
        deadline = time.monotonic() + OPEN_TIMEOUT_S
        while time.monotonic() < deadline:
            run.registered = await _listeners(control, watch.url) - before
            if run.registered >= args.clients or all(task.done() for task in tasks):
                break
            await asyncio.sleep(0.1)
        run.open_s = time.perf_counter() - started
        await asyncio.sleep(0.5)  # let the last handshakes settle

        servers = [srv] if follow is None else [srv, follow]
        cpu_client, cpu_server = time.process_time(), sum(s.cpu_s() for s in servers)
        started = time.perf_counter()
        if mode == "burst":
            await control.post(f"{srv.url}/bench/release", json={"keys": keys})
        else:
            for key in keys:
                await control.post(f"{srv.url}/bench/release", json={"keys": [key]})
                await asyncio.sleep(args.interval_ms / 1000)
        done, pending = await asyncio.wait(tasks, timeout=DELIVERY_TIMEOUT_S)
        run.delivery_s = time.perf_counter() - started
        run.client_cpu_s = time.process_time() - cpu_client
        run.server_cpu_s = sum(s.cpu_s() for s in servers) - cpu_server
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        run.outcomes = [task.result() for task in done]
        run.outcomes += [Outcome(error=f"nothing within {DELIVERY_TIMEOUT_S:g} s") for _ in pending]
    return run


# -- report --------------------------------------------------------------------------------------


def row(run: Run, args: argparse.Namespace) -> str:
    lat = run.latencies_ms
    mode = "all at once" if run.mode == "burst" else f"1 every {args.interval_ms:g} ms"
    figures = f"{percentile(lat, 50):.1f} | {percentile(lat, 99):.1f} | {lat[-1]:.1f}" if lat else "- | - | -"
    return (
        f"| {run.transport} | {mode} | {run.server} | {len(lat)}/{run.clients} | {figures} | "
        f"{run.delivery_s:.2f} | {run.client_cpu_s:.2f} | {run.server_cpu_s:.2f} |"
    )


def notes(run: Run) -> list[str]:
    said = []
    where = f"{run.transport}, {run.mode}, {run.server}"
    if run.registered < run.clients:
        said.append(f"{where}: only {run.registered} of {run.clients} clients registered before the release")
    for error, count in run.errors.most_common():
        said.append(f"{where}: {count} client(s): {error}")
    disorder = sum(o.out_of_order for o in run.outcomes)
    if disorder:
        said.append(f"{where}: {disorder} event(s) out of sequence")
    repolls = sum(o.repolls for o in run.outcomes)
    if repolls:
        said.append(f"{where}: {repolls} long-poll(s) answered before the job ended, asked again")
    return said


async def bench(servers: dict[str, tuple[Server, Server | None]], args: argparse.Namespace) -> list[Run]:
    runs = []
    for transport in args.transports.split(","):
        for mode in MODES:
            for name, (srv, follow) in servers.items():
                run = await one_run(srv, name, transport, mode, args, follow)
                runs.append(run)
                lat = run.latencies_ms
                p99 = f"p99 {percentile(lat, 99):.1f} ms" if lat else "nothing received"
                print(f"  {run.transport} {mode} {name}: {len(lat)}/{run.clients} received, {p99}", flush=True)
    return runs


def _run(args: argparse.Namespace) -> tuple[list[Run], dict[str, list[str]]]:
    raise_nofile(args.clients * 2 + 1000)
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        ws = ["--ws", "websockets", "--ws-ping-interval", "20", "--ws-ping-timeout", "20"]
        floor_cmd = [PYTHON, "-m", "uvicorn", "bench._apps:floor", *ws]
        outlast_cmd = [PYTHON, "-m", "outlast", "serve", "bench._apps:app", "--store", store]
        outlast_cmd += ["--workers", str(args.jobs)]
        with contextlib.ExitStack() as stack:
            floor = stack.enter_context(server(floor_cmd, Path(tmp, "floor.log")))
            outlast = stack.enter_context(server(outlast_cmd, Path(tmp, "outlast.log")))
            servers: dict[str, tuple[Server, Server | None]] = {"floor": (floor, None), "outlast": (outlast, None)}
            if getattr(args, "across", False):
                schema = _postgres.new_schema()
                stack.callback(_postgres.drop_schema, _postgres.URL, schema)
                pg = [*outlast_cmd[:-3], _postgres.store_url(_postgres.URL, schema)]
                running = stack.enter_context(server([*pg, "--workers", str(args.jobs)], Path(tmp, "pg-1.log")))
                waiting = stack.enter_context(server([*pg, "--workers", "0"], Path(tmp, "pg-2.log")))
                servers[ACROSS] = (running, waiting)
            runs = asyncio.run(bench(servers, args))
            problems = {
                f"{name} {i + 1}": srv.problems()
                for name, pair in servers.items()
                for i, srv in enumerate(s for s in pair if s is not None)
            }
    return runs, problems


def _notes(runs: list[Run], problems: dict[str, list[str]]) -> list[str]:
    said = [line for run in runs for line in notes(run)]
    for name, lines in problems.items():
        said += [f"{name} server log: {line}" for line in lines[:10]]
        if len(lines) > 10:
            said.append(f"{name} server log: ... {len(lines) - 10} more such lines")
    return said


def measure(
    clients: int = 1000,
    jobs: int = 100,
    interval_ms: float = 20,
    transports: tuple[str, ...] = TRANSPORTS,
    across: bool = False,
) -> dict[str, Any]:
    """Every transport, both ways of ending, floor and outlast (and, `across`, two PostgreSQL nodes):
    JSON-able rows, and what went wrong."""
    args = argparse.Namespace(
        clients=clients, jobs=jobs, interval_ms=interval_ms, transports=",".join(transports), across=across
    )
    runs, problems = _run(args)
    rows = []
    for run in runs:
        lat = run.latencies_ms
        rows.append(
            {
                "transport": run.transport,
                "ending": "all at once" if run.mode == "burst" else f"1 every {interval_ms:g} ms",
                "server": run.server,
                "clients": run.clients,
                "received": len(lat),
                "p50_ms": round(percentile(lat, 50), 2) if lat else None,
                "p99_ms": round(percentile(lat, 99), 2) if lat else None,
                "max_ms": round(lat[-1], 2) if lat else None,
                "delivery_s": round(run.delivery_s, 3),
                "client_cpu_s": round(run.client_cpu_s, 2),
                "server_cpu_s": round(run.server_cpu_s, 2),
            }
        )
    return {"rows": rows, "notes": _notes(runs, problems), "clients": clients, "jobs": jobs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--interval-ms", type=float, default=20)
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help="comma-separated: sse,ws,longpoll")
    parser.add_argument("--across", action="store_true", help="and clients on a second PostgreSQL node")
    args = parser.parse_args()
    runs, problems = _run(args)
    per_job = args.clients // args.jobs
    print(f"\n{args.clients} clients waiting on {args.jobs} jobs ({per_job} per job); {machine()}.\n")
    print(
        "| transport | jobs end | server | received | p50 ms | p99 ms | max ms | delivery s | client CPU s"
        " | server CPU s |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    for run in runs:
        print(row(run, args))
    said = _notes(runs, problems)
    if said:
        print()
        for line in said:
            print(f"- {line}")


if __name__ == "__main__":
    main()
