"""What idling on SQLite costs: CPU time of an idle `outlast serve` and `outlast worker`, and their queries.

    .venv/bin/python -m bench.poll_cost [--seconds 20]

A SQLite store learns of other processes' events by polling the events table
every POLL_INTERVAL_S (`_poll_events`), and a worker's runner asks for work and
keeps its maintenance loop going besides. Nothing here happens: no job, no
client. Two passes:

1. CPU: `outlast serve tests.apps:ot --workers 0` and `outlast worker
   tests.apps:ot --workers 1` on one fresh SQLite file, beside the same two
   commands on `memory://` (no poller, no SQL: the rest of the process idling),
   all four at once. After a warm-up, user + system CPU time from
   /proc/<pid>/stat over `--seconds`.
2. Queries: the two SQLite processes again, each with every statement counted
   (bench/_traced.py; its callback costs CPU, so this pass measures no CPU).

Prints two Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench._servers import PYTHON, Server, free_port, machine, server
from outlast.stores.sqlite import POLL_INTERVAL_S

WARM_UP_S = 5.0
TARGET = "tests.apps:ot"
COMMANDS = ("serve", "worker")


def command(kind: str, store: str) -> list[str]:
    if kind == "serve":
        return [
            "serve",
            TARGET,
            "--workers",
            "0",
            "--log-level",
            "warning",
            "--port",
            str(free_port()),
            "--store",
            store,
        ]
    return ["worker", TARGET, "--workers", "1", "--store", store]


def cpu_pass(tmp: str, seconds: float) -> dict[tuple[str, str], float]:
    sqlite = f"sqlite:///{os.path.join(tmp, 'cpu.db')}"
    runs = [(kind, store) for kind in COMMANDS for store in ("sqlite", "memory")]
    with ExitStack() as stack:
        servers: dict[tuple[str, str], Server] = {}
        for kind, store in runs:
            url = sqlite if store == "sqlite" else "memory://"
            args = [PYTHON, "-m", "outlast", *command(kind, url)]
            log = Path(tmp, f"cpu-{kind}-{store}.log")
            servers[kind, store] = stack.enter_context(server(args, log, port_flag=False))
        time.sleep(WARM_UP_S)
        before = {key: srv.cpu_s() for key, srv in servers.items()}
        time.sleep(seconds)
        used = {key: srv.cpu_s() - before[key] for key, srv in servers.items()}
        for key, srv in servers.items():
            for line in srv.problems():
                print(f"  {key[0]} on {key[1]}, log: {line}")
    return used


def query_pass(tmp: str, seconds: float) -> dict[str, Counter[str]]:
    sqlite = f"sqlite:///{os.path.join(tmp, 'queries.db')}"
    with ExitStack() as stack:
        counts = {}
        for kind in COMMANDS:
            counts[kind] = out = Path(tmp, f"counts-{kind}.json")
            args = [PYTHON, "-m", "bench._traced", str(out), *command(kind, sqlite)]
            stack.enter_context(server(args, Path(tmp, f"queries-{kind}.log"), port_flag=False))
        time.sleep(WARM_UP_S)
        first = {kind: json.loads(path.read_text()) for kind, path in counts.items()}
        time.sleep(seconds)
        last = {kind: json.loads(path.read_text()) for kind, path in counts.items()}
    rates = {}
    for kind in COMMANDS:
        elapsed = last[kind]["time"] - first[kind]["time"]
        delta = Counter(last[kind]["counts"])
        delta.subtract(first[kind]["counts"])
        rates[kind] = Counter({sql: n / elapsed for sql, n in delta.items() if n > 0})
    return rates


def measure(seconds: float = 20) -> list[dict[str, Any]]:
    """CPU seconds per minute of an idle `serve` and `worker` on SQLite and on memory://, one row each."""
    with tempfile.TemporaryDirectory() as tmp:
        used = cpu_pass(tmp, seconds)
    rows = []
    for kind in COMMANDS:
        sqlite, memory = (used[kind, store] / seconds * 60 for store in ("sqlite", "memory"))
        rows.append(
            {
                "process": kind,
                "cpu_s_per_min_sqlite": round(sqlite, 2),
                "cpu_s_per_min_memory": round(memory, 2),
                "core_percent_sqlite": round(sqlite / 60 * 100, 2),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        used = cpu_pass(tmp, args.seconds)
        rates = query_pass(tmp, min(args.seconds, 10))
    print(f"\nIdle for {args.seconds:g} s after a {WARM_UP_S:g} s warm-up; {machine()}.")
    print(
        f"POLL_INTERVAL_S = {POLL_INTERVAL_S:g}: the poller's 1 / POLL_INTERVAL_S = {1 / POLL_INTERVAL_S:g} reads/s.\n"
    )
    print(
        "| process | CPU s per minute, SQLite | CPU s per minute, memory:// | difference | SQLite, % of one core"
        " | SQL statements/s |\n|---|---|---|---|---|---|"
    )
    names = {"serve": "`outlast serve --workers 0`", "worker": "`outlast worker --workers 1`"}
    for kind in COMMANDS:
        sqlite, memory = (used[kind, store] / args.seconds * 60 for store in ("sqlite", "memory"))
        print(
            f"| {names[kind]} | {sqlite:.2f} | {memory:.2f} | {sqlite - memory:.2f} | "
            f"{sqlite / 60 * 100:.2f} % | {sum(rates[kind].values()):.1f} |"
        )
    print("\n| process | statement | per second |\n|---|---|---|")
    for kind in COMMANDS:
        for sql, rate in rates[kind].most_common():
            shown = sql if len(sql) <= 90 else sql[:87] + "..."
            print(f"| {kind} | `{shown}` | {rate:.1f} |")


if __name__ == "__main__":
    main()
