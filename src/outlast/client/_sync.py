"""`Client`: the same calls as `AsyncClient`, for code that is not async.

It runs an `AsyncClient` on an event loop of its own, in a background thread,
so there is one implementation of the protocol; callbacks such as
`on_progress` are called from that thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

import httpx

from outlast.client._async import AsyncClient, AsyncJobHandle
from outlast.client._backoff import DEFAULT_PATIENCE_S
from outlast.client._transports import JobEvent, Mode, OnUpdate

T = TypeVar("T")


class _Portal:
    """An event loop in a daemon thread, and a way to run coroutines on it and wait."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="outlast-client", daemon=True)
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C in the caller's thread: stop the work on the loop too
            raise

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


class Client:
    """Submit jobs and get their results; see `AsyncClient` for every argument."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        mode: Mode = "auto",
        patience_s: float | None = DEFAULT_PATIENCE_S,
    ) -> None:
        self._portal = _Portal()
        self._async = AsyncClient(base_url, api_key=api_key, mode=mode, patience_s=patience_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._portal.call(self._async.aclose())
        self._portal.close()

    def run(
        self,
        name: str,
        input: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_progress: OnUpdate | None = None,
        mode: Mode | None = None,
    ) -> Any:
        return self._portal.call(self._async.run(name, input, timeout=timeout, on_progress=on_progress, mode=mode))

    def submit(
        self, name: str, input: Mapping[str, Any] | None = None, *, idempotency_key: str | None = None
    ) -> JobHandle:
        return JobHandle(
            self._portal, self._portal.call(self._async.submit(name, input, idempotency_key=idempotency_key))
        )

    def get(self, job_id: str) -> JobHandle:
        return JobHandle(self._portal, self._portal.call(self._async.get(job_id)))

    def call(self, method: str, url: str, *, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        return self._portal.call(self._async.call(method, url, timeout=timeout, **kwargs))


class JobHandle:
    """A submitted job; see `AsyncJobHandle`."""

    def __init__(self, portal: _Portal, handle: AsyncJobHandle) -> None:
        self._portal = portal
        self._async = handle
        self.id = handle.id

    def __repr__(self) -> str:
        return f"<JobHandle {self.id} {self.status}>"

    @property
    def job(self) -> dict[str, Any]:
        return self._async.job

    @property
    def status(self) -> str:
        return self._async.status

    def wait(
        self, timeout: float | None = None, *, on_progress: OnUpdate | None = None, mode: Mode | None = None
    ) -> dict[str, Any]:
        return self._portal.call(self._async.wait(timeout, on_progress=on_progress, mode=mode))

    def result(
        self, timeout: float | None = None, *, on_progress: OnUpdate | None = None, mode: Mode | None = None
    ) -> Any:
        return self._portal.call(self._async.result(timeout, on_progress=on_progress, mode=mode))

    def events(self, after: int = 0) -> Iterator[JobEvent]:
        stream = self._async.events(after)

        async def next_event() -> JobEvent:
            return await anext(stream)

        try:
            while True:
                try:
                    yield self._portal.call(next_event())
                except StopAsyncIteration:
                    return
        finally:
            self._portal.call(stream.aclose())

    def cancel(self) -> dict[str, Any]:
        return self._portal.call(self._async.cancel())
