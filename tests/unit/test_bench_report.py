"""The benchmarks page says what its figures say: docs/benchmarks.md is rendered from docs/benchmarks.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.report import render, targets

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_page_is_the_rendering_of_its_figures() -> None:
    figures = json.loads((DOCS / "benchmarks.json").read_text())
    assert render(figures) == (DOCS / "benchmarks.md").read_text(), "run: python -m bench.report"


def _wrk(rate: float, p50: float) -> dict[str, Any]:
    return {"jobs_per_s": rate, "p50_ms_1": p50}


def test_targets_are_judged_from_the_figures() -> None:
    figures: dict[str, Any] = {
        "http": [
            {"system": "plain", "mode": "plain", "wrk": _wrk(1000, 1.0)},
            {"system": "outlast-sqlite", "mode": "sync", "wrk": _wrk(300, 2.9)},
            {"system": "outlast-sqlite", "mode": "SSE", "jobs_per_s": 100, "server_cpu_ms_per_job": 0.7},
            {"system": "outlast-redis", "mode": "sync", "wrk": _wrk(100, 3.1)},
            {"system": "outlast-redis", "mode": "202 + poll", "jobs_per_s": 90, "server_cpu_ms_per_job": 1.5},
            {"system": "outlast-postgres", "mode": "sync", "wrk": _wrk(600, 2.0)},
            {"system": "celery", "mode": "Flower apply", "wrk": _wrk(190, 9.0)},
            {"system": "celery", "mode": "Flower async-apply", "jobs_per_s": 200},
        ],
        "memory": [
            {"transport": "sse", "server": "outlast", "connections": 10000, "kb_per_conn": 24.5}
            | {"received": 10000, "max_ms": 1200.0}
        ],
        "notify": {
            "rows": [
                {"transport": "SSE", "server": "outlast", "clients": 1000, "received": 1000, "p99_ms": 9.0}
                | {"ending": "1 every 20 ms"},
                {"transport": "SSE", "server": "outlast", "clients": 1000, "received": 1000, "p99_ms": 900.0}
                | {"ending": "all at once"},  # not a target
                {"transport": "WebSocket", "server": "outlast", "clients": 1000, "received": 999, "p99_ms": 5.0}
                | {"ending": "1 every 20 ms"},
                {"transport": "SSE", "server": "outlast-postgres, 2 nodes", "clients": 1000, "received": 1000}
                | {"p99_ms": 12.0, "ending": "1 every 20 ms"},
            ]
        },
    }
    verdicts = [holds for _, _, holds in targets(figures)]
    assert verdicts == [
        True,  # sqlite latency 2.9x <= 3x
        True,  # sqlite throughput 0.3x >= 0.3x
        False,  # redis latency 3.1x
        False,  # redis throughput 0.1x < 0.15x
        True,  # postgres latency 2.0x (no throughput target of its own)
        False,  # sqlite 300 vs the peer's best (200): 1.5x < 5x
        False,  # redis 100 vs 200
        True,  # postgres 600 vs 200: 3.0x
        True,  # sqlite's waiting modes: 0.7 ms <= 0.8 ms
        False,  # redis's 202 + poll: 1.5 ms > 1.2 ms
        True,  # 24.5 KB per SSE subscriber
        False,  # the last terminal event 1.2 s after the end
        True,  # SSE p99 9 ms
        False,  # WebSocket: one client never got its event
        False,  # PostgreSQL across two nodes: p99 12 ms
    ]
