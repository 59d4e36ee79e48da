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
MAX_RETRY_AFTER_S = 86400.0  # a receiver's Retry-After is honoured up to a day
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


NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052, the well-known prefix
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215, local use: any RFC 6052 prefix length
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # ::a.b.c.d (deprecated, still routed by some stacks)
SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")  # ::ffff:0:a.b.c.d, RFC 2765


def _ipv4_at(address: ipaddress.IPv6Address, prefix_bits: int) -> ipaddress.IPv4Address:
    """The IPv4 address embedded after an RFC 6052 prefix of this length (bits 64-71 are skipped)."""
    octets = [b for i, b in enumerate(address.packed) if i != 8][prefix_bits // 8 : prefix_bits // 8 + 4]
    return ipaddress.IPv4Address(bytes(octets) if prefix_bits < 96 else address.packed[12:])


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches through a translation or tunnel form; [] for none.

    IPv4-mapped, IPv4-compatible, SIIT, NAT64 (well-known and local-use), 6to4
    and Teredo (its server and its client) all lead to IPv4 space, and Python's
    `is_global` judges some of them by the IPv6 prefix alone.
    """
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    if address in NAT64 or address in IPV4_COMPATIBLE or address in SIIT:
        return [ipaddress.IPv4Address(address.packed[12:])]
    if address in NAT64_LOCAL:
        return [_ipv4_at(address, bits) for bits in (48, 56, 64, 96)]  # whichever the network uses
    return []


def allowed(address: IPAddress, allow: Sequence[Network]) -> bool:
    if any(address in network for network in allow):
        return True
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        if embedded:  # judged as the IPv4 addresses it reaches (::ffff:127.0.0.1 is 127.0.0.1)
            return all(allowed(v4, allow) for v4 in embedded)
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
        delivery.last_status = None  # set by _attempt as soon as the receiver answers
        try:
            status, error, wait_s = await self._attempt(delivery)
        except Exception as exc:
            # Whatever goes wrong with a receiver's answer (a header we can't read, ...),
            # the attempt is saved and the schedule goes on: never the same delivery for ever.
            logger.warning("webhook %s: could not handle the receiver's answer: %r", delivery.id, exc)
            status, error, wait_s = delivery.last_status, f"unreadable answer: {type(exc).__name__}: {exc}"[:500], None
        if wait_s is not None and not 0 <= wait_s <= MAX_RETRY_AFTER_S:  # nan, inf, negative, years
            wait_s = MAX_RETRY_AFTER_S if wait_s > MAX_RETRY_AFTER_S else None
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
        delivery.last_status = response.status_code
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
