"""The WebSocket (docs/protocol.md, "WebSocket"), spoken to a real `outlast serve` over a socket, on a SQLite file."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.slow

TERMINAL = {"succeeded", "failed", "canceled"}
Message = dict[str, Any]


# -- helpers ----------------------------------------------------------------------------


def ws_url(server: Any) -> str:
    return str(server.url).replace("http://", "ws://", 1) + "/ws"


def open_ws(server: Any, **kwargs: Any) -> connect:
    return connect(ws_url(server), open_timeout=10, close_timeout=2, **kwargs)


async def send(ws: ClientConnection, message: Message) -> None:
    await ws.send(json.dumps(message))


async def receive(ws: ClientConnection) -> Message:
    message: Message = json.loads(await ws.recv())
    assert isinstance(message, dict), message
    assert message.get("type") in {"accepted", "subscribed", "unsubscribed", "cancel", "ended", "event", "error"}, (
        message
    )
    return message


async def reply(ws: ClientConnection) -> Message:
    """The next message that is not a job's event: the answer to a message the client sent."""
    while True:
        message = await receive(ws)
        if message["type"] != "event":
            return message


def is_terminal(message: Message) -> bool:
    return message["event"] == "status" and message["data"]["status"] in TERMINAL


def is_running(message: Message) -> bool:
    return bool(message["event"] == "status" and message["data"]["status"] == "running")


def seq_is(seq: int) -> Callable[[Message], bool]:
    return lambda event: event["seq"] == seq


async def until_closed(ws: ClientConnection) -> list[Message]:
    """What arrives until the server closes the connection."""
    received: list[Message] = []
    try:
        while True:
            received.append(await receive(ws))
    except ConnectionClosed:
        return received


async def events_until(
    ws: ClientConnection, job_id: str, stop: Callable[[Message], bool] = lambda event: False
) -> list[Message]:
    """The job's events (position events left out) until its terminal status, or one that `stop` picks."""
    events: list[Message] = []
    while True:
        message = await receive(ws)
        if message["type"] != "event" or message["job_id"] != job_id:
            continue
        assert set(message) == {"type", "job_id", "seq", "event", "data"}, message
        if message["event"] == "position":
            assert message["seq"] is None, message
            continue
        assert isinstance(message["seq"], int), message
        events.append(message)
        if is_terminal(message) or stop(message):
            return events


def assert_contiguous(events: list[Message], first: int = 1) -> None:
    seqs = [event["seq"] for event in events]
    assert seqs == list(range(first, first + len(seqs))), f"gap or duplicate: {seqs}"


def assert_ends(events: list[Message], status: str) -> Message:
    assert is_terminal(events[-1]), events[-1]
    assert not any(is_terminal(event) for event in events[:-1])
    data: Message = events[-1]["data"]
    assert data["status"] == status, data
    return data


def keys(events: list[Message]) -> list[str]:
    return [json.dumps(event, sort_keys=True) for event in events]


async def submit_http(server: Any, name: str, input: Message) -> Message:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        response = await client.post(f"/jobs/{name}", json=input, headers={"Prefer": "respond-async"})
    assert response.status_code == 202, response.text
    job: Message = response.json()
    return job


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def unsent_bytes(server_port: int, client_port: int) -> int:
    """What the server's end of one TCP connection holds, sent but not yet taken by the client."""
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return int(fields[4].split(":")[0], 16)
    raise AssertionError(f"no connection {server_port} -> {client_port}")


# -- 1, 2. submit --------------------------------------------------------------------------


async def test_the_route_key_action_generate_report_runs_and_streams_to_its_result(serve):
    server = serve("examples.app:ot")
    async with open_ws(server) as ws, asyncio.timeout(20):
        started = time.monotonic()
        await send(ws, {"action": "generateReport", "delay": 2000, "amountOfRows": 500})
        accepted = await receive(ws)
        assert accepted["type"] == "accepted", accepted
        job = accepted["job"]
        assert job["name"] == "generateReport"
        assert job["status"] in {"queued", "running"}
        assert job["links"]["self"] == f"/jobs/{job['id']}"
        events = await events_until(ws, job["id"])
        elapsed = time.monotonic() - started

    assert_contiguous(events)
    assert events[0]["event"] == "status" and events[0]["data"]["status"] == "queued"
    assert any(e["event"] == "status" and e["data"]["status"] == "running" for e in events)
    progress = [e["data"] for e in events if e["event"] == "progress"]
    assert len(progress) >= 2, events
    assert progress[-1] == {"current": 20, "total": 20, "message": "waiting for the data"}
    currents = [p["current"] for p in progress]
    assert currents == sorted(currents)
    assert any(e["event"] == "log" and e["data"]["message"] == "built 500 rows" for e in events)
    final = assert_ends(events, "succeeded")
    assert final["id"] == job["id"]
    assert final["result"]["rows"] == 500
    assert elapsed >= 2.0  # the delay was honoured


