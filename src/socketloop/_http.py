"""The HTTP/1.1 side of ``socketloop.wsgi``: limits, requests as parsed, error answers.

Charter: hold what the WSGI server knows about HTTP itself, apart from WSGI:
the limits and their defaults, the reason phrases of the errors the server
sends, the hop-by-hop header set, the record of one parsed request
(``_Message``), the refusal raised for bad input (``_BadRequest``), and the
once-a-second ``Date`` clock.  The framing is llhttp's (``httptools``); this
module must not parse framing itself, nor know about WSGI environs,
connections or the app, and it imports nothing of the package.
"""

from __future__ import annotations

import logging
import time
from email.utils import formatdate

logger = logging.getLogger("socketloop.wsgi")
#: One line per request in the Common Log Format, at INFO, when ``access_log=True``.
access_logger = logging.getLogger("socketloop.wsgi.access")
#: What apps write to ``wsgi.errors``, line by line, at ERROR.
errors_logger = logging.getLogger("socketloop.wsgi.errors")

#: Seconds a connection may stay idle between two requests (keep-alive).
DEFAULT_KEEPALIVE = 5.0
#: Seconds from a request's first byte (or from the accept, for the first
#: request) to the end of its header block: a client trickling headers
#: (slowloris) is cut here however steadily it sends.
DEFAULT_HEADER_TIMEOUT = 10.0
#: Seconds any single socket call may wait while reading a body or writing a
#: response (the socket timeout; the idle timeout is ``keepalive``).
DEFAULT_TIMEOUT = 30.0
#: Request bodies above this many bytes get 413 (None: no limit).
DEFAULT_MAX_BODY_SIZE = 100 * 1024 * 1024
#: Longest request target (URL) in bytes: beyond it, 414.
DEFAULT_MAX_REQUEST_LINE = 8190
#: Longest single header line, and the whole header block, and the number of
#: header fields: beyond any of them, 431.
DEFAULT_MAX_HEADER_LINE = 8190
DEFAULT_MAX_HEADER_SIZE = 64 * 1024
DEFAULT_MAX_HEADERS = 100

#: Bytes asked of the kernel per read.
RECV_SIZE = 65536
#: Unread body bytes the server reads and drops after a response to keep the
#: connection usable; a bigger rest closes the connection instead.
DRAIN_LIMIT = 65536
#: Responses whose body chunk is at most this long go out in the same send as
#: the headers (one system call, one TCP segment for small answers).
COALESCE_LIMIT = 65536
#: Header names cached with their environ key (a bounded cache: names are
#: client data).
HEADER_KEY_CACHE_SIZE = 512

_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}

#: Hop-by-hop headers are the server's business (PEP 3333); ``Connection``
#: from the app is honoured when it says ``close``, the others are refused.
_HOP_BY_HOP = frozenset(
    {"keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers", "upgrade"}
)
_NO_BODY_STATUS = frozenset({204, 304})


class RequestBodyTooLarge(ValueError):
    """Raised by ``wsgi.input`` when a chunked body grows past ``max_body_size``.

    The server answers 413 if the app lets it propagate before the response
    headers are sent.
    """


class _BadRequest(Exception):
    """A request the server refuses with ``status`` (and then closes)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Message:
    """One request as the parser delivered it; its body arrives into ``chunks``."""

    __slots__ = (
        "body_size",
        "chunks",
        "complete",
        "content_length",
        "continue_sent",
        "error",
        "expect_continue",
        "header_bytes",
        "headers",
        "keep_alive",
        "method",
        "raw_header_bytes",
        "started",
        "transfer_encodings",
        "url",
        "version",
    )

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = ""
        self.version = "1.1"
        self.keep_alive = True
        self.chunks: list[bytes] = []
        self.body_size = 0
        self.complete = False
        self.content_length: int | None = None
        self.expect_continue = False
        self.continue_sent = False
        self.transfer_encodings: list[bytes] = []
        self.header_bytes = 0
        self.raw_header_bytes = 0
        self.error: _BadRequest | None = None
        self.started = 0.0


class _Clock:
    """The ``Date`` header and the access log's time, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._date = b""
        self._log_second = -1
        self._log_time = ""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._date = f"Date: {formatdate(now, usegmt=True)}\r\n".encode("latin-1")
        return self._date

    def log_time(self) -> str:
        now = int(time.time())
        if now != self._log_second:
            self._log_second = now
            self._log_time = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now))
        return self._log_time


_clock = _Clock()
