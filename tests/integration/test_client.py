"""The client (`outlast.client`) against a real `outlast serve`: real processes, real sockets."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

import outlast.client
from outlast.client import (
    AsyncClient,
    Client,
    ClientError,
    JobCanceled,
    JobFailed,
    JobTimeout,
    ProblemError,
    ServerUnavailable,
    Update,
)
from outlast.exceptions import OutlastError
from tests.integration.conftest import ROOT, Process, Server, _flags

pytestmark = pytest.mark.slow

GATEWAY = {"gateway_timeout": 3, "margin": 1}  # hold: 2 s
TRANSPORTS = ["sse", "ws", "long-poll", "poll"]


def jobs_named(url: str, name: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/jobs", params={"name": name, "limit": 100}, timeout=10)
    assert response.status_code == 200, response.text
    jobs: list[dict[str, Any]] = response.json()["jobs"]
    return jobs


async def job_of(url: str, job_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{url}/jobs/{job_id}")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


async def ended(url: str, job_id: str, timeout: float = 20) -> dict[str, Any]:
    """The job once terminal, by long-polling it (each wait bounded by the hold), within `timeout`."""
    async with asyncio.timeout(timeout), httpx.AsyncClient(timeout=30) as http:
        while True:
            response = await http.get(f"{url}/jobs/{job_id}", params={"wait": 10})
            assert response.status_code == 200, response.text
            job: dict[str, Any] = response.json()
            if job["status"] in ("succeeded", "failed", "canceled"):
                return job


# -- a job longer than the hold, through every transport -----------------------------------------


@pytest.mark.parametrize("mode", [*TRANSPORTS, "auto"])
async def test_run_returns_the_result_of_a_job_longer_than_the_hold(serve, mode):
    server = serve(**GATEWAY)
    updates: list[Update] = []
    started = time.monotonic()
    async with AsyncClient(server.url, mode=mode) as client:
        result = await client.run("sleep", {"seconds": 7, "steps": 7}, timeout=60, on_progress=updates.append)
    elapsed = time.monotonic() - started
    assert result == {"slept": 7.0, "attempt": 1}
    assert 7 <= elapsed < 20
    assert updates[-1].status == "succeeded"
    assert {u.status for u in updates} >= {"running", "succeeded"}
    assert any(u.progress for u in updates)
    assert len(jobs_named(server.url, "sleep")) == 1


async def test_run_without_progress_lets_the_server_hold_the_submit(serve):
    server = serve(**GATEWAY)
    async with AsyncClient(server.url) as client:
        assert await client.run("echo", {"text": "hi", "times": 2}, timeout=30) == ["hi", "hi"]
        assert await client.run("noop") is None


# -- the server restarted in the middle of a job -------------------------------------------------


class ServerOnPort(Server):
    """`outlast serve` on a given port (the port of a server that is gone), with the same store."""

    def __init__(self, tmp_path: Path, port: int, target: str, settings: dict[str, Any]) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        log = tmp_path / f"server-{port}-{time.monotonic_ns()}.log"
        args = ["serve", target, "--port", str(port), "--log-level", "warning", *_flags(settings)]
        Process.__init__(self, args, log)


@pytest.fixture
def restart(tmp_path: Path, db_url: str) -> Iterator[Any]:
    """Start a new API server on the port of `old` once `old` is gone; stopped at the end of the test."""
    started: list[Server] = []

    def start(old: Server, **settings: Any) -> Server:
        settings.setdefault("store", db_url)
        server = ServerOnPort(tmp_path, old.port, "tests.apps:ot", settings)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.mark.parametrize(
    ("mode", "how"),
    [("sse", "kill"), ("ws", "kill"), ("long-poll", "kill"), ("poll", "kill"), ("sse", "stop"), ("ws", "stop")],
)
async def test_run_survives_a_restart_of_the_api_mid_job(serve, work, restart, mode, how):
    api = serve(workers=0, **GATEWAY)
    work(workers=1, **GATEWAY)
    running = asyncio.Event()
    seen: list[Update] = []

    def on_progress(update: Update) -> None:
        seen.append(update)
        if update.status == "running" and update.progress:
            running.set()

    async with AsyncClient(api.url, mode=mode) as client:
        call = asyncio.create_task(client.run("sleep", {"seconds": 8, "steps": 8}, timeout=60, on_progress=on_progress))
        async with asyncio.timeout(20):
            await running.wait()
        before = len(seen)
        job_id = seen[-1].job_id
        await asyncio.to_thread(api.kill if how == "kill" else api.stop)
        new_api = await asyncio.to_thread(restart, api, workers=0, **GATEWAY)
        assert new_api.url == api.url
        # The job is still running when the API is back: the client resumes mid-job.
        assert (await job_of(new_api.url, job_id))["status"] == "running"
        async with asyncio.timeout(40):
            result = await call
    assert result == {"slept": 8.0, "attempt": 1}
    assert len(seen) > before  # the client went on following after the restart
    assert seen[-1].status == "succeeded"
    jobs = jobs_named(new_api.url, "sleep")
    assert [(j["id"], j["attempt"], j["status"]) for j in jobs] == [(job_id, 1, "succeeded")]


# -- a submit whose response is lost -------------------------------------------------------------


class LossyProxy:
    """A TCP proxy to the server that, for the first POST, lets the server answer, then hangs up on the client.

    The server has committed the job and sent its response; the client sees the
    connection closed without a response. Later connections pass through.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.dropped: list[bytes] = []  # the responses the client never got
        self.posts: list[bytes] = []  # the head of every POST seen
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> LossyProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            if not self.dropped:
                head = await client_r.readuntil(b"\r\n\r\n")
                body = await client_r.readexactly(_content_length(head))
                upstream_w.write(head + body)
                await upstream_w.drain()
                if head.startswith(b"POST "):
                    self.posts.append(head)
                    response_head = await upstream_r.readuntil(b"\r\n\r\n")
                    response_body = await upstream_r.readexactly(_content_length(response_head))
                    self.dropped.append(response_head + response_body)
                    return  # hang up without a word
            elif not client_r.at_eof():
                head = await client_r.readuntil(b"\r\n\r\n")
                if head.startswith(b"POST "):
                    self.posts.append(head)
                upstream_w.write(head)
            await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for writer in (client_w, upstream_w):
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
            self._tasks.discard(task)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _header(head: bytes, wanted: str) -> str | None:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == wanted.lower():
            return value.strip()
    return None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


