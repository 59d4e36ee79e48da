"""`Retry-After`, read one way by the client and the server (webhook receivers' answers).

RFC 9110 allows two forms: delay-seconds (ASCII digits) and an HTTP-date. A
header is read as a number of seconds to wait, or as absent (`None`) when it
cannot be trusted, so that the reader falls back on its own backoff instead of
failing: junk, a negative or fractional number, digits of other scripts ("²",
"١٢"), a date that does not exist, a delay of more than a year. A date in the
past means "now" (0 s). Whatever remains is capped at a day.

Only the standard library: the client imports it without the server.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import time

MAX_DELAY_S = 86_400.0  # a day: longer hints are waited for a day, then tried again
ABSURD_S = 365 * 86_400.0  # beyond a year, a hint is a mistake, not a plan
_MAX_DIGITS = len(str(int(ABSURD_S)))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """The seconds a `Retry-After` value asks to wait, at most `MAX_DELAY_S`; `None` if it can't be trusted.

    `now` (a POSIX timestamp, `time.time()` by default) is what an HTTP-date is
    counted from.
    """
    if value is None:
        return None
    text = value.strip(" \t")
    if text.isascii() and text.isdigit():
        digits = text.lstrip("0") or "0"
        delay = float(digits) if len(digits) <= _MAX_DIGITS else math.inf
    else:
        delay = _seconds_until(text, time.time() if now is None else now)
    if not 0 <= delay <= ABSURD_S:  # also false for NaN
        return None
    return min(delay, MAX_DELAY_S)


def _seconds_until(text: str, now: float) -> float:
    """Seconds from `now` to the HTTP-date `text` (0 if it has passed); NaN if it is not a date."""
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return math.nan
    if when.tzinfo is None:  # "-0000", or no zone at all: HTTP-dates are in GMT
        when = when.replace(tzinfo=datetime.UTC)
    delay = when.timestamp() - now
    return 0.0 if delay < 0 else delay
