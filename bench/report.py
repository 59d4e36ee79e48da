"""docs/benchmarks.md from the figures of one run (docs/benchmarks.json).

    .venv/bin/python -m bench.report [docs/benchmarks.json] [docs/benchmarks.md]

The page's words are fixed; every figure in it, and whether each target
holds, comes from the JSON file, so the page never says more than the run
measured.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._servers import ROOT

X = "\N{MULTIPLICATION SIGN}"


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    return "n/a" if not a or not b else f"{a / b:.{digits}f}{X}"


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# -- the targets -------------------------------------------------------------------------------


# What each store must reach (the issues that set them: fast jobs, the PostgreSQL store).
LATENCY_X = {"sqlite": 3.0, "redis": 3.0, "postgres": 3.0}  # sync p50 at 1 client, at most this x the plain endpoint's
THROUGHPUT_X = {"sqlite": 0.3, "redis": 0.15}  # jobs/s at 64 clients, at least this x the plain endpoint's
PEER_X = {"sqlite": 5.0, "redis": 5.0, "postgres": 3.0}  # jobs/s, at least this x Celery + Flower's
WAITING_CPU_MS = {"sqlite": 0.8, "redis": 1.2}  # server CPU per job in the waiting modes, at most
WAITING_MODES = ("202 + poll", "303 chain", "long-poll", "SSE", "WebSocket")
STORES = ("sqlite", "redis", "postgres")


def targets(fig: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, what was measured, holds) for each target; None where the run has no figure for it."""
    found: list[tuple[str, str, bool | None]] = []
    http = fig.get("http", [])
    plain = (_find(http, system="plain") or {}).get("wrk")
    for store in STORES:
        sync = (_find(http, system=f"outlast-{store}", mode="sync") or {}).get("wrk")
        if not (plain and sync):
            continue
        ratio = sync["p50_ms_1"] / plain["p50_ms_1"]
        limit = LATENCY_X[store]
        found.append(
            (
                f"sync no-op round trip at 1 client ≤ {limit:g}{X} the plain endpoint's ({store})",
                f"p50 {sync['p50_ms_1']:.3f} ms vs {plain['p50_ms_1']:.3f} ms: {ratio:.1f}{X}",
                ratio <= limit,
            )
        )
        if store in THROUGHPUT_X:
            ratio = sync["jobs_per_s"] / plain["jobs_per_s"]
            floor = THROUGHPUT_X[store]
            found.append(
                (
                    f"throughput at 64 clients ≥ {floor:g}{X} the plain endpoint's ({store})",
                    f"{sync['jobs_per_s']:,.0f} vs {plain['jobs_per_s']:,.0f} jobs/s: {ratio:.2f}{X}",
                    ratio >= floor,
                )
            )
    peer = [r for r in http if r["system"] == "celery"]
    if peer:
        best_peer = max(peer, key=lambda r: r.get("wrk", r)["jobs_per_s"])
        peer_rate = best_peer.get("wrk", best_peer)["jobs_per_s"]
        for store in STORES:
            ours = [r for r in http if r["system"] == f"outlast-{store}"]
            if not ours:
                continue
            best = max(ours, key=lambda r: r.get("wrk", r)["jobs_per_s"])
            rate = best.get("wrk", best)["jobs_per_s"]
            found.append(
                (
                    f"≥ {PEER_X[store]:g}{X} Celery + Flower's jobs/s over HTTP ({store})",
                    f"{rate:,.0f} ({best['mode']}) vs {peer_rate:,.0f} ({best_peer['mode']}):"
                    f" {rate / peer_rate:.1f}{X}",
                    rate / peer_rate >= PEER_X[store],
                )
            )
    for store, limit in WAITING_CPU_MS.items():
        rows = [r for r in http if r["system"] == f"outlast-{store}" and r["mode"] in WAITING_MODES]
        costs = [r["server_cpu_ms_per_job"] for r in rows if r.get("server_cpu_ms_per_job") is not None]
        if costs:
            worst = max(rows, key=lambda r: r.get("server_cpu_ms_per_job") or 0)
            found.append(
                (
                    f"server CPU per job ≤ {limit:g} ms in every waiting mode ({store})",
                    f"at most {max(costs):.2f} ms ({worst['mode']}), at least {min(costs):.2f} ms",
                    max(costs) <= limit,
                )
            )
    memory = fig.get("memory", [])
    sse = _find(memory, transport="sse", server="outlast", connections=10000)
    if sse:
        found.append(
            (
                "10,000 SSE subscribers on one process: ≤ 25 KB each",
                f"{sse['kb_per_conn']:.1f} KB each",
                sse["kb_per_conn"] <= 25,
            )
        )
        if sse.get("received") is not None:
            on_time = sse["received"] == 10000 and sse["max_ms"] is not None and sse["max_ms"] <= 1000
            found.append(
                (
                    "… every one with the terminal event within 1 s of the job's end",
                    f"{sse['received']:,}/10,000 received, the last {_f(sse['max_ms'], 0)} ms after the end",
                    on_time,
                )
            )
    notify_rows = fig.get("notify", {}).get("rows", [])
    for row in notify_rows:
        # Outlast's own servers (the PostgreSQL pair too), SSE and WebSocket, jobs ending one by one.
        if not row["server"].startswith("outlast") or row["transport"] not in ("SSE", "WebSocket"):
            continue
        if row["ending"] == "all at once":
            continue
        where = "" if row["server"] == "outlast" else f", {row['server']}"
        holds = row["p99_ms"] is not None and row["p99_ms"] <= 10 and row["received"] == row["clients"]
        found.append(
            (
                f"notification p99 ≤ 10 ms with {row['clients']:,} waiting clients, {row['transport']}, jobs ending "
                f"{row['ending']}{where}",
                f"p99 {_f(row['p99_ms'])} ms ({row['received']:,}/{row['clients']:,} received)",
                holds,
            )
        )
    return found


