"""Server memory per idle waiting connection, SSE and WebSocket, against the floor.

    .venv/bin/python -m bench.memory [--counts 1000,5000]

For each transport, each count N and each server (a fresh process every time):
`outlast serve bench._apps:app` on a fresh SQLite file with one worker, whose one
job waits until released (never, here), and the floor, `uvicorn
bench._apps:floor`, whose waiters hold nothing but an `asyncio.Event`. Opens and
closes a few connections first (so that code paths used once are loaded), reads
the server's VmRSS from /proc, opens N connections that wait on the job
(`GET /jobs/{id}/events`, or `WS /ws` + subscribe), waits until the server has
registered all N, settles, reads VmRSS again: (after - before) / N.

The WebSocket client offers permessage-deflate, as browsers and the `websockets`
library do by default, and the server accepts it; `ws-plain` offers no
compression, to show what the compressor's state costs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import ssl
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from bench._servers import PYTHON, Server, machine, raise_nofile, server

POOL = 50  # connections per httpx client (one pool of thousands costs the client dearly)
OPENING = 100  # connections being opened at once
WARM_UP = 20
OPEN_TIMEOUT_S = 120.0
SETTLE_S = 2.0
TRANSPORT_NAMES = {"sse": "SSE", "ws": "WebSocket", "ws-plain": "WebSocket, no compression"}


async def sse_idle(http: httpx.AsyncClient, base: str, job_id: str, opening: asyncio.Semaphore) -> str | None:
    await opening.acquire()
    opened = False
    try:
        async with http.stream("GET", f"{base}/jobs/{job_id}/events") as response:
            opening.release()
            opened = True
            if response.status_code != 200:
                return f"HTTP {response.status_code}"
            async for _ in response.aiter_lines():
                pass
        return "stream closed"
    except httpx.HTTPError as exc:
        return type(exc).__name__
    finally:
        if not opened:
            opening.release()


async def ws_idle(base: str, job_id: str, opening: asyncio.Semaphore, *, deflate: bool) -> str | None:
    compression = "deflate" if deflate else None
    try:
        async with opening:
            ws = await connect(f"{base}/ws", open_timeout=OPEN_TIMEOUT_S, max_size=None, compression=compression)
            await ws.send(json.dumps({"action": "subscribe", "id": job_id}))
        async with ws:
            async for _ in ws:
                pass
        return "closed"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:80]


async def _listeners(control: httpx.AsyncClient, base: str) -> int:
    count: int = (await control.get(f"{base}/bench/listeners")).json()["listeners"]
    return count


async def _open(
    srv: Server, control: httpx.AsyncClient, pools: list[httpx.AsyncClient], transport: str, job_id: str, n: int
) -> tuple[list[asyncio.Task[str | None]], int, float]:
    """Open n waiting connections; the tasks, how many the server registered, and how long it took."""
    opening = asyncio.Semaphore(OPENING)
    before = await _listeners(control, srv.url)
    started = time.perf_counter()
    if transport == "sse":
        tasks = [asyncio.create_task(sse_idle(pools[i // POOL], srv.url, job_id, opening)) for i in range(n)]
    else:
        deflate = transport == "ws"
        tasks = [asyncio.create_task(ws_idle(srv.ws_url, job_id, opening, deflate=deflate)) for _ in range(n)]
    registered = 0
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    while time.monotonic() < deadline:
        registered = await _listeners(control, srv.url) - before
        if registered >= n or all(task.done() for task in tasks):
            break
        await asyncio.sleep(0.2)
    return tasks, registered, time.perf_counter() - started


async def _close(tasks: list[asyncio.Task[str | None]]) -> list[str]:
    errors = [str(task.result()) for task in tasks if task.done() and not task.cancelled()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return errors


@dataclass
class Measure:
    before_kb: int
    after_kb: int
    registered: int
    open_s: float
    errors: list[str]

    @property
    def per_connection_kb(self) -> float:
        return (self.after_kb - self.before_kb) / max(self.registered, 1)


async def measure(srv: Server, transport: str, n: int) -> Measure:
    tls = ssl.create_default_context()
    limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
    async with contextlib.AsyncExitStack() as stack:
        control = await stack.enter_async_context(httpx.AsyncClient(timeout=10, verify=tls))
        pools = [
            await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=None, verify=tls))
            for _ in range(-(-n // POOL))
        ]
        response = await control.post(
            f"{srv.url}/jobs/gate", json={"key": "never"}, headers={"Prefer": "respond-async"}
        )
        job_id = response.json()["id"]
        warm, _, _ = await _open(srv, control, pools, transport, job_id, WARM_UP)
        errors = await _close(warm)
        await asyncio.sleep(SETTLE_S)
        before = srv.rss_kb()
        tasks, registered, open_s = await _open(srv, control, pools, transport, job_id, n)
        await asyncio.sleep(SETTLE_S)
        after = srv.rss_kb()
        errors += await _close(tasks)
        await control.post(f"{srv.url}/bench/release", json={"keys": ["never"]})  # so the server stops at once
    return Measure(before, after, registered, open_s, errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1000,5000", help="comma-separated numbers of connections")
    parser.add_argument("--transports", default="sse,ws,ws-plain", help="comma-separated: sse,ws,ws-plain")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    raise_nofile(max(counts) * 2 + 1000)
    ws = ["--ws", "websockets", "--ws-ping-interval", "20", "--ws-ping-timeout", "20"]
    rows: list[tuple[str, int, dict[str, Measure]]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for transport in args.transports.split(","):
            for n in counts:
                figures = {}
                for name in ("floor", "outlast"):
                    store = f"sqlite:///{os.path.join(tmp, f'{transport}-{n}.db')}"
                    command = {
                        "floor": [PYTHON, "-m", "uvicorn", "bench._apps:floor", *ws],
                        "outlast": [PYTHON, "-m", "outlast", "serve", "bench._apps:app", "--store", store],
                    }[name]
                    if name == "outlast":
                        command += ["--workers", "1"]
                    with server(command, Path(tmp, f"{name}-{transport}-{n}.log")) as srv:
                        figures[name] = m = asyncio.run(measure(srv, transport, n))
                        problems = srv.problems()
                    where = f"{TRANSPORT_NAMES[transport]}, {n}, {name}"
                    if m.registered != n:
                        notes.append(f"{where}: {m.registered} of {n} connections registered")
                    for error, count in Counter(m.errors).most_common():
                        notes.append(f"{where}: {count} connection(s) ended early: {error}")
                    notes += [f"{where}, server log: {line}" for line in problems[:5]]
                    print(f"  {where}: {m.before_kb} -> {m.after_kb} KB, {m.open_s:.1f} s to open", flush=True)
                rows.append((transport, n, figures))
    print(f"\n{machine()}.\n")
    print(
        "| transport | connections | floor KB/conn | outlast KB/conn | outlast - floor KB/conn"
        " | outlast RSS before, after (MB) |\n|---|---|---|---|---|---|"
    )
    for transport, n, figures in rows:
        floor, ours = figures["floor"].per_connection_kb, figures["outlast"].per_connection_kb
        o = figures["outlast"]
        print(
            f"| {TRANSPORT_NAMES[transport]} | {n} | {floor:.1f} | {ours:.1f} | {ours - floor:.1f} | "
            f"{o.before_kb / 1024:.0f}, {o.after_kb / 1024:.0f} |"
        )
    if notes:
        print()
        for line in notes:
            print(f"- {line}")


if __name__ == "__main__":
    main()
