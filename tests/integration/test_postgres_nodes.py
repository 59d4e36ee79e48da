"""Many nodes on one PostgreSQL: real `outlast serve` and `outlast worker` processes, crashes, fencing, a restart.

Every test runs in a schema of its own in this run's database (dropped at the
end), or on a private PostgreSQL it starts itself with initdb and pg_ctl.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.contract.conftest import (
    drop_schema,
    postgres_database,  # noqa: F401 (a fixture)
    postgres_or_skip,
)
from tests.integration.conftest import Process, free_port
from tests.integration.test_redis_nodes import (
    ASYNC,
    LEASE,
    TERMINAL,
    Follower,
    Nodes,
    alive,
    assert_one_ending,
    every_job_ends_once_while_workers_are_killed,
    get_job,
    statuses,
    submit,
    wait_terminal,
    ws_follow,
)
from tests.integration.test_store_outage import GATEWAY_TIMEOUT, MARGIN, assert_store_unavailable

pytestmark = pytest.mark.slow

OUTAGE_S = 4.0  # how long the private PostgreSQL stays down


@pytest.fixture
def nodes(serve: Any, work: Any, postgres_database: str) -> Iterator[Nodes]:  # noqa: F811
    schema = f"t_{secrets.token_hex(4)}"
    started = Nodes(f"{postgres_database}?schema={schema}", serve, work)
    try:
        yield started
    finally:
        for process in started.started:  # before the schema goes: nothing writes to it afterwards
            with contextlib.suppress(ProcessLookupError):
                process.signal(signal.SIGCONT)  # a SIGSTOPped one could not stop
            process.stop()
        asyncio.run(drop_schema(postgres_database, schema))


# -- 1. events reach every API node ----------------------------------------------------------


async def test_events_reach_sse_and_websocket_clients_on_the_other_api_node(nodes):
    first, second = nodes.api(), nodes.api()
    nodes.worker(workers=2)
    nodes.worker(workers=2)
    async with httpx.AsyncClient(timeout=30) as client, asyncio.timeout(60):
        jobs = [await submit(client, first.url, "sleep", {"seconds": 2, "steps": 8}) for _ in range(4)]
        ids = [job["id"] for job in jobs]
        followers = [Follower(client, second.url, job_id) for job_id in ids]
        by_ws = await ws_follow(second, ids)
        by_sse = {follower.job_id: await follower.to_the_end(30) for follower in followers}

        for job_id in ids:
            seen_by_sse, seen_by_ws = by_sse[job_id], by_ws[job_id]
            assert [event.seq for event in seen_by_sse] == list(range(1, len(seen_by_sse) + 1)), seen_by_sse
            assert seen_by_sse == seen_by_ws
            assert statuses(seen_by_sse) == [("queued", 1), ("running", 1), ("succeeded", 1)]
            assert seen_by_sse[-1].data["result"] == {"slept": 2, "attempt": 1}
            progress = [event.data["current"] for event in seen_by_sse if event.type == "progress"]
            assert progress and progress[-1] == 8 and progress == sorted(progress), seen_by_sse
            # Live, not replayed at the end: the progress arrived while the job ran.
            assert seen_by_sse[-1].at - seen_by_sse[1].at >= 1.0, [event.at for event in seen_by_sse]
            assert await assert_one_ending(client, first.url, job_id) == seen_by_sse


async def test_a_sync_request_on_a_node_without_workers_gets_its_result(nodes):
    api = nodes.api()
    nodes.worker()
    async with httpx.AsyncClient(timeout=30) as client, asyncio.timeout(30):
        started = time.monotonic()
        response = await client.post(f"{api.url}/jobs/sleep", json={"seconds": 1}, headers={"Prefer": "wait=10"})
        assert response.status_code == 200, response.text
        job = response.json()
        assert (job["status"], job["result"]) == ("succeeded", {"slept": 1, "attempt": 1})
        assert time.monotonic() - started < 5  # woken by the NOTIFY, not by a timeout


# -- 2. a worker killed mid-job ------------------------------------------------------------------


async def test_a_job_whose_worker_is_killed_is_run_by_the_other(nodes):
    api = nodes.api()
    doomed = nodes.worker()
    async with httpx.AsyncClient(timeout=30) as client, asyncio.timeout(60):
        job_id = (await submit(client, api.url, "sleep", {"seconds": 3, "steps": 3}))["id"]
        follower = Follower(client, api.url, job_id)
        await follower.wait_for(lambda event: event.status == "running", 20, "running")
        survivor = nodes.worker()
        doomed.kill()
        killed = time.monotonic()

        events = await follower.to_the_end(30)
        assert statuses(events) == [("queued", 1), ("running", 1), ("queued", 2), ("running", 2), ("succeeded", 2)]
        assert events[-1].data["result"] == {"slept": 3, "attempt": 2}
        assert events[-1].at - killed < LEASE + 3 + 8, events[-1].at - killed
        await assert_one_ending(client, api.url, job_id)
        assert alive(survivor) and alive(api)


# -- 3. fencing ---------------------------------------------------------------------------------


async def test_a_frozen_worker_that_wakes_up_after_its_lease_was_taken_cannot_write_its_result(nodes):
    api = nodes.api()
    frozen = nodes.worker()
    async with httpx.AsyncClient(timeout=30) as client, asyncio.timeout(80):
        job_id = (await submit(client, api.url, "sleep", {"seconds": 4, "steps": 40}))["id"]
        follower = Follower(client, api.url, job_id)
        await follower.wait_for(lambda event: event.status == "running", 20, "running")
        other = nodes.worker()
        await follower.wait_for(lambda event: event.type == "progress" and event.data["current"] == 39, 20, "step 39")
        frozen.signal(signal.SIGSTOP)
        try:
            events = await follower.to_the_end(40)
            assert statuses(events) == [("queued", 1), ("running", 1), ("queued", 2), ("running", 2), ("succeeded", 2)]
            assert events[-1].data["result"] == {"slept": 4, "attempt": 2}
            other.stop()  # from now on only `frozen` can touch the store
            assert other.proc is not None and other.proc.returncode == 0, other.output()
            before = await assert_one_ending(client, api.url, job_id)
        finally:
            frozen.signal(signal.SIGCONT)

        # Its attempt 1 goes on, finishes and tries to write its result; a one-slot worker takes a new job
        # only once that attempt is over.
        probe = (await submit(client, api.url, "noop", {}))["id"]
        assert (await wait_terminal(client, api.url, probe, 30))["status"] == "succeeded"

        job = await get_job(client, api.url, job_id)
        assert (job["status"], job["attempt"], job["result"]) == ("succeeded", 2, {"slept": 4, "attempt": 2})
        assert await assert_one_ending(client, api.url, job_id) == before
        assert alive(frozen), frozen.output()
        assert "Traceback" not in frozen.output()


# -- 4. many jobs, workers killed at random --------------------------------------------------------


@pytest.mark.timeout(240)  # each job is three commits, each one fsynced: slower than Redis on a busy machine
async def test_a_thousand_jobs_end_once_each_while_workers_are_killed_at_random(nodes):
    await every_job_ends_once_while_workers_are_killed(nodes, timeout_s=220)


# -- 5. PostgreSQL restarts ----------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: `pg_config --bindir`, else Debian's newest /usr/lib/postgresql/N/bin."""
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        if (Path(found) / "initdb").exists():
            return Path(found)
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return candidates[-1].parent if candidates else None


