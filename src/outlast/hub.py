"""In-process fan-out of job events, so that waiters are woken, never polling.

A store publishes every event it writes (and, for stores shared between
processes, the events other processes wrote) to its `Hub`. Anyone waiting on a
job holds a `Listener`: a small bounded buffer plus a wake-up. The store stays
the source of truth: a listener that fell behind is marked `lagged` and its
reader catches up from the store's event log, so a slow reader costs bounded
memory and never slows the publisher.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from outlast.jobs import Event

LISTENER_BUFFER = 256


class Listener:
    """The live events of one job, as seen by one waiter.

    Thousands of these wait at once (one per open event stream), so each is
    small: a list made on the first event, and a future only while waiting.
    """

    __slots__ = ("_buffer", "_maxlen", "_waiter", "_woken", "job_id", "lagged")

    def __init__(self, job_id: str, maxlen: int = LISTENER_BUFFER) -> None:
        self.job_id = job_id
        self._buffer: list[Event] | None = None
        self._maxlen = maxlen
        self._waiter: asyncio.Future[None] | None = None
        self._woken = False
        self.lagged = False

    def _push(self, event: Event) -> None:
        if self._buffer is None:
            self._buffer = [event]
        else:
            if len(self._buffer) >= self._maxlen:
                self.lagged = True  # the oldest is dropped: the reader reads the gap back from the store
                del self._buffer[0]
            self._buffer.append(event)
        self.wake()

    def wake(self) -> None:
        """End the current or next `wait()` at once (with or without events)."""
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def drain(self) -> list[Event]:
        """The events received since the last drain (and clears `lagged`)."""
        events = self._buffer or []
        self._buffer = None
        self._woken = False
        self.lagged = False
        return events

    async def wait(self, timeout_s: float | None) -> bool:
        """Wait until an event arrives (or `wake()`); False on timeout."""
        if self._woken:
            return True
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if timeout_s is None else loop.call_later(timeout_s, _expire, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        return self._woken


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Hub:
    """Routes events to the listeners of their job, and work to idle runners."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[Listener]] = {}
        self._status_listeners: set[Listener] = set()
        self._observers: set[Callable[[Event], None]] = set()
        self._work = asyncio.Event()
        self.closing = asyncio.Event()
        self._cancel_callbacks: set[Callable[[str], None]] = set()

    def publish(self, event: Event) -> None:
        for listener in self._listeners.get(event.job_id, ()):
            listener._push(event)
        if event.type == "status":
            for listener in self._status_listeners:
                listener._push(event)
            for observer in self._observers:
                observer(event)
            if event.data.get("status") == "queued":
                self._work.set()

    @contextmanager
    def listen(self, job_id: str) -> Iterator[Listener]:
        """The live events of one job."""
        listener = Listener(job_id)
        if self.closing.is_set():
            listener.wake()  # shutting down: nothing should start waiting now
        self._listeners.setdefault(job_id, set()).add(listener)
        try:
            yield listener
        finally:
            listeners = self._listeners.get(job_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[job_id]

    @contextmanager
    def listen_status(self) -> Iterator[Listener]:
        """The live status changes of every job (for dashboards)."""
        listener = Listener("*")
        if self.closing.is_set():
            listener.wake()
        self._status_listeners.add(listener)
        try:
            yield listener
        finally:
            self._status_listeners.discard(listener)

    def observe_status(self, observer: Callable[[Event], None]) -> Callable[[], None]:
        """Call `observer` with every status event; returns the function that stops it."""
        self._observers.add(observer)
        return lambda: self._observers.discard(observer)

    def close(self) -> None:
        """The server is shutting down: wake every listener so that streams end."""
        self.closing.set()
        for listeners in [*self._listeners.values(), self._status_listeners]:
            for listener in listeners:
                listener.wake()

    def is_listened(self, job_id: str) -> bool:
        return job_id in self._listeners

    def listened_jobs(self) -> list[str]:
        """The jobs someone here listens to (a store that lost touch with others tells them where things stand)."""
        return list(self._listeners)

    @property
    def listener_count(self) -> int:
        return sum(len(s) for s in self._listeners.values()) + len(self._status_listeners)

    # -- work and cancellation, for runners ----------------------------------

    def work_available(self) -> None:
        self._work.set()

    async def wait_for_work(self, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._work.wait()
        except TimeoutError:
            pass
        self._work.clear()

    def on_cancel(self, callback: Callable[[str], None]) -> Callable[[], None]:
        self._cancel_callbacks.add(callback)
        return lambda: self._cancel_callbacks.discard(callback)

    def cancel_requested(self, job_id: str) -> None:
        for callback in list(self._cancel_callbacks):
            callback(job_id)
