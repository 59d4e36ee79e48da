"""The HTTP server's own defences: request heads that are too big or never end.

uvicorn's httptools protocol has no limit on the size of a request head and no
deadline for one. httptools buffers a header that arrives in pieces by
concatenation, so parsing time grows with the square of its size, and a head
that never completes (slowloris) holds its connection, and a file descriptor,
forever.

`guarded_protocol(...)` makes a subclass of that protocol which

- counts the bytes of a request head as they arrive and refuses a head over
  `max_head` bytes with `431 Request Header Fields Too Large`, before the parser
  has seen more than that;
- counts the bytes of the request target and refuses one over `max_url` bytes
  with `414 URI Too Long`;
- closes a connection whose request head is not complete `head_timeout`
  seconds after its first byte (or after it connected), answering `408 Request
  Timeout` if a head had begun (and no response is under way).

Refusals are problem details (RFC 9457) written on the transport with
`Connection: close`; the connection then reads and drops what the client still
sends for a moment (so that it sees the answer rather than a reset) and closes.
`outlast serve` always uses it (`uvicorn.Config(http=...)`).
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
from asyncio import TimerHandle
from collections.abc import Sequence
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from outlast.web.problems import MEDIA_TYPE, TITLES, Problem, _default_type

DEFAULT_MAX_HEAD = 64 * 1024
DEFAULT_MAX_URL = 8 * 1024
DEFAULT_HEAD_TIMEOUT_S = 10.0

LINGER_S = 1.0  # after a refusal, how long the client's remaining bytes are read and dropped
LINGER_BYTES = 1 << 20  # and how many at most


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that is refused."""


def problem_message(status: int, detail: str, default_headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """A whole HTTP/1.1 response: a problem details body, then the connection closes."""
    title = TITLES.get(status, http.HTTPStatus(status).phrase)
    body = json.dumps(Problem(status, _default_type(status), title, detail).body()).encode()
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode()]
    lines += [name + b": " + value for name, value in default_headers]
    lines += [
        b"content-type: " + MEDIA_TYPE.encode(),
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size limit and a deadline on request heads."""

    max_head: int = DEFAULT_MAX_HEAD
    max_url: int = DEFAULT_MAX_URL
    head_timeout: float = DEFAULT_HEAD_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # bytes of the current request head so far (a lower bound when pipelined)
        self._url_bytes = 0
        self._in_head = False  # a request head has begun and is not complete
        self._in_body = False  # its head is complete, its body is not
        self._begun = 0  # messages begun while one chunk was parsed
        self._refusal: tuple[int, str] | None = None
        self._head_timer: TimerHandle | None = None
        self._linger_timer: TimerHandle | None = None
        self._lingering = False
        self._dropped = 0

    # -- the connection -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that sends no complete head within head_timeout of connecting is closed.
        # (Not uvicorn's keep-alive timeout, 5 s: a loaded server may read a new connection's
        # first bytes later than that, and would close connections whose request is on its way.)
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                self.transport.close()
            return
        while data:
            started_in_head, started_in_body = self._in_head, self._in_body
            if started_in_body:
                chunk, data = data, b""
            else:
                room = self.max_head - self._head_bytes  # > 0: a head that reaches max_head is refused
                chunk, data = data[:room], data[room:]
            self._begun = 0
            if not self._feed(chunk, data):
                return
            # The deadline runs from a head's first byte (blank lines before it included) to its
            # end; a head that arrives in one chunk, the usual case, never needs a timer.
            if self._head_timer is None and (
                self._in_head or (self._begun == 0 and not started_in_head and not started_in_body)
            ):
                self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)
            if self._in_head:
                if started_in_head and self._begun == 0:
                    self._head_bytes += len(chunk)
                elif not started_in_head and not started_in_body and self._begun == 1:
                    # The chunk began with this head (or blank lines before it).
                    self._head_bytes = len(chunk)
                else:
                    # Pipelined: the head began somewhere in the chunk. Count from the next
                    # chunk on; a head may then get one read past the limit, never more.
                    self._head_bytes = 0
                if self._head_bytes >= self.max_head:
                    self._refuse(431, f"the request head is larger than {self.max_head} bytes")
                    return

    def _feed(self, chunk: bytes, rest: bytes) -> bool:
        """Parse a chunk as uvicorn does; False if nothing more may be parsed."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(chunk)
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(*self._refusal)
                return False
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self._cancel_head_timer()
            self.send_400_response(msg)
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
                protocol = self.transport.get_protocol()
                if rest and protocol is not self:
                    protocol.data_received(rest)  # type: ignore[attr-defined]
            else:
                self._unsupported_upgrade_warning()
            return False
        return not self.transport.is_closing()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    # -- refusing -----------------------------------------------------------------------

    def _refuse(self, status: int, detail: str) -> None:
        """Answer with a problem unless a response is under way, then close."""
        self._cancel_head_timer()
        self._unset_keepalive_if_required()
        if self.transport.is_closing():
            return
        self.logger.info("%s%d: %s", _peer(self.client), status, detail)
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is being written: no room for another
            return
        self.transport.write(problem_message(status, detail, self.server_state.default_headers))
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_S, self.transport.close)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if not self._in_head:  # only blank lines: nothing to answer
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()  # else the response goes on, and uvicorn's keep-alive timeout follows it
            return
        self._refuse(408, f"the request head was not complete within {self.head_timeout:g} s")

    # -- parser callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._begun += 1
        self._url_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.max_url:
            self._refusal = (414, f"the request target is longer than {self.max_url} bytes")
            raise _Refused
        super().on_url(url)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._head_bytes = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        super().on_message_complete()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]} - " if client else ""


def guarded_protocol(
    *,
    max_head: int = DEFAULT_MAX_HEAD,
    max_url: int = DEFAULT_MAX_URL,
    head_timeout: float = DEFAULT_HEAD_TIMEOUT_S,
) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to give `uvicorn.Config(http=...)`, with these limits."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"max_head": max_head, "max_url": max_url, "head_timeout": head_timeout},
    )


# -- WebSocket --------------------------------------------------------------------------------

INVALID_UTF8 = "Invalid UTF-8 sequence received from client."


class _InvalidUtf8(logging.Filter):
    """uvicorn closes a WebSocket that sends text which is not UTF-8 with 1007, as RFC 6455 says,
    and logs the client's mistake as an ERROR with a traceback. Any client can do it: one
    warning line, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == INVALID_UTF8:
            record.msg = "a WebSocket client sent text that is not UTF-8: closed with 1007"
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_invalid_utf8() -> None:
    """Install the filter on uvicorn's error log (once)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _InvalidUtf8) for f in logger.filters):
        logger.addFilter(_InvalidUtf8())
