"""`outlast run`, `outlast watch`, `outlast cancel`: the client from the shell.

Exit codes: 0 succeeded (or detached), 1 failed, 2 usage (bad arguments, or an
input the server refused), 3 canceled, 4 timed out.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from outlast.client._errors import ClientError, JobCanceled, JobFailed, JobTimeout, ProblemError
from outlast.client._sync import Client, JobHandle
from outlast.client._transports import MODES, Update

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELED, EXIT_TIMEOUT = 0, 1, 2, 3, 4

API_KEY = click.option(
    "--api-key", envvar="OUTLAST_API_KEY", help="Bearer key for servers with auth [env: OUTLAST_API_KEY]."
)
MODE = click.option(
    "--mode", type=click.Choice(MODES), default="auto", show_default=True, help="How to wait for the job."
)
TIMEOUT = click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), help="Give up after this many seconds."
)


def parse_input(pairs: tuple[str, ...], input_json: Any) -> dict[str, Any]:
    """`-i key=value` pairs (values read as JSON when they are, else as text), over `--input-json`."""
    data: dict[str, Any] = {}
    if input_json is not None:
        try:
            loaded = json.load(input_json)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--input-json") from None
        if not isinstance(loaded, dict):
            raise click.BadParameter("must hold a JSON object", param_hint="--input-json")
        data.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"use KEY=VALUE, not {pair!r}", param_hint="-i")
        try:
            data[key] = json.loads(raw)
        except ValueError:
            data[key] = raw
    return data


class Display:
    """A live line on stderr: status, progress bar, message, elapsed time."""

    def __init__(self, job_id: str) -> None:
        self.console = Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[status]}[/]"),
            BarColumn(),
            TextColumn("{task.fields[counts]}"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.task: TaskID = self.progress.add_task("", total=None, status="submitted", counts="")
        self.console.print(f"job {job_id}", style="dim")

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, update: Update) -> None:
        status = update.status
        if update.status == "queued" and update.queue_position is not None:
            status = f"queued (#{update.queue_position + 1})"
        fields: dict[str, Any] = {"status": status}
        progress = update.progress or {}
        if progress:
            current, total = progress.get("current"), progress.get("total")
            fields["counts"] = f"{current:g}/{total:g}" if total else f"{current:g}"
            self.progress.update(self.task, completed=current, total=total, description=progress.get("message") or "")
        self.progress.update(self.task, **fields)


def catch_ctrl_c() -> None:
    """Make Ctrl-C raise `KeyboardInterrupt`, how the commands cancel or detach.

    Python leaves SIGINT ignored when it starts with it ignored, as a command
    started in the background (`cmd &`) by a script does.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)


def cancel_state(job: dict[str, Any]) -> str:
    """What a cancel did: `canceled`, `cancellation requested` (it is still running), or the status it had ended in."""
    return "cancellation requested" if job["status"] == "running" else str(job["status"])


