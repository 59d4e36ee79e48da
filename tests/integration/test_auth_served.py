"""API keys on a real server: the WebSocket and the client."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from outlast.client import AsyncClient, ProblemError

pytestmark = pytest.mark.slow

KEYS = {"OUTLAST_API_KEYS": "alice-key,bob-key"}


async def test_the_websocket_needs_a_key_and_sees_only_its_jobs(serve: Any):
    server = serve(env=KEYS)
    ws_url = server.url.replace("http", "ws", 1) + "/ws"
    job = httpx.post(
        f"{server.url}/jobs/echo",
        json={"text": "a"},
        headers={"Authorization": "Bearer alice-key", "Prefer": "wait=5"},
        timeout=10,
    ).json()
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url):
            pass
    assert refused.value.response.status_code == 403
    async with connect(ws_url, additional_headers={"Authorization": "Bearer bob-key"}) as ws:
        await ws.send(json.dumps({"action": "subscribe", "id": job["id"], "ref": "s"}))
        assert json.loads(await ws.recv())["status"] == 404
    async with connect(ws_url, additional_headers={"Authorization": "Bearer alice-key"}) as ws:
        await ws.send(json.dumps({"action": "subscribe", "id": job["id"]}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        assert json.loads(await ws.recv())["type"] == "event"


async def test_the_client_sends_its_key(serve: Any):
    server = serve(env=KEYS)
    async with AsyncClient(server.url, api_key="alice-key") as client:
        assert await client.run("echo", {"text": "hi"}, timeout=10) == ["hi"]
    async with AsyncClient(server.url) as anonymous:
        with pytest.raises(ProblemError) as info:
            await anonymous.run("echo", {"text": "hi"}, timeout=10)
        assert info.value.status == 401
