"""Limits with clear answers: open connections per process (503), submits per second per key (429)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from starlette.types import ASGIApp, Receive, Scope, Send

from outlast.problems import problem

EXEMPT_PATHS = frozenset({"/healthz"})  # liveness stays visible under load
MAX_BUCKETS = 100_000
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


class SubmitRate:
    """A token bucket per caller: `rate` submits a second, bursts of up to twice that."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, 2 * rate)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, who: str) -> float | None:
        """None if `who` may submit now, else the seconds until it may."""
        now = time.monotonic()
        tokens, then = self._buckets.pop(who, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1:
            self._buckets[who] = (tokens - 1, now)
            wait = None
        else:
            self._buckets[who] = (tokens, now)
            wait = (1 - tokens) / self.rate
        while len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)  # the longest idle callers
        return wait

    @staticmethod
    def retry_after(wait_s: float) -> str:
        return str(max(1, math.ceil(wait_s)))
