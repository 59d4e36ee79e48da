"""Many nodes on one Redis: real `outlast serve` and `outlast worker` processes, crashes, fencing, a Redis restart.

Every test runs on its own Redis namespace (dropped at the end), or on a private
`redis-server` it starts itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from websockets.asyncio.client import connect

from tests.contract.conftest import REDIS_URL, drop_namespace, redis_or_skip
from tests.integration.conftest import Process, Server, free_port

pytestmark = pytest.mark.slow

ASYNC = {"Prefer": "respond-async"}
TERMINAL = {"succeeded", "failed", "canceled"}
LEASE = 2  # seconds: a lost job is reclaimed soon after this
OUTAGE_S = 4.0  # how long the private Redis stays down
GRACE_S = 10.0  # how long a SIGTERMed worker lets its jobs run before it hands them back (runner.DEFAULT_GRACE_S)


# -- nodes on one namespace --------------------------------------------------------------


@dataclasses.dataclass
class Nodes:
    """API and worker processes on one Redis namespace; all stopped, then the namespace dropped, at the end."""

    store: str
    serve: Any
    work: Any
    started: list[Process] = dataclasses.field(default_factory=list)

    def api(self, **settings: Any) -> Server:
        settings = {"store": self.store, "workers": 0, "lease": LEASE, **settings}
        server: Server = self.serve(**settings)
        self.started.append(server)
        return server

    def worker(self, **settings: Any) -> Process:
        settings = {"store": self.store, "workers": 1, "lease": LEASE, **settings}
        worker: Process = self.work(**settings)
        self.started.append(worker)
        return worker


@pytest.fixture
def nodes(serve: Any, work: Any) -> Iterator[Nodes]:
    redis_or_skip()
    namespace = f"t-{secrets.token_hex(4)}"
    started = Nodes(f"{REDIS_URL}?namespace={namespace}", serve, work)
    try:
        yield started
    finally:
        for process in started.started:  # before the namespace goes: nothing writes to it afterwards
            with contextlib.suppress(ProcessLookupError):
                process.signal(signal.SIGCONT)  # a SIGSTOPped one could not stop
            process.stop()
        asyncio.run(drop_namespace(namespace))


def alive(process: Process) -> bool:
    return process.proc is not None and process.proc.poll() is None


# -- HTTP, SSE and WebSocket clients ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Event:
    """A stored event of a job, as a client received it."""

    seq: int
    type: str
    data: Any
    at: float = dataclasses.field(default=0.0, compare=False)  # time.monotonic() of its arrival

    @property
    def status(self) -> str | None:
        return str(self.data["status"]) if self.type == "status" else None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


async def submit(client: httpx.AsyncClient, url: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(f"{url}/jobs/{name}", json=body, headers=ASYNC)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


async def get_job(client: httpx.AsyncClient, url: str, job_id: str, wait: float = 0) -> dict[str, Any]:
    response = await client.get(f"{url}/jobs/{job_id}", params={"wait": wait} if wait else None)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


async def wait_terminal(client: httpx.AsyncClient, url: str, job_id: str, timeout: float) -> dict[str, Any]:
    """Long-poll the job (`?wait=`) until it ends; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        job = await get_job(client, url, job_id, wait=max(1, min(10, int(left))))
        if job["status"] in TERMINAL:
            return job
        if time.monotonic() >= deadline:
            raise AssertionError(f"job {job_id} did not end within {timeout} s: {job}")


async def sse(response: httpx.Response) -> AsyncIterator[Event]:
    """The stored events of a text/event-stream response (comments, `retry:` and id-less `position` left out)."""
    block: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line:
            name, _, value = line.partition(": ")
            assert name not in block, f"field {name} twice in one event: {line}"
            block[name] = value
            continue
        if "id" in block:
            yield Event(int(block["id"]), block["event"], json.loads(block["data"]), time.monotonic())
        block = {}


async def event_log(client: httpx.AsyncClient, url: str, job_id: str, after: int = 0) -> list[Event]:
    """`GET /jobs/{id}/events?after=N` of a finished job, read to its end; [] for a 204."""
    async with client.stream("GET", f"{url}/jobs/{job_id}/events", params={"after": after}) as response:
        if response.status_code == 204:
            return []
        assert response.status_code == 200, (await response.aread()).decode()
        return [event async for event in sse(response)]


