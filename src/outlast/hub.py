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
import collections
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from outlast.jobs import Event

LISTENER_BUFFER = 256


class Listener:
    """The live events of one job, as seen by one waiter."""

    __slots__ = ("_buffer", "_wake", "job_id", "lagged")

    def __init__(self, job_id: str, maxlen: int = LISTENER_BUFFER) -> None:
        self.job_id = job_id
        self._buffer: collections.deque[Event] = collections.deque(maxlen=maxlen)
        self._wake = asyncio.Event()
        self.lagged = False

    def _push(self, event: Event) -> None:
        if len(self._buffer) == self._buffer.maxlen:
            self.lagged = True
        self._buffer.append(event)
        self._wake.set()

    def drain(self) -> list[Event]:
        """The events received since the last drain (and clears `lagged`)."""
        events = list(self._buffer)
        self._buffer.clear()
        self._wake.clear()
        self.lagged = False
        return events

    async def wait(self, timeout_s: float | None) -> bool:
        """Wait until an event arrives; False on timeout."""
        if self._buffer:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()
        except TimeoutError:
            return False
        return True


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
                listener._wake.set()

    def is_listened(self, job_id: str) -> bool:
        return job_id in self._listeners

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
