"""`WS /ws` in process (Starlette's test client): submit, follow, errors, cancel, auth.

The real-server tests (tests/integration/test_websocket.py) cover slow readers,
reconnects and many subscribers; these cover the protocol's messages quickly.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.websockets import WebSocketDisconnect

from outlast import JobContext, Outlast

with warnings.catch_warnings():  # newer Starlette asks for `httpx2` in its test client; `httpx` still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.timeout(30)


def make(**settings: Any) -> Outlast:
    ot = Outlast(store="memory://", workers=2, **settings)

    @ot.job()
    async def add(ctx: JobContext, a: int, b: int) -> int:
        ctx.progress(1, 1, "adding")
        return a + b

    @ot.job()
    async def wait(seconds: float = 30) -> None:
        await asyncio.sleep(seconds)

    @ot.long_running("/route")
    async def route() -> str:
        return "only through its route"

    return ot


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(make().app()) as client:
        yield client


def until_terminal(ws: Any) -> list[dict[str, Any]]:
    events = []
    while True:
        message = ws.receive_json()
        if message["type"] == "cancel":  # the answer to a cancel, among the events
            continue
        assert message["type"] == "event", message
        events.append(message)
        if message["event"] == "status" and message["data"]["status"] in ("succeeded", "failed", "canceled"):
            return events


def test_a_route_key_action_is_accepted_and_followed_to_its_result(client: TestClient):
    with client.websocket_connect("/ws") as ws:
        ws.send_json({"action": "add", "a": 2, "b": 3, "ref": "r1"})
        accepted = ws.receive_json()
        assert accepted["type"] == "accepted" and accepted["ref"] == "r1"
        job_id = accepted["job"]["id"]
        events = until_terminal(ws)
        assert {e["job_id"] for e in events} == {job_id}
        assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
        assert events[-1]["data"]["result"] == 5
        assert any(e["event"] == "progress" for e in events)


def test_bad_messages_get_errors_and_the_connection_stays_open(client: TestClient):
    with client.websocket_connect("/ws") as ws:
        ws.send_text("{not json")
        assert ws.receive_json()["status"] == 400
        ws.send_json({"action": "nope", "ref": 7})
        unknown = ws.receive_json()
        assert (unknown["type"], unknown["status"], unknown["ref"]) == ("error", 404, 7)
        ws.send_json({"action": "route"})  # a long-running route's job is no action
        assert ws.receive_json()["status"] == 404
        ws.send_json({"action": "add", "a": "x", "b": 1})
        invalid = ws.receive_json()
        assert invalid["status"] == 422
        assert [e["loc"] for e in invalid["errors"]] == [["a"]]
        ws.send_json({"action": "subscribe", "id": "j_unknown"})
        assert ws.receive_json()["status"] == 404
        ws.send_json({"action": "add", "a": 1, "b": 1})
        assert ws.receive_json()["type"] == "accepted"  # still serving


def test_cancel_reaches_the_subscriber(client: TestClient):
    with client.websocket_connect("/ws") as ws:
        ws.send_json({"action": "submit", "name": "wait", "input": {"seconds": 30}})
        job_id = ws.receive_json()["job"]["id"]
        ws.send_json({"action": "cancel", "id": job_id})
        assert until_terminal(ws)[-1]["data"]["status"] == "canceled"


def test_with_keys_the_socket_needs_one_and_rate_limits_apply():
    with TestClient(make(api_keys="k1", submit_rate=0.5).app()) as client:
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/ws"):
            pass
        assert refused.value.code == 1008
        with client.websocket_connect("/ws", headers={"Authorization": "Bearer k1"}) as ws:
            ws.send_json({"action": "add", "a": 1, "b": 1})
            assert ws.receive_json()["type"] == "accepted"
            ws.send_json({"action": "add", "a": 1, "b": 1, "ref": "again"})
            while (message := ws.receive_json())["type"] == "event":
                pass  # the first job's events
            assert (message["status"], message["ref"]) == (429, "again")
