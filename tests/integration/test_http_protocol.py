"""The HTTP contract of docs/protocol.md, spoken to a real `outlast serve` over a socket, on a SQLite file."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

GATEWAY = {"gateway_timeout": 3, "margin": 1}  # hold: 2 s
HOLD_S = 2.0
SLACK_S = 0.8  # scheduling slack on a loaded machine
# A wait ends two reserves (a twentieth of the hold each) before the hold: the read after it and the answer fit in.
WAIT_S = HOLD_S - 2 * HOLD_S / 20
TERMINAL = {"succeeded", "failed", "canceled"}
PROBLEM_TYPE = "application/problem+json"


# -- helpers ----------------------------------------------------------------------------


@pytest.fixture
def connect() -> Iterator[Any]:
    """An httpx client on a server's URL, closed at the end of the test."""
    clients: list[httpx.Client] = []

    def open_client(server: Any) -> httpx.Client:
        client = httpx.Client(base_url=server.url, timeout=30)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


def submit(client: httpx.Client, name: str, input: dict[str, Any] | None = None, **headers: str) -> dict[str, Any]:
    """Submit with `Prefer: respond-async`: the job as it is queued."""
    response = client.post(f"/jobs/{name}", json=input or {}, headers={"Prefer": "respond-async", **headers})
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def run(client: httpx.Client, name: str, input: dict[str, Any] | None = None) -> dict[str, Any]:
    """Submit and wait for the end (the job must end within the wait)."""
    response = client.post(f"/jobs/{name}", json=input or {}, params={"wait": 20})
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    assert job["status"] in TERMINAL
    return job


def wait_terminal(client: httpx.Client, job_id: str, within: float = 15.0) -> dict[str, Any]:
    """Long-poll the job until it ends."""
    deadline = time.monotonic() + within
    while True:
        response = client.get(f"/jobs/{job_id}", params={"wait": 5})
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["status"] in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']} after {within} s"


def wait_status(client: httpx.Client, job_id: str, status: str, within: float = 10.0) -> dict[str, Any]:
    """Poll until the job has `status` (only the end can be long-polled, not a start)."""
    deadline = time.monotonic() + within
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] == status:
            return job
        assert job["status"] not in TERMINAL, job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']} after {within} s"
        time.sleep(0.05)


def cancel(client: httpx.Client, job_id: str) -> None:
    """Cancel a long job at the end of a test, so the server stops at once."""
    assert client.post(f"/jobs/{job_id}/cancel").status_code in (200, 202)
    assert wait_terminal(client, job_id)["status"] == "canceled"


def assert_problem(response: httpx.Response, status: int, type: str | None = None) -> dict[str, Any]:
    """An RFC 9457 problem with `status`, and no stack trace."""
    request = f"{response.request.method} {str(response.request.url)[:200]}"
    assert response.status_code == status, f"{request} -> {response.status_code} {response.text[:500]}"
    assert "Traceback" not in response.text, f"{request} leaked a stack trace"
    assert response.headers.get("content-type", "").split(";")[0] == PROBLEM_TYPE, f"{request}: {response.headers}"
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys(), f"{request}: {body}"
    assert body["status"] == status
    assert all(isinstance(body[member], str) for member in ("type", "title", "detail")), body
    if type is not None:
        assert body["type"] == type, body
    return body


def assert_still_serves(client: httpx.Client) -> None:
    """The server answers the next request, a real job included."""
    assert client.get("/healthz").status_code == 200
    response = client.post("/jobs/echo", json={"text": "still here"}, params={"wait": 10})
    assert response.status_code == 200, response.text
    assert response.json()["result"] == ["still here"]


def post_raw(
    client: httpx.Client, name: str, body: bytes, content_type: str | None = "application/json"
) -> httpx.Response:
    headers = {} if content_type is None else {"Content-Type": content_type}
    return client.post(f"/jobs/{name}", content=body, headers=headers)


