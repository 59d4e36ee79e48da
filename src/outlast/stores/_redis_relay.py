"""Events between the processes of a Redis store: PUBLISH with each write, a subscription for the others'.

A change PUBLISHes its events inside the transaction (or script) that writes
them, so that subscribers hear them once they are stored, at no round trip of
its own; then this process's own listeners hear them from the hub. Every
process subscribes to the events and cancellations of the others and passes
them to its hub. A process that missed some (a reconnect) reads the gap back
from the job's event list: every reader keeps a cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Sequence
from typing import Any

from outlast.exceptions import StoreUnavailable
from outlast.hub import Hub
from outlast.jobs import Event
from outlast.outages import Outage
from outlast.stores._redis_layout import Keys, dumps
from outlast.stores.base import publish

logger = logging.getLogger("outlast.store")


class Relay:
    """This process's events to the other processes, and theirs (and their cancellations) to its hub."""

    def __init__(self, redis: Any, keys: Keys, hub: Hub) -> None:
        self._redis = redis
        self.keys = keys
        self.hub = hub
        self._origin = secrets.token_hex(8)
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ready = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(ready), name="outlast-redis-listener")
        await asyncio.wait_for(ready.wait(), 10)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    def message(self, event: Event) -> str:
        """An event as published to the other processes."""
        return dumps({"o": self._origin, "j": event.job_id, "s": event.seq, "t": event.type, "d": event.data})

    def publish_in(self, pipe: Any, events: Sequence[Event]) -> None:
        """PUBLISH the events inside the transaction that writes them (a pipeline, or `Commands`)."""
        for event in events:
            pipe.publish(self.keys.events_channel, self.message(event))

    def published(self, events: Sequence[Event]) -> None:
        """After the transaction: the same events to this process's own listeners."""
        publish(self.hub, events)

    async def _listen(self, ready: asyncio.Event) -> None:
        outage = Outage(logger, "the Redis subscription (events of other nodes)")
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.keys.events_channel, self.keys.cancel_channel)
                    ready.set()
                    outage.succeeded()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._relay(message["channel"], message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await asyncio.sleep(outage.failed(exc))
                continue
            await asyncio.sleep(outage.failed(StoreUnavailable("the subscription ended")))

    def _relay(self, channel: str, data: str) -> None:
        if channel == self.keys.cancel_channel:
            self.hub.cancel_requested(data)
            return
        message = json.loads(data)
        if message["o"] != self._origin:
            self.hub.publish(Event(message["j"], message["s"], message["t"], message["d"]))
