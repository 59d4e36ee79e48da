"""The one way in: every way of submitting a job calls `Admission.admit`.

HTTP (`POST /jobs/{name}`), the WebSocket (`submit` and route-key actions),
long-running routes and Flask views all admit a job through the same steps, in
the same order, so that they answer alike:

1. who asks: the API key's owner (`Unauthorized`, `Forbidden`), else the
   client's address;
2. the submit rate of that caller (`RateLimited`);
3. the job's name: unknown names, and for direct submits the jobs of
   long-running routes, are `UnknownJobName`;
4. the `Idempotency-Key` (`InvalidRequest`);
5. the input (read only now, so a refused request's body is never read), then
   `Outlast.submit`, which validates it and queues the job.

Nothing here knows HTTP: the edges pass strings and mappings in, and turn the
`OutlastError`s out into their own answers (`outlast.web.problems`).
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from outlast.deliveries import DEFAULT_EVENTS
from outlast.exceptions import InvalidRequest, RateLimited, UnknownJobName
from outlast.jobs import Job

if TYPE_CHECKING:
    from outlast.core import Outlast

MAX_IDEMPOTENCY_KEY = 255
MAX_BUCKETS = 100_000

Input = Mapping[str, Any] | Callable[[], Awaitable[Mapping[str, Any]]]


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """Who submits: the owner of the API key (None with auth off) and the client's address."""

    owner: str | None
    address: str

    @property
    def who(self) -> str:
        """Whom submit rates are counted for: the key's owner, else the address."""
        return self.owner or self.address


class Admission:
    """Admits jobs for one `Outlast`: the same checks, in the same order, for every edge."""

    def __init__(self, ot: Outlast) -> None:
        self.ot = ot
        self._rate: SubmitRate | None = None

    def identify(self, authorization: str | None, address: str | None) -> Caller:
        """The caller of a request with this `Authorization` header, from this address."""
        return Caller(self.ot.keys.owner(authorization), address or "unknown")

    async def admit(
        self,
        caller: Caller,
        name: str,
        input: Input,
        *,
        route: bool = False,
        idempotency_key: str | None = None,
        webhook: str | None = None,
        webhook_events: tuple[str, ...] = DEFAULT_EVENTS,
        strict_json: bool = False,
        wait_s: float = 0.0,
    ) -> tuple[Job, bool]:
        """Check, then submit: the job and whether it is new (see `Outlast.submit`).

        `input` is the input, or a coroutine function that reads it once the
        checks have passed. `route` says that a long-running route submits its
        own job, which no one may submit by name.
        """
        self.check_rate(caller.who)
        if not route and not self.ot.definition(name).public:
            raise UnknownJobName(f"no job is named {name!r}")
        key = check_idempotency_key(idempotency_key)
        raw = input if isinstance(input, Mapping) else await input()
        return await self.ot.submit(
            name,
            raw,
            idempotency_key=key,
            owner=caller.owner,
            webhook=webhook,
            webhook_events=webhook_events,
            strict_json=strict_json,
            wait_s=wait_s,
        )

    def check_rate(self, who: str) -> None:
        """`RateLimited` when `who` submits faster than the `submit_rate` setting allows."""
        rate = self.ot.settings.submit_rate
        if rate is None:
            return
        if self._rate is None or self._rate.rate != rate:
            self._rate = SubmitRate(rate)
        if (wait_s := self._rate.take(who)) is not None:
            raise RateLimited(f"at most {rate:g} submits a second; slow down", retry_after_s=wait_s)


def check_idempotency_key(key: str | None) -> str | None:
    """The key as given; `InvalidRequest` unless it is 1 to 255 printable characters."""
    if key is not None and not (1 <= len(key) <= MAX_IDEMPOTENCY_KEY and key.isprintable()):
        raise InvalidRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters")
    return key


class SubmitRate:
    """A token bucket per caller: `rate` submits a second, bursts of up to twice that."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, 2 * rate)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, who: str) -> float | None:
        """None if `who` may submit now, else the seconds until it may."""
        now = time.monotonic()
        tokens, then = self._buckets.pop(who, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1:
            self._buckets[who] = (tokens - 1, now)
            wait = None
        else:
            self._buckets[who] = (tokens, now)
            wait = (1 - tokens) / self.rate
        while len(self._buckets) > MAX_BUCKETS:
            self._buckets.popitem(last=False)  # the longest idle callers
        return wait
