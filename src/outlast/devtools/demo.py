"""`outlast demo`: the example app behind a local gateway with API Gateway's 29 s timeout."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time

import click
import httpx

from outlast.devtools.gateway import serve as serve_gateway

START_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1  # prctl(2)


def guide(base: str, timeout_s: float) -> str:
    t = f"{timeout_s:g}"
    return f"""
outlast demo: the example app behind a gateway that cuts every request off after {t} s.

  The page (live jobs, "Generate report" over the WebSocket):
    {base}/

  1. A plain endpoint that needs 40 s: the gateway answers 504 after {t} s.
     curl -i '{base}/plain/payload?delay=40'

  2. The same work as a long-running route: 303 hops within the gateway's limit, then the answer.
     curl -L '{base}/payload?delay=40'

  3. 202 Accepted, then polling (or long-polling with ?wait=20):
     curl -i -X POST -H 'Prefer: respond-async' -H 'Content-Type: application/json' \\
          -d '{{"delay": 40000, "rows": 1000}}' {base}/jobs/report
     curl '{base}/jobs/<id>?wait=20'
     curl '{base}/jobs/<id>/result'

  4. Server-Sent Events (cut at {t} s by the gateway; resume with Last-Event-ID):
     curl -N {base}/jobs/<id>/events

  5. WebSocket, as in the seed article (python -m websockets comes with outlast):
     python -m websockets ws://{base.split("://", 1)[1]}/ws
     > {{"action": "generateReport", "delay": 40000, "amountOfRows": 500}}

  6. The client, with a progress bar:
     outlast run {base} report -i delay=40000 -i rows=1000

Ctrl-C stops the demo.
"""


def run_demo(target: str, *, port: int, api_port: int, timeout_s: float, store: str) -> None:
    api = f"http://127.0.0.1:{api_port}"
    command = [sys.executable, "-m", "outlast", "serve", target, "--port", str(api_port), "--store", store]
    margin_s = 4.0 if timeout_s > 8 else timeout_s / 3  # the hold stays well under the gateway's timeout
    command += ["--gateway-timeout", f"{timeout_s:g}", "--margin", f"{margin_s:g}", "--log-level", "warning"]
    command += ["--dashboard"]  # the page and its live list of every job: fine on 127.0.0.1, not in production
    # SIGTERM (a service manager, `kill`) ends the demo as Ctrl-C does: through the `finally` below, which
    # stops the app. (The gateway's uvicorn re-raises the signal it caught once it has shut down.)
    signal.signal(signal.SIGTERM, _exit)
    server = subprocess.Popen(command, preexec_fn=_die_with_parent)  # noqa: S603 (our own interpreter)
    try:
        _wait_ready(server, api)
        click.echo(guide(f"http://127.0.0.1:{port}", timeout_s), err=True)
        serve_gateway(api, host="127.0.0.1", port=port, timeout_s=timeout_s, ws_idle_s=600, ws_max_s=7200)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _die_with_parent() -> None:
    """In the app's process, before it runs: end it if the demo dies without stopping it (SIGKILL)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait_ready(server: subprocess.Popen[bytes], api: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise click.ClickException("the app did not start (see above)")
        try:
            if httpx.get(f"{api}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # the app is starting: nothing to await but its socket
    raise click.ClickException(f"the app did not answer on {api} within {START_TIMEOUT_S:g} s")
