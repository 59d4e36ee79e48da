"""Webhook signatures (checked with the reference `standardwebhooks`), SSRF refusals, DNS rebinding."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from outlast import Outlast
from outlast.deliveries import Delivery
from outlast.jobs import Job
from outlast.webhooks import Dispatcher, new_secret, sign

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
