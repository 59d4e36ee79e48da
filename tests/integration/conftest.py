"""Real processes for integration tests: `outlast serve` and `outlast worker` on a socket and a SQLite file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _flags(settings: dict[str, Any]) -> list[str]:
    flags = []
    for name, value in settings.items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):  # a switch: --dashboard / --no-dashboard
            flags.append(flag if value else f"--no-{name.replace('_', '-')}")
        else:
            flags += [flag, str(value)]
    return flags


class Process:
    """An `outlast` subprocess; its output goes to a log file the test can read."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OUTLAST_ARTIFACTS": str(self.log.parent / "artifacts")}
        env.pop("OUTLAST_STORE", None)
        env.update(self.env)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "outlast", *self.args], cwd=ROOT, env=env, stdout=out, stderr=out
            )

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, as in a crash."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Server(Process):
    """`outlast serve` on a free port."""

    def __init__(
        self, tmp_path: Path, target: str, settings: dict[str, Any], env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["serve", target, "--port", str(self.port), "--log-level", "warning", *_flags(settings)]
        super().__init__(args, tmp_path / f"server-{self.port}.log", env)

    def start(self) -> None:
        super().start()
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # the server is starting: nothing to await but its socket
        raise RuntimeError(f"the server did not start in {START_TIMEOUT_S} s:\n{self.output()}")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'outlast.db'}"


@pytest.fixture
def serve(tmp_path: Path, db_url: str) -> Iterator[Any]:
    """Start `outlast serve` (tests.apps:ot by default); stopped at the end of the test."""
    started: list[Process] = []

    def start(target: str = "tests.apps:ot", env: dict[str, str] | None = None, **settings: Any) -> Server:
        settings.setdefault("store", db_url)
        server = Server(tmp_path, target, settings, env)
        server.start()
        started.append(server)
        return server

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def work(tmp_path: Path, db_url: str) -> Iterator[Any]:
    """Start `outlast worker` processes; stopped at the end of the test."""
    started: list[Process] = []

    def start(target: str = "tests.apps:ot", **settings: Any) -> Process:
        settings.setdefault("store", db_url)
        worker = Process(["worker", target, *_flags(settings)], tmp_path / f"worker-{len(started)}.log")
        worker.start()
        started.append(worker)
        return worker

    yield start
    for process in started:
        process.stop()
