"""What the benchmarks share: servers as subprocesses on 127.0.0.1, and what /proc says about them."""

from __future__ import annotations

import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft limit on open files towards `wanted` (up to the hard limit); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def _max_nofile() -> None:  # preexec_fn of a server: as many open files as it is allowed
    raise_nofile(1 << 20)


@dataclass
class Server:
    url: str
    pid: int
    log: Path

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    def cpu_s(self) -> float:
        return cpu_s(self.pid)

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def problems(self) -> list[str]:
        """The lines of its log that report a warning, an error or a traceback."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if any(w in line for w in ("Traceback", "ERROR", "WARNING"))]


@contextmanager
def server(args: list[str], log: Path, *, port_flag: bool = True, ready_s: float = 30) -> Iterator[Server]:
    """Run `args` (a uvicorn-style server given `--port`) until the block ends; its stderr goes to `log`."""
    port = free_port()
    command = [*args, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"] if port_flag else args
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=sink, preexec_fn=_max_nofile, close_fds=True
        )
    try:
        if port_flag:
            _wait_for_port(proc, port, ready_s, log)
        yield Server(f"http://127.0.0.1:{port}", proc.pid, log)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], grace_s: float = 20) -> None:
    """SIGTERM, and SIGKILL if the process is still there after `grace_s`."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_for_port(proc: subprocess.Popen[bytes], port: int, ready_s: float, log: Path) -> None:
    # uvicorn runs the app's lifespan start-up before it listens: an open port means ready.
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the server did not listen within {ready_s} s")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat, fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kb(pid: int) -> int:
    """Resident set size of a process in KB (/proc/<pid>/status, VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[int(q) - 1] if len(samples) > 1 else samples[0]


def machine() -> str:
    """One line about the machine, for the report."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), Python {sys.version.split()[0]}; client and server share them"
