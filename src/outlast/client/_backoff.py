"""How the client retries: one policy for all its retry loops, and the budget they spend.

A try that fails (no connection, a dropped stream, a 502, 503 or 504) is
followed by a pause: the server's `Retry-After` when it sent one (up to 60 s),
else exponential from 0.25 s to 5 s with jitter. A loop gives up when its next
pause would end past its budget: the call's deadline when it has one
(`JobTimeout`), else the client's patience (`ServerUnavailable`), counted from
the first failure since the server last answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time

from outlast.client._errors import JobTimeout, ServerUnavailable

DEFAULT_PATIENCE_S = 120.0
_MAX_DOUBLINGS = 32  # 2**32 times the first pause is past any cap; more would overflow a float


class Deadline:
    """When a call's timeout runs out (never, without one)."""

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self.at = None if timeout_s is None else time.monotonic() + timeout_s

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def expired(self) -> bool:
        remaining = self.remaining()
        return remaining is not None and remaining <= 0


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """The pauses between tries, and how long to go on without a deadline (`None`: for ever)."""

    patience_s: float | None = DEFAULT_PATIENCE_S
    first_s: float = 0.25
    max_s: float = 5.0
    max_hint_s: float = 60.0

    def delay_s(self, failures: int, hint_s: float | None = None) -> float:
        """The pause after `failures` earlier failures in a row: the server's hint, or exponential with jitter."""
        if hint_s is not None:
            return min(hint_s, self.max_hint_s)
        exponential = self.first_s * 2.0 ** min(failures, _MAX_DOUBLINGS)
        return min(self.max_s, exponential) * random.uniform(0.5, 1.0)


class Retry:
    """One retry loop's failures, paced by a `Backoff`, within a deadline."""

    def __init__(self, backoff: Backoff, deadline: Deadline) -> None:
        self.backoff = backoff
        self.deadline = deadline
        self.failures = 0
        self.failing_since: float | None = None

    def succeeded(self) -> None:
        """A try got somewhere: the next failure starts again from the shortest pause."""
        self.failures = 0
        self.failing_since = None

    def answered(self) -> None:
        """The server answered, though the loop is not done: the patience starts over, the pace goes on."""
        self.failing_since = None

    async def pause(self, what: str, hint_s: float | None = None) -> None:
        """Sleep before the next try; raise instead if it would end past the budget.

        `what` says what failed, for `ServerUnavailable`; `hint_s` is the
        server's `Retry-After`, if any.
        """
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        delay = self.backoff.delay_s(self.failures, hint_s)
        self.failures += 1
        remaining = self.deadline.remaining()
        patience = self.backoff.patience_s
        if remaining is not None:
            if remaining <= delay:
                raise JobTimeout(None, None, self.deadline.timeout_s)
        elif patience is not None and now + delay - self.failing_since > patience:
            raise ServerUnavailable(f"{what} (gave up after {patience:g} s)", retry_after_s=hint_s)
        await asyncio.sleep(delay)
