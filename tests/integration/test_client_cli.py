"""`outlast run / watch / cancel` in a real terminal (a pty), against a real `outlast serve`.

The command's stdin and stderr are the pty's slave side, as in a terminal, so
that the progress display is live and Ctrl-C reaches it as SIGINT; its stdout
is a pipe, so that the test reads the result apart from the display.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from outlast.client import Client
from tests.integration.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

GATEWAY = {"gateway_timeout": 3, "margin": 1}  # hold: 2 s
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
JOB_ID = re.compile(r"job (j_[A-Za-z0-9_-]+)")
COUNTS = re.compile(r"\b(\d+)/(\d+)\b")

# The child makes the pty its controlling terminal (it is a session leader), so
# that ^C written to the pty becomes SIGINT for it, then becomes `outlast`.
BECOME_OUTLAST = (
    "import fcntl, os, sys, termios\n"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'outlast', *sys.argv[1:]])\n"
)


def ignore_sigint() -> None:
    """In the child, before exec: SIGINT ignored, as for a command a script starts with `cmd &`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Terminal:
    """`outlast ARGS` with a pty for stdin and stderr; read what it shows, type into it."""

    def __init__(self, *args: str, sigint_ignored: bool = False) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "PYTHONUNBUFFERED": "1"}
        for name in ("NO_COLOR", "COLUMNS", "LINES", "CI", "OUTLAST_API_KEY"):
            env.pop(name, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BECOME_OUTLAST, *args],
            cwd=ROOT,
            env=env,
            stdin=slave,
            stderr=slave,
            stdout=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=ignore_sigint if sigint_ignored else None,
        )
        os.close(slave)
        self.raw = b""
        self.closed = False

    @property
    def text(self) -> str:
        """What the terminal showed, without the escape sequences."""
        return ANSI.sub("", self.raw.decode("utf-8", errors="replace"))

    def _read(self, timeout: float) -> None:
        if self.closed:
            return
        ready, _, _ = select.select([self.master], [], [], max(0.0, timeout))
        if not ready:
            return
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: every slave side is closed, the command has ended
            chunk = b""
        if chunk:
            self.raw += chunk
        else:
            self.closed = True

    def expect(self, predicate: Callable[[str], Any], timeout: float, what: str) -> Any:
        """Read until `predicate(text)` is truthy; its value. Fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = predicate(self.text)
            if found:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.closed and self.proc.poll() is not None):
                raise AssertionError(f"not seen within {timeout} s: {what}\n--- terminal:\n{self.text[-3000:]}")
            self._read(min(remaining, 0.5))

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def finish(self, timeout: float) -> tuple[int, str]:
        """Read to the end; the exit code and stdout."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self._read(deadline - time.monotonic())
        assert self.proc.stdout is not None
        try:
            code = self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout} s\n--- terminal:\n{self.text[-3000:]}") from None
        return code, self.proc.stdout.read().decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        os.close(self.master)


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def open_terminal(*args: str, sigint_ignored: bool = False) -> Terminal:
        term = Terminal(*args, sigint_ignored=sigint_ignored)
        opened.append(term)
        return term

    yield open_terminal
    for term in opened:
        term.close()


def counts_seen(text: str) -> set[str]:
    return {f"{current}/{total}" for current, total in COUNTS.findall(text)}


def job_status(url: str, job_id: str, *, wait_for_end: bool = False) -> str:
    """The job's status; with `wait_for_end`, long-poll it (bounded: a few holds) until it has ended."""
    with httpx.Client(timeout=10) as http:
        for _ in range(10):
            job = http.get(f"{url}/jobs/{job_id}", params={"wait": 5} if wait_for_end else {}).json()
            if not wait_for_end or job["status"] in ("succeeded", "failed", "canceled"):
                return str(job["status"])
    raise AssertionError(f"job {job_id} did not end")