async def test_submit_by_name_is_accepted_with_its_ref_and_followed(serve):
    server = serve("examples.app:ot")
    async with open_ws(server) as ws, asyncio.timeout(20):
        await send(ws, {"action": "submit", "name": "report", "input": {"delay": 200, "rows": 10}, "ref": "r1"})
        accepted = await receive(ws)
        assert accepted["type"] == "accepted", accepted
        assert accepted["ref"] == "r1"
        assert accepted["job"]["name"] == "report"
        events = await events_until(ws, accepted["job"]["id"])
    assert_contiguous(events)
    assert assert_ends(events, "succeeded")["result"]["rows"] == 10


# -- 3. errors keep the connection -----------------------------------------------------------


async def test_unknown_actions_and_malformed_messages_get_errors_and_the_connection_stays_open(serve):
    server = serve()
    async with open_ws(server) as ws, asyncio.timeout(20):

        async def still_works(ref: str) -> None:
            await send(ws, {"action": "submit", "name": "echo", "input": {"text": ref}, "ref": ref})
            accepted = await reply(ws)
            assert accepted["type"] == "accepted" and accepted["ref"] == ref, accepted

        await send(ws, {"action": "no_such_thing", "ref": "u1"})
        error = await reply(ws)
        assert error["type"] == "error" and error["status"] == 404, error
        assert error["ref"] == "u1"
        assert isinstance(error["title"], str) and isinstance(error["detail"], str)
        await still_works("after-unknown")

        for raw in ["{not json", '{"action": "submit", ', "[1, 2, 3]", '"a string"', "42", "null"]:
            await ws.send(raw)
            error = await reply(ws)
            assert error["type"] == "error" and error["status"] == 400, (raw, error)
            assert "Traceback" not in json.dumps(error)
            await still_works(f"after {raw}")

        await send(ws, {"ref": "no-action"})
        error = await reply(ws)
        assert error["type"] == "error" and error["status"] == 400 and error["ref"] == "no-action", error
        await still_works("after-no-action")


async def test_a_message_over_the_limit_closes_the_connection_with_1009(serve):
    server = serve(max_body=1024)
    async with open_ws(server) as ws, asyncio.timeout(20):
        await send(ws, {"action": "submit", "name": "echo", "input": {"text": "small"}, "ref": "ok"})
        assert (await reply(ws))["type"] == "accepted"
        await send(ws, {"action": "submit", "name": "echo", "input": {"text": "x" * 2048}, "ref": "big"})
        received = await until_closed(ws)
        assert all(message["type"] == "event" for message in received), f"answered instead of closing: {received}"
        assert ws.close_code == 1009, (ws.close_code, ws.close_reason)


# -- 5. reconnect ----------------------------------------------------------------------------


async def test_a_client_that_reconnects_with_after_gets_exactly_what_it_missed(serve):
    server = serve()
    job = await submit_http(server, "sleep", {"seconds": 3, "steps": 30})
    cut = 6
    async with asyncio.timeout(30):
        async with open_ws(server) as ws:
            await send(ws, {"action": "subscribe", "id": job["id"], "ref": "s1"})
            first = await events_until(ws, job["id"], seq_is(cut))
        # Disconnected mid-job; the job goes on.
        async with open_ws(server) as ws:
            await send(ws, {"action": "subscribe", "id": job["id"], "after": cut, "ref": "s2"})
            second = await events_until(ws, job["id"])
        async with open_ws(server) as ws:  # the whole story, for comparison
            await send(ws, {"action": "subscribe", "id": job["id"], "after": 0})
            replay = await events_until(ws, job["id"])

    assert first[-1]["seq"] == cut
    assert second[0]["seq"] == cut + 1
    assert_contiguous(first + second)
    assert_ends(first + second, "succeeded")
    assert keys(first + second) == keys(replay)
    assert len(second) > 5  # it was still running when the client left


# -- 6. fan-out, unsubscribe, cancel ----------------------------------------------------------


