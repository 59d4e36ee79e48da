"""Webhooks: signed as Standard Webhooks are, delivered from the store's outbox, never to private networks.

A job submitted with `Outlast-Webhook: <url>` (and optionally
`Outlast-Webhook-Events: started, progress, completed`) gets a `POST` of its job
object for each of those events. Each delivery is signed (`webhook-id`,
`webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">` with the `whsec_` secret), retried with backoff and
jitter (honouring `Retry-After`) until a `2xx`; `410 Gone` stops it; redirects
are failures; each attempt has 15 s.

SSRF: only `http`/`https` URLs without credentials, to names that resolve to
public addresses only (or to networks in `webhook_allow`). The check runs at
submit and again at every delivery, and the connection goes to the address
that was checked (the TLS name and Host stay the URL's), so a name that
re-resolves to a private address in between (DNS rebinding) gets nowhere.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import httpx

from outlast.deliveries import DEFAULT_EVENTS, DELIVERED, FAILED, GONE, WEBHOOK_EVENTS, Delivery
from outlast.exceptions import ConfigError, InvalidInput
from outlast.retry_after import parse_retry_after
from outlast.stores.base import JobStore

logger = logging.getLogger("outlast.webhooks")

TIMEOUT_S = 15.0
POLL_S = 0.5
LEASE_S = 60.0
BATCH = 32
SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
SECRET_SETTING = "webhook_secret"  # noqa: S105 (a name, not a secret)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]


class WebhookRefused(InvalidInput):
    """The webhook URL is not one outlast will call."""


# -- which URLs may be called --------------------------------------------------------------


def parse_events(header: str | None) -> tuple[str, ...]:
    if header is None or not header.strip():
        return DEFAULT_EVENTS
    events = tuple(dict.fromkeys(part.strip().lower() for part in header.split(",") if part.strip()))
    unknown = [e for e in events if e not in WEBHOOK_EVENTS]
    if unknown:
        raise WebhookRefused(f"unknown webhook events {unknown}: choose from {', '.join(WEBHOOK_EVENTS)}")
    return events


def parse_networks(entries: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip()]


def check_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL without credentials; `WebhookRefused` otherwise."""
    if len(url) > 2048:
        raise WebhookRefused("the webhook URL is too long")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookRefused(f"the webhook URL is malformed: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused("webhook URLs must be http or https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise WebhookRefused("webhook URLs may not carry credentials")
    if not parts.hostname:
        raise WebhookRefused("the webhook URL has no host")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def allowed(address: IPAddress, allow: Sequence[Network]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(address in network for network in allow):
        return True
    # is_global is False for loopback, private, link-local (169.254.169.254),
    # shared (100.64.0.0/10), reserved, unspecified and documentation ranges.
    return address.is_global and not address.is_multicast


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def resolve_allowed(url: str, allow: Sequence[Network], resolve: Resolver) -> tuple[str, str, int, str]:
    """The URL's scheme, host, port, and an address for it that may be called."""
    scheme, host, port = check_url(url)
    try:
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in await resolve(host, port)]
    except (OSError, ValueError) as exc:
        raise WebhookRefused(f"the webhook host {host!r} does not resolve") from exc
    if not addresses:
        raise WebhookRefused(f"the webhook host {host!r} does not resolve")
    refused = [str(a) for a in addresses if not allowed(a, allow)]
    if refused:
        raise WebhookRefused(f"webhook URLs must reach public addresses; {host!r} is {', '.join(refused)}")
    return scheme, host, port, str(addresses[0])


# -- signing ---------------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value (Standard Webhooks, v1)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


# -- delivering ---------------------------------------------------------------------------


def retry_after_s(response: httpx.Response) -> float | None:
    return parse_retry_after(response.headers.get("retry-after"))


class Dispatcher:
    """Sends the due deliveries of the store's outbox (in every process; claims keep them apart)."""

    def __init__(
        self,
        store: JobStore,
        secret: str,
        *,
        allow: Sequence[Network] = (),
        backoff_s: Sequence[float] = (0, 5, 300, 1800, 7200, 18000, 36000),
        resolve: Resolver = system_resolver,
    ) -> None:
        self.store = store
        self.secret = secret
        self.allow = list(allow)
        self.backoff_s = list(backoff_s)
        self.resolve = resolve
        self._client = httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False, trust_env=False)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outlast-webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                due = await self.store.claim_deliveries(LEASE_S, BATCH)
                by_job: dict[str, list[Delivery]] = {}
                for delivery in due:
                    by_job.setdefault(delivery.job_id, []).append(delivery)
                # Jobs in parallel; one job's deliveries in order (started before completed).
                await asyncio.gather(*(self._deliver_in_order(group) for group in by_job.values()))
            except Exception:
                logger.exception("sending webhooks failed; trying again")
                due = []
            if len(due) < BATCH:
                await asyncio.sleep(POLL_S)

    async def _deliver_in_order(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            await self.deliver(delivery)

    async def deliver(self, delivery: Delivery) -> None:
        """One attempt, and what follows from it."""
        if await self._url_gone(delivery):
            delivery.state = GONE
            await self.store.save_delivery(delivery)
            return
        delivery.attempt += 1
        status, error, wait_s = await self._attempt(delivery)
        delivery.last_status, delivery.last_error = status, error
        if status is not None and 200 <= status < 300:
            delivery.state = DELIVERED
        elif status == 410:
            delivery.state = GONE
            await self._stop_others(delivery)
        elif delivery.attempt >= len(self.backoff_s):
            delivery.state = FAILED
        else:
            delay = self.backoff_s[delivery.attempt] * random.uniform(0.9, 1.1)
            delivery.next_at = time.time() + max(delay, wait_s or 0.0)
        await self.store.save_delivery(delivery)

    async def _attempt(self, delivery: Delivery) -> tuple[int | None, str | None, float | None]:
        try:
            scheme, host, port, address = await resolve_allowed(delivery.url, self.allow, self.resolve)
        except WebhookRefused as exc:
            return None, exc.message, None
        body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False).encode()
        timestamp = int(time.time())
        parts = urlsplit(delivery.url)
        netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        target = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
        headers = {
            "content-type": "application/json",
            "host": parts.netloc,
            "user-agent": "outlast-webhooks",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.secret, delivery.id, timestamp, body),
        }
        try:
            # To the address that was checked; TLS still verifies the URL's own name.
            response = await self._client.post(target, content=body, headers=headers, extensions={"sni_hostname": host})
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500], None
        if 300 <= response.status_code < 400:
            return response.status_code, "redirects are not followed", retry_after_s(response)
        return response.status_code, None, retry_after_s(response)

    async def _url_gone(self, delivery: Delivery) -> bool:
        """Whether this URL answered 410 to an earlier delivery of the same job."""
        others = await self.store.deliveries(delivery.job_id)
        return any(o.url == delivery.url and o.state == GONE and o.id != delivery.id for o in others)

    async def _stop_others(self, gone: Delivery) -> None:
        for other in await self.store.deliveries(gone.job_id):
            if other.id != gone.id and other.url == gone.url and other.state == "pending":
                other.state = GONE
                await self.store.save_delivery(other)


async def secret_for(store: JobStore, configured: str | None) -> str:
    """The configured secret, or the one this deployment generated (and logged) once."""
    if configured:
        if not configured.startswith(SECRET_PREFIX):
            raise ConfigError(f"webhook_secret must start with {SECRET_PREFIX} (then base64)")
        return configured
    candidate = new_secret()
    secret = await store.setting(SECRET_SETTING, candidate)
    if secret == candidate:
        logger.warning(
            "webhook secret generated (set OUTLAST_WEBHOOK_SECRET to choose your own); "
            "receivers verify signatures with: %s",
            secret,
        )
    return secret