async def assert_one_ending(client: httpx.AsyncClient, url: str, job_id: str) -> list[Event]:
    """The job's whole event log, which has exactly one terminal status event, its last."""
    log = await event_log(client, url, job_id)
    assert [event.seq for event in log] == list(range(1, len(log) + 1)), f"gap or duplicate: {log}"
    assert log and log[-1].is_terminal, log
    assert sum(event.is_terminal for event in log) == 1, log
    # The stream stops at the first terminal event: anything stored after it is asked for explicitly.
    after = await event_log(client, url, job_id, after=log[-1].seq)
    assert after == [], f"events after the end of job {job_id}: {after}"
    return log


class Follower:
    """One SSE client following a job in the background, as a user's waiting browser would."""

    def __init__(self, client: httpx.AsyncClient, url: str, job_id: str) -> None:
        self.job_id = job_id
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._read(client, url))

    async def _read(self, client: httpx.AsyncClient, url: str) -> None:
        try:
            async with client.stream("GET", f"{url}/jobs/{self.job_id}/events", params={"after": 0}) as response:
                assert response.status_code == 200, (await response.aread()).decode()
                async for event in sse(response):
                    self.events.append(event)
                    self._changed.set()
        finally:
            self._changed.set()

    async def wait_for(self, predicate: Callable[[Event], bool], timeout: float, what: str) -> Event:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for event in self.events:
                        if predicate(event):
                            return event
                    if self.task.done():
                        self.task.result()
                        raise AssertionError(f"the stream ended without {what}: {self.events}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {what} within {timeout} s: {self.events}") from None

    async def to_the_end(self, timeout: float) -> list[Event]:
        await self.wait_for(lambda event: event.is_terminal, timeout, "terminal status")
        async with asyncio.timeout(5):
            await self.task  # the server closes the stream after the terminal event
        return self.events

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await self.task


def statuses(events: list[Event]) -> list[tuple[str, int]]:
    return [(event.data["status"], event.data["attempt"]) for event in events if event.type == "status"]


def ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://", 1) + "/ws"


async def ws_follow(server: Server, job_ids: list[str]) -> dict[str, list[Event]]:
    """Subscribe one WebSocket to the jobs from their first event; their events until each ends."""
    received: dict[str, list[Event]] = {job_id: [] for job_id in job_ids}
    async with connect(ws_url(server), open_timeout=10, close_timeout=2) as ws:
        for job_id in job_ids:
            await ws.send(json.dumps({"action": "subscribe", "id": job_id, "after": 0, "ref": job_id}))
        ended: set[str] = set()
        while ended != set(job_ids):
            message = json.loads(await ws.recv())
            if message["type"] == "subscribed":
                continue
            assert message["type"] == "event", message
            if message["seq"] is None:
                assert message["event"] == "position", message
                continue
            event = Event(message["seq"], message["event"], message["data"], time.monotonic())
            received[message["job_id"]].append(event)
            if event.is_terminal:
                ended.add(message["job_id"])
    return received


# -- 1. events reach every API node ----------------------------------------------------------


async def test_events_reach_sse_and_websocket_clients_on_either_api_node(nodes):
    first, second = nodes.api(), nodes.api()
    nodes.worker(workers=2)
    nodes.worker(workers=2)
    async with httpx.AsyncClient(timeout=30) as client, asyncio.timeout(60):
        # Four jobs of 2 s with progress: the four worker slots of both processes run them at once.
        jobs = [await submit(client, first.url, "sleep", {"seconds": 2, "steps": 8}) for _ in range(4)]
        ids = [job["id"] for job in jobs]
        followers = [Follower(client, second.url, job_id) for job_id in ids]
        by_ws = await ws_follow(first, ids)
        by_sse = {follower.job_id: await follower.to_the_end(30) for follower in followers}

        for job_id in ids:
            seen_by_sse, seen_by_ws = by_sse[job_id], by_ws[job_id]
            assert [event.seq for event in seen_by_sse] == list(range(1, len(seen_by_sse) + 1)), seen_by_sse
            assert seen_by_sse == seen_by_ws  # same seqs, same types, same data, same order
            assert statuses(seen_by_sse) == [("queued", 1), ("running", 1), ("succeeded", 1)]
            assert seen_by_sse[-1].data["result"] == {"slept": 2, "attempt": 1}
            progress = [event.data["current"] for event in seen_by_sse if event.type == "progress"]
            assert progress and progress[-1] == 8 and progress == sorted(progress), seen_by_sse
            # Live, not replayed at the end: the progress arrived on both nodes while the job ran.
            for seen in (seen_by_sse, seen_by_ws):
                assert seen[-1].at - seen[1].at >= 1.0, [event.at for event in seen]
            # And the store says the same as the streams did.
            assert await assert_one_ending(client, first.url, job_id) == seen_by_sse