async def test_every_subscriber_gets_every_event_and_unsubscribe_stops_them(serve):
    server = serve()
    job = await submit_http(server, "sleep", {"seconds": 2, "steps": 20})
    async with open_ws(server) as one, open_ws(server) as two, open_ws(server) as three, asyncio.timeout(20):
        for ws in (one, two, three):
            await send(ws, {"action": "subscribe", "id": job["id"]})

        # The third one leaves after its first event.
        assert (await events_until(three, job["id"], seq_is(1)))[-1]["seq"] == 1
        await send(three, {"action": "unsubscribe", "id": job["id"], "ref": "u"})
        assert await reply(three) == {"type": "unsubscribed", "ref": "u", "id": job["id"]}
        await send(three, {"action": "subscribe", "id": "j_nosuchjob", "ref": "probe-1"})
        error = await reply(three)  # events already on their way may come before it
        assert error == {**error, "type": "error", "status": 404, "ref": "probe-1"}, error

        seen_one, seen_two = await asyncio.gather(events_until(one, job["id"]), events_until(two, job["id"]))
        assert_contiguous(seen_one)
        assert_ends(seen_one, "succeeded")
        assert keys(seen_one) == keys(seen_two)
        assert sum(event["event"] == "progress" for event in seen_one) >= 5

        # The job has ended: the third connection got nothing of it after the unsubscribe was answered.
        await send(three, {"action": "subscribe", "id": "j_nosuchjob", "ref": "probe-2"})
        message = await receive(three)
        assert message["type"] == "error" and message["ref"] == "probe-2", f"an event after unsubscribe: {message}"


async def test_cancel_over_the_websocket_reaches_every_subscriber(serve):
    server = serve()
    async with open_ws(server) as one, open_ws(server) as two, asyncio.timeout(20):
        await send(one, {"action": "submit", "name": "sleep", "input": {"seconds": 30, "steps": 30}, "ref": "s"})
        accepted = await reply(one)
        job_id = accepted["job"]["id"]
        await send(two, {"action": "subscribe", "id": job_id})

        before_one = await events_until(one, job_id, is_running)
        before_two = await events_until(two, job_id, is_running)
        assert is_running(before_one[-1]) and is_running(before_two[-1])

        started = time.monotonic()
        await send(one, {"action": "cancel", "id": job_id, "ref": "c"})
        after_one, after_two = await asyncio.gather(events_until(one, job_id), events_until(two, job_id))
        assert time.monotonic() - started < 5

    for before, after in ((before_one, after_one), (before_two, after_two)):
        assert_contiguous(before + after)
        final = assert_ends(before + after, "canceled")
        assert final["error"] is not None


# -- 7. a slow reader --------------------------------------------------------------------------


async def test_a_client_that_stops_reading_does_not_slow_the_others(serve):
    server = serve(workers=32)
    assert server.proc is not None
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client, asyncio.timeout(60):
        # Big finished jobs: replaying them is megabytes, more than the socket buffers hold.
        text = os.urandom(4096).hex()  # incompressible
        big = []
        for _ in range(12):
            response = await client.post("/jobs/echo", json={"text": text, "times": 64}, params={"wait": 20})
            assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text
            big.append(response.json()["id"])
        # Chatty running jobs: progress all along.
        chatty = [await submit_http(server, "sleep", {"seconds": 5, "steps": 500}) for _ in range(20)]
        rss_before = rss_kib(server.proc.pid)

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # a small window: no kernel buffering to hide in
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        client_port = sock.getsockname()[1]
        slow = await connect(ws_url(server), sock=sock, max_queue=1, max_size=None, compression=None, close_timeout=1)
        try:
            for job in chatty:
                await send(slow, {"action": "subscribe", "id": job["id"]})
            for job_id in big:
                await send(slow, {"action": "subscribe", "id": job_id})
            # ... and it never reads again.

            async with open_ws(server) as other:
                started = time.monotonic()
                await send(other, {"action": "submit", "name": "sleep", "input": {"seconds": 2, "steps": 4}})
                job_id = (await reply(other))["job"]["id"]
                events = await events_until(other, job_id)
                elapsed = time.monotonic() - started
            assert_contiguous(events)
            assert_ends(events, "succeeded")
            assert elapsed < 2 + 3, f"the other client got its job's end after {elapsed:.1f} s"

            # The slow reader really is stalled: the server holds bytes it cannot deliver.
            assert unsent_bytes(server.port, client_port) > 64 * 1024
            assert (await client.get("/healthz")).status_code == 200
            grown_mib = (rss_kib(server.proc.pid) - rss_before) / 1024
            assert grown_mib < 40, f"the server grew by {grown_mib:.0f} MiB"
        finally:
            slow.transport.abort()
        assert (await client.get("/healthz")).status_code == 200


# -- 8. every message is answered ------------------------------------------------------------


