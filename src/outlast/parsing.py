"""Numbers read from text a client sent: ASCII digits only, finite values only.

`str.isdigit()` and `int()` take any Unicode digit (`"²".isdigit()` is True,
`int("٣")` is 3) and `float()` takes `"1_0"`, `"inf"` and `"nan"`: none of
them is a number an HTTP client means. Every number the web edge reads from a
header, a query string or a signed URL goes through here.
"""

from __future__ import annotations

import math
import re
from typing import Any

_DIGITS = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")

FINITE = "numbers must be finite (no NaN, no Infinity, nothing as large as 1e400)"


def whole_number(text: str | None, *, max_digits: int = 18) -> int | None:
    """`text` as a whole number, 0 or more, if it is 1 to `max_digits` ASCII digits; else None."""
    if text is None or len(text) > max_digits or not _DIGITS.fullmatch(text):
        return None
    return int(text)


def decimal_number(text: str | None, *, max_chars: int = 32) -> float | None:
    """`text` as a plain decimal number, 0 or more (`5`, `0.25`, `.5`, `5.`); else None.

    No sign, exponent, underscores, spaces, `inf` or `nan`.
    """
    if text is None or len(text) > max_chars or not _DECIMAL.fullmatch(text):
        return None
    return float(text)


def non_finite(value: Any) -> list[str | int] | None:
    """Where in `value` (dicts, lists, tuples) a float is NaN or infinite, as a path; None if nowhere."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return path
        elif isinstance(item, dict):
            stack.extend((v, [*path, str(k)]) for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, [*path, i]) for i, v in enumerate(item))
    return None
