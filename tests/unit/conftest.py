"""What the unit tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from outlast import Outlast


@pytest.fixture
async def ot() -> AsyncIterator[Outlast]:
    """A started app on the memory store, with one job (`work`, which does nothing) and no workers.

    A module that needs another app defines its own `ot`.
    """
    ot = Outlast(store="memory://", workers=0)

    @ot.job()
    async def work() -> None: ...

    async with ot.lifespan():
        yield ot
