"""The `outlast` command, run as a user runs it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from outlast.jobs import Job
from outlast.stores import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]


def outlast(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outlast", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def store_with_jobs(tmp_path: Path) -> tuple[str, list[str]]:
    path = tmp_path / "jobs.db"

    async def fill() -> list[str]:
        store = SQLiteStore(str(path))
        await store.open()
        ids = []
        for i in range(3):
            job, _ = await store.create(Job.new("report", {"rows": i}, max_attempts=3, retention_s=60))
            ids.append(job.id)
        await store.claim("w", ["report"], 30)
        await store.close()
        return ids

    return f"sqlite:///{path}", asyncio.run(fill())


def test_help_teaches_the_commands():
    done = outlast("--help")
    assert done.returncode == 0
    for command in ("serve", "worker", "jobs"):
        assert command in done.stdout
    serve_help = outlast("serve", "--help").stdout
    for flag in ("--gateway-timeout", "--margin", "--workers", "--lease", "--store", "OUTLAST_GATEWAY_TIMEOUT"):
        assert flag in serve_help


def test_jobs_list_show_and_cancel(store_with_jobs: tuple[str, list[str]]):
    url, ids = store_with_jobs
    listed = outlast("jobs", "list", "--store", url, "--json")
    assert listed.returncode == 0, listed.stderr
    jobs = json.loads(listed.stdout)
    assert [job["id"] for job in jobs] == list(reversed(ids))
    assert outlast("jobs", "list", "--store", url, "--status", "running").stdout.count(ids[0]) == 1

    shown = outlast("jobs", "show", "--store", url, ids[1])
    assert json.loads(shown.stdout)["status"] == "queued"

    canceled = outlast("jobs", "cancel", "--store", url, ids[1])
    assert canceled.returncode == 0
    assert "canceled" in canceled.stdout
    running = outlast("jobs", "cancel", "--store", url, ids[0])
    assert "cancellation requested" in running.stdout


def test_unknown_ids_and_targets_fail_clearly(store_with_jobs: tuple[str, list[str]]):
    url, _ = store_with_jobs
    missing = outlast("jobs", "show", "--store", url, "j_nope")
    assert missing.returncode == 1
    assert "no job has the id" in missing.stderr
    bad_target = outlast("serve", "no_such_module:ot")
    assert bad_target.returncode == 2
    assert "cannot import" in bad_target.stderr
    bad_flag = outlast("serve", "examples.app:ot", "--margin", "40")
    assert bad_flag.returncode == 2
    assert "margin" in bad_flag.stderr
    assert "Traceback" not in bad_flag.stderr + bad_target.stderr + missing.stderr


def test_worker_needs_workers():
    done = outlast("worker", "examples.app:ot", "--workers", "0", "--store", "memory://")
    assert done.returncode == 2
    assert "--workers must be at least 1" in done.stderr