class PostgresServer:
    """A private PostgreSQL cluster (initdb) on a free port; stopped with `-m immediate`, as in a crash."""

    def __init__(self) -> None:
        self.port = free_port()
        bindir = postgres_bindir()
        assert bindir is not None
        self.bindir = bindir
        self.directory = Path(tempfile.mkdtemp(prefix="outlast-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        # initdb and postgres refuse to run as root: as root, run them as the postgres user.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.directory, "postgres")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def crash(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    postgres_or_skip()
    if postgres_bindir() is None:
        if os.environ.get("CI"):
            pytest.fail("initdb and pg_ctl are not installed")
        pytest.skip("initdb and pg_ctl are not installed")
    server = PostgresServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()


async def test_nodes_carry_on_after_postgres_crashes_and_restarts_mid_load(private_postgres, serve, work):
    api = serve(store=private_postgres.url, workers=0, lease=LEASE)
    other_api = serve(store=private_postgres.url, workers=0, lease=LEASE)
    worker = work(store=private_postgres.url, workers=4, lease=LEASE, max_attempts=10)
    async with httpx.AsyncClient(timeout=30) as client, asyncio.timeout(120):
        before = [(await submit(client, api.url, "sleep", {"seconds": 2, "steps": 4}))["id"] for _ in range(6)]
        running = Follower(client, other_api.url, before[0])
        await running.wait_for(lambda event: event.status == "running", 20, "running")

        # Load while the database goes: whatever was acknowledged (a 202) must end.
        accepted: list[str] = []
        refused: list[int | str] = []
        stop_load = asyncio.Event()

        async def load() -> None:
            while not stop_load.is_set():
                try:
                    response = await client.post(f"{api.url}/jobs/echo", json={"text": "x"}, headers=ASYNC, timeout=5)
                    if response.status_code == 202:
                        accepted.append(response.json()["id"])
                    else:
                        assert response.status_code >= 500, response.text
                        assert "Traceback" not in response.text
                        refused.append(response.status_code)
                except httpx.TransportError as exc:
                    refused.append(type(exc).__name__)
                await asyncio.sleep(0.05)  # a steady trickle of submits, through the outage

        loading = asyncio.create_task(load())
        await asyncio.sleep(1)
        private_postgres.crash()
        await asyncio.sleep(OUTAGE_S)  # down for longer than a lease: results, heartbeats and claims fail
        assert alive(api), api.output()
        assert alive(worker), worker.output()
        private_postgres.start()
        await asyncio.sleep(3)
        stop_load.set()
        await loading
        assert refused, "no submit met the outage"
        assert accepted, "no submit was accepted"

        # The stream on the other node carries on to the end, without a gap.
        events = await running.to_the_end(60)
        assert [event.seq for event in events] == list(range(1, len(events) + 1)), events

        jobs = [await wait_terminal(client, api.url, job_id, 60) for job_id in before + accepted]
        failed = [(j["id"], j["status"], j["error"]) for j in jobs if j["status"] != "succeeded"]
        assert failed == []
        for job_id in before + accepted:
            await assert_one_ending(client, other_api.url, job_id)
    for process in (api, other_api, worker):
        assert alive(process), process.output()


# -- 6. outlast migrate before the nodes ------------------------------------------------------------


def test_migrate_then_serve(postgres_database, tmp_path, serve):  # noqa: F811
    schema = f"t_{secrets.token_hex(4)}"
    url = f"{postgres_database}?schema={schema}"
    try:
        migrate = Process(["migrate", "--store", url], tmp_path / "migrate.log")
        migrate.start()
        assert migrate.proc is not None and migrate.proc.wait(timeout=60) == 0, migrate.output()
        api = serve(store=url, workers=1)
        response = httpx.post(f"{api.url}/jobs/echo", json={"text": "a"}, headers={"Prefer": "wait=10"}, timeout=15)
        assert response.status_code == 200 and response.json()["status"] in TERMINAL, response.text
    finally:
        asyncio.run(drop_schema(postgres_database, schema))


# -- 7. a database that hangs or is down: 503 within the hold -------------------------------------


def cluster_pids(server: PostgresServer) -> list[int]:
    """The postmaster and every process it started."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == postmaster:
                    pids.append(int(entry.name))
    return pids


def test_a_frozen_or_stopped_postgres_answers_503_within_the_hold(private_postgres, serve):
    api = serve(store=private_postgres.url, workers=1, gateway_timeout=GATEWAY_TIMEOUT, margin=MARGIN)
    with httpx.Client(base_url=api.url, timeout=30) as client:
        earlier = client.post("/jobs/echo", json={"text": "before"}, headers={"Prefer": "wait=2"})
        assert earlier.status_code == 200, earlier.text
        job_id = earlier.json()["id"]

        frozen = cluster_pids(private_postgres)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            for method, path, headers in (
                ("POST", "/jobs/echo", {"Prefer": "wait=10"}),
                ("GET", f"/jobs/{job_id}", {}),
                ("GET", f"/jobs/{job_id}", {"Prefer": "wait=10"}),
            ):
                started = time.monotonic()
                response = client.request(
                    method, path, json={"text": "during"} if method == "POST" else None, headers=headers
                )
                assert_store_unavailable(response, time.monotonic() - started)
        finally:
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

        private_postgres.crash()
        started = time.monotonic()
        response = client.get(f"/jobs/{job_id}")
        assert_store_unavailable(response, time.monotonic() - started)
        private_postgres.start()

        deadline = time.monotonic() + 20
        while True:
            response = client.post("/jobs/echo", json={"text": "after"}, headers={"Prefer": "wait=2"})
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            assert response.status_code == 503, response.text
            time.sleep(0.2)  # the store is reconnecting: nothing to await but its answer
        assert response.status_code == 200, response.text
        assert response.json()["result"] == ["after"]
        assert client.get(f"/jobs/{job_id}").json()["status"] == "succeeded"
    api.stop()
    assert "Traceback" not in api.output(), api.output()
