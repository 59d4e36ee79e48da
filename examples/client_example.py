"""The examples of docs/client.md, against `outlast serve examples.app:ot`.

    .venv/bin/outlast serve examples.app:ot --gateway-timeout 3 --margin 1
    .venv/bin/python examples/client_example.py http://127.0.0.1:8000

Each block below is one example of the page.
"""

from __future__ import annotations

import asyncio
import sys

from outlast.client import AsyncClient, Client, JobTimeout, ProblemError, Update


def show(update: Update) -> None:
    """An `on_progress` callback: it is told the status, the progress and the queue position."""
    progress = update.progress or {}
    print(f"  {update.status} {progress.get('current', '')}/{progress.get('total', '')}")


def sync_examples(url: str) -> None:
    with Client(url) as client:
        # run: submit, wait (whatever the gateway), return the result
        summary = client.run("report", {"delay": 3000, "rows": 100}, timeout=120, on_progress=show)
        print("report:", summary)

        # submit, then use the handle
        handle = client.submit("report", {"delay": 1000, "rows": 5})
        print("submitted:", handle.id, handle.status)
        for event in handle.events():  # numbered events, then the terminal status
            print(f"  event {event.seq} {event.type}")
        print("result:", handle.result())

        # cancel
        handle = client.submit("report", {"delay": 60_000})
        job = handle.cancel()
        print("cancel:", job["status"])

        # a long-running route: the 303 chain is followed, the route's own response returned
        response = client.call("GET", "/payload", params={"delay": 5}, timeout=60)
        print("payload:", response.status_code, response.json())

        # errors
        try:
            client.run("report", {"rows": -1})
        except ProblemError as exc:  # the server refused the input
            print("refused:", exc.status, exc.errors[0]["loc"])
        try:
            client.run("report", {"delay": 60_000}, timeout=1)
        except JobTimeout as exc:  # the job goes on: exc.job_id names it
            print(f"timed out: job {exc.job_id}")
            client.get(exc.job_id or "").cancel()


async def async_examples(url: str) -> None:
    async with AsyncClient(url, mode="ws") as client:
        summary = await client.run("report", {"delay": 500, "rows": 10})
        print("async report rows:", summary["rows"])

        handle = await client.submit("report", {"delay": 500, "rows": 3})
        async for event in handle.events():
            print(f"  async event {event.seq} {event.type}")
        job = await handle.wait(timeout=30)
        print("async job:", job["status"])


if __name__ == "__main__":
    base_url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
    sync_examples(base_url)
    asyncio.run(async_examples(base_url))
