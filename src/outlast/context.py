"""`JobContext`: what a running job sees of outlast (progress, logs, cancellation).

Its methods never block and work the same from async jobs (on the event loop)
and sync jobs (in a thread). Reports are coalesced: the latest progress and the
log lines gathered since the last write go to the store in one write at most
every `FLUSH_INTERVAL_S`, so a job may report progress a million times without
flooding the store or its watchers. The last progress is never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from outlast.artifacts import Source
from outlast.exceptions import Canceled, _deprecated

logger = logging.getLogger("outlast.runner")

FLUSH_INTERVAL_S = 0.1
MAX_PENDING_LOGS = 1000
MAX_MESSAGE_CHARS = 4000
LOG_LEVELS = frozenset({"debug", "info", "warning", "error"})

SaveArtifact = Callable[[str, "Source", str, float | None], Awaitable[str]]
Write = Callable[[list[tuple[str, dict[str, Any]]], dict[str, Any] | None], Awaitable[bool]]


class _Done:
    """What `progress()` and `log()` return: may be awaited, or ignored."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return (yield from ())


DONE = _Done()


class JobContext:
    """Handed to a job whose signature asks for it (`ctx: JobContext`)."""

    def __init__(
        self,
        *,
        job_id: str,
        name: str,
        attempt: int,
        loop: asyncio.AbstractEventLoop,
        save_artifact: SaveArtifact | None = None,
    ) -> None:
        self._save_artifact = save_artifact
        self.job_id = job_id
        self.name = name
        self.attempt = attempt
        self._loop = loop
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._progress: dict[str, Any] | None = None
        self._logs: list[dict[str, Any]] = []
        self._dropped_logs = 0
        self._dirty = asyncio.Event()
        self._wake_pending = False
        self._inflight: asyncio.Future[bool] | None = None

    # -- for the job's code ------------------------------------------------------

    def progress(self, current: float, total: float | None = None, message: str | None = None) -> _Done:
        """Report how far the job has come, e.g. `ctx.progress(3, 10, "aggregating")`."""
        progress: dict[str, Any] = {
            "current": _number("current", current),
            "total": None if total is None else _number("total", total),
            "message": None if message is None else _clip(str(message)),
        }
        with self._lock:
            self._progress = progress
        self._mark_dirty()
        return DONE

    def log(self, message: str, level: str = "info") -> _Done:
        """Add a line to the job's event log (`debug`, `info`, `warning` or `error`)."""
        if level not in LOG_LEVELS:
            raise ValueError(f"level must be one of {sorted(LOG_LEVELS)}, not {level!r}")
        with self._lock:
            if len(self._logs) < MAX_PENDING_LOGS:
                self._logs.append({"level": level, "message": _clip(str(message))})
            else:
                self._dropped_logs += 1
        self._mark_dirty()
        return DONE

    async def artifact(
        self,
        name: str,
        source: Source,
        media_type: str = "application/octet-stream",
        *,
        expires_in: float | None = None,
    ) -> str:
        """Store a file for this job (bytes, a path, or an async iterator of bytes); returns its signed URL.

        The URL is root-relative (`/artifacts/...`), valid for `expires_in`
        seconds (by default as long as the job is kept), and the file goes
        when the job goes.
        """
        if self._save_artifact is None:
            raise RuntimeError("this context can't store artifacts")
        return await self._save_artifact(name, source, media_type, expires_in)

    def artifact_sync(
        self,
        name: str,
        source: Source,
        media_type: str = "application/octet-stream",
        *,
        expires_in: float | None = None,
    ) -> str:
        """`artifact()` for sync jobs (they run in a thread)."""
        future = asyncio.run_coroutine_threadsafe(
            self.artifact(name, source, media_type, expires_in=expires_in), self._loop
        )
        return future.result()

    @property
    def canceled(self) -> bool:
        """True once cancellation of this job was asked for. Sync jobs should check it."""
        return self._cancelled.is_set()

    def raise_if_canceled(self) -> None:
        """Stop here (raising `Canceled`) if cancellation was asked for."""
        if self.canceled:
            raise Canceled()

    @property
    def cancelled(self) -> bool:
        """Deprecated spelling of `canceled`."""
        _deprecated("ctx.cancelled", "ctx.canceled")
        return self.canceled

    def raise_if_cancelled(self) -> None:
        """Deprecated spelling of `raise_if_canceled`."""
        _deprecated("ctx.raise_if_cancelled()", "ctx.raise_if_canceled()")
        self.raise_if_canceled()

    # -- for the runner ------------------------------------------------------------

    def _mark_dirty(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._dirty.set()
            return
        # From a sync job's thread: one wake-up per flush, however many reports.
        with self._lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        self._loop.call_soon_threadsafe(self._dirty.set)

    def _take(self) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any] | None]:
        with self._lock:
            progress, logs, dropped = self._progress, self._logs, self._dropped_logs
            self._progress, self._logs, self._dropped_logs = None, [], 0
            self._wake_pending = False
        events: list[tuple[str, dict[str, Any]]] = [("log", line) for line in logs]
        if dropped:
            events.append(("log", {"level": "warning", "message": f"{dropped} log lines dropped (too many, too fast)"}))
        if progress is not None:
            events.append(("progress", progress))
        return events, progress

    async def _flush(self, write: Write) -> bool:
        """Write what was reported since the last flush; False if the lease is lost."""
        self._dirty.clear()
        events, progress = self._take()
        if not events:
            return True
        # Shielded: a write that has begun completes (and is published) even if
        # the flusher is cancelled because the job just ended.
        self._inflight = asyncio.ensure_future(write(events, progress))
        # Its failure is retrieved even when no one awaits it any more (the flusher was cancelled
        # because the job ended): never "Task exception was never retrieved" while the store is away.
        self._inflight.add_done_callback(_retrieve)
        return await asyncio.shield(self._inflight)

    async def _drain(self, write: Write) -> bool:
        """After the job: let a write under way land, then write what is left."""
        if self._inflight is not None and not self._inflight.done():
            await asyncio.wait([self._inflight])
        return await self._flush(write)

    async def _flush_loop(self, write: Write) -> None:
        """Run beside the job: flush at most every FLUSH_INTERVAL_S while it runs."""
        while True:
            await self._dirty.wait()
            try:
                if not await self._flush(write):
                    return  # the lease is lost: nothing more may be written
            except Exception:
                # Reports are dropped, the job goes on; its outcome is still written.
                logger.exception("job %s: writing its progress failed", self.job_id)
            await asyncio.sleep(FLUSH_INTERVAL_S)

    def _cancel(self) -> None:
        self._cancelled.set()


def _retrieve(future: asyncio.Future[bool]) -> None:
    if not future.cancelled():
        future.exception()


def _clip(message: str) -> str:
    # Lone surrogates could not be stored as UTF-8: replace them.
    message = message.encode("utf-8", "replace").decode("utf-8")
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 1] + "…"


def _number(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"progress {name} must be a finite number, not {value!r}")
    return value
