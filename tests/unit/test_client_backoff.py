"""The client's one retry policy: its pauses, its budget, and the server's `Retry-After`."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from outlast.client import AsyncClient, JobTimeout, ServerUnavailable
from outlast.client._backoff import Backoff, Deadline, Retry

QUICK = Backoff(patience_s=0.2, first_s=0.01, max_s=0.02)


def test_pauses_double_from_the_first_to_the_cap_with_jitter():
    backoff = Backoff()
    for failures, full in [(0, 0.25), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (50, 5.0), (10**6, 5.0)]:
        delays = [backoff.delay_s(failures) for _ in range(50)]
        assert all(full / 2 <= delay <= full for delay in delays), (failures, delays)
        assert len(set(delays)) > 1


def test_the_servers_hint_replaces_the_pause_up_to_a_minute():
    backoff = Backoff()
    assert backoff.delay_s(0, hint_s=3.0) == 3.0
    assert backoff.delay_s(7, hint_s=0.0) == 0.0
    assert backoff.delay_s(0, hint_s=3600.0) == 60.0


async def fail_for_ever(retry: Retry) -> None:
    while True:
        await retry.pause("GET /x: 503 from the server")


async def test_without_a_deadline_the_patience_is_counted_from_the_first_failure():
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match=r"GET /x: 503 from the server \(gave up after 0.2 s\)"):
        await fail_for_ever(Retry(QUICK, Deadline(None)))
    assert 0.15 <= time.monotonic() - started < 1.0


async def test_an_answer_restarts_the_patience_and_a_success_the_pace():
    retry = Retry(QUICK, Deadline(None))
    for _ in range(30):  # 0.3 s or more of failures, each run of them shorter than the patience
        await retry.pause("down")
        retry.answered()
    assert retry.failures == 30
    retry.succeeded()
    assert retry.failures == 0 and retry.failing_since is None


async def test_a_pause_past_the_deadline_is_a_timeout_at_once():
    retry = Retry(Backoff(patience_s=0), Deadline(0.1))
    started = time.monotonic()
    with pytest.raises(JobTimeout):
        await retry.pause("down", hint_s=30.0)
    assert time.monotonic() - started < 0.05  # no sleep that could not end in time


async def test_no_patience_goes_on():
    retry = Retry(Backoff(patience_s=None, first_s=0.001, max_s=0.001), Deadline(None))
    for _ in range(20):
        await retry.pause("down")


# -- the client's requests: the same policy, Retry-After read by the shared parser ----------------


def answers(*responses: httpx.Response) -> httpx.MockTransport:
    """A transport that answers with `responses`, in turn."""
    queue: Iterator[httpx.Response] = iter(responses)
    return httpx.MockTransport(lambda request: next(queue))


def unavailable(retry_after: str) -> httpx.Response:
    """A 503 whose Retry-After is `retry_after` in UTF-8 on the wire (read back as it was written)."""
    return httpx.Response(503, headers=[(b"retry-after", retry_after.encode())])


@pytest.mark.parametrize("junk", ["\u00b2", "soon", "-1", "1e9", "Fri, 31 Dec 99999 23:59:59 GMT"])
async def test_junk_retry_after_is_ignored_and_the_request_retried(junk):
    job = {"id": "j_1", "status": "queued"}
    transport = answers(unavailable(junk), httpx.Response(200, json=job))
    http = httpx.AsyncClient(base_url="http://outlast.test", transport=transport)
    async with AsyncClient("http://outlast.test", http=http) as client:
        handle = await client.get("j_1")
    assert handle.job == job


async def test_a_server_that_stays_unavailable_hands_its_retry_after_on():
    http = httpx.AsyncClient(base_url="http://outlast.test", transport=answers(unavailable("7")))
    async with AsyncClient("http://outlast.test", http=http, patience_s=0) as client:
        with pytest.raises(ServerUnavailable) as caught:
            await client.get("j_1")
    assert caught.value.retry_after_s == 7.0
    assert "GET /jobs/j_1: 503 from the server" in str(caught.value)


async def test_patience_s_is_the_policys():
    async with AsyncClient("http://outlast.test", patience_s=30) as client:
        assert client.patience_s == 30 and client.backoff.patience_s == 30
    async with AsyncClient("http://outlast.test") as client:
        assert client.patience_s == 120
    async with AsyncClient("http://outlast.test", patience_s=None) as client:
        assert client.backoff == Backoff(patience_s=None)
