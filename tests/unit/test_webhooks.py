"""Webhook signatures (checked with the reference `standardwebhooks`), SSRF refusals, DNS rebinding."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from outlast import Outlast
from outlast.deliveries import Delivery
from outlast.jobs import Job
from outlast.webhooks import Dispatcher, allowed, embedded_ipv4, new_secret, parse_networks, sign

HOSTILE = [
    "http://127.0.0.1/hook",
    "http://10.0.0.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://0x7f000001/",
    "http://user@127.0.0.1/",
    "http://user:pw@example.com/",
    "http://100.64.0.1/",
    "http://0.0.0.0/",
    "file:///etc/passwd",
    "gopher://example.com/",
    "ftp://example.com/",
    "http:///nohost",
    # IPv4 inside IPv6: each reaches the private address it carries.
    "http://[::127.0.0.1]/hook",  # IPv4-compatible
    "http://[::a9fe:a9fe]/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",  # IPv4-mapped
    "http://[::ffff:a9fe:a9fe]/latest/meta-data/",
    "http://[::ffff:0:a9fe:a9fe]/latest/meta-data/",  # SIIT
    "http://[::ffff:0:10.0.0.1]/hook",
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",  # NAT64, well-known prefix
    "http://[64:ff9b::10.0.0.1]/hook",
    "http://[64:ff9b:1::a9fe:a9fe]/latest/meta-data/",  # NAT64, local use, /96
    "http://[64:ff9b:1:a9fe:a9:fe00::]/latest/meta-data/",  # NAT64, local use, /48
    "http://[2002:a9fe:a9fe::1]/latest/meta-data/",  # 6to4
    "http://[2002:7f00:1::]/hook",
    "http://[2001:0:4136:e378:8000:63bf:5601:5601]/latest/meta-data/",  # Teredo, client 169.254.169.254
    "http://[2001:0:a00:1:8000:63bf:f7f7:f7f7]/hook",  # Teredo, server 10.0.0.1
]


def recording(sent: list[httpx.Request], status: int) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(status)

    return httpx.MockTransport(handle)


def headers_for(secret: str, body: bytes, message_id: str = "msg_1", timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }


def test_signatures_verify_with_the_reference_library():
    secret = new_secret()
    body = json.dumps({"id": "j_1", "status": "succeeded"}).encode()
    headers = headers_for(secret, body)
    assert Webhook(secret).verify(body, headers) == {"id": "j_1", "status": "succeeded"}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"succeeded", b"failed"), headers)  # tampered body
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)  # wrong secret
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers_for(secret, body, timestamp=int(time.time()) - 3600))  # old


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    ot = Outlast(store="memory://", workers=0, dashboard=True)

    @ot.job()
    async def noop() -> None: ...

    async with ot.lifespan(), httpx.AsyncClient(transport=httpx.ASGITransport(app=ot.app()), base_url="http://t") as c:
        yield c


@pytest.mark.parametrize("url", HOSTILE)
async def test_private_and_odd_urls_are_refused_at_submit(client: httpx.AsyncClient, url: str):
    response = await client.post("/jobs/noop", json={}, headers={"Outlast-Webhook": url})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert (await client.get("/jobs")).json()["jobs"] == []  # no job was made


async def test_unknown_webhook_events_are_refused(client: httpx.AsyncClient):
    headers = {"Outlast-Webhook": "https://93.184.215.14/h", "Outlast-Webhook-Events": "started, finished"}
    response = await client.post("/jobs/noop", json={}, headers=headers)
    assert response.status_code == 422


async def test_a_name_that_turns_private_after_submit_is_refused_at_delivery():
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])  # public at submit, private at delivery

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers)

    ot = Outlast(store="memory://", workers=1)
    ot.webhook_resolver = rebinding

    @ot.job()
    async def noop() -> None: ...

    async with ot.lifespan():
        job, _ = await ot.submit("noop", {}, webhook="http://rebind.example/hook")
        await ot.wait(job.id, 5)
        sent: list[httpx.Request] = []
        dispatcher = Dispatcher(ot.store, new_secret(), resolve=rebinding)
        dispatcher._client = httpx.AsyncClient(transport=recording(sent, 200))
        [delivery] = await ot.store.deliveries(job.id)
        await dispatcher.deliver(delivery)
        assert sent == []  # no connection was made
        [after] = await ot.store.deliveries(job.id)
        assert after.state == "pending"
        assert after.last_error is not None and "127.0.0.1" in after.last_error


async def test_deliveries_go_to_the_checked_address_with_the_urls_host():
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.215.14"]

    ot = Outlast(store="memory://", workers=0)
    sent: list[httpx.Request] = []
    async with ot.lifespan():
        secret = new_secret()
        dispatcher = Dispatcher(ot.store, secret, resolve=resolver)
        dispatcher._client = httpx.AsyncClient(transport=recording(sent, 204))
        delivery = Delivery("msg_x", "j_x", "https://hooks.example.com/in?a=1", "completed", {"id": "j_x"}, 0)
        await dispatcher.deliver(delivery)
    [request] = sent
    assert request.url.host == "93.184.215.14"
    assert request.url.path == "/in" and request.url.query == b"a=1"
    assert request.headers["host"] == "hooks.example.com"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    assert Webhook(secret).verify(request.content, dict(request.headers)) == {"id": "j_x"}
    assert delivery.state == "delivered"


@pytest.mark.parametrize("url", HOSTILE)
async def test_private_and_odd_urls_are_refused_at_delivery_too(url: str):
    """A URL stored before the rules changed (or by a bypass) is still never called."""
    ot = Outlast(store="memory://", workers=0)
    async with ot.lifespan():
        job = Job.new("x", {}, max_attempts=1, retention_s=60, webhook_url=url, webhook_events=("completed",))
        job, _ = await ot.store.create(job)
        await ot.store.request_cancel(job.id)  # a terminal event: a delivery is due
        sent: list[httpx.Request] = []
        dispatcher = Dispatcher(ot.store, new_secret())
        dispatcher._client = httpx.AsyncClient(transport=recording(sent, 200))
        [delivery] = await ot.store.claim_deliveries(60, 10)
        await dispatcher.deliver(delivery)
        await dispatcher._client.aclose()
    assert sent == []
    assert delivery.state == "pending" and delivery.last_error


@pytest.mark.parametrize(
    ("address", "ipv4"),
    [
        ("::ffff:169.254.169.254", "169.254.169.254"),
        ("::169.254.169.254", "169.254.169.254"),
        ("::ffff:0:169.254.169.254", "169.254.169.254"),
        ("64:ff9b::169.254.169.254", "169.254.169.254"),
        ("2002:a9fe:a9fe::1", "169.254.169.254"),
        ("2001:0:4136:e378:8000:63bf:5601:5601", "169.254.169.254"),
    ],
)
def test_ipv4_inside_ipv6_is_judged_as_ipv4(address: str, ipv4: str):
    v6 = ipaddress.IPv6Address(address)
    assert ipaddress.IPv4Address(ipv4) in embedded_ipv4(v6)
    assert not allowed(v6, [])
    assert allowed(v6, parse_networks(["169.254.0.0/16", "65.54.0.0/16"]))  # webhook_allow admits the IPv4


@pytest.mark.parametrize("address", ["64:ff9b::8.8.8.8", "::ffff:8.8.8.8", "2002:808:808::1", "2606:4700::1111"])
def test_public_addresses_through_ipv6_forms_are_allowed(address: str):
    assert allowed(ipaddress.IPv6Address(address), [])


def test_local_use_nat64_is_refused_unless_its_network_is_allowed():
    """64:ff9b:1::/48 embeds IPv4 where each network chooses (RFC 6052): every reading must be public."""
    address = ipaddress.IPv6Address("64:ff9b:1::169.254.169.254")
    assert ipaddress.IPv4Address("169.254.169.254") in embedded_ipv4(address)
    assert not allowed(address, [])
    assert not allowed(ipaddress.IPv6Address("64:ff9b:1::8.8.8.8"), [])  # 0.0.0.0 under a /48 reading
    assert allowed(address, parse_networks(["64:ff9b:1::/48"]))


@pytest.mark.parametrize(
    ("status", "retry_after", "state"),
    [(200, "\u00b2", "delivered"), (503, "\u00b2", "pending"), (503, "9" * 400, "pending"), (503, "nan", "pending")],
)
async def test_any_answer_is_saved_as_one_attempt(status: int, retry_after: str, state: str):
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.215.14"]

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=[(b"retry-after", retry_after.encode("latin-1"))])

    ot = Outlast(store="memory://", workers=0)
    async with ot.lifespan():
        dispatcher = Dispatcher(ot.store, new_secret(), resolve=resolver, backoff_s=(0, 5, 10))
        dispatcher._client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
        delivery = Delivery("msg_r", "j_r", "https://hooks.example.com/in", "completed", {"id": "j_r"}, 0)
        before = time.time()
        await dispatcher.deliver(delivery)
        await dispatcher._client.aclose()
    assert (delivery.state, delivery.attempt, delivery.last_status) == (state, 1, status)
    if state == "pending":
        assert before + 4 < delivery.next_at <= time.time() + 86400
