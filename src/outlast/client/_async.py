"""`AsyncClient`: one call that returns a job's result, whatever the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import httpx

from outlast.client._backoff import DEFAULT_PATIENCE_S, Backoff, Deadline, Retry
from outlast.client._errors import JobCanceled, JobFailed, JobTimeout, ProblemError, ServerUnavailable
from outlast.client._transports import MODES, RETRYABLE_STATUS, TERMINAL, Follower, JobEvent, Mode, OnUpdate, parse_sse
from outlast.retry_after import parse_retry_after

MAX_REDIRECTS = 1000
USER_AGENT = "outlast-client"


class AsyncClient:
    """Submit jobs and get their results over outlast's HTTP protocol.

        async with AsyncClient("http://127.0.0.1:8000") as client:
            summary = await client.run("report", {"rows": 500}, timeout=120)

    `mode` chooses how to wait: `"auto"` (Server-Sent Events, falling back to
    long-polling), `"sse"`, `"ws"`, `"long-poll"` or `"poll"`. A server that
    can't be reached is retried with backoff until the call's timeout, or for
    `patience_s` seconds when there is none (`None`: for ever), counted from
    the first failure since it last answered.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        mode: Mode = "auto",
        patience_s: float | None = DEFAULT_PATIENCE_S,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.mode: Mode = mode
        self.backoff = Backoff(patience_s=patience_s)
        headers = {"User-Agent": USER_AGENT, **self._auth_headers()}
        timeout = httpx.Timeout(10.0, read=60.0)  # reads outlast the server's hold
        self._http = http or httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout)

    @property
    def patience_s(self) -> float | None:
        return self.backoff.patience_s

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    # -- the calls ----------------------------------------------------------------------

    async def run(
        self,
        name: str,
        input: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_progress: OnUpdate | None = None,
        mode: Mode | None = None,
    ) -> Any:
        """Submit a job and return its result.

        Raises `JobFailed`, `JobCanceled` or `JobTimeout` (the job goes on running
        on the server; its id is on the exception).
        """
        deadline = Deadline(timeout)
        handle = await self._submit(name, input, deadline=deadline, hold=on_progress is None)
        return await handle._result(deadline, on_progress, mode)

    async def submit(
        self, name: str, input: Mapping[str, Any] | None = None, *, idempotency_key: str | None = None
    ) -> AsyncJobHandle:
        """Submit a job without waiting for it. Retried safely: the submit carries an Idempotency-Key."""
        return await self._submit(name, input, deadline=Deadline(None), hold=False, idempotency_key=idempotency_key)

    async def _submit(
        self,
        name: str,
        input: Mapping[str, Any] | None,
        *,
        deadline: Deadline,
        hold: bool,
        idempotency_key: str | None = None,
    ) -> AsyncJobHandle:
        # Without a progress callback, let the server hold the submit: a quick job
        # then costs one request.
        remaining = deadline.remaining()
        prefer = "respond-async"
        if hold:
            prefer = f"respond-async, wait={25 if remaining is None else max(0, min(25, int(remaining)))}"
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex, "Prefer": prefer}
        response = await self._request(
            "POST", f"/jobs/{name}", json=dict(input or {}), headers=headers, deadline=deadline
        )
        return AsyncJobHandle(self, self._json_or_raise(response))

    async def get(self, job_id: str) -> AsyncJobHandle:
        """A handle on an existing job (404 → `ProblemError`)."""
        response = await self._request("GET", f"/jobs/{job_id}", deadline=Deadline(None))
        return AsyncJobHandle(self, self._json_or_raise(response))

    async def call(self, method: str, url: str, *, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        """Call a long-running route and return its final response.

        Follows the `303 See Other` chain (each hop held by the server), or waits
        on the job of a `202 Accepted` + `Location`, as the route answers.
        """
        deadline = Deadline(timeout)
        response = await self._request(method, url, deadline=deadline, **kwargs)
        for _ in range(MAX_REDIRECTS):
            if response.status_code == 303:
                location = response.headers["location"]
                remaining = deadline.remaining()
                if remaining is not None and remaining <= 0:
                    raise JobTimeout(_job_id_in(location), None, timeout)
                # Each hop is held by the server; never longer than what is left of ours. A hop
                # reads `?wait` only: `Prefer: wait` is what redirect-following clients re-send.
                hop = httpx.URL(location)
                if remaining is not None:
                    hop = hop.copy_merge_params({"wait": f"{max(0.0, remaining):.3f}"})
                response = await self._request("GET", str(hop), deadline=deadline)
            elif response.status_code == 202 and "location" in response.headers:
                handle = AsyncJobHandle(self, response.json())
                await handle.wait(timeout=deadline.remaining())
                response = await self._request("GET", f"/jobs/{handle.id}/result", deadline=deadline)
            else:
                return response
        raise ServerUnavailable(f"more than {MAX_REDIRECTS} redirects")

    # -- plumbing -------------------------------------------------------------------------

    async def _request(self, method: str, url: str, *, deadline: Deadline, **kwargs: Any) -> httpx.Response:
        """Send; retry connection errors and 502/503/504 with backoff while time allows."""
        retry = Retry(self.backoff, deadline)
        while True:
            hint_s = None
            try:
                response = await self._http.request(method, url, **kwargs)
                if response.status_code not in RETRYABLE_STATUS:
                    return response
                reason = f"{response.status_code} from the server"
                hint_s = parse_retry_after(response.headers.get("retry-after"))
            except httpx.TransportError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            await retry.pause(f"{method} {url}: {reason}", hint_s)

    @staticmethod
    def _json_or_raise(response: httpx.Response) -> Any:
        if response.is_success:
            return response.json()
        raise ProblemError(_problem(response))

    async def _sse(self, job_id: str, after: int, deadline: Deadline) -> AsyncGenerator[JobEvent, None]:
        headers = {"Last-Event-ID": str(after), "Accept": "text/event-stream"}
        timeout = httpx.Timeout(10.0, read=30.0)  # the server pings every 15 s
        async with self._http.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
            if response.status_code == 204:
                return
            if response.status_code in RETRYABLE_STATUS:
                hint_s = parse_retry_after(response.headers.get("retry-after"))
                raise ServerUnavailable(f"{response.status_code} from the server", retry_after_s=hint_s)
            if not response.is_success:
                await response.aread()
                raise ProblemError(_problem(response))
            # Closed here, not left to the garbage collector, which may come when the loop is gone.
            events = parse_sse(response.aiter_lines(), job_id)
            async with asyncio.timeout(deadline.remaining()), contextlib.aclosing(events):
                async for event in events:
                    yield event


class AsyncJobHandle:
    """A submitted job: wait for it, follow its events, fetch its result, cancel it."""

    def __init__(self, client: AsyncClient, job: dict[str, Any]) -> None:
        self.client = client
        self.job = job
        self.id: str = job["id"]

    def __repr__(self) -> str:
        return f"<AsyncJobHandle {self.id} {self.job.get('status')}>"

    @property
    def status(self) -> str:
        return str(self.job["status"])

    async def wait(
        self, timeout: float | None = None, *, on_progress: OnUpdate | None = None, mode: Mode | None = None
    ) -> dict[str, Any]:
        """The job object once it has ended (whatever its status); `JobTimeout` if not in time."""
        follower = Follower(self, Deadline(timeout), on_progress)
        return await follower.wait(mode or self.client.mode)

    async def result(
        self, timeout: float | None = None, *, on_progress: OnUpdate | None = None, mode: Mode | None = None
    ) -> Any:
        """The job's return value; `JobFailed`, `JobCanceled` or `JobTimeout` otherwise."""
        return await self._result(Deadline(timeout), on_progress, mode)

    async def _result(self, deadline: Deadline, on_progress: OnUpdate | None, mode: Mode | None) -> Any:
        await Follower(self, deadline, on_progress).wait(mode or self.client.mode)
        if self.job["status"] == "succeeded":
            return self.job["result"]
        response = await self.client._request("GET", f"/jobs/{self.id}/result", deadline=Deadline(30))
        problem = _problem(response)
        if self.job["status"] == "canceled":
            raise JobCanceled(problem, self.job)
        raise JobFailed(problem, self.job)

    async def events(self, after: int = 0) -> AsyncGenerator[JobEvent, None]:
        """The job's events after `after`, then live ones, until it ends (SSE, resumed if dropped)."""
        cursor = after
        retry = Retry(self.client.backoff, Deadline(None))
        while True:
            hint_s = None
            try:
                async with contextlib.aclosing(self.client._sse(self.id, cursor, Deadline(None))) as stream:
                    async for event in stream:
                        retry.succeeded()
                        cursor = event.seq if event.seq is not None else cursor
                        yield event
                        if event.type == "status" and event.data.get("status") in TERMINAL:
                            self.job = event.data
                            return
                job = (await self.client.get(self.id)).job
                if job["status"] in TERMINAL and cursor >= 1:
                    self.job = job
                    return
                retry.answered()
            except httpx.TransportError:
                pass
            except ServerUnavailable as exc:
                hint_s = exc.retry_after_s
            await retry.pause(f"the server did not answer for job {self.id}", hint_s)

    async def cancel(self) -> dict[str, Any]:
        response = await self.client._request("POST", f"/jobs/{self.id}/cancel", deadline=Deadline(30))
        job: dict[str, Any] = self.client._json_or_raise(response)
        self.job = job
        return job


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "status" in body:
        return body
    return {"type": "about:blank", "title": response.reason_phrase, "status": response.status_code, "detail": ""}


def _job_id_in(location: str) -> str | None:
    parts = location.split("/jobs/", 1)
    return parts[1].split("/", 1)[0] if len(parts) == 2 else None
