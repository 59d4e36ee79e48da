"""Reading what a client asks for: `Prefer` (RFC 7240), `?wait=`, and the request body."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from starlette.requests import Request

from outlast.jobs import is_json
from outlast.parsing import FINITE, decimal_number, non_finite, whole_number
from outlast.web.problems import HTTPProblem

MAX_IDEMPOTENCY_KEY = 255


@dataclasses.dataclass(frozen=True, slots=True)
class Preferences:
    respond_async: bool = False
    wait_s: float | None = None


def parse_prefer(header_values: list[str]) -> Preferences:
    """`Prefer: respond-async, wait=10`. Preferences not understood are ignored (RFC 7240)."""
    respond_async = False
    wait_s = None
    for value in header_values:
        for token in value.split(","):
            preference = token.split(";", 1)[0]  # parameters after ";" are not used
            key, _, raw = preference.strip().partition("=")
            key = key.strip().lower()
            if key == "respond-async":
                respond_async = True
            elif key == "wait":
                seconds = _non_negative(raw.strip().strip('"'))
                if seconds is not None:
                    wait_s = seconds
    return Preferences(respond_async, wait_s)


def _non_negative(raw: str) -> float | None:
    """Seconds as a plain decimal number (`10`, `0.5`): no sign, exponent, `_`, `inf` or `nan`."""
    return decimal_number(raw)


def preferences(request: Request) -> Preferences:
    """The client's preferences; `?wait=N` (a 400 if malformed) beats `Prefer: wait`."""
    prefs = parse_prefer(request.headers.getlist("prefer"))
    raw = request.query_params.get("wait")
    if raw is None:
        return prefs
    seconds = _non_negative(raw)
    if seconds is None:
        raise HTTPProblem(400, "wait must be a number of seconds, 0 or more", type="bad_request")
    return dataclasses.replace(prefs, wait_s=seconds)


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = whole_number(raw)
    if value is None or not low <= value <= high:
        raise HTTPProblem(400, f"{name} must be an integer from {low} to {high}", type="bad_request")
    return value


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise HTTPProblem(400, "Idempotency-Key must be 1 to 255 printable characters", type="bad_request")
    return key


async def json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object; an empty body is `{}`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        length = whole_number(declared.strip(), max_digits=40)
        if length is None:
            raise HTTPProblem(400, "Content-Length is not a number", type="bad_request")
        if length > max_bytes:
            raise _too_large(max_bytes)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise _unsupported()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
    if not body.strip():
        return {}
    if not media_type:
        raise _unsupported()
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise HTTPProblem(400, "the body is not valid JSON", type="malformed_json") from None
    if not isinstance(value, dict):
        raise HTTPProblem(400, "the body must be a JSON object", type="malformed_json")
    if non_finite(value) is not None:  # 1e400 parses as inf
        raise HTTPProblem(400, f"the body is not valid input: {FINITE}", type="malformed_json")
    if not is_json(value):  # e.g. a lone surrogate, escaped as \\ud800
        raise HTTPProblem(400, "the body holds text that is not valid Unicode", type="malformed_json")
    return value


def _unsupported() -> HTTPProblem:
    message = "send the input as JSON, with Content-Type: application/json"
    return HTTPProblem(415, message, type="unsupported_media_type")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _too_large(max_bytes: int) -> HTTPProblem:
    return HTTPProblem(413, f"the body is larger than {max_bytes} bytes", type="body_too_large")