# -- 2. a worker killed mid-job ------------------------------------------------------------------


async def test_a_job_whose_worker_is_killed_is_run_by_the_other_and_a_waiting_sse_client_gets_its_result(nodes):
    api = nodes.api()
    doomed = nodes.worker()
    async with httpx.AsyncClient(timeout=30) as client, asyncio.timeout(60):
        job_id = (await submit(client, api.url, "sleep", {"seconds": 3, "steps": 3}))["id"]
        follower = Follower(client, api.url, job_id)
        running = await follower.wait_for(lambda event: event.status == "running", 20, "running")
        assert running.data["attempt"] == 1
        # Only `doomed` was there to take the job; the other worker comes now, and waits for work.
        survivor = nodes.worker()
        doomed.kill()
        killed = time.monotonic()

        events = await follower.to_the_end(30)
        assert statuses(events) == [("queued", 1), ("running", 1), ("queued", 2), ("running", 2), ("succeeded", 2)]
        assert events[-1].data["result"] == {"slept": 3, "attempt": 2}
        # Reclaimed once the lease lapsed, then run again for 3 s: not much longer.
        assert events[-1].at - killed < LEASE + 3 + 8, events[-1].at - killed
        job = await get_job(client, api.url, job_id)
        assert (job["status"], job["attempt"], job["result"]) == ("succeeded", 2, {"slept": 3, "attempt": 2})
        await assert_one_ending(client, api.url, job_id)
        assert alive(survivor) and alive(api)


# -- 3. fencing: a worker that comes back after its lease was taken ------------------------------


async def test_a_frozen_worker_that_wakes_up_after_its_lease_was_taken_cannot_write_its_result(nodes):
    api = nodes.api()
    frozen = nodes.worker()
    async with httpx.AsyncClient(timeout=30) as client, asyncio.timeout(80):
        job_id = (await submit(client, api.url, "sleep", {"seconds": 4, "steps": 40}))["id"]
        follower = Follower(client, api.url, job_id)
        await follower.wait_for(lambda event: event.status == "running", 20, "running")
        # `frozen` is the only worker that could have taken the job; the other one comes now.
        other = nodes.worker()
        # Frozen in its last 0.1 s step, holding the lease: once it wakes up, its result is ready at once.
        await follower.wait_for(lambda event: event.type == "progress" and event.data["current"] == 39, 20, "step 39")
        frozen.signal(signal.SIGSTOP)
        try:
            events = await follower.to_the_end(40)
            assert statuses(events) == [("queued", 1), ("running", 1), ("queued", 2), ("running", 2), ("succeeded", 2)]
            assert events[-1].data["result"] == {"slept": 4, "attempt": 2}
            assert events[-1].data["progress"]["current"] == 40
            other.stop()  # from now on only `frozen` can touch the store
            assert other.proc is not None and other.proc.returncode == 0, other.output()
            before = await assert_one_ending(client, api.url, job_id)
        finally:
            frozen.signal(signal.SIGCONT)

        # Its attempt 1 goes on where it stopped: it finishes and tries to write its result.
        # A worker of one slot takes a new job only once that attempt is over: then it has had its say.
        probe = (await submit(client, api.url, "noop", {}))["id"]
        assert (await wait_terminal(client, api.url, probe, 30))["status"] == "succeeded"

        job = await get_job(client, api.url, job_id)
        assert (job["status"], job["attempt"], job["result"]) == ("succeeded", 2, {"slept": 4, "attempt": 2})
        after = await assert_one_ending(client, api.url, job_id)
        assert after == before  # nothing was written by the late attempt: no progress, no result
        assert alive(frozen), frozen.output()
        assert "Traceback" not in frozen.output()


