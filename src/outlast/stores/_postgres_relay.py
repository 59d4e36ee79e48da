"""Events of other nodes, for a PostgreSQL store: `LISTEN`, and the relay of what is notified to the hub.

Each event's `NOTIFY` (sent when its transaction commits) carries its job id,
seq and type, and its data when that is small (a payload is limited to 8 KB);
the relay reads back from the table, in batches, only the events whose data did
not fit, and publishes them all here in the order they were notified. If the
listening connection drops, it connects again, listens again, and gives every
job someone listens to here its last stored event, so a stream that missed some
reads the gap back from the store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from outlast.exceptions import StoreUnavailable
from outlast.hub import Hub
from outlast.jobs import Event
from outlast.outages import Outage
from outlast.stores._postgres_conn import CONNECT_TIMEOUT_S, Conn, Database, unavailable
from outlast.stores.base import publish

logger = logging.getLogger("outlast.store")

BATCH = 500  # events the relay reads back per query
LISTENER_PING_S = 10.0  # how often the listening connection is checked when no notification comes


class Relay:
    """Listens on `channel` for the events and cancellations of other nodes, and tells this process's hub."""

    def __init__(self, db: Database, hub: Hub, origin: str, channel: str) -> None:
        self.db = db
        self.hub = hub
        self._origin = origin
        self.channel = channel
        self._pending: collections.deque[tuple[str, int, str, str | None]] = collections.deque()
        self._pending_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> bool:
        """Start listening and relaying; False if no LISTEN connection could be made within 10 s."""
        ready = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._listen(ready), name="outlast-postgres-listener"),
            asyncio.create_task(self._relay(), name="outlast-postgres-relay"),
        ]
        try:
            await asyncio.wait_for(ready.wait(), 10)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        """A NOTIFY: an event of another node (read back by the relay), or a cancellation."""
        kind, origin, rest = payload.split(" ", 2)
        if origin == self._origin:
            return  # ours: published when written
        if kind == "c":
            self.hub.cancel_requested(rest)
            return
        job_id, seq, type, *data = rest.split(" ", 3)
        self._pending.append((job_id, int(seq), type, data[0] if data else None))
        self._pending_event.set()

    async def _listen(self, ready: asyncio.Event) -> None:
        """Keep one connection LISTENing; after a reconnect, catch up on what was missed meanwhile."""
        outage = Outage(logger, "the PostgreSQL LISTEN connection (events of other nodes)")
        first = True
        while True:
            conn = None
            lost = asyncio.Event()
            try:
                conn = await self.db.connect()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(self.channel, self._notified)
                if not first:
                    await self._catch_up()
                first = False
                ready.set()
                outage.succeeded()
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), LISTENER_PING_S)
                        break
                    # Quiet for a while: make sure the connection is still there (a dead peer sends no FIN).
                    await conn.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT_S)
                raise StoreUnavailable("the LISTEN connection was closed")
            except asyncio.CancelledError:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
                raise
            except Exception as exc:
                if conn is not None:
                    conn.terminate()
                await asyncio.sleep(outage.failed(exc if isinstance(exc, StoreUnavailable) else unavailable(exc)))

    async def _catch_up(self) -> None:
        """After the LISTEN connection came back: what it may have missed.

        Every job someone listens to here gets its last stored event: a stream
        whose cursor is behind it reads the gap back from the store, a waiter
        reads the job again; an event it already had is ignored. Idle runners
        look for work.
        """
        job_ids = self.hub.listened_jobs()
        if job_ids:

            async def read(conn: Conn) -> list[Event]:
                rows = await conn.fetch(
                    "SELECT DISTINCT ON (job_id) job_id, seq, type, data FROM outlast_events"
                    " WHERE job_id = ANY($1::text[]) ORDER BY job_id, seq DESC",
                    job_ids,
                )
                return [Event(row["job_id"], row["seq"], row["type"], json.loads(row["data"])) for row in rows]

            publish(self.hub, await self.db.read(read))
        self.hub.work_available()

    async def _relay(self) -> None:
        """Read back the events other nodes notified, in batches, and publish them here in order.

        Status events are relayed always (runners, queue positions and
        dashboards follow them); other events only for jobs someone here listens to.
        """
        outage = Outage(logger, "relaying the events of other nodes")
        while True:
            await self._pending_event.wait()
            self._pending_event.clear()
            while self._pending:
                batch: list[tuple[str, int, str, str | None]] = []
                while self._pending and len(batch) < BATCH:
                    batch.append(self._pending.popleft())
                wanted = [(j, s, t, d) for j, s, t, d in batch if t == "status" or self.hub.is_listened(j)]
                if not wanted:
                    continue
                try:
                    events = await self._relayed(wanted)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._pending.extendleft(reversed(batch))  # not lost: tried again
                    await asyncio.sleep(outage.failed(exc))
                    continue
                outage.succeeded()
                publish(self.hub, events)

    async def _relayed(self, wanted: Sequence[tuple[str, int, str, str | None]]) -> list[Event]:
        """The events notified, in their order: from their notification, or read back when it had no room."""
        missing = [(job_id, seq) for job_id, seq, _, data in wanted if data is None]
        read = {(e.job_id, e.seq): e for e in await self._read_events(missing)} if missing else {}
        events = []
        for job_id, seq, type, data in wanted:
            event = Event(job_id, seq, type, json.loads(data)) if data is not None else read.get((job_id, seq))
            if event is not None:  # gone meanwhile (purged): nothing to relay
                events.append(event)
        return events

    async def _read_events(self, wanted: Sequence[tuple[str, int]]) -> list[Event]:
        async def read(conn: Conn) -> list[Event]:
            rows = await conn.fetch(
                "SELECT e.job_id, e.seq, e.type, e.data"
                " FROM unnest($1::text[], $2::integer[]) WITH ORDINALITY AS w(job_id, seq, n)"
                " JOIN outlast_events e ON e.job_id = w.job_id AND e.seq = w.seq ORDER BY w.n",
                [j for j, _ in wanted],
                [s for _, s in wanted],
            )
            return [Event(row["job_id"], row["seq"], row["type"], json.loads(row["data"])) for row in rows]

        return await self.db.read(read)