def test_run_shows_moving_progress_and_prints_the_result(serve, terminal):
    server = serve(**GATEWAY)
    term = terminal("run", server.url, "sleep", "-i", "seconds=4", "-i", "steps=8")
    job_id = term.expect(lambda text: JOB_ID.search(text), 20, "the job's id").group(1)
    term.expect(lambda text: len(counts_seen(text)) >= 2, 20, "two different progress renderings")
    code, stdout = term.finish(30)
    assert code == 0, term.text
    assert json.loads(stdout) == {"slept": 4.0, "attempt": 1}
    assert "8/8" in counts_seen(term.text)
    assert "\u2501" in term.text  # the bar itself
    assert "slept" not in term.text  # the result is on stdout, not in the display
    assert job_status(server.url, job_id) == "succeeded"


def test_a_failing_job_exits_1_with_the_problem_on_stderr(serve, terminal):
    server = serve(**GATEWAY)
    term = terminal("run", server.url, "fail", "-i", "message=out of paper", "-i", "type=paper_jam")
    code, stdout = term.finish(30)
    assert code == 1, term.text
    assert stdout == ""
    assert '"type": "paper_jam"' in term.text
    assert '"detail": "out of paper"' in term.text
    assert '"status": 500' in term.text


def test_input_the_server_refuses_exits_2(serve, terminal):
    server = serve(**GATEWAY)
    term = terminal("run", server.url, "sleep", "-i", "seconds=a while")
    code, stdout = term.finish(30)
    assert code == 2, term.text
    assert stdout == ""
    assert '"status": 422' in term.text
    assert "seconds" in term.text


def test_a_job_canceled_elsewhere_exits_3(serve, terminal):
    server = serve(**GATEWAY)
    term = terminal("run", server.url, "sleep", "-i", "seconds=30", "-i", "steps=30")
    job_id = term.expect(lambda text: JOB_ID.search(text), 20, "the job's id").group(1)
    term.expect(lambda text: "1/30" in text, 20, "the job running")
    response = httpx.post(f"{server.url}/jobs/{job_id}/cancel", timeout=10)
    assert response.status_code in (200, 202)
    code, stdout = term.finish(30)
    assert code == 3, term.text
    assert stdout == ""
    assert '"status": 409' in term.text


def test_a_timeout_exits_4_and_the_job_goes_on(serve, terminal):
    server = serve(**GATEWAY)
    term = terminal("run", server.url, "sleep", "-i", "seconds=30", "--timeout", "1.5")
    code, stdout = term.finish(30)
    assert code == 4, term.text
    assert stdout == ""
    job_id = JOB_ID.search(term.text)
    assert job_id is not None
    assert "did not end within 1.5 s" in term.text
    assert job_status(server.url, job_id.group(1)) in ("queued", "running")
    httpx.post(f"{server.url}/jobs/{job_id.group(1)}/cancel", timeout=10)


SIGINT_AT_START = pytest.mark.parametrize("sigint_ignored", [False, True], ids=["sigint-default", "sigint-ignored"])


@SIGINT_AT_START
def test_ctrl_c_asks_and_c_cancels_the_job(serve, terminal, sigint_ignored):
    server = serve(**GATEWAY)
    term = terminal("run", server.url, "sleep", "-i", "seconds=30", "-i", "steps=30", sigint_ignored=sigint_ignored)
    job_id = term.expect(lambda text: JOB_ID.search(text), 20, "the job's id").group(1)
    term.expect(lambda text: "1/30" in text, 20, "the job running")
    term.type(b"\x03")  # Ctrl-C: the terminal sends SIGINT
    term.expect(lambda text: "Cancel the job (c) or detach" in text, 20, "the cancel-or-detach prompt")
    term.type(b"c\n")
    code, stdout = term.finish(30)
    assert code == 3, term.text
    assert stdout == ""
    assert f"job {job_id}" in term.text
    assert f"job {job_id}: cancellation requested" in term.text
    assert job_status(server.url, job_id, wait_for_end=True) == "canceled"