async def test_a_submit_whose_response_is_lost_is_retried_into_one_job(serve):
    server = serve(**GATEWAY)
    async with LossyProxy(server.port) as proxy, AsyncClient(proxy.url) as client:
        async with asyncio.timeout(30):
            result = await client.run("echo", {"text": "once", "times": 3}, timeout=30)
    assert result == ["once", "once", "once"]
    assert len(proxy.dropped) == 1 and proxy.dropped[0].startswith(b"HTTP/1.1 20")  # the server had answered
    assert len(proxy.posts) == 2  # the first and its retry
    keys = {_header(head, "Idempotency-Key") for head in proxy.posts}
    assert len(keys) == 1 and None not in keys
    assert len(jobs_named(server.url, "echo")) == 1


def test_a_lost_submit_response_makes_one_job_with_the_sync_client(serve):
    server = serve(**GATEWAY)

    async def through_proxy() -> tuple[str, LossyProxy]:
        async with LossyProxy(server.port) as proxy:
            handle_id = await asyncio.to_thread(submit_sync, proxy.url)
            return handle_id, proxy

    def submit_sync(url: str) -> str:
        with Client(url) as client:
            handle = client.submit("sleep", {"seconds": 0.2})
            assert handle.wait(timeout=30)["status"] == "succeeded"
            return handle.id

    job_id, proxy = asyncio.run(through_proxy())
    assert len(proxy.dropped) == 1
    assert [job["id"] for job in jobs_named(server.url, "sleep")] == [job_id]


# -- submit and the handle -----------------------------------------------------------------------


@pytest.fixture
async def client(serve) -> AsyncIterator[AsyncClient]:
    server = serve(**GATEWAY)
    async with AsyncClient(server.url) as client:
        yield client


async def test_submit_returns_at_once_and_wait_returns_the_ended_job(client):
    handle = await client.submit("sleep", {"seconds": 3, "steps": 3})
    assert handle.status in ("queued", "running")
    job = await handle.wait(timeout=30)
    assert job["status"] == "succeeded" and job["result"] == {"slept": 3.0, "attempt": 1}
    assert handle.job is job
    assert await handle.result(timeout=5) == {"slept": 3.0, "attempt": 1}
    again = await client.get(handle.id)
    assert again.id == handle.id and again.status == "succeeded"


async def test_events_are_numbered_in_order_and_end_with_the_terminal_status(client):
    handle = await client.submit("sleep", {"seconds": 3, "steps": 6})
    async with asyncio.timeout(30):
        events = [event async for event in handle.events()]
    numbered = [event for event in events if event.seq is not None]
    assert [event.seq for event in numbered] == list(range(1, len(numbered) + 1))
    assert all(event.job_id == handle.id for event in events)
    assert numbered[0].type == "status" and numbered[0].data["status"] == "queued"
    assert events[-1].type == "status" and events[-1].data["status"] == "succeeded"
    assert events[-1].data["result"] == {"slept": 3.0, "attempt": 1}
    progress = [event.data["current"] for event in events if event.type == "progress"]
    assert progress == sorted(progress) and progress[-1] == 6
    assert handle.status == "succeeded"

    # Resumed after a cursor: only what follows it.
    async with asyncio.timeout(10):
        tail = [event async for event in handle.events(after=numbered[-3].seq or 0)]
    assert [event.seq for event in tail] == [event.seq for event in numbered[-2:]]


