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
            {"system": "outlast-sqlite", "mode": "sync", "wrk": _wrk(600, 1.9)},
            {"system": "outlast-redis", "mode": "sync", "wrk": _wrk(400, 2.1)},
            {"system": "celery", "mode": "Flower apply", "wrk": _wrk(190, 9.0)},
            {"system": "celery", "mode": "Flower async-apply", "jobs_per_s": 200},
        ],
        "memory": [
            {"transport": "sse", "server": "outlast", "connections": 10000, "kb_per_conn": 29.5}
            | {"received": 10000, "max_ms": 1200.0}
        ],
        "notify": {
            "rows": [
                {"transport": "SSE", "server": "outlast", "clients": 1000, "received": 1000, "p99_ms": 9.0}
                | {"ending": "1 every 20 ms"},
                {"transport": "WebSocket", "server": "outlast", "clients": 1000, "received": 999, "p99_ms": 5.0}
                | {"ending": "1 every 20 ms"},
            ]
        },
    }
    verdicts = [holds for _, _, holds in targets(figures)]
    assert verdicts == [
        True,  # sqlite latency 1.9x <= 2x
        True,  # sqlite throughput 0.6x >= 0.5x
        False,  # redis latency 2.1x
        False,  # redis throughput 0.4x
        True,  # sqlite 600 vs the peer's best (200): 3.0x
        False,  # redis 400 vs 200: 2.0x
        True,  # 29.5 KB per SSE subscriber
        False,  # the last terminal event 1.2 s after the end
        True,  # SSE p99 9 ms
        False,  # WebSocket: one client never got its event
    ]