async def test_subscribe_cancel_and_unsubscribe_are_answered_with_their_ref(serve):
    server = serve()
    job = await submit_http(server, "sleep", {"seconds": 30, "steps": 30})
    async with open_ws(server) as ws, asyncio.timeout(20):
        await send(ws, {"action": "subscribe", "id": job["id"], "ref": {"n": 1}})
        assert await reply(ws) == {"type": "subscribed", "ref": {"n": 1}, "id": job["id"], "after": 0}
        await events_until(ws, job["id"], is_running)

        await send(ws, {"action": "cancel", "id": job["id"], "ref": "c"})
        answer = await reply(ws)
        assert answer["type"] == "cancel" and answer["ref"] == "c", answer
        assert answer["job"]["id"] == job["id"]
        assert answer["job"]["status"] in {"running", "canceled"}  # running: asked to stop; it ends soon
        assert answer["job"]["links"]["self"] == f"/jobs/{job['id']}"
        assert_ends(await events_until(ws, job["id"]), "canceled")

        await send(ws, {"action": "cancel", "id": job["id"], "ref": "again"})  # idempotent, and still answered
        again = await reply(ws)
        assert again["type"] == "cancel" and again["ref"] == "again" and again["job"]["status"] == "canceled"

        await send(ws, {"action": "unsubscribe", "id": job["id"], "ref": 7})
        assert await reply(ws) == {"type": "unsubscribed", "ref": 7, "id": job["id"]}
        await send(ws, {"action": "unsubscribe", "ref": 8})
        error = await reply(ws)
        assert error["type"] == "error" and error["status"] == 400 and error["ref"] == 8, error


async def test_a_subscription_at_or_after_the_end_says_ended_and_holds_no_slot(serve):
    server = serve()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        done = (await client.post("/jobs/echo", json={"text": "hi"}, params={"wait": 10})).json()
        running = await submit_http(server, "sleep", {"seconds": 2, "steps": 2})
    assert done["status"] == "succeeded"
    async with open_ws(server) as ws, asyncio.timeout(30):
        await send(ws, {"action": "subscribe", "id": done["id"], "ref": "all"})  # from the start: the whole story
        assert (await reply(ws))["type"] == "subscribed"
        last = (await events_until(ws, done["id"]))[-1]["seq"]

        for after, ref in ((last, "at"), (last + 100, "past")):
            await send(ws, {"action": "subscribe", "id": done["id"], "after": after, "ref": ref})
            ended = await reply(ws)
            assert ended["type"] == "ended" and ended["ref"] == ref and ended["id"] == done["id"], ended
            assert ended["job"]["status"] == "succeeded" and ended["job"]["result"] == ["hi"]

        # Each of those holds no slot: far more of them than a connection may follow, then a live one.
        for i in range(1100):
            await send(ws, {"action": "subscribe", "id": done["id"], "after": last, "ref": i})
        for i in range(1100):
            assert (await reply(ws))["type"] == "ended", i
        await send(ws, {"action": "subscribe", "id": running["id"], "ref": "live"})
        assert (await reply(ws))["type"] == "subscribed"
        assert_ends(await events_until(ws, running["id"]), "succeeded")


async def test_invalid_input_is_answered_422_with_its_errors_as_over_http(serve):
    server = serve()
    async with open_ws(server) as ws, asyncio.timeout(20):
        await send(ws, {"action": "echo", "times": "three", "ref": "bad"})
        error = await reply(ws)
    assert error["type"] == "error" and error["status"] == 422 and error["ref"] == "bad", error
    locations = sorted(tuple(e["loc"]) for e in error["errors"])
    assert locations == [("text",), ("times",)], error["errors"]
    assert all(isinstance(e["msg"], str) and isinstance(e["type"], str) for e in error["errors"])
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        over_http = (await client.post("/jobs/echo", json={"times": "three"})).json()
    assert error["errors"] == over_http["errors"]


def test_a_plain_get_of_the_websocket_endpoint_is_426_upgrade_required(serve):
    server = serve()
    response = httpx.get(f"{server.url}/ws", timeout=10)
    assert response.status_code == 426
    assert response.headers["upgrade"] == "websocket"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 426


def test_text_that_is_not_utf8_is_closed_with_1007_without_a_traceback(serve):
    server = serve()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        payload = b'{"action": "echo", "text": "\xff\xfe"}'
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)  # one masked text frame
        frame = sock.recv(4096)
    assert frame[0] == 0x88, frame  # a close frame
    assert int.from_bytes(frame[2:4], "big") == 1007, frame
    time.sleep(0.5)  # the log line is written as the connection closes
    log = server.output()
    assert "Traceback" not in log and "ERROR" not in log, log
    assert "not UTF-8" in log
