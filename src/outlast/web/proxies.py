"""Serving behind proxies and to browsers on other origins.

- `ForwardedPrefix`: a proxy that serves the API under a path (nginx's
  `location /api/ { proxy_pass http://node/; }`) says so in
  `X-Forwarded-Prefix: /api`. From a trusted peer only, the prefix becomes
  part of the request's `root_path`, so that `Location` and every link the
  protocol sends carry it. `outlast serve --proxy-headers` (on by default, as
  uvicorn's) puts it in front of uvicorn's own `ProxyHeadersMiddleware`,
  trusting the same `--forwarded-allow-ips`.
- `CORS`: Starlette's `CORSMiddleware` with the protocol's headers, for the
  origins of the `cors_origins` setting, read when a request comes (so that
  `ot.configure()` after the app was built still counts).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from outlast.core import Outlast

# A path of one or more segments of URL-safe characters; anything else is ignored.
_PREFIX = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+/?")
MAX_PREFIX = 1024

# What a browser app on another origin needs to submit and follow jobs.
CORS_ALLOW_HEADERS = (
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "If-None-Match",
    "Last-Event-ID",
    "Outlast-Webhook",
    "Outlast-Webhook-Events",
    "Prefer",
)
CORS_EXPOSE_HEADERS = ("Content-Location", "ETag", "Location", "Preference-Applied", "Retry-After")
CORS_METHODS = ("GET", "HEAD", "POST", "DELETE")
CORS_MAX_AGE = 600


class TrustedPeers:
    """Addresses whose forwarding headers are believed: IPs, networks (CIDR), or `*` for any."""

    def __init__(self, spec: str | Iterable[str]) -> None:
        entries = [part.strip() for part in spec.split(",")] if isinstance(spec, str) else [*spec]
        entries = [entry for entry in entries if entry]
        self.any = "*" in entries
        self.networks = [ipaddress.ip_network(entry, strict=False) for entry in entries if entry != "*"]

    def __contains__(self, host: str | None) -> bool:
        if self.any:
            return True
        if host is None:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def forwarded_prefix(value: str | None) -> str | None:
    """The path of an `X-Forwarded-Prefix` value (its first, if a chain of proxies listed several), or None."""
    if value is None:
        return None
    first = value.split(",", 1)[0].strip()
    if len(first) > MAX_PREFIX or not _PREFIX.fullmatch(first) or "//" in first:
        return None
    return first.rstrip("/")


class ForwardedPrefix:
    """Honours `X-Forwarded-Prefix` from trusted peers: the prefix is added to `root_path` (and `path`)."""

    def __init__(self, app: ASGIApp, trusted: str | Iterable[str] = "127.0.0.1") -> None:
        self.app = app
        self.trusted = TrustedPeers(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            if client is not None and client[0] in self.trusted:
                headers = [value for name, value in scope["headers"] if name == b"x-forwarded-prefix"]
                prefix = forwarded_prefix(headers[0].decode("latin-1")) if headers else None
                if prefix:
                    scope = dict(scope)
                    scope["root_path"] = prefix + scope.get("root_path", "")
                    scope["path"] = prefix + scope["path"]
                    if "raw_path" in scope and scope["raw_path"] is not None:
                        scope["raw_path"] = prefix.encode("latin-1") + scope["raw_path"]
        await self.app(scope, receive, send)


class CORS:
    """Cross-origin requests from the `cors_origins` setting's origins; without any, nothing is added."""

    def __init__(self, app: ASGIApp, ot: Outlast) -> None:
        self.app = app
        self.ot = ot
        self._origins: tuple[str, ...] = ()
        self._cors: CORSMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origins = self.ot.settings.cors_origins
        if scope["type"] != "http" or not origins:
            await self.app(scope, receive, send)
            return
        if self._cors is None or origins != self._origins:
            self._origins = origins
            self._cors = CORSMiddleware(
                self.app,
                allow_origins=list(origins),
                allow_methods=list(CORS_METHODS),
                allow_headers=list(CORS_ALLOW_HEADERS),
                expose_headers=list(CORS_EXPOSE_HEADERS),
                max_age=CORS_MAX_AGE,
            )
        await self._cors(scope, receive, send)