# -- 4. many jobs, workers killed at random --------------------------------------------------------


async def test_a_thousand_jobs_end_once_each_while_workers_are_killed_at_random(nodes):
    await every_job_ends_once_while_workers_are_killed(nodes, timeout_s=85)


async def every_job_ends_once_while_workers_are_killed(nodes: Any, *, timeout_s: float) -> None:
    """1,000 jobs on one API node and two worker nodes, 4 worker SIGKILLs: each job ends once, succeeded."""
    total, kills, concurrency = 1000, 4, 32
    api = nodes.api()
    workers = [nodes.worker(workers=4, max_attempts=10) for _ in range(2)]
    kill_at = sorted(random.sample(range(100, total - 100), kills))  # after this many submits
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        async with asyncio.timeout(timeout_s):
            ids: list[str] = []
            texts: dict[str, str] = {}
            submitting = asyncio.Semaphore(concurrency)

            async def one(index: int) -> None:
                async with submitting:
                    job = await submit(client, api.url, "echo", {"text": f"job {index}"})
                    ids.append(job["id"])
                    texts[job["id"]] = f"job {index}"
                    if kill_at and len(ids) >= kill_at[0]:
                        kill_at.pop(0)
                        victim = random.choice(workers)
                        victim.kill()  # whatever it was claiming, running or finishing
                        victim.start()

            await asyncio.gather(*(one(index) for index in range(total)))
            assert not kill_at and len(set(ids)) == total

            reading = asyncio.Semaphore(concurrency)

            async def ended(job_id: str) -> dict[str, Any]:
                async with reading:
                    return await wait_terminal(client, api.url, job_id, 60)

            jobs = await asyncio.gather(*(ended(job_id) for job_id in ids))
            assert [job["status"] for job in jobs] == ["succeeded"] * total, [
                j for j in jobs if j["status"] != "succeeded"
            ]
            for job in jobs:
                assert job["result"] == [texts[job["id"]]], job

            # Stop everything that could still write, then read every job's story.
            for worker in workers:
                worker.stop()

            async def checked(job_id: str) -> list[Event]:
                async with reading:
                    return await assert_one_ending(client, api.url, job_id)

            logs = await asyncio.gather(*(checked(job_id) for job_id in ids))
            for log in logs:
                assert log[-1].status == "succeeded"
                assert [status for status, _ in statuses(log)][-2:] == ["running", "succeeded"], log


# -- 5. Redis restarts ----------------------------------------------------------------------------


