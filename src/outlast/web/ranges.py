"""`Range` requests on artifacts (RFC 9110, section 14): checked before Starlette serves them.

Starlette's `FileResponse` answers a malformed `Range` with a plain-text `400`
and a `Range` of another unit likewise. Here a `bytes` range that is malformed
or not satisfiable is a `416` problem with `Content-Range: bytes */<size>`, and
a `Range` of a unit this server does not know is ignored, as RFC 9110 says: the
whole file, `200`.
"""

from __future__ import annotations

import enum
import os
import re

from starlette.responses import FileResponse

from outlast.parsing import whole_number
from outlast.web.problems import HTTPProblem

_INT_RANGE = re.compile(r"([0-9]+)-([0-9]*)")
_SUFFIX_RANGE = re.compile(r"-([0-9]+)")
MAX_DIGITS = 30


class Ranges(enum.Enum):
    NONE = "none"  # no Range: the whole file
    IGNORED = "ignored"  # a Range to ignore: the whole file
    SATISFIABLE = "satisfiable"  # for FileResponse to serve as 206


def check_range(header: str | None, if_range: str | None, size: int) -> Ranges:
    """What to do with this `Range` header for a file of `size` bytes; a 416 `HTTPProblem` if it can't be served."""
    if header is None:
        return Ranges.NONE
    unit, equals, spec = header.partition("=")
    unit = unit.strip().lower()
    if unit != "bytes" and (equals or not unit.startswith("bytes")):
        return Ranges.IGNORED  # a unit we do not know (RFC 9110, 14.2)
    if equals and _satisfiable(spec, size):
        return Ranges.SATISFIABLE
    if if_range is not None:
        return Ranges.IGNORED  # the If-Range may not hold; a server may always ignore Range
    raise HTTPProblem(
        416,
        f"the Range must be bytes=first-last or bytes=-length, within the file's {size} bytes",
        type="range_not_satisfiable",
        headers={"Content-Range": f"bytes */{size}"},
    )


def _satisfiable(spec: str, size: int) -> bool:
    """Whether every range of `bytes=<spec>` is well-formed and starts within the file."""
    count = 0
    for part in spec.split(","):
        part = part.strip(" \t")
        if not part:
            continue  # an empty list element is allowed (RFC 9110, 5.6.1)
        count += 1
        if (match := _INT_RANGE.fullmatch(part)) is not None:
            first = whole_number(match[1], max_digits=MAX_DIGITS)
            last = whole_number(match[2], max_digits=MAX_DIGITS) if match[2] else None
            if first is None or first >= size or (match[2] and (last is None or last < first)):
                return False
        elif (match := _SUFFIX_RANGE.fullmatch(part)) is not None:
            length = whole_number(match[1], max_digits=MAX_DIGITS)
            if length is None or length == 0 or size == 0:
                return False
        else:
            return False
    return count > 0


class WholeFile(FileResponse):
    """A `FileResponse` that ignores the request's `Range`."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        return []


def file_response(
    path: str | os.PathLike[str], media_type: str, filename: str, range_header: str | None, if_range: str | None
) -> FileResponse:
    """The file, whole or the ranges asked for; a 416 problem for a bad `bytes` range, a 404 if it just went."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise HTTPProblem(404, "no such file", type="not_found") from None
    serve = WholeFile if check_range(range_header, if_range, stat.st_size) is Ranges.IGNORED else FileResponse
    return serve(path, media_type=media_type, filename=filename, stat_result=stat)
