"""Background loops through a store outage: one log line when it begins, one when it ends, backoff between.

A loop that calls the store (the runner's claims and heartbeats, the queue
positions, the Redis subscription) keeps one `Outage` and tells it how each
try went. While the store cannot be reached (`store_unavailable` says which
errors mean that), it logs nothing more than that first line, however long
the outage; any other error is logged with its traceback each time, as a bug
should be.
"""

from __future__ import annotations

import logging

from outlast.stores.base import store_unavailable


class Outage:
    def __init__(self, logger: logging.Logger, what: str, *, base_s: float = 0.1, cap_s: float = 5.0) -> None:
        self.logger = logger
        self.what = what
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0  # in a row

    def failed(self, exc: BaseException) -> float:
        """Note a failed try; the seconds to wait before the next."""
        self.failures += 1
        if store_unavailable(exc) is None:
            self.logger.error("%s failed; trying again", self.what, exc_info=exc)
        elif self.failures == 1:
            self.logger.warning("%s: the store is unavailable (%s); trying again until it is back", self.what, exc)
        return min(self.cap_s, self.base_s * 2.0 ** min(self.failures, 32))

    def succeeded(self) -> None:
        """Note a try that worked: the end of the outage, if there was one."""
        if self.failures:
            self.logger.warning("%s: the store answers again", self.what)
            self.failures = 0
