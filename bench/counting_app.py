"""tests.apps' outlast app, wrapped in an ASGI middleware that counts what reaches the server.

    outlast serve bench.counting_app:app --gateway-timeout 3 --margin 1

Every HTTP request and every WebSocket connection is counted, by kind, before
the app sees it. `GET /bench/requests` (answered by the middleware itself, and
not counted) returns the counts so far: `{"http": N, "websocket": M}`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tests.apps import app as outlast_app
from tests.apps import ot

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COUNTS_PATH = "/bench/requests"


class CountingApp:
    """Counts HTTP requests and WebSocket connections, then hands them to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state = getattr(app, "state", None)  # `outlast serve` finds `state.outlast` here
        self.counts: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == COUNTS_PATH:
            await self._answer(send)
            return
        if scope["type"] in ("http", "websocket"):
            self.counts[scope["type"]] += 1
        await self.app(scope, receive, send)

    async def _answer(self, send: Send) -> None:
        body = json.dumps({"http": self.counts["http"], "websocket": self.counts["websocket"]}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


app = CountingApp(outlast_app)
assert app.state is not None and app.state.outlast is ot
