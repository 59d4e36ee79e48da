"""`outlast demo` from a folder that is no checkout: it answers, and SIGTERM stops all it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import free_port

pytestmark = pytest.mark.slow


def wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # starting: nothing to await but its socket
    raise AssertionError(log.read_text())


def port_is_closed(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
    except httpx.TransportError:
        return True
    return False


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_the_demo_runs_anywhere_and_stops_everything(tmp_path: Path, how: signal.Signals):
    port, api_port = free_port(), free_port()
    log = tmp_path / "demo.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",) and not k.startswith("OUTLAST_")}
    src = Path(__file__).resolve().parents[2] / "src"
    env["PYTHONPATH"] = str(src)  # the package, and not the checkout's examples/
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "outlast", "demo", "--port", str(port), "--api-port", str(api_port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", demo, log)
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert page.status_code == 200  # the demo turns the dashboard on
        done = httpx.get(f"http://127.0.0.1:{port}/payload", params={"delay": 0}, timeout=10)
        assert done.json() == {"MESSAGE": "It took 0 seconds to generate this."}

        demo.send_signal(how)
        assert demo.wait(timeout=30) is not None
        assert port_is_closed(port)
        assert port_is_closed(api_port), "the app server outlived the demo"
        assert "Traceback" not in log.read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
