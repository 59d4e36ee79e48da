"""Hostile peers against a real `outlast serve`: huge heads, long URLs, slowloris, disconnects."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def connect() -> Iterator[Callable[[str], socket.socket]]:
    """Open raw sockets to a server; closed at the end of the test."""
    opened: list[socket.socket] = []

    def open_one(url: str) -> socket.socket:
        host, port = url.removeprefix("http://").split(":")
        opened.append(socket.create_connection((host, int(port)), timeout=10))
        return opened[-1]

    yield open_one
    for sock in opened:
        sock.close()


def read_answer(sock: socket.socket, timeout_s: float = 10) -> bytes:
    """All the server sends until it closes the connection (within timeout_s)."""
    sock.settimeout(timeout_s)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def closed_within(sock: socket.socket, timeout_s: float) -> bytes | None:
    """What the server sent before closing, if it closed within timeout_s; None if still open."""
    deadline = time.monotonic() + timeout_s
    data = b""
    sock.setblocking(False)
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    return None


def problem_of(answer: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, json.loads(body)


def test_a_100_kb_header_gets_431_and_the_connection_closes(serve: Any, connect: Any):
    server = serve()
    sock = connect(server.url)
    started = time.monotonic()
    with contextlib.suppress(OSError):  # the server may close before it has read everything
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    answer = read_answer(sock)
    assert time.monotonic() - started < 5
    status, headers, body = problem_of(answer)
    assert status == 431
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert body["status"] == 431 and body["type"] and body["title"] and "65536" in body["detail"]
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_a_head_under_the_limit_is_served(serve: Any):
    server = serve()
    answer = httpx.get(f"{server.url}/healthz", headers={"X-Big": "a" * 60_000})
    assert answer.status_code == 200


def test_max_head_is_a_setting(serve: Any):
    server = serve(max_head=4096)
    assert httpx.get(f"{server.url}/healthz", headers={"X-Big": "a" * 5000}).status_code == 431
    assert httpx.get(f"{server.url}/healthz", headers={"X-Big": "a" * 3000}).status_code == 200


def test_a_10_kb_url_gets_414(serve: Any, connect: Any):
    server = serve()
    sock = connect(server.url)
    with contextlib.suppress(OSError):
        sock.sendall(b"GET /healthz?" + b"q" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = problem_of(read_answer(sock))
    assert status == 414 and body["status"] == 414
    assert headers["connection"] == "close"
    assert httpx.get(f"{server.url}/healthz?" + "q" * 7000).status_code == 200


def test_a_10_mb_header_sent_slowly_is_refused_before_it_is_all_sent(serve: Any, connect: Any):
    server = serve()
    sock = connect(server.url)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    piece = b"a" * 16_384
    sent = 0
    answer = None
    while sent < 10_000_000:
        try:
            sock.sendall(piece)
        except OSError:  # closed on us: what it said is still readable
            answer = read_answer(sock)
            break
        sent += len(piece)
        readable, _, _ = select.select([sock], [], [], 0.005)  # a slow sender, and a look at the answer
        if readable:
            answer = read_answer(sock)
            break
    assert answer is not None, "the server read a 10 MB head"
    assert sent < 1_000_000
    assert problem_of(answer)[0] == 431


def test_a_trickled_head_is_closed_after_head_timeout_while_healthz_answers(serve: Any, connect: Any):
    server = serve(head_timeout=1)
    sock = connect(server.url)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100
    started = time.monotonic()
    answer = None
    for byte in head:
        sock.sendall(bytes([byte]))
        assert httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200
        answer = closed_within(sock, 0.25)  # about 4 bytes a second
        if answer is not None:
            break
    elapsed = time.monotonic() - started
    assert answer is not None, "a head trickled for ever was not closed"
    assert 0.9 < elapsed < 4
    status, headers, body = problem_of(answer)
    assert status == 408 and body["status"] == 408 and headers["connection"] == "close"


def test_a_silent_connection_is_closed(serve: Any, connect: Any):
    server = serve(head_timeout=1)
    sock = connect(server.url)
    assert closed_within(sock, 5) == b""  # head_timeout after it connected


def test_a_keep_alive_connection_gets_head_timeout_for_its_next_request(serve: Any, connect: Any):
    server = serve(head_timeout=1)
    sock = connect(server.url)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(5)
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    answer = closed_within(sock, 4)
    assert answer is not None and problem_of(answer)[0] == 408


def test_200_stalled_heads_do_not_lock_out_healthz(serve: Any, connect: Any):
    server = serve(head_timeout=2)
    stalled = []
    for _ in range(200):
        sock = connect(server.url)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        stalled.append(sock)
    assert httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200
    deadline = time.monotonic() + 10
    still_open = list(stalled)
    while still_open and time.monotonic() < deadline:
        still_open = [s for s in still_open if closed_within(s, 0.01) is None]
    assert not still_open, f"{len(still_open)} stalled heads still open"
    assert httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200


def test_a_client_that_leaves_mid_body_is_not_logged_with_a_traceback(serve: Any, connect: Any):
    server = serve()
    for path in ("/jobs/echo", "/jobs/echo?wait=5"):
        sock = connect(server.url)
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
            + b'Content-Length: 1000\r\n\r\n{"x": 1234'
        )
        sock.close()
    # The server is still there, and said nothing alarming.
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    log = server.output()
    assert "Traceback" not in log
    assert "ERROR" not in log
