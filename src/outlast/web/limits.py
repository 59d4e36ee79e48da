"""Open connections per process: beyond the limit, 503 + Retry-After (a WebSocket: close 1013)."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from outlast.web.problems import problem

EXEMPT_PATHS = frozenset({"/healthz"})  # liveness stays visible under load
CLOSE_TRY_AGAIN = 1013


class ConnectionLimit:
    """ASGI middleware: beyond `limit` open requests and WebSockets, answer 503 + Retry-After."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN})
            else:
                detail = "the server has as many open connections as it takes; try again shortly"
                await problem(503, detail, type="too_many_connections", headers={"Retry-After": "1"})(
                    scope, receive, send
                )
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