def cursor_of(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# -- 1. submit, 202, poll, result ----------------------------------------------------------


def test_respond_async_then_poll_honouring_retry_after_then_result(serve, connect):
    client = connect(serve())
    started = time.monotonic()
    response = client.post("/jobs/sleep", json={"seconds": 2}, headers={"Prefer": "respond-async"})
    assert time.monotonic() - started < 1.5  # at once, not after the job
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert response.headers["retry-after"].isdigit()
    assert job["name"] == "sleep"
    assert job["status"] in {"queued", "running"}
    assert job["result"] is None and job["error"] is None
    assert job["links"] == {
        "self": f"/jobs/{job['id']}",
        "result": f"/jobs/{job['id']}/result",
        "events": f"/jobs/{job['id']}/events",
        "cancel": f"/jobs/{job['id']}/cancel",
    }

    location, delay = response.headers["location"], int(response.headers["retry-after"])
    deadline = time.monotonic() + 15
    polls = 0
    while job["status"] not in TERMINAL:
        assert time.monotonic() < deadline, job
        time.sleep(delay)  # the client is told to wait this long: honouring it is the behaviour under test
        polled = client.get(location)
        polls += 1
        assert polled.status_code == 200
        job = polled.json()
        delay = int(polled.headers.get("retry-after", delay))
    assert polls >= 1
    assert job["status"] == "succeeded"
    assert job["result"] == {"slept": 2, "attempt": 1}
    assert job["finished_at"] is not None

    result = client.get(job["links"]["result"])
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("application/json")
    assert result.json() == {"slept": 2, "attempt": 1}  # the return value itself, not a job object


# -- 2. Prefer: wait ------------------------------------------------------------------------


def test_prefer_wait_answers_200_with_the_finished_job(serve, connect):
    client = connect(serve())
    started = time.monotonic()
    response = client.post("/jobs/sleep", json={"seconds": 1}, headers={"Prefer": "wait=5"})
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.headers["preference-applied"] == "wait=5"
    job = response.json()
    assert job["status"] == "succeeded"
    assert job["result"] == {"slept": 1, "attempt": 1}
    assert "location" not in response.headers
    assert 0.9 < elapsed < 1 + SLACK_S + 1  # it answered when the job ended, not after 5 s


def test_wait_query_parameter_works_like_prefer_wait(serve, connect):
    client = connect(serve())
    started = time.monotonic()
    response = client.post("/jobs/sleep", params={"wait": 5}, json={"seconds": 1})
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.headers["preference-applied"] == "wait=5"
    assert response.json()["status"] == "succeeded"
    assert response.json()["result"] == {"slept": 1, "attempt": 1}
    assert 0.9 < elapsed < 1 + SLACK_S + 1


def test_a_wait_longer_than_the_hold_is_capped_at_the_hold(serve, connect):
    client = connect(serve(**GATEWAY))
    started = time.monotonic()
    response = client.post("/jobs/sleep", json={"seconds": 5}, headers={"Prefer": "wait=10"})
    elapsed = time.monotonic() - started
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "running"
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert response.headers["retry-after"].isdigit()
    assert WAIT_S - 0.1 < elapsed < HOLD_S + SLACK_S  # the hold, not the 10 s asked for
    cancel(client, job["id"])


# -- 3. long-poll ---------------------------------------------------------------------------


def test_long_poll_returns_when_the_job_ends(serve, connect):
    client = connect(serve(**GATEWAY))
    job = submit(client, "sleep", {"seconds": 0.5})
    started = time.monotonic()
    response = client.get(f"/jobs/{job['id']}", params={"wait": 20})
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert elapsed < 0.5 + SLACK_S  # at the end of the job, well before the hold or 20 s

    # Already terminal: at once.
    started = time.monotonic()
    response = client.get(f"/jobs/{job['id']}", headers={"Prefer": "wait=20"})
    assert response.json()["status"] == "succeeded"
    assert time.monotonic() - started < 0.5


def test_long_poll_is_held_at_most_the_hold(serve, connect):
    client = connect(serve(**GATEWAY))
    job = submit(client, "sleep", {"seconds": 30})
    for wait in ({"params": {"wait": 20}}, {"headers": {"Prefer": "wait=20"}}):
        started = time.monotonic()
        response = client.get(f"/jobs/{job['id']}", **wait)
        elapsed = time.monotonic() - started
        assert response.status_code == 200
        assert response.json()["status"] in {"queued", "running"}
        assert WAIT_S - 0.1 < elapsed < HOLD_S + SLACK_S, wait

    # A wait shorter than the hold is honoured as it is.
    started = time.monotonic()
    response = client.get(f"/jobs/{job['id']}", params={"wait": 0.5})
    elapsed = time.monotonic() - started
    assert response.json()["status"] == "running"
    assert 0.4 < elapsed < 0.5 + SLACK_S
    cancel(client, job["id"])


# -- 4. idempotency -------------------------------------------------------------------------


def test_concurrent_submits_with_one_idempotency_key_make_one_job(serve, connect):
    client = connect(serve())
    key = "order-42"
    barrier = threading.Barrier(20)

    def send(_: int) -> httpx.Response:
        barrier.wait(timeout=10)
        response: httpx.Response = client.post(
            "/jobs/echo",
            json={"text": "once", "times": 2},
            headers={"Idempotency-Key": key, "Prefer": "respond-async"},
        )
        return response

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(send, range(20)))
    assert all(r.status_code in (200, 202) for r in responses), [(r.status_code, r.text) for r in responses]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    (job_id,) = ids

    listed = client.get("/jobs", params={"name": "echo"}).json()
    assert [job["id"] for job in listed["jobs"]] == [job_id]
    assert wait_terminal(client, job_id)["result"] == ["once", "once"]

    # A retry later still gets the same job.
    again = client.post("/jobs/echo", json={"text": "once", "times": 2}, headers={"Idempotency-Key": key})
    assert again.status_code in (200, 202)
    assert again.json()["id"] == job_id

    conflict = client.post("/jobs/echo", json={"text": "another"}, headers={"Idempotency-Key": key})
    assert_problem(conflict, 422)
    assert [job["id"] for job in client.get("/jobs", params={"name": "echo"}).json()["jobs"]] == [job_id]


