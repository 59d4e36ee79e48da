"""A local stand-in for a gateway with a hard timeout, to reproduce the problem on a laptop.

`outlast gateway --upstream http://127.0.0.1:8001 --timeout 29` proxies every
request to the upstream and answers `504` when the upstream has not begun its
response within the timeout: a total deadline from the moment the request
arrived, as API Gateway's integration timeout is. A response that has begun
streams through, and is cut at the deadline (an event stream then resumes
from its cursor). WebSockets pass through with API Gateway's limits: closed
after `ws_idle_s` without a message either way (10 min) and after `ws_max_s`
in all (2 h). Everything else passes through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

logger = logging.getLogger("outlast.gateway")

# Not forwarded: they describe one hop, not the request (RFC 9110, 7.6.1).
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host"}
)
# Not forwarded from the upstream's response: the gateway's server sends its own, once.
OWN_HEADERS = frozenset({b"date", b"server"})
# What uvicorn logs, as an ERROR, when an app ends a response without completing it: what
# a cut at the deadline is meant to do. The gateway logs its own line for each cut instead.
INCOMPLETE = "ASGI callable returned without completing response."
TIMEOUT_BODY = json.dumps({"message": "Endpoint request timed out"}).encode()
WS_IDLE_S = 600.0
WS_MAX_S = 7200.0
CLOSE_GOING_AWAY = 1001


class Gateway:
    """The proxy, as an ASGI app."""

    def __init__(
        self, upstream: str, *, timeout_s: float = 29.0, ws_idle_s: float = WS_IDLE_S, ws_max_s: float = WS_MAX_S
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.timeout_s = timeout_s
        self.ws_idle_s = ws_idle_s
        self.ws_max_s = ws_max_s
        # No client timeout: each request's total deadline is enforced around it.
        self._client = httpx.AsyncClient(base_url=self.upstream, timeout=None, follow_redirects=False)  # noqa: S113

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- HTTP ----------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        deadline = time.monotonic() + self.timeout_s
        path = scope.get("raw_path") or scope["path"].encode()
        url = path.decode("latin-1") + (f"?{scope['query_string'].decode('latin-1')}" if scope["query_string"] else "")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        request = self._client.build_request(scope["method"], url, headers=headers, content=_body(receive))
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                response = await self._client.send(request, stream=True)
        except TimeoutError:
            await _answer(send, 504, TIMEOUT_BODY)
            return
        except httpx.TransportError as exc:
            logger.warning("upstream %s: %s", self.upstream, exc)
            await _answer(send, 502, json.dumps({"message": "Bad gateway"}).encode())
            return
        try:
            await send({"type": "http.response.start", "status": response.status_code, "headers": _out(response)})
            try:
                async with asyncio.timeout_at(_loop_time(deadline)):
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except TimeoutError:
                # What the gateway is for: one line, no traceback. Returning without the last
                # body message makes the server close the connection: the response ends incomplete.
                logger.warning(
                    "%s %s: still streaming at the deadline (%g s): cut", scope["method"], scope["path"], self.timeout_s
                )
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()

    # -- WebSocket ---------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, WebSocketException

        first = await receive()
        if first["type"] != "websocket.connect":
            return
        path = scope.get("raw_path") or scope["path"].encode()
        query = f"?{scope['query_string'].decode('latin-1')}" if scope["query_string"] else ""
        target = self.upstream.replace("http", "ws", 1) + path.decode("latin-1") + query
        forward = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k.lower() in (b"authorization", b"cookie", b"origin")
        }
        try:
            upstream = await connect(target, additional_headers=forward, open_timeout=self.timeout_s, max_size=None)
        except (OSError, WebSocketException, TimeoutError):
            await send({"type": "websocket.close", "code": 1011})
            return
        await send({"type": "websocket.accept"})
        activity = asyncio.Event()

        async def client_to_upstream() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                activity.set()
                await upstream.send(message["text"] if message.get("text") is not None else message["bytes"])

        async def upstream_to_client() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for data in upstream:
                    activity.set()
                    key = "text" if isinstance(data, str) else "bytes"
                    await send({"type": "websocket.send", key: data})

        async def limits() -> None:
            async with asyncio.timeout(self.ws_max_s):
                while True:
                    try:
                        async with asyncio.timeout(self.ws_idle_s):
                            await activity.wait()
                    except TimeoutError:
                        return  # idle too long
                    activity.clear()

        tasks = [asyncio.create_task(t()) for t in (client_to_upstream, upstream_to_client, limits)]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await upstream.close()
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": CLOSE_GOING_AWAY})


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


def _out(response: httpx.Response) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP and k.lower() not in OWN_HEADERS]


class _QuietCuts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != INCOMPLETE


def _loop_time(deadline: float) -> float:
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve(
    upstream: str, *, host: str, port: int, timeout_s: float, ws_idle_s: float, ws_max_s: float, **kw: Any
) -> None:
    import uvicorn

    app = Gateway(upstream, timeout_s=timeout_s, ws_idle_s=ws_idle_s, ws_max_s=ws_max_s)
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", ws="websockets-sansio", **kw)
    logging.getLogger("uvicorn.error").addFilter(_QuietCuts())  # after the config has set up logging
    if not logger.handlers:  # the cuts and upstream failures, on stderr as uvicorn's lines are
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:  %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    uvicorn.Server(config).run()
