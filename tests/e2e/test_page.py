"""The page at `GET /` and a browser's EventSource, in a real Chromium against a real server.

Playwright drives Debian's Chromium (`/usr/bin/chromium`); it cannot download its own here.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, Request, Response, WebSocketRoute, async_playwright, expect

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOT = "/tmp/outlast-page.png"
TERMINAL = ("succeeded", "failed", "canceled")


@pytest.fixture
def server(serve: Any) -> Any:
    return serve("examples.app:ot", dashboard=True)


@pytest.fixture
async def page(server: Any) -> AsyncIterator[Page]:
    """A browser page; closed before the server stops (its open streams would hold the server's shutdown)."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1100, "height": 900})
            page = await context.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            await browser.close()


def errors_of(page: Page) -> list[str]:
    """Uncaught exceptions and console errors of the page, as they happen."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    return errors


async def open_page(page: Page, server: Any) -> None:
    await page.goto(f"{server.url}/")
    await expect(page.get_by_test_id("live")).to_have_text("live", timeout=10_000)  # /events is followed


async def generate(page: Page, rows: int, delay: int) -> str:
    """Fill the form, click the button; the job's id once accepted."""
    await page.get_by_label("Rows").fill(str(rows))
    await page.get_by_label("Delay (ms)").fill(str(delay))
    await page.get_by_role("button", name="Generate report").click()
    job_id = page.get_by_test_id("job-id")
    await expect(job_id).to_have_text(re.compile(r"^[A-Za-z0-9_-]{16,}$"), timeout=10_000)
    return await job_id.inner_text()


async def progress_above(page: Page, value: float) -> float:
    """Wait until the progress bar shows more than `value` while no result is shown yet."""
    handle = await page.wait_for_function(
        """(v) => {
            const bar = document.querySelector('[data-testid=progress]');
            const result = document.querySelector('[data-testid=result]');
            return bar.hasAttribute('value') && bar.value > v && result.hidden && bar.value;
        }""",
        arg=value,
        polling=20,
        timeout=10_000,
    )
    seen: float = await handle.json_value()
    return seen


async def test_generate_report_shows_progress_then_result_and_lists_the_job(page: Page, server: Any) -> None:
    errors = errors_of(page)
    await open_page(page, server)
    await expect(page.get_by_test_id("empty")).to_be_visible()

    job_id = await generate(page, rows=500, delay=3000)
    first = await progress_above(page, 0)
    second = await progress_above(page, first)
    third = await progress_above(page, second)
    assert 0 < first < second < third
    await expect(page.get_by_test_id("progress-text")).to_contain_text("/ 20")

    # The live list got it from GET /events (the WebSocket only feeds the report panel's progress).
    row = page.locator(f'[data-testid="job-row"][data-id="{job_id}"]')
    await expect(row).to_have_attribute("data-status", re.compile("running|succeeded"), timeout=10_000)
    await expect(row).to_contain_text("generateReport")

    result = page.get_by_test_id("result")
    await expect(result).to_contain_text('"rows": 500', timeout=15_000)
    assert json.loads(await result.inner_text())["rows"] == 500
    await expect(page.get_by_test_id("job-status")).to_have_text("succeeded")
    await expect(page.get_by_test_id("progress")).to_have_attribute("value", "20")
    await expect(page.get_by_test_id("error")).to_be_hidden()
    await expect(row).to_have_attribute("data-status", "succeeded", timeout=10_000)
    await expect(page.get_by_role("button", name="Generate report")).to_be_enabled()

    await page.screenshot(path=SCREENSHOT, full_page=True)
    assert errors == []


async def test_list_loads_existing_jobs_newest_first(page: Page, server: Any) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        ids = []
        for n in (1, 2, 3):
            response = await client.post("/jobs/report?wait=10", json={"delay": 0, "rows": n})
            assert response.status_code == 200
            ids.append(response.json()["id"])
    await open_page(page, server)
    rows = page.get_by_test_id("job-row")
    await expect(rows).to_have_count(3)
    assert [await row.get_attribute("data-id") for row in await rows.all()] == ids[::-1]
    for row in await rows.all():
        assert await row.get_attribute("data-status") == "succeeded"


async def test_report_resumes_after_the_socket_drops(page: Page, server: Any) -> None:
    """The socket is cut mid-job: the page reconnects and subscribes after the last event it saw."""
    sent: list[list[dict[str, Any]]] = []  # what the page sent, per connection
    progress = 0
    cut = asyncio.Event()

    def route(ws: WebSocketRoute) -> None:
        to_server = ws.connect_to_server()
        messages: list[dict[str, Any]] = []
        sent.append(messages)
        first = len(sent) == 1

        def upstream(message: str | bytes) -> None:
            messages.append(json.loads(message))
            to_server.send(message)

        def downstream(message: str | bytes) -> None:
            nonlocal progress
            if cut.is_set() and first:
                return
            ws.send(message)
            event = json.loads(message)
            if first and event.get("event") == "progress":
                progress += 1
                if progress == 3:
                    cut.set()
                    asyncio.get_running_loop().create_task(ws.close(code=4000, reason="cut by the test"))

        ws.on_message(upstream)
        to_server.on_message(downstream)

    await page.route_web_socket(re.compile(r"/ws$"), route)
    await open_page(page, server)
    job_id = await generate(page, rows=200, delay=2500)
    result = page.get_by_test_id("result")
    await expect(result).to_contain_text('"rows": 200', timeout=20_000)
    assert cut.is_set() and len(sent) == 2
    assert sent[0][0]["action"] == "generateReport" and sent[0][0]["amountOfRows"] == 200
    (subscribe,) = sent[1]
    assert subscribe["action"] == "subscribe" and subscribe["id"] == job_id
    assert subscribe["after"] >= 4  # the queued and running statuses, then 3 progress events at least


async def test_event_source_follows_a_job_to_the_end_then_stops(page: Page, server: Any) -> None:
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post(
            "/jobs/report", json={"delay": 1500, "rows": 10}, headers={"Prefer": "respond-async"}
        )
        assert response.status_code == 202
        job_id = response.json()["id"]
    path = f"/jobs/{job_id}/events"
    requests: list[Request] = []
    statuses: list[int] = []
    storm = asyncio.Event()

    def on_request(request: Request) -> None:
        if request.url == f"{server.url}{path}":
            requests.append(request)
            if len(requests) > 2:
                storm.set()

    def on_response(response: Response) -> None:
        if response.url == f"{server.url}{path}":
            statuses.append(response.status)

    page.on("request", on_request)
    page.on("response", on_response)
    await open_page(page, server)
    await page.evaluate(
        """(path) => {
            window.seen = [];
            window.source = new EventSource(path);
            for (const type of ['status', 'progress', 'log']) {
                window.source.addEventListener(type, (e) => {
                    window.seen.push({type, id: e.lastEventId, data: JSON.parse(e.data)});
                });
            }
        }""",
        path,
    )
    await page.wait_for_function(
        f"window.seen.some((e) => e.type === 'status' && {list(TERMINAL)!r}.includes(e.data.status))",
        timeout=20_000,
    )
    await page.wait_for_function("window.source.readyState === EventSource.CLOSED", timeout=10_000)
    with pytest.raises(TimeoutError):  # no reconnect storm: wait for a third request, which must not come
        await asyncio.wait_for(storm.wait(), timeout=5)
    assert len(requests) <= 2
    assert statuses == [200, 204]

    seen = await page.evaluate("window.seen")
    assert [int(e["id"]) for e in seen] == list(range(1, len(seen) + 1))
    assert seen[-1]["type"] == "status" and seen[-1]["data"]["status"] == "succeeded"
    assert seen[-1]["data"]["result"]["rows"] == 10
    assert [e["data"]["current"] for e in seen if e["type"] == "progress"][-1] == 20