# -- 5. bad input ---------------------------------------------------------------------------


def test_unknown_job_name_is_404(serve, connect):
    client = connect(serve())
    for name in ("nope", "ECHO", "echo2", "sleep.py", "%C3%A9cho", "echo%00", "x" * 5000):
        assert_problem(client.post(f"/jobs/{name}", json={"text": "x"}), 404)
        assert_still_serves(client)
    assert {job["name"] for job in client.get("/jobs").json()["jobs"]} == {"echo"}  # only the checks' jobs


def test_malformed_json_is_400(serve, connect):
    client = connect(serve())
    bodies = [
        b"{",
        b'{"text": }',
        b"{'text': 'x'}",
        b'{"text": "x"} trailing',
        b'{"text": "x",}',
        b'{"text": "\xff\xfe"}',  # not UTF-8
        b"\x00\x01\x02",
    ]
    for body in bodies:
        assert_problem(post_raw(client, "echo", body), 400)
        assert_still_serves(client)


def test_json_that_is_not_an_object_is_400(serve, connect):
    client = connect(serve())
    for body in (b"[]", b'["text", "x"]', b'"text"', b"42", b"3.5", b"null", b"true"):
        assert_problem(post_raw(client, "echo", body), 400)
        assert_still_serves(client)


def test_a_content_type_other_than_json_is_415(serve, connect):
    client = connect(serve())
    cases = [
        ("text/plain", b'{"text": "x"}'),
        ("application/x-www-form-urlencoded", b"text=x"),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\nx\r\n--b--\r\n',
        ),
        ("application/xml", b"<text>x</text>"),
        (None, b'{"text": "x"}'),
    ]
    for content_type, body in cases:
        assert_problem(post_raw(client, "echo", body, content_type), 415)
        assert_still_serves(client)


def test_a_body_over_max_body_is_413(serve, connect):
    client = connect(serve(max_body=1024))
    big = b'{"text": "' + b"x" * 2000 + b'"}'
    assert_problem(post_raw(client, "echo", big), 413)
    assert_still_serves(client)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        yield b'{"text": "'
        for _ in range(100):
            yield b"x" * 100
        yield b'"}'

    assert_problem(client.post("/jobs/echo", content=chunks(), headers={"Content-Type": "application/json"}), 413)
    assert_still_serves(client)

    fits = post_raw(client, "echo", b'{"text": "' + b"x" * 900 + b'"}')
    assert fits.status_code == 202


def test_input_that_does_not_fit_the_parameters_is_422_with_field_errors(serve, connect):
    client = connect(serve())
    cases = [
        ({"text": "x", "times": "many"}, "times"),  # wrong type
        ({"text": ["x"]}, "text"),  # wrong type
        ({"text": "x", "bogus": 1}, "bogus"),  # unknown field
        ({}, "text"),  # missing required field
        ({"times": 2}, "text"),
    ]
    for input, field in cases:
        body = assert_problem(client.post("/jobs/echo", json=input), 422)
        errors = body.get("errors")
        assert isinstance(errors, list) and errors, body
        assert any(field in error.get("loc", []) for error in errors), body
        assert_still_serves(client)
    # An empty body is the empty input: `text` is missing.
    body = assert_problem(client.post("/jobs/echo"), 422)
    assert any("text" in error.get("loc", []) for error in body["errors"]), body
    assert [job["status"] for job in client.get("/jobs").json()["jobs"]] == ["succeeded"] * len(cases)


