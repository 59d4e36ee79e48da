"""Run the `outlast` command with every SQLite statement it executes counted.

    python -m bench._traced COUNTS.json serve tests.apps:ot --store sqlite:///x.db

Every connection the process opens gets a trace callback; a thread writes the
counts (per statement, literals replaced by `?`) to COUNTS.json twice a second.
The callback costs CPU: measure CPU time in a run without it.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import threading
import time
from collections import Counter
from typing import Any

LITERALS = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b")


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    connect = sqlite3.connect

    def trace(sql: str) -> None:
        key = LITERALS.sub("?", " ".join(sql.split()))
        with lock:
            counts[key] += 1

    def traced_connect(*a: Any, **k: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = connect(*a, **k)
        conn.set_trace_callback(trace)
        return conn

    def dump() -> None:
        while True:
            time.sleep(0.5)
            with lock:
                data = {"time": time.monotonic(), "counts": dict(counts)}
            with open(f"{out}.tmp", "w") as f:
                json.dump(data, f)
            os.replace(f"{out}.tmp", out)

    sqlite3.connect = traced_connect  # type: ignore[assignment]
    threading.Thread(target=dump, daemon=True).start()
    from outlast.cli import main as cli

    cli(args, prog_name="outlast")


if __name__ == "__main__":
    main()
