"""Every benchmark in one run: writes docs/benchmarks.md and docs/benchmarks.json.

    .venv/bin/python -m bench [--quick] [--sections http,notify,memory,requests,nodes,idle] [--no-peer]

Needs what the tests need (`./scripts/setup`, Redis on 127.0.0.1:6379, PostgreSQL on 127.0.0.1:5432) and
`wrk` (Debian: `apt-get install wrk`). The peer, Celery + Flower, is installed
by the run itself into a virtualenv of its own (`.bench/celery-venv`) on first
use. Every figure is measured in this run, next to its baseline (the plain
endpoint, the floor servers, naive polling, the peer), on this machine; the
page says which targets hold. `--quick` runs shorter and smaller (a smoke
test of the suite; its figures are not for the page), and writes to
`.bench/` instead of `docs/` unless `--out` says otherwise.

`python -m bench.report` rewrites the page from the JSON file without
measuring again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

from bench import _postgres, http_modes, notify, poll_cost, requests_per_job, throughput
from bench._servers import ROOT, machine, percentile
from bench.report import write

SECTIONS = ("http", "notify", "memory", "requests", "nodes", "idle")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def about(redis_url: str, peer: dict[str, str] | None) -> dict[str, Any]:
    """Where and what was measured."""
    client = redis.Redis.from_url(redis_url)
    try:
        redis_version = str(client.info("server")["redis_version"])
    finally:
        client.close()
    packages = ("outlast", "starlette", "uvicorn", "httptools", "uvloop", "websockets", "redis", "asyncpg", "pydantic")
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout if shutil.which("wrk") else ""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "machine": machine(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "redis_server": redis_version,
        "postgres_server": _postgres.server_version(_postgres.URL),
        "wrk": " ".join(wrk.split()[:2]),
        "packages": {name: _version(name) for name in packages},
        "peer": peer,
    }


def _nodes(redis_url: str, jobs: int, clients: int) -> list[dict[str, Any]]:
    rows = []
    for setup in throughput.SETUPS:
        result = throughput.measure(setup, redis_url, jobs, clients)
        ms = [x * 1000 for x in result.latencies]
        rows.append(
            {
                "setup": setup.name,
                "jobs_per_s": round(result.rate, 1),
                "p50_ms": round(percentile(ms, 50), 1),
                "p99_ms": round(percentile(ms, 99), 1),
                "not_200": sum(n for status, n in result.statuses.items() if status != 200),
                "server_cpu_ms_per_job": round(result.server_cpu_s / jobs * 1000, 2),
                # The store server's CPU: Redis's, or PostgreSQL's processes' (the key keeps its name).
                "redis_cpu_ms_per_job": None
                if result.redis_cpu_s is None
                else round(result.redis_cpu_s / jobs * 1000, 2),
                "client_cpu_s": round(result.client_cpu_s, 1),
                "problems": result.problems[:5],
            }
        )
        print(f"  {setup.name}: {result.rate:.0f} jobs/s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="shorter and smaller: a smoke test of the suite")
    parser.add_argument("--no-peer", action="store_true", help="leave Celery + Flower out")
    parser.add_argument("--redis", default=os.environ.get("OUTLAST_TEST_REDIS", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--out", type=Path, help="where to write benchmarks.md and benchmarks.json")
    args = parser.parse_args()
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    out: Path = args.out or (ROOT / ".bench" if args.quick else ROOT / "docs")
    out.mkdir(parents=True, exist_ok=True)
    redis.Redis.from_url(args.redis, socket_connect_timeout=2).ping()  # fail now, not halfway
    _postgres.ping(_postgres.URL)
    if "http" in sections and not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian: apt-get install wrk); it measures the one-request modes")

    peer = None
    systems: tuple[str, ...] = http_modes.SYSTEMS
    if args.no_peer:
        systems = tuple(s for s in systems if s != "celery")
    elif "http" in sections:
        from bench import peer_celery

        python = peer_celery.ensure_venv()
        versions = subprocess.run(
            [str(python), "-c", "import celery, flower; print(celery.__version__, flower.__version__)"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        peer = {"celery": versions[0], "flower": versions[1]}

    quick = args.quick
    figures: dict[str, Any] = {"about": about(args.redis, peer), "quick": quick}
    timings = {}
    for section in sections:
        print(f"{section} ...", flush=True)
        started = time.monotonic()
        if section == "http":
            figures["http"] = http_modes.measure(systems, seconds=2.0 if quick else 6.0, redis_url=args.redis)
        elif section == "notify":
            figures["notify"] = notify.measure(clients=200 if quick else 1000, jobs=20 if quick else 100, across=True)
        elif section == "memory":
            from bench import memory

            counts = (500,) if quick else (1000, 5000, 10000)
            figures["memory"] = memory.measure(transports=("sse",), counts=counts)
            figures["memory"] += memory.measure(transports=("ws", "ws-plain"), counts=counts[:1])
        elif section == "requests":
            figures["requests"] = requests_per_job.run(jobs=1 if quick else 3, seconds=4 if quick else 8)
        elif section == "nodes":
            figures["nodes"] = _nodes(args.redis, 500 if quick else 3000, 64)
        elif section == "idle":
            figures["idle"] = poll_cost.measure(seconds=5 if quick else 20)
        timings[section] = round(time.monotonic() - started)
        print(f"{section}: {timings[section]} s", flush=True)
    figures["seconds"] = timings

    json_path = out / "benchmarks.json"
    previous = json.loads(json_path.read_text()) if json_path.exists() else {}
    commit = figures["about"]["commit"]
    figures["measured_at"] = dict.fromkeys(sections, commit)
    if set(sections) != set(SECTIONS):  # a partial run keeps the other sections' figures, and says so
        figures = {
            **previous,
            **{k: v for k, v in figures.items() if k != "about"},
            "seconds": {**previous.get("seconds", {}), **timings},
            "measured_at": {**previous.get("measured_at", {}), **figures["measured_at"]},
        }
    json_path.write_text(json.dumps(figures, indent=1) + "\n")
    write(figures, out / "benchmarks.md")
    print(f"wrote {json_path} and {out / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