def test_unknown_and_forgotten_job_ids_are_404(serve, connect):
    client = connect(serve())
    forgotten = run(client, "echo", {"text": "x"})["id"]
    assert client.delete(f"/jobs/{forgotten}").status_code == 204
    unknown = "j_" + "A" * 22
    for job_id in (unknown, forgotten):
        assert_problem(client.get(f"/jobs/{job_id}"), 404)
        assert_problem(client.get(f"/jobs/{job_id}", params={"wait": 1}), 404)
        assert_problem(client.get(f"/jobs/{job_id}/result"), 404)
        assert_problem(client.get(f"/jobs/{job_id}/result", headers={"Prefer": "respond-async"}), 404)
        assert_problem(client.post(f"/jobs/{job_id}/cancel"), 404)
        assert_problem(client.delete(f"/jobs/{job_id}"), 404)
        assert_still_serves(client)


def test_delete_of_a_job_not_yet_terminal_is_409(serve, connect):
    client = connect(serve(workers=1))
    running = submit(client, "sleep", {"seconds": 30})
    wait_status(client, running["id"], "running")
    queued = submit(client, "sleep", {"seconds": 1})
    assert queued["status"] == "queued"
    for job in (running, queued):
        assert_problem(client.delete(f"/jobs/{job['id']}"), 409)
        assert client.get(f"/jobs/{job['id']}").status_code == 200  # still there
    assert client.post(f"/jobs/{running['id']}/cancel").status_code == 202
    assert wait_terminal(client, running["id"])["status"] == "canceled"


def test_bad_wait_is_400(serve, connect):
    client = connect(serve())
    job = run(client, "echo", {"text": "x"})
    for wait in ("-1", "abc", "nan", "-inf", ""):
        assert_problem(client.post("/jobs/echo", params={"wait": wait}, json={"text": "x"}), 400)
        assert_problem(client.get(f"/jobs/{job['id']}", params={"wait": wait}), 400)
        assert_problem(client.get(f"/jobs/{job['id']}/result", params={"wait": wait}), 400)
        assert_still_serves(client)
    assert len(client.get("/jobs", params={"name": "echo"}).json()["jobs"]) == 1 + 5  # no job from a bad request


def test_bad_list_parameters_are_400(serve, connect):
    client = connect(serve())
    run(client, "echo", {"text": "x"})
    bad = [
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": "abc"},
        {"limit": "1.5"},
        {"limit": "100000000000000000000000"},
        {"limit": "9" * 5000},  # more digits than int() takes
        {"status": "done"},
        {"status": ""},
        {"cursor": "!!!"},
        {"cursor": "abc"},
        {"cursor": cursor_of(b"not json")},
        {"cursor": cursor_of(b"[1]")},
        {"cursor": cursor_of(b'{"a": 1, "b": 2}')},
        {"cursor": cursor_of(b'["x", 1]')},
        {"cursor": cursor_of(b"[" * 5000)},  # deeply nested
        {"cursor": cursor_of(b'[NaN, "x"]')},
        {"cursor": cursor_of(b'[1e400, "x"]')},
        {"cursor": cursor_of(b"[1" + b"0" * 400 + b', "x"]')},  # an integer too large for a float
        {"cursor": cursor_of(b'[true, "x"]')},
        {"cursor": cursor_of(b'[1, "\\ud800"]')},  # a lone surrogate
        {"cursor": cursor_of(b"\xff\xfe")},
    ]
    for params in bad:
        assert_problem(client.get("/jobs", params=params), 400)
        assert_still_serves(client)


def test_nan_and_infinity_in_json_are_400(serve, connect):
    client = connect(serve())
    for body in (
        b'{"text": NaN}',
        b'{"text": "x", "times": Infinity}',
        b'{"text": "x", "times": -Infinity}',
        b'{"text": "x", "nested": [NaN]}',
    ):
        assert_problem(post_raw(client, "echo", body), 400)
        assert_still_serves(client)


def test_deeply_nested_json_is_400_and_the_server_lives(serve, connect):
    server = serve()
    client = connect(server)
    for body in (b"[" * 100_000, b'{"text": ' + b"[" * 100_000, b'{"a":' * 50_000, b"[" * 5000 + b"]" * 5000):
        assert_problem(post_raw(client, "echo", body), 400)
        assert_still_serves(client)
    assert server.proc.poll() is None


