"""Server memory per idle waiting connection, SSE and WebSocket, against the floor; then the fan-out.

    .venv/bin/python -m bench.memory [--counts 1000,5000,10000] [--transports sse,ws,ws-plain]

For each transport, each count N and each server (a fresh process every time):
`outlast serve bench._apps:app` on a fresh SQLite file with one worker, whose one
job waits until released, and the floor, `uvicorn bench._apps:floor`, whose
waiters hold nothing but an `asyncio.Event`. Opens and closes a few connections
first (so that code paths used once are loaded), reads the server's VmRSS from
/proc, opens N connections that wait on the job (`GET /jobs/{id}/events`, or
`WS /ws` + subscribe), waits until the server has registered all N, settles,
reads VmRSS again: (after - before) / N.

Then it releases the job (`POST /bench/release`): the job returns the time it
ended (`ended_at`, wall clock, the same machine's), and every client notes when
the terminal event reached it. The fan-out columns are the delays from the
job's end to each client's receipt: how many arrived, p50, p99 and max.

The SSE clients are raw asyncio protocols (a few hundred bytes and no task
each), so that the load generator is neither the bottleneck nor a memory hog;
its own CPU time is reported. The WebSocket client offers permessage-deflate,
as browsers and the `websockets` library do by default, and the server accepts
it; `ws-plain` offers no compression, to show what the compressor's state costs.

`measure()` returns the figures as JSON-able rows, for other scripts; `main()`
prints them as a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from websockets.asyncio.client import connect

from bench._servers import PYTHON, Server, machine, percentile, raise_nofile, rss_kb, server

OPENING = 100  # connections being opened at once
WARM_UP = 20
OPEN_TIMEOUT_S = 180.0
SETTLE_S = 2.0
FAN_OUT_TIMEOUT_S = 60.0
GATE_KEY = "bench-memory"
ENDED_AT = b'"ended_at":'
TRANSPORT_NAMES = {"sse": "SSE", "ws": "WebSocket", "ws-plain": "WebSocket, no compression"}
SERVERS = ("floor", "outlast")


# -- clients -------------------------------------------------------------------------------


class SSEClient(asyncio.Protocol):
    """One `GET /jobs/{id}/events`: notes when the job's result (its `ended_at`) arrives.

    It does not decode the chunked framing: it only looks for `"ended_at":<number>`,
    which appears once, in the terminal status event, and keeps a short tail of
    what it read in case the marker straddles two reads.
    """

    __slots__ = ("closed", "ended_at", "error", "opened", "received_at", "request", "settled", "status", "tail")

    def __init__(self, request: bytes, opened: asyncio.Future[None], settled: Callable[[], None]) -> None:
        self.request = request
        self.opened = opened  # done when the response's first bytes arrive
        self.settled = settled  # called once: the terminal event arrived, or the stream ended without it
        self.status = 0
        self.tail = b""
        self.ended_at: float | None = None
        self.received_at: float | None = None
        self.closed = False
        self.error: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buffer = self.tail + data
        if not self.status:
            self.status = int(buffer[9:12]) if buffer.startswith(b"HTTP/1.1 ") else -1
            if self.status != 200:
                self.error = f"HTTP {self.status}"
            if not self.opened.done():
                self.opened.set_result(None)
        if self.ended_at is None:
            at = buffer.find(ENDED_AT)
            if at >= 0:
                start = at + len(ENDED_AT)
                while start < len(buffer) and buffer[start] == 32:  # json.dumps's default ": "
                    start += 1
                end = start
                while end < len(buffer) and buffer[end] in b"0123456789.eE+-":
                    end += 1
                if start < end < len(buffer):  # the whole number is here
                    self.ended_at, self.received_at = float(buffer[start:end]), now
                    self.tail = b""
                    self.settled()
                    return
        self.tail = buffer[-64:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.ended_at is None and self.error is None:
            self.error = "closed before the terminal event" if exc is None else type(exc).__name__
            self.settled()
        if not self.opened.done():
            self.opened.set_result(None)


class WSClient:
    """One WebSocket subscribed to the job; notes when its terminal event arrives."""

    def __init__(self) -> None:
        self.ended_at: float | None = None
        self.received_at: float | None = None
        self.error: str | None = None

    async def run(
        self, url: str, job_id: str, opening: asyncio.Semaphore, settled: Callable[[], None], *, deflate: bool
    ) -> None:
        try:
            await self._run(url, job_id, opening, deflate=deflate)
        finally:
            settled()

    async def _run(self, url: str, job_id: str, opening: asyncio.Semaphore, *, deflate: bool) -> None:
        try:
            async with opening:
                ws = await connect(
                    url, open_timeout=OPEN_TIMEOUT_S, max_size=None, compression="deflate" if deflate else None
                )
                await ws.send(json.dumps({"action": "subscribe", "id": job_id}))
            async with ws:
                async for raw in ws:
                    now = time.time()
                    message = json.loads(raw)
                    result = (message.get("data") or {}).get("result") if message.get("type") == "event" else None
                    if isinstance(result, dict) and "ended_at" in result:
                        self.ended_at, self.received_at = result["ended_at"], now
                        return
            self.error = "closed before the terminal event"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"[:80]


class Crowd:
    """N clients of one transport waiting on one job."""

    def __init__(self, srv: Server, transport: str, job_id: str) -> None:
        self.srv, self.transport, self.job_id = srv, transport, job_id
        self.sse: list[SSEClient] = []
        self.sse_transports: list[asyncio.BaseTransport] = []
        self.ws: list[WSClient] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.wanted = 0
        self.ended = 0  # clients with the terminal event, or without it but closed
        self.all_ended = asyncio.Event()

    def settled(self) -> None:
        self.ended += 1
        if self.ended >= self.wanted:
            self.all_ended.set()

    async def open(self, n: int) -> None:
        self.wanted += n
        if self.transport == "sse":
            await self._open_sse(n)
        else:
            opening = asyncio.Semaphore(OPENING)
            deflate = self.transport == "ws"
            for _ in range(n):
                client = WSClient()
                self.ws.append(client)
                self.tasks.append(
                    asyncio.create_task(
                        client.run(f"{self.srv.ws_url}/ws", self.job_id, opening, self.settled, deflate=deflate)
                    )
                )

    async def _open_sse(self, n: int) -> None:
        url = urlsplit(self.srv.url)
        host, port = url.hostname or "127.0.0.1", url.port or 80
        request = (
            f"GET /jobs/{self.job_id}/events HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        loop = asyncio.get_running_loop()
        opening = asyncio.Semaphore(OPENING)

        async def one() -> None:
            async with opening:
                opened: asyncio.Future[None] = loop.create_future()
                client = SSEClient(request, opened, self.settled)
                try:
                    transport, _ = await loop.create_connection(lambda: client, host, port)
                except OSError as exc:
                    client.error = type(exc).__name__
                    self.settled()
                    self.sse.append(client)
                    return
                self.sse.append(client)
                self.sse_transports.append(transport)
                await opened  # the server has answered: it holds the stream

        await asyncio.gather(*(one() for _ in range(n)))

    @property
    def clients(self) -> list[SSEClient] | list[WSClient]:
        return self.sse if self.transport == "sse" else self.ws

    def received(self) -> int:
        return sum(client.received_at is not None for client in self.clients)

    def errors(self) -> list[str]:
        return [client.error for client in self.clients if client.error is not None]

    def delays_ms(self) -> list[float]:
        return [
            (client.received_at - client.ended_at) * 1000
            for client in self.clients
            if client.received_at is not None and client.ended_at is not None
        ]

    async def close(self) -> None:
        for transport in self.sse_transports:
            transport.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.sleep(0)


# -- one measurement -----------------------------------------------------------------------


async def _listeners(control: httpx.AsyncClient) -> int:
    count: int = (await control.get("/bench/listeners")).json()["listeners"]
    return count


async def _until_registered(control: httpx.AsyncClient, crowd: Crowd, wanted: int) -> int:
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    registered = await _listeners(control)
    while registered < wanted and time.monotonic() < deadline:
        if crowd.tasks and all(task.done() for task in crowd.tasks):
            break
        await asyncio.sleep(0.2)
        registered = await _listeners(control)
    return registered


async def _fan_out(control: httpx.AsyncClient, crowd: Crowd) -> float:
    """Release the job and wait until every client has its terminal event (or the time is up)."""
    await control.post("/bench/release", json={"keys": [GATE_KEY]})
    started = time.perf_counter()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(FAN_OUT_TIMEOUT_S):
            await crowd.all_ended.wait()
    return time.perf_counter() - started


async def measure_one(srv: Server, transport: str, n: int, idle_s: float = 0.0) -> dict[str, Any]:
    """One server, one transport, n connections: the memory row, with the fan-out.

    With `idle_s`, the connections stay idle that long before the release (pings
    and their store reads included), and the server's CPU meanwhile is reported.
    """
    async with httpx.AsyncClient(base_url=srv.url, timeout=30) as control:
        response = await control.post("/jobs/gate", json={"key": GATE_KEY}, headers={"Prefer": "respond-async"})
        job_id = response.json()["id"]
        warm = Crowd(srv, transport, job_id)
        await warm.open(WARM_UP)
        await _until_registered(control, warm, WARM_UP)
        await warm.close()
        await asyncio.sleep(SETTLE_S)
        idle = await _listeners(control)
        before = srv.rss_kb()
        client_cpu = time.process_time()
        started = time.perf_counter()
        crowd = Crowd(srv, transport, job_id)
        await crowd.open(n)
        registered = await _until_registered(control, crowd, idle + n) - idle
        open_s = time.perf_counter() - started
        await asyncio.sleep(SETTLE_S)
        after = srv.rss_kb()
        client_rss = rss_kb(os.getpid())
        server_cpu = srv.cpu_s()
        if idle_s:
            await asyncio.sleep(idle_s)
        idle_cpu = srv.cpu_s() - server_cpu
        server_cpu += idle_cpu
        fan_out_cpu = time.process_time()
        fan_out_s = await _fan_out(control, crowd)
        fan_out_cpu = time.process_time() - fan_out_cpu
        server_fan_out_cpu = srv.cpu_s() - server_cpu
        client_cpu = time.process_time() - client_cpu
        delays = sorted(crowd.delays_ms())
        errors = crowd.errors()
        await crowd.close()
    return {
        "transport": transport,
        "server": "",
        "connections": n,
        "registered": registered,
        "kb_per_conn": round((after - before) / max(registered, 1), 2),
        "rss_before_kb": before,
        "rss_after_kb": after,
        "open_s": round(open_s, 2),
        "received": len(delays),
        "min_ms": round(delays[0], 1) if delays else None,
        "p50_ms": round(percentile(delays, 50), 1) if delays else None,
        "p99_ms": round(percentile(delays, 99), 1) if delays else None,
        "max_ms": round(delays[-1], 1) if delays else None,
        "idle_s": idle_s,
        "idle_cpu_pct": round(100 * idle_cpu / idle_s, 1) if idle_s else None,
        "fan_out_s": round(fan_out_s, 2),
        "server_fan_out_cpu_s": round(server_fan_out_cpu, 2),
        "client_cpu_s": round(client_cpu, 2),
        "client_fan_out_cpu_s": round(fan_out_cpu, 2),
        "client_rss_kb": client_rss,
        "errors": dict(Counter(errors).most_common(5)),
    }


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    # The client's loop as fast as the server's (uvicorn picks uvloop when it is installed).
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _command(name: str, store: str) -> list[str]:
    if name == "floor":
        ws = ["--ws", "websockets", "--ws-ping-interval", "20", "--ws-ping-timeout", "20"]
        return [PYTHON, "-m", "uvicorn", "bench._apps:floor", *ws]
    return [PYTHON, "-m", "outlast", "serve", "bench._apps:app", "--store", store, "--workers", "1"]


def measure(
    transports: Iterable[str] = ("sse",),
    counts: Iterable[int] = (1000, 5000, 10000),
    servers: Iterable[str] = SERVERS,
    *,
    idle_s: float = 0.0,
    log_dir: str | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per transport, count and server (a fresh server each), as JSON-able dicts."""
    counts = list(counts)
    raise_nofile(max(counts) + 1000)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(log_dir or tmp)
        for transport in transports:
            for n in counts:
                for name in servers:
                    store = f"sqlite:///{os.path.join(tmp, f'{transport}-{n}.db')}"
                    with server(_command(name, store), logs / f"{name}-{transport}-{n}.log") as srv:
                        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                            row = runner.run(measure_one(srv, transport, n, idle_s))
                        row["problems"] = srv.problems()[:5]
                    row["server"] = name
                    rows.append(row)
                    if progress:
                        print(f"  {json.dumps(row)}", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as Markdown: one line per transport and count, floor and outlast side by side."""
    lines = [
        "| transport | connections | floor KB/conn | outlast KB/conn | outlast - floor | outlast RSS before, after (MB)"
        " | floor fan-out p50 / p99 / max (ms) | outlast fan-out received, p50 / p99 / max (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["transport"], row["connections"]), {})[row["server"]] = row
    for (transport, n), by in groups.items():
        floor, ours = by.get("floor"), by.get("outlast")
        cells = [TRANSPORT_NAMES.get(transport, transport), str(n)]
        cells += [f"{r['kb_per_conn']:.1f}" if r else "-" for r in (floor, ours)]
        cells.append(f"{ours['kb_per_conn'] - floor['kb_per_conn']:.1f}" if floor and ours else "-")
        cells.append(f"{ours['rss_before_kb'] / 1024:.0f}, {ours['rss_after_kb'] / 1024:.0f}" if ours else "-")
        cells.append(f"{floor['p50_ms']} / {floor['p99_ms']} / {floor['max_ms']}" if floor else "-")
        cells.append(f"{ours['received']}, {ours['p50_ms']} / {ours['p99_ms']} / {ours['max_ms']}" if ours else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(rows: list[dict[str, Any]]) -> list[str]:
    found = []
    for row in rows:
        where = f"{TRANSPORT_NAMES.get(row['transport'], row['transport'])}, {row['connections']}, {row['server']}"
        if row["registered"] != row["connections"]:
            found.append(f"{where}: {row['registered']} of {row['connections']} connections registered")
        if row["received"] != row["connections"]:
            found.append(f"{where}: {row['received']} of {row['connections']} got the terminal event")
        found += [f"{where}: {count} connection(s): {error}" for error, count in row["errors"].items()]
        found += [f"{where}, server log: {line}" for line in row["problems"]]
        if row["idle_s"]:
            found.append(f"{where}: {row['idle_cpu_pct']}% of a core while idle for {row['idle_s']} s")
        found.append(
            f"{where}: opened in {row['open_s']} s; fan-out {row['fan_out_s']} s, server CPU"
            f" {row['server_fan_out_cpu_s']} s; client CPU {row['client_cpu_s']} s"
            f" ({row['client_fan_out_cpu_s']} s in the fan-out), client RSS {row['client_rss_kb'] // 1024} MB"
        )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1000,5000,10000", help="comma-separated numbers of connections")
    parser.add_argument("--transports", default="sse,ws,ws-plain", help="comma-separated: sse,ws,ws-plain")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated: floor,outlast")
    parser.add_argument("--idle-s", type=float, default=0.0, help="idle this long before the release (pings)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows to FILE as JSON")
    args = parser.parse_args()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    rows = measure(
        args.transports.split(","),
        [int(c) for c in args.counts.split(",")],
        args.servers.split(","),
        idle_s=args.idle_s,
        progress=True,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\n{machine()}; open-files limit raised from {soft}.\n")
    print(table(rows))
    print()
    for line in notes(rows):
        print(f"- {line}")


if __name__ == "__main__":
    main()
