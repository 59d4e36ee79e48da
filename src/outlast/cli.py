"""The `outlast` command: serve an app, run workers, look at jobs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

import click
import uvicorn
from starlette.types import ASGIApp
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from outlast.client import cli as client_cli
from outlast.core import Outlast
from outlast.exceptions import ConfigError, OutlastError
from outlast.jobs import JobStatus
from outlast.runner import JOB_THREAD_PREFIX
from outlast.settings import Settings
from outlast.stores import JobStore, ListQuery, open_store
from outlast.stores._sqlite_db import path_from_url
from outlast.stores.base import MAX_LIST_LIMIT
from outlast.web.http import find_outlast
from outlast.web.proxies import ForwardedPrefix, forwarded_prefix
from outlast.web.server import guarded_protocol, quiet_invalid_utf8

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# The settings that have a flag (docs/protocol.md, "Settings"), with their types.
SETTING_FLAGS: dict[str, type] = {
    "store": str,
    "gateway_timeout": float,
    "margin": float,
    "default_wait": float,
    "retention": float,
    "max_body": int,
    "max_head": int,
    "max_url": int,
    "head_timeout": float,
    "workers": int,
    "lease": float,
    "max_attempts": int,
    "dashboard": bool,
}


def setting_options(fn: F) -> F:
    """Add one flag per setting; a flag given wins over OUTLAST_* and the code's keywords."""
    for name, kind in reversed(SETTING_FLAGS.items()):
        field = Settings.model_fields[name]
        help_text = f"{field.description} [env: OUTLAST_{name.upper()}; default: {field.default}]"
        flag = f"--{name.replace('_', '-')}"
        if kind is bool:
            flag = f"{flag}/--no-{name.replace('_', '-')}"
        fn = click.option(flag, name, type=kind, default=None, help=help_text)(fn)
    return fn


def load_target(spec: str) -> Any:
    """Import `MODULE:ATTR` (the current directory is importable, as with uvicorn)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"use MODULE:ATTR, e.g. app:ot, not {spec!r}", param_hint="TARGET")
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint="TARGET") from exc
    except OutlastError as exc:  # e.g. a bad OUTLAST_* variable, read when the module builds its Outlast
        raise click.UsageError(f"{module_name}: {exc.message}") from exc
    try:
        target = module
        for part in attr.split("."):
            target = getattr(target, part)
    except AttributeError:
        raise click.BadParameter(f"{module_name!r} has no attribute {attr!r}", param_hint="TARGET") from None
    return target


def configured(spec: str, flags: dict[str, Any]) -> tuple[Any, Outlast]:
    target = load_target(spec)
    try:
        ot = find_outlast(target)
        ot.configure(**flags)
        open_store(ot.settings.store)  # a store URL we can't serve fails here, not at start-up
    except ConfigError as exc:
        raise click.UsageError(exc.message) from exc
    return target, ot


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="outlast")
def main() -> None:
    """outlast: long-running jobs behind any gateway timeout.

    \b
    Serve an app (API + embedded workers):   outlast serve examples.app:ot
    Run workers only, on the same store:     outlast worker examples.app:ot
    Look at the jobs in a store:             outlast jobs list --store sqlite:///outlast.db
    Run a job on a server, with progress:    outlast run http://127.0.0.1:8000 report -i rows=100
    """


@main.command()
@click.argument("target", metavar="MODULE:ATTR")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--log-level", default="info", show_default=True, help="uvicorn's log level.")
@click.option(
    "--root-path",
    default="",
    help="The path a proxy serves the app under, which it strips (e.g. /api): links and Location carry it.",
)
@click.option(
    "--proxy-headers/--no-proxy-headers",
    default=True,
    show_default=True,
    help="Believe X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Prefix from --forwarded-allow-ips.",
)
@click.option(
    "--forwarded-allow-ips",
    default=None,
    help="Comma-separated IPs or networks of trusted proxies, or * [env: FORWARDED_ALLOW_IPS; default: 127.0.0.1].",
)
@setting_options
def serve(
    target: str,
    host: str,
    port: int,
    log_level: str,
    root_path: str,
    proxy_headers: bool,
    forwarded_allow_ips: str | None,
    **flags: Any,
) -> None:
    """Serve the protocol's HTTP API with embedded workers (uvicorn).

    MODULE:ATTR names an Outlast object (its app is built for you) or an ASGI
    app built around one (`ot.app()`, or a FastAPI app given to `ot.mount()`).

    \b
    Example:
      outlast serve examples.app:ot --gateway-timeout 29 --workers 8
    """
    app, ot = configured(target, flags)
    if isinstance(app, Outlast):
        app = ot.app()
    if root_path and (not root_path.startswith("/") or forwarded_prefix(root_path) is None):
        raise click.BadParameter("a path such as /api", param_hint="--root-path")
    root_path = root_path.rstrip("/")
    if proxy_headers:
        # Ours first, while the peer's address is still the proxy's: uvicorn's replaces it with the client's.
        trusted = forwarded_allow_ips or os.environ.get("FORWARDED_ALLOW_IPS") or "127.0.0.1"
        try:
            app = ForwardedPrefix(cast(ASGIApp, ProxyHeadersMiddleware(app, trusted_hosts=trusted)), trusted)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--forwarded-allow-ips") from exc
    click.echo(
        f"outlast: store {ot.settings.store}, hold {ot.settings.hold_s:g} s, {ot.settings.workers} workers", err=True
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=10,
        root_path=root_path,
        proxy_headers=False,  # applied above, with X-Forwarded-Prefix
        # Always httptools, with limits on request heads (outlast.web.server).
        http=guarded_protocol(
            max_head=ot.settings.max_head, max_url=ot.settings.max_url, head_timeout=ot.settings.head_timeout
        ),
        # WebSocket (docs/protocol.md, "Keepalive and reconnecting"): ping every 20 s, drop what does not
        # answer; the size limit is checked per message by outlast (close 1009).
        ws="websockets-sansio",
        ws_ping_interval=20,
        ws_ping_timeout=20,
        ws_max_size=max(ot.settings.max_body * 4 + 1024, 1 << 20),
    )
    quiet_invalid_utf8()  # after uvicorn.Config has set up logging
    server_gc()
    _Server(config, ot).run()


# Collect the young generations every GC_THRESHOLDS[0] allocations (CPython's default: 700), the
# middle one every 20 of those, and everything only every 100 of the middle one's.
GC_THRESHOLDS = (50_000, 20, 100)


def server_gc() -> None:
    """The garbage collector's policy for a server that keeps many long-lived objects.

    A server with 10,000 open streams holds about 2 million objects, and a full
    collection scans every one: half a second in which nothing is sent. What the
    app built at start-up is frozen (never scanned again), and collections come
    far less often, so that a full one rarely lands in the middle of a fan-out.
    Memory freed by reference counting (nearly all of it) is unaffected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class _Server(uvicorn.Server):
    """uvicorn's server, which also ends open event streams as soon as shutdown begins.

    (uvicorn waits for open connections before it runs the app's shutdown, and
    streams never close on their own.)
    """

    def __init__(self, config: uvicorn.Config, ot: Outlast) -> None:
        super().__init__(config)
        self.ot = ot

    def handle_exit(self, sig: int, frame: Any) -> None:
        with contextlib.suppress(RuntimeError):  # no loop yet: nothing is open
            asyncio.get_running_loop().call_soon_threadsafe(self.ot.shutting_down)
        super().handle_exit(sig, frame)


