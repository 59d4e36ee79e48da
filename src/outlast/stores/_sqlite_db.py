"""The SQLite store's file: where it is, and a connection with its own thread that commits writes in groups."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from outlast.exceptions import ConfigError

T = TypeVar("T")

BUSY_TIMEOUT_MS = 15_000
# At most this many writes share one transaction, so that no caller waits on a huge one.
MAX_GROUP = 256


def path_from_url(url: str) -> str:
    """`sqlite:///rel.db` -> `rel.db`, `sqlite:////abs/x.db` -> `/abs/x.db`."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ConfigError(f"a SQLite store URL looks like sqlite:///outlast.db, not {url!r}")
    path = url[len(prefix) :]
    if path == ":memory:":
        raise ConfigError("an in-memory SQLite database can't be shared by outlast's connections: use memory://")
    return path


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclasses.dataclass(slots=True)
class _Write:
    """One caller's transaction body, and where its answer goes."""

    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    value: Any = None
    error: BaseException | None = None


class Connection:
    """One sqlite3 connection, used only from its own thread.

    Writes are committed in groups: the thread takes every write waiting at
    once and runs them in one `BEGIN IMMEDIATE ... COMMIT`, each inside its own
    savepoint, so one COMMIT (the costly part) serves many callers. A write
    that raises is rolled back alone; its callers learn of it, and the others
    are answered only once COMMIT has returned.
    """

    def __init__(self, path: str, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"outlast-sqlite-{name}")
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._pending: list[_Write] = []
        self._draining = False

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return fn(self._connection())

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` inside a `BEGIN IMMEDIATE` transaction (perhaps shared with other writes).

        `fn` sees the writes committed before it and none after; its value is
        returned once the transaction is committed. It must not commit, roll
        back or change the connection.
        """
        loop = asyncio.get_running_loop()
        write = _Write(fn, loop.create_future())
        with self._lock:
            self._pending.append(write)
            start, self._draining = not self._draining, True
        if start:
            try:
                self._executor.submit(self._drain)
            except RuntimeError:  # closed
                with self._lock:
                    self._pending.remove(write)
                    self._draining = False
                raise
        value: T = await write.future
        return value

    def _drain(self) -> None:
        """On the thread: commit waiting writes a group at a time until none is left."""
        while True:
            with self._lock:
                batch, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
                if not batch:
                    self._draining = False
                    return
            batch = [write for write in batch if not write.future.cancelled()]
            if batch:
                try:
                    self._commit(self._connection(), batch)
                except BaseException as exc:  # BEGIN or COMMIT failed: nothing of the group is kept
                    for write in batch:
                        write.error = exc
                self._answer(batch)

    @staticmethod
    def _commit(conn: sqlite3.Connection, batch: list[_Write]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if len(batch) == 1:  # alone: no savepoint needed, the transaction is the write's
                batch[0].value = batch[0].fn(conn)
            else:
                for write in batch:
                    _run_in_savepoint(conn, write)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _answer(batch: list[_Write]) -> None:
        """Resolve the callers' futures, with one hop to their event loop per group."""
        loops: dict[asyncio.AbstractEventLoop, list[_Write]] = {}
        for write in batch:
            loops.setdefault(write.future.get_loop(), []).append(write)
        for loop, writes in loops.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: no one is waiting any more
                loop.call_soon_threadsafe(_resolve, writes)

    async def close(self) -> None:
        def close(conn: sqlite3.Connection) -> None:
            conn.close()

        if self._conn is not None:
            await self.run(close)
            self._conn = None
        self._executor.shutdown(wait=True)


def _run_in_savepoint(conn: sqlite3.Connection, write: _Write) -> None:
    conn.execute("SAVEPOINT write")
    try:
        write.value = write.fn(conn)
    except Exception as exc:
        if not conn.in_transaction:
            raise  # SQLite rolled the whole transaction back (disk full, I/O error): the group fails
        conn.execute("ROLLBACK TO write")
        write.error = exc
    conn.execute("RELEASE write")


def _resolve(writes: list[_Write]) -> None:
    for write in writes:
        if write.future.done():
            continue  # its caller was cancelled meanwhile
        if write.error is not None:
            write.future.set_exception(write.error)
        else:
            write.future.set_result(write.value)