def follow(handle: JobHandle, url: str, *, timeout: float | None, mode: str, quiet: bool) -> NoReturn:
    """Wait for the job with a live display; print the result; exit with its code."""
    try:
        if quiet:
            result = handle.result(timeout, mode=mode)  # type: ignore[arg-type]
        else:
            with Display(handle.id) as display:
                result = handle.result(timeout, on_progress=display.update, mode=mode)  # type: ignore[arg-type]
    except JobFailed as exc:
        _problem(exc)
        sys.exit(EXIT_FAILED)
    except JobCanceled as exc:
        _problem(exc)
        sys.exit(EXIT_CANCELED)
    except JobTimeout as exc:
        click.echo(f"outlast: {exc}; it goes on: outlast watch {url} {handle.id}", err=True)
        sys.exit(EXIT_TIMEOUT)
    except KeyboardInterrupt:
        interrupted(handle, url)
    except ClientError as exc:
        click.echo(f"outlast: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(json.dumps(result, indent=2, ensure_ascii=False))
    sys.exit(EXIT_OK)


def interrupted(handle: JobHandle, url: str) -> NoReturn:
    """Ctrl-C: cancel the job or leave it running (without a terminal: leave it)."""
    choice = "d"
    if sys.stdin.isatty() and sys.stderr.isatty():
        choice = click.prompt(
            "\nCancel the job (c) or detach and leave it running (d)?",
            type=click.Choice(["c", "d"]),
            default="d",
            err=True,
        )
    if choice == "c":
        try:
            job = handle.cancel()
        except ClientError as exc:
            click.echo(f"outlast: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        click.echo(f"outlast: job {handle.id}: {cancel_state(job)}", err=True)
        sys.exit(EXIT_CANCELED)
    click.echo(json.dumps({"id": handle.id, "status": handle.status}))
    click.echo(f"outlast: detached; follow it with: outlast watch {url} {handle.id}", err=True)
    sys.exit(EXIT_OK)


def _problem(exc: ProblemError) -> None:
    click.echo(json.dumps(exc.problem, indent=2, ensure_ascii=False), err=True)


@click.command()
@click.argument("url")
@click.argument("name")
@click.option("-i", "--input", "pairs", multiple=True, metavar="KEY=VALUE", help="An input field; repeat it.")
@click.option("--input-json", type=click.File("r"), help="A JSON object of input, from a file or - for stdin.")
@MODE
@click.option("--detach", is_flag=True, help="Submit, print the job, and return at once.")
@TIMEOUT
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@API_KEY
def run(
    url: str,
    name: str,
    pairs: tuple[str, ...],
    input_json: Any,
    mode: str,
    detach: bool,
    timeout: float | None,
    quiet: bool,
    api_key: str | None,
) -> None:
    """Run job NAME on the server at URL and print its result as JSON.

    \b
    Examples:
      outlast run http://127.0.0.1:8000 report -i delay=5000 -i rows=100
      echo '{"rows": 5}' | outlast run http://127.0.0.1:8000 report --input-json -

    Progress goes to stderr, the result to stdout. Exit codes: 0 succeeded,
    1 failed, 2 usage, 3 canceled, 4 timed out. Ctrl-C asks whether to cancel
    the job or leave it running.
    """
    catch_ctrl_c()
    data = parse_input(pairs, input_json)
    with Client(url, api_key=api_key) as client:
        try:
            handle = client.submit(name, data)
        except ProblemError as exc:
            _problem(exc)
            sys.exit(EXIT_USAGE if 400 <= exc.status < 500 else EXIT_FAILED)
        except ClientError as exc:
            click.echo(f"outlast: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        if detach:
            click.echo(json.dumps(handle.job, indent=2, ensure_ascii=False))
            sys.exit(EXIT_OK)
        follow(handle, url, timeout=timeout, mode=mode, quiet=quiet)


@click.command()
@click.argument("url")
@click.argument("job_id")
@MODE
@TIMEOUT
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@API_KEY
def watch(url: str, job_id: str, mode: str, timeout: float | None, quiet: bool, api_key: str | None) -> None:
    """Follow job JOB_ID on the server at URL to its end, and print its result."""
    catch_ctrl_c()
    with Client(url, api_key=api_key) as client:
        try:
            handle = client.get(job_id)
        except ProblemError as exc:
            _problem(exc)
            sys.exit(EXIT_USAGE)
        follow(handle, url, timeout=timeout, mode=mode, quiet=quiet)


@click.command()
@click.argument("url")
@click.argument("job_id")
@API_KEY
def cancel(url: str, job_id: str, api_key: str | None) -> None:
    """Cancel job JOB_ID on the server at URL.

    Prints `JOB_ID: canceled`, or `JOB_ID: cancellation requested` for a job
    that is running (its worker stops it), or the status of a job that had
    already ended, which is left as it is.
    """
    catch_ctrl_c()
    with Client(url, api_key=api_key) as client:
        try:
            job = client.get(job_id).cancel()
        except ProblemError as exc:
            _problem(exc)
            sys.exit(EXIT_USAGE)
        except ClientError as exc:
            click.echo(f"outlast: {exc}", err=True)
            sys.exit(EXIT_FAILED)
    click.echo(f"{job_id}: {cancel_state(job)}")
