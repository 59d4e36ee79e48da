"""Hostile peers against a real `outlast serve`: odd numbers, non-finite numbers, bad ranges and frames.

Each answer is a 4xx the client can read, never a 500 or a traceback in the
server's log, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.slow

APP = "tests.hostile_app:ot"
TIMEOUT = httpx.Timeout(10.0)


def assert_problem(response: httpx.Response, status: int, type: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["type"] == type, body
    return body


def assert_healthy(server: Any) -> None:
    assert httpx.get(f"{server.url}/healthz", timeout=TIMEOUT).status_code == 200
    assert "Traceback" not in server.output()


def submit(server: Any, name: str, input: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/jobs/{name}", json=input, headers=headers, timeout=TIMEOUT)
    assert response.status_code in (200, 202), response.text
    job: dict[str, Any] = response.json()
    return job


def finished(server: Any, job_id: str) -> Any:
    response = httpx.get(f"{server.url}/jobs/{job_id}/result", timeout=TIMEOUT, follow_redirects=True)
    assert response.status_code == 200, response.text
    return response.json()


def raw_status(server: Any, path: str, header: bytes) -> int:
    """The status of a GET with this header line, sent as is (an HTTP client would tidy it)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + header + b"\r\n\r\n")
        head = sock.recv(64)
    return int(head.split(b" ")[1])


# -- numbers in text: ASCII digits only ------------------------------------------------------


def test_unicode_digits_in_cursors_hops_and_links_are_refused_not_500(serve: Any):
    server = serve(APP)
    job = submit(server, "small_file", {"size": 10}, Prefer="wait=5")
    assert job["status"] == "succeeded", job
    events = f"{server.url}/jobs/{job['id']}/events"

    # "²" passes str.isdigit(), and int() then fails: every one of these was a 500.
    assert_problem(httpx.get(f"{events}?after=²", timeout=TIMEOUT), 400, "bad_request")
    assert_problem(httpx.get(events, headers={b"Last-Event-ID": b"\xb2"}, timeout=TIMEOUT), 400, "bad_request")
    # "٣" is 3 to int(): no event number either.
    assert_problem(httpx.get(f"{events}?after=٣", timeout=TIMEOUT), 400, "bad_request")
    result = f"{server.url}/jobs/{job['id']}/result"
    assert_problem(httpx.get(f"{result}?hop=٣", timeout=TIMEOUT), 400, "bad_request")

    link = urlsplit(finished(server, job["id"]))
    query = dict(part.split("=", 1) for part in link.query.split("&"))
    bad = f"{server.url}{link.path}?expires=%C2%B2&sig={query['sig']}"
    assert_problem(httpx.get(bad, timeout=TIMEOUT), 403, "forbidden")  # as for any link that is not valid
    assert httpx.get(f"{server.url}{link.path}?{link.query}", timeout=TIMEOUT).content == bytes(range(10))
    assert_healthy(server)


def test_an_sse_cursor_must_be_a_number_and_may_have_spaces_around_it(serve: Any):
    server = serve(APP)
    job = submit(server, "keep", {"value": 1}, Prefer="wait=5")
    assert job["status"] == "succeeded", job
    events = f"{server.url}/jobs/{job['id']}/events"

    assert_problem(httpx.get(f"{events}?after=", timeout=TIMEOUT), 400, "bad_request")  # was read as 0
    # Past the last event of a finished job: 204, so the number was read.
    path = f"/jobs/{job['id']}/events"
    for header in (b"1000", b" 1000", b"1000 ", b"\t1000\t", b"1000 \t "):
        assert raw_status(server, path, b"Last-Event-ID: " + header) == 204, header
    assert raw_status(server, path, b"Last-Event-ID: 1 000") == 400
    assert httpx.get(f"{events}?after=1000", timeout=TIMEOUT).status_code == 204
    assert_healthy(server)


