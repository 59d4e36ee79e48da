"""A load generator that costs little: a minimal keep-alive HTTP/1.1 client, and how to run N clients.

httpx spends about 1 ms of CPU per request; on a machine whose cores the
server shares, that client, not the server, would be measured. `Conn` speaks
just enough HTTP/1.1 for the benchmarks (one connection, requests one after
another, `Content-Length` and chunked bodies, Server-Sent Events) and costs
a few tens of microseconds per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

TERMINAL = frozenset({"succeeded", "failed", "canceled"})


class HTTPError(Exception):
    """An answer the benchmark did not expect."""


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Conn:
    """One HTTP/1.1 connection to `url`'s host, reopened if the server closes it."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.requests = 0

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    def _send(
        self, writer: asyncio.StreamWriter, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        self.requests += 1

    @staticmethod
    async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return int(status_line.split(" ", 2)[1]), headers

    @staticmethod
    async def _chunks(reader: asyncio.StreamReader) -> Any:
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return
            chunk = await reader.readexactly(size + 2)
            yield chunk[:-2]

    async def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Answer:
        reader, writer = await self._open()
        self._send(writer, method, path, body, headers or {})
        try:
            status, response_headers = await self._head(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            # The server closed a kept-alive connection between requests: once more, on a new one.
            await self.close()
            reader, writer = await self._open()
            self._send(writer, method, path, body, headers or {})
            status, response_headers = await self._head(reader)
        if response_headers.get("transfer-encoding") == "chunked":
            data = b"".join([chunk async for chunk in self._chunks(reader)])
        else:
            data = await reader.readexactly(int(response_headers.get("content-length", "0")))
        if response_headers.get("connection") == "close":
            await self.close()
        return Answer(status, response_headers, data)

    async def terminal_event(self, path: str) -> dict[str, Any]:
        """Follow a Server-Sent Events stream to its terminal status event; that event's data."""
        reader, writer = await self._open()
        self._send(writer, "GET", path, None, {"Accept": "text/event-stream"})
        status, headers = await self._head(reader)
        if status != 200 or headers.get("transfer-encoding") != "chunked":
            raise HTTPError(f"GET {path}: {status}")
        pending = b""
        found: dict[str, Any] | None = None
        async for chunk in self._chunks(reader):  # read to the stream's end, so the connection is reusable
            if found is not None:
                continue
            pending += chunk
            *messages, pending = pending.split(b"\n\n")
            for message in messages:
                if b"event: status" in message:
                    data = json.loads(message.split(b"data: ", 1)[1].split(b"\n", 1)[0])
                    if data["status"] in TERMINAL:
                        found = data
        if found is None:
            raise HTTPError(f"GET {path}: the stream ended without a terminal event")
        return found


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Load:
    """What `drive` measured: every job's latency, the failures, and the time it took."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    client_cpu_s: float = 0.0
    requests: int = 0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


async def drive(
    clients: int,
    seconds: float,
    make: Callable[[], Awaitable[Any]],
    one_job: Callable[[Any], Awaitable[None]],
    close: Callable[[Any], Awaitable[None]],
) -> Load:
    """Jobs one after another from `clients` concurrent clients for `seconds`, each client on its own connection.

    A job under way when the time is up is finished and counted; the rate is
    jobs over the time the last one took to end.
    """
    load = Load()
    sessions = [await make() for _ in range(clients)]
    deadline = time.perf_counter() + seconds

    async def client(session: Any) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await one_job(session)
            except Exception as exc:  # counted and shown, never hidden
                load.errors.append(f"{type(exc).__name__}: {exc}")
                if len(load.errors) > 100:
                    return
                continue
            load.latencies.append(time.perf_counter() - started)

    cpu = own_cpu_s()
    started = time.perf_counter()
    await asyncio.gather(*(client(session) for session in sessions))
    load.seconds = time.perf_counter() - started
    load.client_cpu_s = own_cpu_s() - cpu
    load.requests = sum(getattr(session, "requests", 0) for session in sessions)
    for session in sessions:
        await close(session)
    return load
