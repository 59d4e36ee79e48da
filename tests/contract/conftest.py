"""Every store passes the same contract: these fixtures hand each test one of each kind."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from outlast.stores import JobStore, MemoryStore, SQLiteStore

STORES = ["memory", "sqlite"]


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
async def store(store_kind: str, tmp_path: Path) -> AsyncIterator[JobStore]:
    store: JobStore = MemoryStore() if store_kind == "memory" else SQLiteStore(str(tmp_path / "jobs.db"))
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def sqlite_pair(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, SQLiteStore]]:
    """Two stores on one SQLite file, as two processes on one host would have."""
    path = str(tmp_path / "shared.db")
    first, second = SQLiteStore(path, poll_interval_s=0.01), SQLiteStore(path, poll_interval_s=0.01)
    await first.open()
    await second.open()
    yield first, second
    await first.close()
    await second.close()


Factory = Callable[..., Awaitable[JobStore]]