def test_hostile_ids_get_404(serve, connect):
    client = connect(serve())
    ids = [
        "j_" + "x" * 8000,
        "..%2F..%2Fetc%2Fpasswd",
        "..%2F",
        "%2e%2e",
        "%00",
        "j_abc%00",
        "%FF%FE",
        "%C3%A9t%C3%A9",
        "%F0%9F%92%A5",
        "%E2%80%AE",
        "'%20OR%201=1--",
        "%25s%25n",
    ]
    for job_id in ids:
        for method, path in (
            ("GET", f"/jobs/{job_id}"),
            ("GET", f"/jobs/{job_id}/result"),
            ("POST", f"/jobs/{job_id}/cancel"),
            ("DELETE", f"/jobs/{job_id}"),
        ):
            response = client.request(method, path)
            if response.status_code == 307:
                # An id ending in an encoded "/": Starlette redirects to the path without the
                # slash, which names no job either (`/jobs/..` is `/`, the page).
                assert response.headers["location"].endswith("/jobs/..")
                continue
            assert_problem(response, 404)
        assert_still_serves(client)


# -- 6. the result endpoint -------------------------------------------------------------------


def test_result_of_a_failed_job_is_its_chosen_problem(serve, connect):
    client = connect(serve())
    job = run(client, "fail", {"status": 422, "type": "bad_thing", "message": "the thing was bad"})
    assert job["status"] == "failed"
    assert job["error"]["type"] == "bad_thing"
    body = assert_problem(client.get(f"/jobs/{job['id']}/result"), 422, type="bad_thing")
    assert body["detail"] == "the thing was bad"

    default = run(client, "fail")
    assert_problem(client.get(f"/jobs/{default['id']}/result"), 500, type="broken")


def test_result_of_a_canceled_job_is_409(serve, connect):
    client = connect(serve())
    job = submit(client, "sleep", {"seconds": 30})
    client.post(f"/jobs/{job['id']}/cancel")
    assert wait_terminal(client, job["id"])["status"] == "canceled"
    assert_problem(client.get(f"/jobs/{job['id']}/result"), 409)


def test_result_with_respond_async_of_a_running_job_is_202(serve, connect):
    client = connect(serve())
    job = submit(client, "sleep", {"seconds": 30})
    started = time.monotonic()
    response = client.get(f"/jobs/{job['id']}/result", headers={"Prefer": "respond-async"})
    assert time.monotonic() - started < 1
    assert response.status_code == 202
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert response.headers["retry-after"].isdigit()
    assert response.json()["id"] == job["id"]
    cancel(client, job["id"])


def test_result_wait_ends_in_a_303_to_the_next_hop(serve, connect):
    client = connect(serve())
    job = submit(client, "sleep", {"seconds": 30})
    started = time.monotonic()
    response = client.get(f"/jobs/{job['id']}/result", params={"wait": 1})
    elapsed = time.monotonic() - started
    assert response.status_code == 303
    assert response.headers["location"] == f"/jobs/{job['id']}/result?hop=1"
    assert response.headers["retry-after"].isdigit()
    assert 0.9 < elapsed < 1 + SLACK_S

    following = client.get(response.headers["location"] + "&wait=0.5")
    assert following.status_code == 303
    assert following.headers["location"] == f"/jobs/{job['id']}/result?hop=2"
    assert following.headers["retry-after"].isdigit()
    cancel(client, job["id"])


def test_result_is_held_until_the_job_ends(serve, connect):
    client = connect(serve(**GATEWAY))
    job = submit(client, "sleep", {"seconds": 0.5})
    started = time.monotonic()
    response = client.get(f"/jobs/{job['id']}/result")
    assert response.status_code == 200
    assert response.json() == {"slept": 0.5, "attempt": 1}
    assert time.monotonic() - started < 0.5 + SLACK_S


# -- 7. cancel and delete ----------------------------------------------------------------------


def test_cancel_of_a_queued_job_is_immediate(serve, connect):
    client = connect(serve(workers=1))
    blocker = submit(client, "sleep", {"seconds": 30})
    wait_status(client, blocker["id"], "running")
    queued = submit(client, "sleep", {"seconds": 1})
    assert queued["status"] == "queued"
    assert queued["queue_position"] == 0

    started = time.monotonic()
    response = client.post(f"/jobs/{queued['id']}/cancel")
    assert time.monotonic() - started < 1
    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "canceled"
    assert job["error"] is not None
    assert job["started_at"] is None
    assert client.get(f"/jobs/{queued['id']}").json()["status"] == "canceled"

    assert client.post(f"/jobs/{blocker['id']}/cancel").status_code == 202
    assert wait_terminal(client, blocker["id"])["status"] == "canceled"