async def test_cancel_a_running_job(client):
    handle = await client.submit("sleep", {"seconds": 30, "steps": 30})
    async with asyncio.timeout(20):
        async for event in handle.events():
            if event.type == "progress":
                break
    job = await handle.cancel()
    assert job["status"] in ("running", "canceled")  # a running job is told; it ends canceled
    ended_job = await handle.wait(timeout=20)
    assert ended_job["status"] == "canceled"
    with pytest.raises(JobCanceled) as caught:
        await handle.result(timeout=5)
    assert caught.value.status == 409
    assert caught.value.job["id"] == handle.id
    assert (await handle.cancel())["status"] == "canceled"  # idempotent


async def test_cancel_a_queued_job(serve):
    server = serve(workers=0, **GATEWAY)  # no worker: the job stays queued
    async with AsyncClient(server.url) as client:
        handle = await client.submit("sleep", {"seconds": 1})
        assert handle.status == "queued"
        assert (await handle.cancel())["status"] == "canceled"
        with pytest.raises(JobCanceled):
            await handle.result(timeout=5)


# -- long-running routes -------------------------------------------------------------------------


async def test_call_follows_the_303_chain_to_the_routes_own_json(serve):
    server = serve("examples.app:ot", **GATEWAY)
    started = time.monotonic()
    async with AsyncClient(server.url) as client:
        response = await client.call("GET", "/payload?delay=5", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"MESSAGE": "It took 5 seconds to generate this."}
    assert 5 <= time.monotonic() - started < 15


async def test_call_waits_on_the_job_of_a_202(serve):
    server = serve("examples.app:ot", **GATEWAY)
    async with AsyncClient(server.url) as client:
        response = await client.call("GET", "/payload?delay=3", headers={"Prefer": "respond-async"}, timeout=30)
    assert response.status_code == 200
    assert response.json() == {"MESSAGE": "It took 3 seconds to generate this."}


def test_sync_call_follows_the_chain(serve):
    server = serve("examples.app:ot", **GATEWAY)
    with Client(server.url) as client:
        response = client.call("GET", "/payload", params={"delay": 3}, timeout=30)
    assert response.status_code == 200
    assert response.json() == {"MESSAGE": "It took 3 seconds to generate this."}


async def test_call_gives_up_at_its_timeout_along_the_chain(serve):
    server = serve("examples.app:ot", **GATEWAY)
    started = time.monotonic()
    async with AsyncClient(server.url) as client:
        with pytest.raises(JobTimeout):
            await client.call("GET", "/payload?delay=10", timeout=3)
    assert time.monotonic() - started < 3 + 2.5  # at most one hold past the timeout


# -- errors ----------------------------------------------------------------------------------------


async def test_job_failed_carries_the_problems_status_and_type(client):
    with pytest.raises(JobFailed) as caught:
        await client.run("fail", {"message": "no paper", "status": 418, "type": "teapot"}, timeout=30)
    error = caught.value
    assert error.status == 418
    assert error.type == "teapot"
    assert error.detail == "no paper"
    assert error.job["status"] == "failed"
    assert error.job["error"] == {"type": "teapot", "message": "no paper"}
    assert isinstance(error, ProblemError) and isinstance(error, OutlastError)


async def test_input_the_server_refuses_is_a_problem_with_field_errors(client):
    with pytest.raises(ProblemError) as caught:
        await client.run("sleep", {"seconds": "a while"}, timeout=30)
    assert type(caught.value) is ProblemError
    assert caught.value.status == 422
    assert [error["loc"] for error in caught.value.errors] == [["seconds"]]
    with pytest.raises(ProblemError) as unknown:
        await client.submit("no_such_job")
    assert unknown.value.status == 404


@pytest.mark.parametrize("mode", TRANSPORTS)
async def test_job_timeout_carries_the_job_id(client, mode):
    started = time.monotonic()
    with pytest.raises(JobTimeout) as caught:
        await client.run("sleep", {"seconds": 30}, timeout=1.5, mode=mode)
    assert time.monotonic() - started < 5
    job_id = caught.value.job_id
    assert job_id is not None and job_id.startswith("j_")
    assert caught.value.job is not None and caught.value.job["id"] == job_id
    handle = await client.get(job_id)  # it goes on running on the server
    assert handle.status in ("queued", "running")
    await handle.cancel()