def test_wait_is_a_plain_decimal_number(serve: Any):
    server = serve(APP)
    # Python's float() reads "1_0" as 10.
    for raw in ("1_0", "1e1", "inf", "nan", "-1", "٣", ""):
        response = httpx.post(f"{server.url}/jobs/keep?wait={raw}", json={}, timeout=TIMEOUT)
        assert_problem(response, 400, "bad_request")
    assert httpx.post(f"{server.url}/jobs/keep?wait=.5", json={}, timeout=TIMEOUT).status_code == 200

    # A `Prefer: wait` not understood is ignored (RFC 7240): no 10 s hold here.
    job = submit(server, "nap", {"seconds": 3}, Prefer="respond-async")
    started = time.monotonic()
    response = httpx.get(f"{server.url}/jobs/{job['id']}", headers={"Prefer": "wait=1_0"}, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json()["status"] in ("queued", "running")
    assert time.monotonic() - started < 2
    assert_healthy(server)


# -- non-finite numbers ------------------------------------------------------------------------


def test_non_finite_numbers_in_a_body_are_refused_for_what_they_are(serve: Any):
    server = serve(APP)
    for body in (b'{"value": 1e400}', b'{"value": [1, -1e999]}', b'{"seconds": 1e400}'):
        name = "nap" if b"seconds" in body else "keep"
        response = httpx.post(
            f"{server.url}/jobs/{name}", content=body, headers={"Content-Type": "application/json"}, timeout=TIMEOUT
        )
        problem = assert_problem(response, 400, "malformed_json")
        assert "finite" in problem["detail"] and "Unicode" not in problem["detail"], problem
    for body in (b'{"value": NaN}', b'{"value": Infinity}'):
        response = httpx.post(
            f"{server.url}/jobs/keep", content=body, headers={"Content-Type": "application/json"}, timeout=TIMEOUT
        )
        assert_problem(response, 400, "malformed_json")
    assert_healthy(server)


def test_a_long_running_route_refuses_inf_and_nan_in_its_query(serve: Any):
    server = serve(APP)
    for raw in ("inf", "-inf", "Infinity", "nan", "1e400"):
        # Before: stored as Infinity, the job held a worker until canceled (and this request until the hold).
        response = httpx.get(f"{server.url}/nap?seconds={raw}", timeout=TIMEOUT)
        problem = assert_problem(response, 422, "invalid_input")
        assert problem["errors"][0]["loc"] == ["seconds"], problem
    assert httpx.get(f"{server.url}/nap?seconds=0.1", timeout=TIMEOUT).json() == {"slept": 0.1}
    assert_healthy(server)


def test_a_fastapi_long_running_route_refuses_inf_in_its_query(serve: Any):
    server = serve("tests.hostile_app:fastapi_app")
    for raw in ("inf", "nan", "1e400"):  # FastAPI takes them as floats; outlast does not
        response = httpx.get(f"{server.url}/nap?seconds={raw}", timeout=TIMEOUT)
        assert_problem(response, 422, "invalid_input")
    assert httpx.get(f"{server.url}/nap?seconds=0.1", timeout=TIMEOUT).json() == {"slept": 0.1}
    assert_healthy(server)


def test_a_flask_long_running_view_refuses_inf_in_its_query(serve: Any):
    server = serve("examples.flask_app:app")
    response = httpx.get(f"{server.url}/payload?delay=inf", timeout=TIMEOUT)
    assert_problem(response, 422, "invalid_input")
    assert httpx.get(f"{server.url}/payload?delay=0.1", timeout=TIMEOUT).status_code == 200
    assert_healthy(server)


# -- the WebSocket ----------------------------------------------------------------------------


def ws_url(server: Any) -> str:
    return str(server.url).replace("http://", "ws://", 1) + "/ws"


async def reply(ws: ClientConnection) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(await ws.recv())
        if message["type"] != "event":
            return message


def test_the_websocket_refuses_nan_infinity_and_1e400(serve: Any):
    server = serve(APP)

    async def scenario() -> None:
        async with asyncio.timeout(30), connect(ws_url(server), open_timeout=10, close_timeout=2) as ws:
            for text in (
                '{"action": "submit", "name": "nap", "input": {"seconds": NaN}, "ref": 1}',
                '{"action": "keep", "value": NaN, "ref": 2}',  # untyped: was stored as null
                '{"action": "keep", "value": Infinity, "ref": 3}',
                '{"action": "keep", "value": 1e400, "ref": 4}',
            ):
                await ws.send(text)
                message = await reply(ws)
                assert message["type"] == "error" and message["status"] == 400, (text, message)
            assert "finite" in message["detail"], message
            # Still open, still serving.
            await ws.send(json.dumps({"action": "keep", "value": 1.5, "ref": 5}))
            accepted = await reply(ws)
            assert accepted["type"] == "accepted", accepted
            assert finished(server, accepted["job"]["id"]) == {"value": 1.5, "type": "float"}

    asyncio.run(scenario())
    assert_healthy(server)


def test_a_binary_frame_over_the_size_limit_closes_with_1009(serve: Any):
    server = serve(APP, max_body=1000)

    async def scenario() -> None:
        async with asyncio.timeout(30):
            async with connect(ws_url(server), open_timeout=10, close_timeout=2) as ws:
                await ws.send(b"x" * 10)  # small: an error message, and the connection stays open
                message = await reply(ws)
                assert message["type"] == "error" and message["status"] == 400, message
                await ws.send(b"x" * 5000)
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
            async with connect(ws_url(server), open_timeout=10, close_timeout=2) as ws:
                await ws.send("x" * 5000)  # as a text frame over the limit is
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

    asyncio.run(scenario())
    assert_healthy(server)


# -- ranges on artifacts ------------------------------------------------------------------------


def test_artifact_ranges_bad_ones_are_416_problems_unknown_units_are_ignored(serve: Any):
    server = serve(APP)
    job = submit(server, "small_file", {"size": 100}, Prefer="wait=5")
    url = finished(server, job["id"])
    assert isinstance(url, str)
    if url.startswith("/"):
        url = server.url + url
    content = bytes(range(100))

    def get(range: str | bytes) -> httpx.Response:
        value = range if isinstance(range, bytes) else range.encode()
        return httpx.get(url, headers={b"Range": value}, timeout=TIMEOUT)

    for bad in ("bytes=abc", "bytes=5-2", "bytes=", "bytes=200-300", "bytes=-0", b"bytes=\xb2-5", "bytes 0-5"):
        response = get(bad)
        assert_problem(response, 416, "range_not_satisfiable")
        assert response.headers["content-range"] == "bytes */100", bad
        assert response.headers.get("content-length") == str(len(response.content))
    for unknown in ("items=0-5", "lines=1-2"):
        response = get(unknown)
        assert response.status_code == 200 and response.content == content, unknown
    partial = get("bytes=10-19")
    assert partial.status_code == 206 and partial.content == content[10:20]
    assert partial.headers["content-range"] == "bytes 10-19/100"
    suffix = get("bytes=-5")
    assert suffix.status_code == 206 and suffix.content == content[-5:]
    assert get("bytes=90-1000").content == content[90:]  # a last position past the end is the end
    # With an If-Range that may not hold, a bad Range is ignored: the whole file.
    whole = httpx.get(url, headers={"Range": "bytes=abc", "If-Range": '"other"'}, timeout=TIMEOUT)
    assert whole.status_code == 200 and whole.content == content
    assert_healthy(server)