@pytest.mark.parametrize("name", ["sleep", "sync_sleep"])
def test_cancel_of_a_running_job_interrupts_it(serve, connect, name):
    client = connect(serve())
    job = submit(client, name, {"seconds": 30})
    wait_status(client, job["id"], "running")
    started = time.monotonic()
    response = client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 202, response.text
    assert response.json()["id"] == job["id"]
    ended = wait_terminal(client, job["id"], within=10)
    assert ended["status"] == "canceled"
    assert ended["error"] is not None
    assert ended["result"] is None
    assert time.monotonic() - started < 5  # interrupted, not run to its end


def test_cancel_right_after_submit_always_ends_the_job(serve, connect):
    """Cancels that land while a worker is just claiming the job are not lost."""
    client = connect(serve(workers=20))

    def submit_and_cancel(_: int) -> int:
        job = submit(client, "sleep", {"seconds": 20})
        status: int = client.post(f"/jobs/{job['id']}/cancel").status_code
        return status

    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(submit_and_cancel, range(100)))
    assert set(statuses) <= {200, 202}

    deadline = time.monotonic() + 5
    while True:
        running = client.get("/jobs", params={"status": "running"}).json()["jobs"]
        if not running or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # a list cannot be long-polled: poll it, within the deadline
    stuck = [(job["id"], job["attempt"]) for job in running]
    assert stuck == [], f"cancel answered, but these jobs still run 5 s later: {stuck}"
    listed = client.get("/jobs", params={"limit": 200}).json()["jobs"]
    assert [job["status"] for job in listed] == ["canceled"] * 100


def test_cancel_of_a_terminal_job_changes_nothing(serve, connect):
    client = connect(serve())
    for job in (run(client, "echo", {"text": "x"}), run(client, "fail")):
        response = client.post(f"/jobs/{job['id']}/cancel")
        assert response.status_code == 200
        assert response.json() == job
        assert client.get(f"/jobs/{job['id']}").json() == job
    assert client.get(f"/jobs/{job['id']}/result").status_code == 500  # still failed, not canceled


def test_delete_of_a_terminal_job_forgets_it(serve, connect):
    client = connect(serve())
    job = run(client, "echo", {"text": "x"})
    response = client.delete(f"/jobs/{job['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert_problem(client.get(f"/jobs/{job['id']}"), 404)
    assert_problem(client.get(f"/jobs/{job['id']}/result"), 404)
    assert client.get("/jobs").json() == {"jobs": [], "next": None}


# -- 8. list ----------------------------------------------------------------------------------


def test_list_pages_newest_first_and_filters(serve, connect):
    client = connect(serve())
    echoed = [run(client, "echo", {"text": str(i)})["id"] for i in range(5)]
    failed = run(client, "fail")["id"]
    last = run(client, "echo", {"text": "last"})["id"]
    everything = [last, failed, *reversed(echoed)]

    def pages(**params: Any) -> list[list[str]]:
        found, cursor = [], None
        for _ in range(20):
            query = {**params, **({"cursor": cursor} if cursor else {})}
            response = client.get("/jobs", params=query)
            assert response.status_code == 200, response.text
            body = response.json()
            assert set(body) == {"jobs", "next"}
            found.append([job["id"] for job in body["jobs"]])
            cursor = body["next"]
            if cursor is None:
                return found
        raise AssertionError("next never became null")

    assert pages(limit=2) == [everything[0:2], everything[2:4], everything[4:6], everything[6:7]]
    assert pages() == [everything]
    assert pages(limit=7) == [everything]  # the last page may be full; no empty page after it
    assert pages(limit=2, name="echo") == [[last, echoed[4]], [echoed[3], echoed[2]], [echoed[1], echoed[0]]]
    assert pages(status="failed") == [[failed]]
    assert pages(status="succeeded", limit=3) == [[last, echoed[4], echoed[3]], [echoed[2], echoed[1], echoed[0]]]
    assert pages(status="queued") == [[]]
    assert pages(name="sleep") == [[]]

    jobs = client.get("/jobs", params={"name": "fail"}).json()["jobs"]
    assert [(job["name"], job["status"]) for job in jobs] == [("fail", "failed")]
    assert jobs[0]["links"]["self"] == f"/jobs/{failed}"


# -- 9. health --------------------------------------------------------------------------------


def test_healthz(serve, connect):
    client = connect(serve())
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