async def test_an_unreachable_server_is_server_unavailable(serve):
    server = serve()
    server.kill()
    async with AsyncClient(server.url, patience_s=1) as client:
        with pytest.raises(ServerUnavailable):
            await client.submit("noop")
        with pytest.raises(JobTimeout) as caught:
            await client.run("noop", timeout=1)
    assert caught.value.job_id is None  # the submit itself did not get through


async def test_events_give_up_on_a_server_gone_for_longer_than_the_patience(serve):
    server = serve(**GATEWAY)
    async with AsyncClient(server.url, patience_s=2) as client:
        handle = await client.submit("sleep", {"seconds": 30})
        await asyncio.to_thread(server.kill)
        started = time.monotonic()

        async def drain() -> None:
            async with asyncio.timeout(20):  # the patience is 2 s
                async for _ in handle.events():
                    pass

        with pytest.raises(ServerUnavailable):
            await drain()
    assert time.monotonic() - started < 15


def test_the_errors_are_one_tree_under_outlast_error():
    for error in (ClientError, ServerUnavailable, ProblemError, JobFailed, JobCanceled, JobTimeout):
        assert issubclass(error, OutlastError)
        assert issubclass(error, ClientError)
    assert issubclass(JobFailed, ProblemError) and issubclass(JobCanceled, ProblemError)
    exported = [getattr(outlast.client, name) for name in outlast.client.__all__]
    errors = [obj for obj in exported if isinstance(obj, type) and issubclass(obj, BaseException)]
    assert errors and all(issubclass(error, OutlastError) for error in errors)


def test_importing_the_client_loads_nothing_of_the_server():
    code = (
        "import sys, json, outlast.client\n"
        "from outlast.client import Client, AsyncClient\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


# -- the sync client -----------------------------------------------------------------------------


def test_sync_run_with_progress(serve):
    server = serve(**GATEWAY)
    updates: list[Update] = []
    with Client(server.url, mode="sse") as client:
        result = client.run("sleep", {"seconds": 3, "steps": 3}, timeout=30, on_progress=updates.append)
        with pytest.raises(JobFailed) as caught:
            client.run("fail", {"status": 409, "type": "conflict"}, timeout=30)
    assert result == {"slept": 3.0, "attempt": 1}
    assert [u.progress["current"] for u in updates if u.progress] == sorted(
        u.progress["current"] for u in updates if u.progress
    )
    assert updates[-1].status == "succeeded"
    assert caught.value.status == 409 and caught.value.type == "conflict"


def test_sync_submit_events_and_cancel(serve):
    server = serve(**GATEWAY)
    with Client(server.url) as client:
        handle = client.submit("sleep", {"seconds": 30, "steps": 30})
        for event in handle.events():
            if event.type == "progress":
                break
        assert handle.cancel()["status"] in ("running", "canceled")
        assert handle.wait(timeout=20)["status"] == "canceled"
        with pytest.raises(JobCanceled):
            handle.result(timeout=5)
        done = client.submit("echo", {"text": "x"})
        seqs = [event.seq for event in done.events() if event.seq is not None]
        assert seqs == list(range(1, len(seqs) + 1))
        assert done.status == "succeeded"


def test_a_sync_client_serves_several_threads_at_once(serve):
    server = serve(**GATEWAY)
    with Client(server.url) as client, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: client.run("echo", {"text": str(i), "times": 2}, timeout=30), range(8)))
    assert results == [[str(i), str(i)] for i in range(8)]


def test_closing_a_sync_client_cancels_the_calls_of_other_threads_and_ends_its_thread(serve):
    server = serve(**GATEWAY)
    before = set(threading.enumerate())
    client = Client(server.url)
    running = threading.Event()

    def on_progress(update: Update) -> None:
        if update.progress:
            running.set()

    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.run, "sleep", {"seconds": 30, "steps": 30}, timeout=60, on_progress=on_progress)
        assert running.wait(timeout=20)
        client.close()
        with pytest.raises(concurrent.futures.CancelledError):
            waiting.result(timeout=10)
    client.close()  # again: nothing to do
    assert set(threading.enumerate()) <= before  # the client's thread has ended
    httpx.post(f"{server.url}/jobs/{jobs_named(server.url, 'sleep')[0]['id']}/cancel", timeout=10)


# -- the docs' example ---------------------------------------------------------------------------


def test_the_client_example_runs(serve):
    server = serve("examples.app:ot", **GATEWAY)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "examples/client_example.py", server.url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "report: {'rows': 100," in out
    assert "It took 5 seconds to generate this." in out
    assert "refused: 422" in out
    assert "timed out: job j_" in out
    assert "async report rows: 10" in out