@SIGINT_AT_START
def test_ctrl_c_and_d_detaches_and_leaves_the_job_running(serve, terminal, sigint_ignored):
    server = serve(**GATEWAY)
    term = terminal("run", server.url, "sleep", "-i", "seconds=30", "-i", "steps=30", sigint_ignored=sigint_ignored)
    job_id = term.expect(lambda text: JOB_ID.search(text), 20, "the job's id").group(1)
    term.expect(lambda text: "1/30" in text, 20, "the job running")
    term.type(b"\x03")
    term.expect(lambda text: "Cancel the job (c) or detach" in text, 20, "the cancel-or-detach prompt")
    term.type(b"d\n")
    code, stdout = term.finish(30)
    assert code == 0, term.text
    assert json.loads(stdout) == {"id": job_id, "status": "running"}  # as docs/client.md shows it
    assert f"outlast watch {server.url} {job_id}" in term.text
    assert job_status(server.url, job_id) == "running"
    httpx.post(f"{server.url}/jobs/{job_id}/cancel", timeout=10)


def test_watch_follows_a_job_and_cancel_cancels_one(serve, terminal):
    server = serve(**GATEWAY)
    submitted = httpx.post(
        f"{server.url}/jobs/sleep", json={"seconds": 3, "steps": 6}, headers={"Prefer": "respond-async"}, timeout=10
    ).json()
    watch = terminal("watch", server.url, submitted["id"])
    watch.expect(lambda text: len(counts_seen(text)) >= 2, 20, "two different progress renderings")
    code, stdout = watch.finish(30)
    assert code == 0, watch.text
    assert json.loads(stdout) == {"slept": 3.0, "attempt": 1}

    long_job = httpx.post(
        f"{server.url}/jobs/sleep", json={"seconds": 30}, headers={"Prefer": "respond-async"}, timeout=10
    ).json()
    canceler = terminal("cancel", server.url, long_job["id"])
    code, stdout = canceler.finish(30)
    assert code == 0, canceler.text
    assert stdout.startswith(long_job["id"])
    assert job_status(server.url, long_job["id"], wait_for_end=True) == "canceled"

    unknown = terminal("watch", server.url, "j_nope")
    code, _ = unknown.finish(30)
    assert code == 2, unknown.text
    assert '"status": 404' in unknown.text


def outlast(*args: str) -> subprocess.CompletedProcess[str]:
    """`outlast ARGS` without a terminal, as a script runs it."""
    return subprocess.run(
        [sys.executable, "-m", "outlast", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_cancel_prints_what_it_did(serve):
    server = serve(**GATEWAY)
    with Client(server.url) as client:
        running = client.submit("sleep", {"seconds": 30, "steps": 30})
        next(event for event in running.events() if event.type == "progress")
        done = client.submit("echo", {"text": "x"})
        done.wait(timeout=20)
    requested = outlast("cancel", server.url, running.id)
    assert (requested.returncode, requested.stdout) == (0, f"{running.id}: cancellation requested\n")
    assert job_status(server.url, running.id, wait_for_end=True) == "canceled"
    again = outlast("cancel", server.url, running.id)
    assert (again.returncode, again.stdout) == (0, f"{running.id}: canceled\n")
    ended = outlast("cancel", server.url, done.id)
    assert (ended.returncode, ended.stdout) == (0, f"{done.id}: succeeded\n")
    assert job_status(server.url, done.id) == "succeeded"
    assert requested.stderr == again.stderr == ended.stderr == ""


def test_run_exits_cleanly_time_after_time(serve):
    """Nothing is left for the garbage collector once the client's loop is gone.

    ("Task was destroyed but it is pending!" ended some runs: generators of the
    event stream, closed by the GC as the loop stopped.)
    """
    server = serve(**GATEWAY)
    for attempt in range(8):
        mode = ("auto", "sse", "ws", "long-poll")[attempt % 4]
        done = outlast("run", server.url, "sleep", "-i", "seconds=1", "-i", "steps=2", "--mode", mode, "-q")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"slept": 1.0, "attempt": 1}
        for complaint in ("Task was destroyed", "Exception ignored", "never awaited", "Traceback"):
            assert complaint not in done.stderr, f"run {attempt + 1}, --mode {mode}:\n{done.stderr}"