# -- the sections --------------------------------------------------------------------------------


def _about(fig: dict[str, Any]) -> str:
    a = fig["about"]
    packages = ", ".join(f"{k} {v}" for k, v in a["packages"].items() if v)
    peer = f"; the peer: Celery {a['peer']['celery']}, Flower {a['peer']['flower']}" if a.get("peer") else ""
    dirty = " with uncommitted changes" if a.get("dirty") else ""
    took = sum(fig.get("seconds", {}).values())
    later = {s: c for s, c in fig.get("measured_at", {}).items() if c != a["commit"]}
    again = "".join(f" The `{s}` section was measured again at commit `{c}`." for s, c in later.items())
    return (
        f"Measured {a['date']} at commit `{a['commit']}`{dirty}, in {took / 60:.0f} minutes, on {a['machine']}; "
        f"Linux {a['kernel']}, SQLite {a['sqlite']}, Redis {a['redis_server']}, {a['wrk'] or 'no wrk'}; "
        f"{packages}{peer}.{again}"
    )


def _targets(fig: dict[str, Any]) -> str:
    rows = [
        [t, m, "holds" if ok else ("no figure" if ok is None else "**does not hold**")] for t, m, ok in targets(fig)
    ]
    return _table(["target", "measured", ""], rows)


def _http(fig: dict[str, Any]) -> str:
    rows = fig["http"]
    clients = rows[0]["clients"]
    plain = _find(rows, system="plain") or {}
    wrk_plain = plain.get("wrk") or {}
    wrk_rows = []
    for r in rows:
        w = r.get("wrk")
        if not w:
            continue
        wrk_rows.append(
            [
                r["system"],
                r["mode"],
                _f(w["jobs_per_s"], 0),
                _ratio(w["jobs_per_s"], wrk_plain.get("jobs_per_s")),
                f"{w['p50_ms_1']:.3f} / {w['p99_ms_1']:.3f}",
                _ratio(w["p50_ms_1"], wrk_plain.get("p50_ms_1"), 1),
                f"{w['p50_ms_n']:.1f} / {w['p99_ms_n']:.1f}",
                _f(w["server_cpu_ms_per_job"], 2),
                _f(w["client_cpu_s"], 2),
                str(w["non_2xx"]),
            ]
        )
    all_rows = [
        [
            r["system"],
            r["mode"],
            _f(r["jobs_per_s"], 0),
            _ratio(r["jobs_per_s"], plain.get("jobs_per_s")),
            f"{_f(r['p50_ms_1'], 2)} / {_f(r['p99_ms_1'], 2)}",
            f"{_f(r['p50_ms_n'], 1)} / {_f(r['p99_ms_n'], 1)}",
            _f(r["requests_per_job"], 1) if r["requests_per_job"] else "1 connection",
            _f(r["server_cpu_ms_per_job"], 2),
            _f(r["client_cpu_s"], 2),
            str(r["errors"]),
        ]
        for r in rows
    ]
    seconds = rows[0]["seconds"]
    errors = [f"- {r['system']} / {r['mode']}: {e}" for r in rows for e in r.get("error_sample", [])]
    return "\n\n".join(
        [
            "With `wrk` (one thread; each of its connections sends its next request when the last is answered), "
            "where one request is the whole job:",
            _table(
                [
                    "system",
                    "mode",
                    f"jobs/s at {clients}",
                    "vs plain",
                    "p50 / p99 ms at 1",
                    "p50 at 1 vs plain",
                    f"p50 / p99 ms at {clients}",
                    "server CPU ms/job",
                    "wrk CPU s",
                    "not 2xx",
                ],
                wrk_rows,
            ),
            f"Every mode, with the asyncio load generator (`bench/_load.py`), about {seconds:.0f} s at {clients} "
            "clients:",
            _table(
                [
                    "system",
                    "mode",
                    f"jobs/s at {clients}",
                    "vs plain",
                    "p50 / p99 ms at 1",
                    f"p50 / p99 ms at {clients}",
                    "HTTP requests/job",
                    "server CPU ms/job",
                    "load generator CPU s",
                    "errors",
                ],
                all_rows,
            ),
            *(["Errors seen:\n\n" + "\n".join(errors)] if errors else []),
        ]
    )