@main.command()
@click.argument("target", metavar="MODULE:ATTR")
@setting_options
def worker(target: str, **flags: Any) -> None:
    """Run workers only: claim and run the jobs MODULE:ATTR registers.

    Point it at the store the API uses (the same SQLite file on this host, or
    later a Redis). SIGTERM or Ctrl-C stops claiming and lets running jobs finish.

    \b
    Example:
      outlast worker examples.app:ot --store sqlite:///outlast.db --workers 4
    """
    _, ot = configured(target, flags)
    if ot.settings.workers < 1:
        raise click.UsageError("--workers must be at least 1 for a worker")
    click.echo(f"outlast worker: store {ot.settings.store}, {ot.settings.workers} at once", err=True)
    try:
        asyncio.run(_work(ot))
    except OutlastError as exc:  # e.g. a store that can't be reached
        raise click.ClickException(exc.message) from exc


async def _work(ot: Outlast) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with ot.lifespan():
        await stop.wait()
        click.echo("outlast worker: stopping; running jobs may finish", err=True)
    lingering = [t for t in threading.enumerate() if t.name.startswith(JOB_THREAD_PREFIX) and t.is_alive()]
    if lingering:
        # Sync jobs that ignored ctx.canceled: their leases lapse and other
        # workers take them; this process need not wait for them.
        click.echo(f"outlast worker: {len(lingering)} sync job(s) did not stop; exiting anyway", err=True)
        os._exit(0)