class RedisServer:
    """A private `redis-server`: with an append-only file fsynced on every write, or (`durable=False`) nothing kept."""

    def __init__(self, directory: Path, *, durable: bool = True) -> None:
        self.port = free_port()
        self.durable = durable
        self.directory = directory
        directory.mkdir()
        self.log = directory / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        args += ["--save", "", "--daemonize", "no"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=out)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while True:
                with contextlib.suppress(redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                    if client.ping():
                        return
                assert self.proc.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, f"redis-server not up in 10 s:\n{self.log.read_text()}"
                time.sleep(0.05)  # it is starting: nothing to await but its socket
        finally:
            client.close()

    def signal(self, sig: int) -> None:
        assert self.proc is not None, "not started"
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped (frozen) process cannot handle SIGTERM
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    redis_or_skip()
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_nodes_carry_on_after_redis_restarts(private_redis, serve, work):
    store = f"redis://127.0.0.1:{private_redis.port}/0?namespace=t-{secrets.token_hex(4)}"
    api = serve(store=store, workers=0, lease=LEASE)
    worker = work(store=store, workers=4, lease=LEASE, max_attempts=10)
    async with httpx.AsyncClient(timeout=30) as client, asyncio.timeout(110):
        before = [(await submit(client, api.url, "sleep", {"seconds": 2, "steps": 4}))["id"] for _ in range(6)]
        running = Follower(client, api.url, before[0])
        await running.wait_for(lambda event: event.status == "running", 20, "running")
        await running.close()  # a job is running: Redis goes down mid-run

        private_redis.stop()
        assert private_redis.proc is not None and private_redis.proc.returncode == 0, private_redis.log.read_text()
        # Down for longer than a lease and than the running jobs' rest: their results, heartbeats and
        # claims all meet a dead Redis. The API may answer 5xx, or not in time, but no process crashes.
        outage_ends = time.monotonic() + OUTAGE_S
        probes: list[int | str] = []
        while time.monotonic() < outage_ends:
            try:
                response = await client.get(f"{api.url}/jobs/{before[0]}", timeout=1)
                probes.append(response.status_code)
                assert response.status_code >= 500, response.text
                assert "Traceback" not in response.text
            except httpx.TransportError as exc:
                probes.append(type(exc).__name__)
            assert alive(api), api.output()
            assert alive(worker), worker.output()
            await asyncio.sleep(0.2)  # probing the API through the outage, bounded by its end
        assert probes, "the API was never asked while Redis was down"

        private_redis.start()
        restarted = time.monotonic()
        while True:  # a client retrying until the API answers again
            with contextlib.suppress(httpx.TransportError):
                response = await client.get(f"{api.url}/jobs/{before[0]}", timeout=5)
                if response.status_code == 200:
                    break
                assert response.status_code >= 500, response.text
            assert time.monotonic() - restarted < 20, "the API did not answer within 20 s of Redis coming back"
            await asyncio.sleep(0.2)  # polling the API, bounded by the deadline above

        # From now on Redis is up: no request should fail. A failed one is noted, then retried.
        errors: list[str] = []

        async def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
            for _ in range(5):
                response = await client.request(method, f"{api.url}{path}", **kwargs)
                if response.status_code < 500:
                    return response
                errors.append(f"{method} {path}: {response.status_code} {response.text}")
            raise AssertionError(errors)

        after = []
        for _ in range(6):
            response = await call("POST", "/jobs/sleep", json={"seconds": 0.5}, headers=ASYNC)
            assert response.status_code == 202, response.text
            after.append(response.json()["id"])
        jobs = []
        for job_id in before + after:
            deadline = time.monotonic() + 60
            while (job := (await call("GET", f"/jobs/{job_id}", params={"wait": 10})).json())["status"] not in TERMINAL:
                assert time.monotonic() < deadline, f"job {job_id} did not end within 60 s: {job}"
            jobs.append(job)
        outcome = {
            "jobs that did not succeed": [
                (job["id"], job["status"], job["attempt"], job["error"]) for job in jobs if job["status"] != "succeeded"
            ],
            "5xx once Redis was back": errors,
        }
        assert outcome == {"jobs that did not succeed": [], "5xx once Redis was back": []}
        for job_id in before + after:
            await assert_one_ending(client, api.url, job_id)
    assert alive(api), api.output()
    assert alive(worker), worker.output()


# -- 6. SIGTERM hands a running job back ----------------------------------------------------------


async def test_a_sigtermed_worker_hands_its_job_back_within_its_grace_and_another_finishes_it(nodes):
    lease = 30  # long: a job handed back is queued again long before its lease could lapse
    api = nodes.api(lease=lease)
    leaving = nodes.worker(lease=lease)
    seconds = GRACE_S + 2  # longer than the grace: it cannot finish in time
    async with httpx.AsyncClient(timeout=30) as client, asyncio.timeout(80):
        job_id = (await submit(client, api.url, "sleep", {"seconds": seconds, "steps": 12}))["id"]
        follower = Follower(client, api.url, job_id)
        await follower.wait_for(lambda event: event.status == "running", 20, "running")
        staying = nodes.worker(lease=lease)
        leaving.signal(signal.SIGTERM)
        termed = time.monotonic()

        queued = await follower.wait_for(
            lambda event: event.status == "queued" and event.data["attempt"] == 2, GRACE_S + 5, "hand-back"
        )
        assert queued.at - termed <= GRACE_S + 3, queued.at - termed  # the grace, not the lease
        assert leaving.proc is not None
        assert await asyncio.to_thread(leaving.proc.wait, 5) == 0, leaving.output()

        events = await follower.to_the_end(seconds + 15)
        assert statuses(events) == [("queued", 1), ("running", 1), ("queued", 2), ("running", 2), ("succeeded", 2)]
        assert events[-1].data["result"] == {"slept": seconds, "attempt": 2}
        await assert_one_ending(client, api.url, job_id)
        assert alive(staying)
        assert "Traceback" not in leaving.output()
