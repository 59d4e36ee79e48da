"""Connections to PostgreSQL for the store: the pool, retries through lost connections, the schema's upgrade.

A `Database` is the store's way to its server: it runs a function on a pooled
connection, in a transaction or not, and retries it on a fresh connection when
the one it had went away (a database restart, a killed backend), then gives up
with `StoreUnavailable`. It also brings the schema up to date
(`outlast.stores._postgres_schema` says what the schema is).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from outlast.exceptions import ConfigError, StoreUnavailable
from outlast.stores._postgres_schema import MIGRATIONS, READ_VERSION, VERSION, VERSION_TABLE, check_version, lock_key
from outlast.stores.base import unavailable_when

try:
    import asyncpg
except ImportError:  # pragma: no cover - the extra is not installed
    asyncpg = None

logger = logging.getLogger("outlast.store")

T = TypeVar("T")
Conn = Any  # asyncpg.Connection (asyncpg ships no type hints)

POOL_SIZE = 10
CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 60.0
RETRY_DELAYS_S = (0.05, 0.2, 0.5, 1.0)  # between tries of a transaction that lost its connection
PATIENT_S = 30.0  # how long a worker's progress and outcome are retried through an outage
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def connection_errors() -> tuple[type[BaseException], ...]:
    """What means "the connection or the server went away": a retry on a fresh connection may work."""
    if asyncpg is None:  # pragma: no cover
        return (OSError,)
    return (
        OSError,  # refused, reset (ConnectionError), timed out
        asyncio.TimeoutError,
        asyncpg.exceptions.ConnectionDoesNotExistError,
        asyncpg.exceptions.InterfaceError,  # e.g. the connection was closed under a query
        asyncpg.exceptions.InternalClientError,  # a backend killed while its connection was idle in the pool
        asyncpg.exceptions.PostgresConnectionError,  # class 08
        asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, terminated backend, starting up
        asyncpg.exceptions.SerializationError,  # 40001
        asyncpg.exceptions.DeadlockDetectedError,  # 40P01
    )


def _away(exc: BaseException) -> bool:
    """What the store raises itself without a retry: the connection or the server went away."""
    return asyncpg is not None and isinstance(
        exc,
        (
            asyncpg.exceptions.ConnectionDoesNotExistError,  # the connection was lost (a restart, a killed backend)
            asyncpg.exceptions.PostgresConnectionError,  # class 08: cannot connect, connection failure
            asyncpg.exceptions.OperatorInterventionError,  # class 57: shutting down, starting up, backend terminated
        ),
    )


unavailable_when(_away)


def unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"the store cannot be reached: {type(exc).__name__}: {exc}")


class Database:
    """One PostgreSQL database (and schema) as the store reaches it."""

    def __init__(self, dsn: str, *, schema: str | None = None, pool_size: int = POOL_SIZE) -> None:
        if asyncpg is None:
            raise ConfigError("the PostgreSQL store needs asyncpg: pip install 'outlast[postgres]'")
        if schema is not None and (not _SCHEMA_NAME.fullmatch(schema) or schema.lower().startswith("pg_")):
            raise ConfigError(
                f"a PostgreSQL schema is letters, digits and '_' (no digit first, no 'pg_' prefix), not {schema!r}"
            )
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self.errors = connection_errors()
        self._fatal: tuple[type[BaseException], ...] = (asyncio.CancelledError, *self.errors)
        self._pool: Any = None

    @property
    def where(self) -> str:
        """The database and schema, for messages (never the password)."""
        parts = urlsplit(self.dsn)
        host = parts.hostname or "localhost"
        return f"PostgreSQL {host}:{parts.port or 5432}{parts.path} schema {self.schema or '(current)'}"

    def _server_settings(self) -> dict[str, str]:
        return {"search_path": f'"{self.schema}"'} if self.schema else {}

    async def connect(self) -> Conn:
        """A connection of its own, outside the pool (the LISTEN connection, a migration)."""
        return await asyncpg.connect(
            self.dsn, timeout=CONNECT_TIMEOUT_S, server_settings=self._server_settings() or None
        )

    async def open(self) -> str:
        """Open the pool; the schema the store's tables are in."""
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=0,  # no floor: asyncpg logs a traceback each time it fails to restore one in an outage
                max_size=self.pool_size,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S,
                server_settings=self._server_settings() or None,
            )
            return str(self.schema or await self._pool.fetchval("SELECT current_schema()"))
        except (*self.errors, asyncpg.PostgresError) as exc:
            await self.close()
            raise ConfigError(f"cannot reach {self.where}: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            errors: tuple[type[BaseException], ...] = (TimeoutError, *self.errors)
            try:
                await asyncio.wait_for(self._pool.close(), 5)
            except errors:
                self._pool.terminate()
            self._pool = None

    async def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema (without opening the store); the versions before and after."""
        try:
            conn = await self.connect()
        except (*self.errors, asyncpg.PostgresError) as exc:
            raise ConfigError(f"cannot reach {self.where}: {exc}") from exc
        try:
            return await self._migrate(conn)
        finally:
            await conn.close()

    async def _migrate(self, conn: Conn) -> tuple[int, int]:
        """Bring the schema up to `VERSION`, in one transaction, under an advisory lock.

        A schema already up to date costs one read and no lock. Otherwise the
        first node to take the lock migrates; the others wait for it, then read
        the version again and find nothing to do.
        """
        if self.schema is not None:
            exists = await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", self.schema)
        else:
            exists = await conn.fetchval("SELECT current_schema()") is not None
        if exists:
            has_table = await conn.fetchval("SELECT to_regclass('outlast_schema_version')") is not None
            if has_table:
                found = check_version(await conn.fetchval(READ_VERSION), self.where)
                if found == VERSION:
                    return found, found
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(self.schema or ""))
            if self.schema is not None:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await conn.execute(VERSION_TABLE)
            before = check_version(await conn.fetchval(READ_VERSION), self.where)
            for step in range(before, VERSION):
                for statement in MIGRATIONS[step]:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO outlast_schema_version (version) VALUES ($1)", step + 1)
        if before < VERSION:
            logger.info("%s: outlast schema upgraded from version %d to %d", self.where, before, VERSION)
        return before, VERSION

    async def _retrying(self, fn: Callable[[Conn], Awaitable[T]], *, transaction: bool, patient: bool = False) -> T:
        """Run `fn` on a pooled connection (in a transaction if asked); a lost connection is retried.

        A few times within two seconds, or (`patient`) for up to `PATIENT_S`:
        a worker's outcome is worth waiting for through a database restart, and
        fencing makes a late write safe (refused if the job was taken over).
        `fn` must be safe to run again: a transaction whose COMMIT got no answer
        may have committed, and each write here checks what it finds first.
        """
        delays: Iterable[float | None] = (*RETRY_DELAYS_S, None)
        if patient:
            delays = itertools.chain(RETRY_DELAYS_S, itertools.repeat(1.0, int(PATIENT_S)), [None])
        for delay in delays:
            try:
                return await self._once(fn, transaction=transaction)
            except self.errors as exc:
                if delay is None:
                    raise unavailable(exc) from exc
                await asyncio.sleep(delay)
            except AttributeError:
                if self._pool is None:
                    raise StoreUnavailable("the store is closed") from None
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, fn: Callable[[Conn], Awaitable[T]], *, transaction: bool) -> T:
        """`fn` on a pooled connection, once.

        A connection that failed, or whose query was cancelled (the hold ran
        out: the server may hang), is closed at once, never rolled back nor
        reset politely: either would wait on that server again.
        """
        conn = await self._pool.acquire()
        try:
            if not transaction:
                return await fn(conn)
            tx = conn.transaction()
            await tx.start()
            try:
                result = await fn(conn)
            except self._fatal:
                raise
            except BaseException:
                await tx.rollback()  # an error of the query (a conflict, a constraint): the connection is fine
                raise
            await tx.commit()
            return result
        except self._fatal:
            conn.terminate()  # never back into the pool: the next try gets a new connection
            raise
        finally:
            await self._pool.release(conn)

    def tx(self, fn: Callable[[Conn], Awaitable[T]], *, patient: bool = False) -> Awaitable[T]:
        return self._retrying(fn, transaction=True, patient=patient)

    def read(self, fn: Callable[[Conn], Awaitable[T]]) -> Awaitable[T]:
        return self._retrying(fn, transaction=False)