@main.command()
@click.option("--upstream", required=True, help="The server to proxy to, e.g. http://127.0.0.1:8001.")
@click.option(
    "--timeout", "timeout_s", type=float, default=29.0, show_default=True, help="Total deadline of a request, s."
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--ws-idle", "ws_idle_s", type=float, default=600.0, show_default=True, help="Close idle WebSockets, s.")
@click.option("--ws-max", "ws_max_s", type=float, default=7200.0, show_default=True, help="Close WebSockets after, s.")
def gateway(upstream: str, timeout_s: float, host: str, port: int, ws_idle_s: float, ws_max_s: float) -> None:
    """A local gateway with a hard timeout (as API Gateway's 29 s), to reproduce the problem.

    Requests whose response has not begun within --timeout get 504; WebSockets
    get API Gateway's idle and maximum-duration limits.

    \b
    Example:
      outlast serve examples.app:ot --port 8001 &
      outlast gateway --upstream http://127.0.0.1:8001 --timeout 29 --port 8000
    """
    from outlast.devtools.gateway import serve as serve_gateway

    serve_gateway(upstream, host=host, port=port, timeout_s=timeout_s, ws_idle_s=ws_idle_s, ws_max_s=ws_max_s)


@main.command()
@click.option(
    "--app", "target", default="outlast.devtools.demo_app:ot", show_default=True, help="The app to serve, MODULE:ATTR."
)
@click.option("--port", type=int, default=8000, show_default=True, help="The gateway's port (where you point curl).")
@click.option("--api-port", type=int, default=8001, show_default=True, help="The app's own port, behind the gateway.")
@click.option("--timeout", "timeout_s", type=float, default=29.0, show_default=True, help="The gateway's timeout, s.")
@click.option("--store", default="sqlite:///outlast.db", show_default=True)
def demo(target: str, port: int, api_port: int, timeout_s: float, store: str) -> None:
    """The example app behind a 29 s gateway: see a 40 s request fail, then succeed.

    Serves MODULE:ATTR on --api-port (embedded workers, SQLite) and a gateway
    with a hard --timeout on --port, and prints what to try.
    """
    from outlast.devtools.demo import run_demo

    run_demo(target, port=port, api_port=api_port, timeout_s=timeout_s, store=store)


# The client's commands: run, watch, cancel (over HTTP, against any outlast server).
main.add_command(client_cli.run)
main.add_command(client_cli.watch)
main.add_command(client_cli.cancel)


# -- jobs ------------------------------------------------------------------------------

STORE_OPTION = click.option(
    "--store",
    envvar="OUTLAST_STORE",
    default="sqlite:///outlast.db",
    show_default=True,
    help="The store to read [env: OUTLAST_STORE].",
)


@main.group()
def jobs() -> None:
    """Look at and cancel the jobs in a store."""


def _with_store(fn: Callable[[JobStore], Coroutine[Any, Any, T]], url: str) -> T:
    if url.startswith("memory:"):
        raise click.UsageError("a memory:// store lives inside one process: name a SQLite file or a Redis URL")
    if url.startswith("sqlite:"):
        try:
            path = Path(path_from_url(url))
        except ConfigError as exc:
            raise click.UsageError(exc.message) from exc
        if not path.exists():
            raise click.ClickException(f"no store at {path}")

    async def run() -> T:
        try:
            store = open_store(url)
        except ConfigError as exc:
            raise click.UsageError(exc.message) from exc
        await store.open()
        try:
            return await fn(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except OutlastError as exc:
        raise click.ClickException(exc.message) from exc


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


@jobs.command("list")
@STORE_OPTION
@click.option("--status", type=click.Choice([s.value for s in JobStatus]), help="Only jobs in this status.")
@click.option("--name", help="Only jobs of this name.")
@click.option("--limit", type=click.IntRange(1, MAX_LIST_LIMIT), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the job objects as JSON.")
def list_jobs(store: str, status: str | None, name: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first."""
    query = ListQuery(status=None if status is None else JobStatus(status), name=name, limit=limit)
    page = _with_store(lambda s: s.list_jobs(query), store)
    if as_json:
        _echo_json([job.to_public() for job in page.jobs])
        return
    for job in page.jobs:
        public = job.to_public()
        click.echo(f"{job.id}  {job.status.value:<9}  {job.name:<20}  {public['created_at']}")
    if not page.jobs:
        click.echo("no jobs", err=True)


@jobs.command("show")
@STORE_OPTION
@click.argument("job_id")
def show_job(store: str, job_id: str) -> None:
    """Print one job as JSON."""
    job = _with_store(lambda s: s.get(job_id), store)
    if job is None:
        raise click.ClickException(f"no job has the id {job_id!r}")
    _echo_json(job.to_public())


@jobs.command("cancel")
@STORE_OPTION
@click.argument("job_id")
def cancel_job(store: str, job_id: str) -> None:
    """Cancel a job: a queued one at once, a running one by telling its worker."""
    job = _with_store(lambda s: s.request_cancel(job_id), store)
    if job is None:
        raise click.ClickException(f"no job has the id {job_id!r}")
    state = "cancellation requested" if job.status is JobStatus.RUNNING else job.status.value
    click.echo(f"{job.id}: {state}")


# -- migrate ---------------------------------------------------------------------------


@main.command()
@click.option(
    "--store",
    envvar="OUTLAST_STORE",
    required=True,
    help="The store whose schema to create or upgrade, e.g. postgresql://app@db/app [env: OUTLAST_STORE].",
)
def migrate(store: str) -> None:
    """Create or upgrade a store's schema now, before the nodes of a new release start."""
    scheme = store.split(":", 1)[0].lower()
    if scheme not in ("postgresql", "postgres"):
        # SQLite files are upgraded by the first process that opens them; Redis and memory have no schema.
        raise click.UsageError("outlast migrate is for PostgreSQL stores (postgresql://...)")

    async def run() -> tuple[int, int]:
        from outlast.stores.postgres import PostgresStore  # asyncpg is an optional extra

        return await PostgresStore.from_url(store).migrate()

    try:
        before, after = asyncio.run(run())
    except OutlastError as exc:
        raise click.ClickException(exc.message) from exc
    if before == after:
        click.echo(f"the schema is up to date (version {after})")
    else:
        click.echo(f"the schema went from version {before} to {after}")