def _notify(fig: dict[str, Any]) -> str:
    n = fig["notify"]
    names = {"sse": "SSE", "ws": "WebSocket", "longpoll": "long-poll"}
    rows = [
        [
            names.get(r["transport"], r["transport"]),
            r["ending"],
            r["server"],
            f"{r['received']:,}/{r['clients']:,}",
            _f(r["p50_ms"]),
            _f(r["p99_ms"]),
            _f(r["max_ms"]),
            _f(r["delivery_s"], 2),
            _f(r["client_cpu_s"], 2),
            _f(r["server_cpu_s"], 2),
        ]
        for r in n["rows"]
    ]
    table = _table(
        [
            "transport",
            "jobs end",
            "server",
            "received",
            "p50 ms",
            "p99 ms",
            "max ms",
            "delivery s",
            "client CPU s",
            "server CPU s",
        ],
        rows,
    )
    said = "\n".join(f"- {line}" for line in n.get("notes", []))
    return f"{n['clients']:,} clients waiting on {n['jobs']} jobs.\n\n{table}" + (
        f"\n\nWhat went wrong:\n\n{said}" if said else ""
    )


def _memory(fig: dict[str, Any]) -> str:
    names = {"sse": "SSE", "ws": "WebSocket", "ws-plain": "WebSocket, no compression"}
    rows = []
    for r in fig["memory"]:
        fan_out = (
            f"{r['received']:,} / {_f(r['p50_ms'], 0)} / {_f(r['p99_ms'], 0)} / {_f(r['max_ms'], 0)}"
            if r.get("received") is not None
            else "n/a"
        )
        rows.append(
            [
                names.get(r["transport"], r["transport"]),
                r["server"],
                f"{r['connections']:,}",
                _f(r["kb_per_conn"]),
                f"{r['rss_before_kb'] / 1024:.0f}, {r['rss_after_kb'] / 1024:.0f}",
                fan_out,
            ]
        )
    return _table(
        [
            "transport",
            "server",
            "connections",
            "KB per connection",
            "RSS before, after (MB)",
            "terminal event: received / p50 / p99 / max ms",
        ],
        rows,
    )


def _requests(fig: dict[str, Any]) -> str:
    figures = fig["requests"]
    base = figures.get("naive polling, every 1 s")
    base_total = base["http"] + base["ws"] if base else None
    rows = [
        [
            name,
            _f(row["http"]),
            _f(row["ws"]),
            _f(row["http"] + row["ws"]),
            _ratio(row["http"] + row["ws"], base_total),
            _f(row["elapsed"], 2),
        ]
        for name, row in figures.items()
    ]
    return _table(
        [
            "how the client waits",
            "HTTP requests",
            "WebSocket connections",
            "per job",
            "vs naive polling",
            "result after s",
        ],
        rows,
    )


def _nodes(fig: dict[str, Any]) -> str:
    rows = [
        [
            r["setup"],
            _f(r["jobs_per_s"], 0),
            f"{_f(r['p50_ms'])} / {_f(r['p99_ms'])}",
            str(r["not_200"]),
            _f(r["server_cpu_ms_per_job"], 2),
            _f(r["redis_cpu_ms_per_job"], 2),
            _f(r["client_cpu_s"]),
        ]
        for r in fig["nodes"]
    ]
    return _table(
        [
            "setup",
            "jobs/s",
            "p50 / p99 ms",
            "not 200",
            "outlast CPU ms/job",
            "Redis CPU ms/job",
            "load generator CPU s",
        ],
        rows,
    )


def _idle(fig: dict[str, Any]) -> str:
    names = {"serve": "`outlast serve --workers 0`", "worker": "`outlast worker --workers 1`"}
    rows = [
        [
            names.get(r["process"], r["process"]),
            _f(r["cpu_s_per_min_sqlite"], 2),
            _f(r["cpu_s_per_min_memory"], 2),
            f"{r['core_percent_sqlite']:.2f} %",
        ]
        for r in fig["idle"]
    ]
    return _table(["process", "CPU s/min, SQLite", "CPU s/min, memory://", "SQLite, % of one core"], rows)


# -- the page ----------------------------------------------------------------------------------

TEXT = Path(__file__).with_name("report.md")


def render(fig: dict[str, Any]) -> str:
    """The page: bench/report.md, its `{{name}}` blocks replaced by the tables of this run."""
    blocks: dict[str, Callable[[dict[str, Any]], str]] = {
        "about": _about,
        "targets": _targets,
        "http": _http,
        "notify": _notify,
        "memory": _memory,
        "requests": _requests,
        "nodes": _nodes,
        "idle": _idle,
    }
    page = TEXT.read_text()
    for name, block in blocks.items():
        key = "{{" + name + "}}"
        if key in page:
            needs = "about" if name in ("about", "targets") else name
            page = page.replace(key, block(fig) if needs in fig else "_Not measured in this run._")
    if fig.get("quick"):
        page = page.replace(
            "# Benchmarks\n", "# Benchmarks (a quick run: small and short, not the figures to quote)\n", 1
        )
    return page


def write(fig: dict[str, Any], path: Path) -> None:
    path.write_text(render(fig))


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "benchmarks.json"
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else source.with_suffix(".md")
    write(json.loads(source.read_text()), target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
