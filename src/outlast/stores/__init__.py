"""Stores, chosen by URL: `sqlite:///outlast.db` (default), `memory://`, `redis://host:6379/0?namespace=NAME`,
`postgresql://user@host:5432/db?schema=NAME`."""

from __future__ import annotations

from outlast.exceptions import ConfigError
from outlast.stores.base import HeartbeatResult, JobStore, ListQuery, Page
from outlast.stores.memory import MemoryStore
from outlast.stores.sqlite import SQLiteStore

__all__ = ["HeartbeatResult", "JobStore", "ListQuery", "MemoryStore", "Page", "SQLiteStore", "open_store"]


def open_store(url: str) -> JobStore:
    """The store a URL names (not opened yet: call `await store.open()`)."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        return SQLiteStore.from_url(url)
    if scheme in ("redis", "rediss", "unix"):
        from outlast.stores.redis import RedisStore  # redis-py is an optional extra

        return RedisStore.from_url(url)
    if scheme in ("postgresql", "postgres"):
        from outlast.stores.postgres import PostgresStore  # asyncpg is an optional extra

        return PostgresStore.from_url(url)
    raise ConfigError(
        f"no store for {url!r}: use sqlite:///path.db, redis://host:6379/0, postgresql://host/db or memory://"
    )
