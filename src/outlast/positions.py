"""Queue positions, kept current for the queued jobs someone is watching.

Whenever a queue changes (a job of that name enters it, is claimed, is
canceled), the positions of the watched jobs of that name are read again, in
one query per queue and at most every `COALESCE_S`, and each change goes to
the job's listeners as a live-only `position` event (no seq: it never moves a
resume cursor). Across nodes, queue changes arrive with the status events the
store relays, so positions there lag by that delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterator

from outlast.jobs import Event
from outlast.outages import Outage
from outlast.stores.base import JobStore

logger = logging.getLogger("outlast.positions")

COALESCE_S = 0.1


@dataclasses.dataclass(slots=True)
class _Watch:
    watchers: int
    position: int | None


class PositionTracker:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        # queue name -> watched job id -> its watchers and the last position sent
        self._watched: dict[str, dict[str, _Watch]] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unobserve = store.hub.observe_status(self._on_status)
        self._outage = Outage(logger, "reading queue positions")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outlast-positions")

    async def stop(self) -> None:
        self._unobserve()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def watch(self, job_id: str, name: str, position: int | None) -> Iterator[None]:
        """Keep `job_id`'s position current while inside (its status said queued)."""
        queue = self._watched.setdefault(name, {})
        entry = queue.setdefault(job_id, _Watch(0, position))
        entry.watchers += 1
        try:
            yield
        finally:
            entry.watchers -= 1
            if entry.watchers == 0:
                del queue[job_id]
                if not queue:
                    del self._watched[name]

    def _on_status(self, event: Event) -> None:
        name = event.data.get("name")
        if isinstance(name, str) and name in self._watched:
            self._dirty.add(name)
            self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(COALESCE_S)  # gather the changes of this moment into one read
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for name in dirty:
                try:
                    await self._refresh(name)
                except Exception as exc:
                    self._dirty.add(name)  # read it again after a pause
                    self._wake.set()
                    await asyncio.sleep(self._outage.failed(exc))
                else:
                    self._outage.succeeded()

    async def _refresh(self, name: str) -> None:
        queue = self._watched.get(name)
        if not queue:
            return
        positions = await self.store.queue_positions(name, list(queue))
        for job_id, position in positions.items():
            entry = queue.get(job_id)
            if entry is not None and entry.position != position:
                entry.position = position
                self.store.hub.publish(Event(job_id, None, "position", {"queue_position": position}))
