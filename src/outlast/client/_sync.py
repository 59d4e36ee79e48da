"""`Client`: the same calls as `AsyncClient`, for code that is not async.

It runs an `AsyncClient` in anyio's blocking portal, an event loop in a thread
of its own, so there is one implementation of the protocol; callbacks such as
`on_progress` are called from that thread. Any number of threads may call one
`Client` at once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal

from outlast.client._async import AsyncClient, AsyncJobHandle
from outlast.client._backoff import DEFAULT_PATIENCE_S
from outlast.client._transports import JobEvent, Mode, OnUpdate

T = TypeVar("T")


class _Portal:
    """anyio's blocking portal, whose calls stop when their caller is interrupted, and which closes once."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._portal: BlockingPortal = self._stack.enter_context(start_blocking_portal())
        self._closing = threading.Lock()
        self._closed = False

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn()` on the portal's loop and wait for it (from any thread but the portal's own)."""
        future = self._portal.start_task_soon(fn)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C in the caller's thread: stop the work on the loop too
            raise

    def close(self, last: Callable[[], Awaitable[None]]) -> None:
        """Run `last`, cancel the calls other threads still wait for, and end the thread; once."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
        try:
            self.call(last)
        finally:
            # Stopped here with cancel_remaining, as leaving the context would only wait for what still
            # runs; leaving it then finds the portal stopped, and joins its thread.
            self._portal.call(self._portal.stop, True)
            self._stack.close()


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
        self._async = AsyncClient(base_url, api_key=api_key, mode=mode, patience_s=patience_s)
        self._portal = _Portal()  # after the arguments are checked: a refused one leaves no thread behind

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and end the client's thread; calls still waiting in other threads are canceled."""
        self._portal.close(self._async.aclose)

    def run(
        self,
        name: str,
        input: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_progress: OnUpdate | None = None,
        mode: Mode | None = None,
    ) -> Any:
        return self._portal.call(
            lambda: self._async.run(name, input, timeout=timeout, on_progress=on_progress, mode=mode)
        )

    def submit(
        self, name: str, input: Mapping[str, Any] | None = None, *, idempotency_key: str | None = None
    ) -> JobHandle:
        handle = self._portal.call(lambda: self._async.submit(name, input, idempotency_key=idempotency_key))
        return JobHandle(self._portal, handle)

    def get(self, job_id: str) -> JobHandle:
        return JobHandle(self._portal, self._portal.call(lambda: self._async.get(job_id)))

    def call(self, method: str, url: str, *, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        return self._portal.call(lambda: self._async.call(method, url, timeout=timeout, **kwargs))


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
        return self._portal.call(lambda: self._async.wait(timeout, on_progress=on_progress, mode=mode))

    def result(
        self, timeout: float | None = None, *, on_progress: OnUpdate | None = None, mode: Mode | None = None
    ) -> Any:
        return self._portal.call(lambda: self._async.result(timeout, on_progress=on_progress, mode=mode))

    def events(self, after: int = 0) -> Iterator[JobEvent]:
        stream = self._async.events(after)
        try:
            while True:
                try:
                    yield self._portal.call(lambda: anext(stream))
                except StopAsyncIteration:
                    return
        finally:
            self._portal.call(stream.aclose)

    def cancel(self) -> dict[str, Any]:
        return self._portal.call(self._async.cancel)
