"""A WSGI server (PEP 3333) over HTTP/1.1: one socketloop thread per connection.

Charter: turn the bytes of a connection into WSGI calls and the app's
answers back into HTTP/1.1 responses, with keep-alive, pipelining, chunked
bodies both ways, ``Expect: 100-continue``, ``HEAD``, ``wsgi.file_wrapper``
(``sendfile``) and an access log.  The request framing is parsed by
``httptools`` (llhttp, the parser of Node.js): this module enforces the limits
llhttp leaves to its caller (sizes, deadlines, transfer codings) and never
re-parses framing itself.  It must not know about processes (that is
``socketloop.run_server``) nor block the loop: the app runs in the
connection's own thread, so a blocking app only ever waits cooperatively
when its I/O is cooperative (``socketloop.patch()``).

Bad input ends in a clear HTTP error and the connection is closed; the
server goes on.  See ``docs/wsgi.md`` for the limits and their defaults.
"""

from __future__ import annotations

import logging
import os
import socket as _socket
import time
from collections.abc import Callable, Iterable, Iterator
from email.utils import formatdate
from types import TracebackType
from typing import Any
from urllib.parse import unquote_to_bytes

try:
    import httptools
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "socketloop.wsgi needs the HTTP parser httptools: pip install 'socketloop[wsgi]' "
        "(or pip install httptools)"
    ) from _exc

from ._asocket import AsyncSocket, format_address
from ._tls import AsyncTLSSocket

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_KEEPALIVE",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_HEADER_LINE",
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_MAX_REQUEST_LINE",
    "DEFAULT_TIMEOUT",
    "SERVER_OPTIONS",
    "FileWrapper",
    "RequestBodyTooLarge",
    "WSGIHandler",
    "handler",
    "serve",
]

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


#: A WSGI application (``start_response`` is typed loosely so that apps typed
#: against ``wsgiref.types`` or framework stubs fit).
WSGIApp = Callable[[dict[str, Any], Any], Iterable[bytes]]
#: ``on_response(environ, status, response_headers, body_bytes_sent, seconds)``
ResponseHook = Callable[[dict[str, Any], str, list[tuple[str, str]], int, float], object]


class FileWrapper:
    """``wsgi.file_wrapper``: a file the server sends with ``sendfile`` when it can.

    Iterating it reads ``blksize`` bytes at a time (the fallback for TLS, for
    files without a descriptor, and for middleware that wraps the iterable).
    ``close()`` closes the file.
    """

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            data = read(self.blksize)
            if not data:
                return
            yield data

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


class _Errors:
    """``wsgi.errors``: a text stream whose lines go to the ``socketloop.wsgi.errors`` logger."""

    def __init__(self) -> None:
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            errors_logger.error("%s", line)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._partial:
            errors_logger.error("%s", self._partial)
            self._partial = ""


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


class _Input:
    """``wsgi.input``: the request body and nothing past it (never the next request)."""

    def __init__(self, connection: _Connection, message: _Message) -> None:
        self._connection = connection
        self._message = message
        self._buffer = bytearray()

    def _more(self) -> bool:
        """Move the next body bytes into the buffer; False at the end of the body."""
        message = self._message
        while not message.chunks:
            if message.complete:
                return False
            self._connection.read_body(message)
        self._buffer += b"".join(message.chunks)
        message.chunks.clear()
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        """Up to ``size`` bytes (all the rest when negative or None); b"" at the end.

        Suspends the calling thread while the client sends; raises
        ``TimeoutError`` when one read waits longer than the server's timeout,
        ``RequestBodyTooLarge`` past ``max_body_size`` and
        ``ConnectionResetError`` when the client goes away mid-body.
        """
        buffer = self._buffer
        if size is None or size < 0:
            while self._more():
                pass
            data = bytes(buffer)
            buffer.clear()
            return data
        while len(buffer) < size and self._more():
            pass
        data = bytes(buffer[:size])
        del buffer[:size]
        return data

    def readline(self, size: int | None = -1, /) -> bytes:
        """One line including its ``\\n`` (at most ``size`` bytes when given)."""
        buffer = self._buffer
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end >= 0:
                end += 1
                break
            if size is not None and 0 <= size <= len(buffer):
                end = size
                break
            start = len(buffer)
            if not self._more():
                end = len(buffer)
                break
        if size is not None and 0 <= size < end:
            end = size
        data = bytes(buffer[:end])
        del buffer[:end]
        return data

    def readlines(self, hint: int | None = -1, /) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


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


class WSGIHandler:
    """A connection handler for ``newserver``/``serve``/``run_server`` serving a WSGI app.

    Made by ``socketloop.wsgi.handler(app, **options)``.  Calling it with a
    connection serves requests on it until the client closes, keep-alive
    ends, or an error closes it; it returns normally in every case except a
    closed socket (the server's ``stop()`` after its grace period).

    ``server_closing()`` (called by ``Server.close()`` and so by
    ``Server.stop()``) ends keep-alive: idle connections are shut at once,
    busy ones answer their current request with ``Connection: close``.
    Not thread-safe: use it from the threads of one loop.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        keepalive: float | None = DEFAULT_KEEPALIVE,
        header_timeout: float | None = DEFAULT_HEADER_TIMEOUT,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_body_size: int | None = DEFAULT_MAX_BODY_SIZE,
        max_request_line: int | None = DEFAULT_MAX_REQUEST_LINE,
        max_header_line: int | None = DEFAULT_MAX_HEADER_LINE,
        max_header_size: int | None = DEFAULT_MAX_HEADER_SIZE,
        max_headers: int | None = DEFAULT_MAX_HEADERS,
        access_log: bool = False,
        url_scheme: str | None = None,
        multiprocess: bool = False,
        environ: dict[str, Any] | None = None,
        on_response: ResponseHook | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI callable, not {type(app).__name__}")
        for name, value in (
            ("keepalive", keepalive),
            ("header_timeout", header_timeout),
            ("timeout", timeout),
        ):
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative")
        self.app = app
        self.keepalive = keepalive or 0.0
        self.header_timeout = header_timeout
        self.timeout = timeout
        self.max_body_size = max_body_size
        self.max_request_line = max_request_line
        self.max_header_line = max_header_line
        self.max_header_size = max_header_size
        self.max_headers = max_headers
        self.access_log = access_log
        self.url_scheme = url_scheme
        self.on_response = on_response
        self.closing = False
        self.requests = 0
        self._connections: set[_Connection] = set()
        self._base_environ: dict[str, Any] = {
            "SCRIPT_NAME": "",
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
            "SERVER_SOFTWARE": "socketloop.wsgi",
        }
        if environ:
            self._base_environ.update(environ)
        self._header_keys: dict[bytes, str | None] = {}

    def __call__(self, conn: AsyncSocket) -> None:
        connection = _Connection(self, conn)
        self._connections.add(connection)
        try:
            connection.serve()
        finally:
            self._connections.discard(connection)
            connection.release()

    def server_closing(self) -> None:
        """End keep-alive: shut idle connections now, close busy ones after their response."""
        self.closing = True
        for connection in list(self._connections):
            connection.close_if_idle()

    def connections(self) -> int:
        """Connections being served right now."""
        return len(self._connections)

    def header_key(self, name: bytes) -> str | None:
        """The environ key of a request header; None for names the server drops.

        Names with ``_`` are dropped: ``X_Forwarded_For`` would otherwise
        reach the app as the same key as ``X-Forwarded-For`` (a spoofing
        vector behind proxies that filter only the dashed spelling).
        """
        key = self._header_keys.get(name)
        if key is not None or name in self._header_keys:
            return key
        text = name.decode("latin-1")
        if "_" in text:
            key = None
        else:
            upper = text.upper().replace("-", "_")
            key = upper if upper in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + upper
        if len(self._header_keys) < HEADER_KEY_CACHE_SIZE:
            self._header_keys[name] = key
        return key


class _Connection:
    """The state of one connection: its parser, parsed requests, and the serving loop."""

    def __init__(self, handler: WSGIHandler, conn: AsyncSocket) -> None:
        self.handler = handler
        self.conn = conn
        self.parser = httptools.HttpRequestParser(self)
        self.ready: list[_Message] = []  # requests whose headers are complete, in order
        self.parsing: _Message | None = None  # the request the parser is in
        self.failure: _BadRequest | None = None  # the stream is unusable after `ready`
        self.idle = False
        self.upgraded = False
        self.header_deadline: float | None = None
        self.client_error: OSError | None = None  # a body read that failed
        self.peer: Any = None
        try:
            self.peer = conn.getpeername()
        except OSError:
            self.peer = None
        try:
            local = conn.getsockname()
        except OSError:
            local = ("", 0)
        environ = dict(handler._base_environ)
        if isinstance(local, tuple):
            environ["SERVER_NAME"] = str(local[0])
            environ["SERVER_PORT"] = str(local[1])
        else:  # Unix-domain socket
            environ["SERVER_NAME"] = str(local) or "localhost"
            environ["SERVER_PORT"] = ""
        if isinstance(self.peer, tuple):
            environ["REMOTE_ADDR"] = str(self.peer[0])
            environ["REMOTE_PORT"] = str(self.peer[1])
        else:
            environ["REMOTE_ADDR"] = ""
        environ["wsgi.errors"] = _Errors()
        environ["wsgi.url_scheme"] = handler.url_scheme or (
            "https" if isinstance(conn, AsyncTLSSocket) else "http"
        )
        self.environ = environ
        # The first request's wait counts against the header deadline: a
        # connection that sends nothing at all is the simplest slowloris.
        if handler.header_timeout is not None:
            self.header_deadline = time.monotonic() + handler.header_timeout

    def release(self) -> None:
        """Break the parser <-> connection cycle so the connection is freed at once."""
        self.parser = None  # type: ignore[assignment]
        self.ready.clear()
        self.parsing = None

    # ---------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        message = _Message()
        self.parsing = message
        timeout = self.handler.header_timeout
        if timeout is not None and self.header_deadline is None:
            self.header_deadline = time.monotonic() + timeout

    def on_url(self, url: bytes) -> None:
        message = self.parsing
        assert message is not None
        message.url += url
        limit = self.handler.max_request_line
        if limit is not None and len(message.url) > limit:
            self._refuse(message, 414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        message = self.parsing
        assert message is not None
        handler = self.handler
        line = len(name) + len(value) + 4
        message.header_bytes += line
        if handler.max_header_line is not None and line > handler.max_header_line:
            self._refuse(message, 431, "header line too long")
        if handler.max_header_size is not None and message.header_bytes > handler.max_header_size:
            self._refuse(message, 431, "header block too large")
        message.headers.append((name, value))
        if handler.max_headers is not None and len(message.headers) > handler.max_headers:
            self._refuse(message, 431, "too many header fields")
        lower = name.lower()
        if lower == b"transfer-encoding":
            message.transfer_encodings.append(value)
        elif lower == b"expect":
            if value.lower() == b"100-continue":
                message.expect_continue = True
        elif lower == b"content-length":
            # llhttp refuses duplicates and non-digits before we get here.
            message.content_length = int(value)

    def on_headers_complete(self) -> None:
        message = self.parsing
        assert message is not None
        parser = self.parser
        message.method = parser.get_method().decode("latin-1")
        message.version = parser.get_http_version()
        message.keep_alive = parser.should_keep_alive()
        message.started = time.monotonic()
        self.header_deadline = None
        if message.transfer_encodings:
            self._check_transfer_encoding(message)
        limit = self.handler.max_body_size
        if (
            limit is not None
            and message.content_length is not None
            and message.content_length > limit
        ):
            # Refused before the app runs; nothing after it is parsed.
            message.error = _BadRequest(413, f"body of {message.content_length} bytes")
            self.ready.append(message)
            self.failure = message.error
            raise message.error
        self.ready.append(message)

    def on_body(self, body: bytes) -> None:
        message = self.parsing
        assert message is not None
        message.body_size += len(body)
        limit = self.handler.max_body_size
        if limit is not None and message.body_size > limit:
            self._refuse(message, 413, "request body too large")
        message.chunks.append(body)

    def on_message_complete(self) -> None:
        message = self.parsing
        assert message is not None
        message.complete = True
        self.parsing = None

    def _refuse(self, message: _Message, status: int, reason: str) -> None:
        """Stop parsing this connection: ``status`` goes out once earlier requests are answered."""
        if self.failure is None:
            self.failure = _BadRequest(status, reason)
        raise self.failure

    def _check_transfer_encoding(self, message: _Message) -> None:
        codings = [
            coding.strip().lower()
            for value in message.transfer_encodings
            for coding in value.split(b",")
        ]
        if codings == [b"chunked"]:
            return
        unknown = [c for c in codings if c != b"chunked"]
        if unknown:
            self._refuse(
                message, 501, f"transfer coding {unknown[0].decode('latin-1')!r} not supported"
            )
        self._refuse(message, 400, "ambiguous Transfer-Encoding")

    # --------------------------------------------------------------- reading

    def feed(self, data: bytes) -> None:
        """Parse ``data``; a framing error becomes ``self.failure`` after the good requests."""
        begun_before = self.parsing is not None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade and CONNECT are not WSGI: the request is served as a
            # plain one and the connection closes after it (what follows
            # is another protocol).
            self.upgraded = True
            for ready in self.ready:
                ready.keep_alive = False
        except httptools.HttpParserError as exc:
            if self.failure is None:
                self.failure = self._classify(exc)
        message = self.parsing
        if message is not None and message.method == "" and self.failure is None:
            # Still in the header block: llhttp buffers a partial line
            # without telling us, so bound the raw bytes too.  A read that
            # began the request may hold the end of the previous one, so
            # only the complete lines count from it; later reads are all
            # header bytes.
            if begun_before:
                message.raw_header_bytes += len(data)
            else:
                message.raw_header_bytes = message.header_bytes
            limit = self.handler.max_header_size
            if limit is not None and message.raw_header_bytes > limit:
                self.failure = _BadRequest(431, "header block too large")

    def _classify(self, exc: Exception) -> _BadRequest:
        message = self.parsing
        text = str(exc) or type(exc).__name__
        if message is not None and message.content_length is not None:
            return _BadRequest(400, text)  # Content-Length with Transfer-Encoding: smuggling
        if message is not None and message.transfer_encodings:
            codings = b",".join(message.transfer_encodings).lower()
            if any(c.strip() not in (b"chunked", b"") for c in codings.split(b",")):
                return _BadRequest(501, "transfer coding not supported")
        return _BadRequest(400, text)

    def recv(self, timeout: float | None) -> bytes:
        conn = self.conn
        conn.settimeout(timeout)
        return conn.recv(RECV_SIZE)

    def next_request(self) -> _Message | None:
        """The next request with complete headers; None when the connection should end."""
        handler = self.handler
        while not self.ready:
            if self.failure is not None:
                self.send_error(self.failure, None)
                return None
            if self.upgraded:
                return None
            begun = self.parsing is not None
            if begun or self.header_deadline is not None:
                assert self.header_deadline is not None
                timeout: float | None = self.header_deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    self.header_timed_out()
                    return None
            else:
                if handler.closing or not handler.keepalive:
                    return None
                timeout = handler.keepalive
            self.idle = not begun
            try:
                data = self.recv(timeout)
            except TimeoutError:
                if self.parsing is not None or self.header_deadline is not None:
                    self.header_timed_out()
                return None
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
                return None
            finally:
                self.idle = False
            if not data:
                return None
            self.feed(data)
        return self.ready.pop(0)

    def header_timed_out(self) -> None:
        if self.parsing is None:
            # Nothing of a request arrived: an idle client, closed quietly.
            logger.debug("closing idle connection from %s", format_address(self.peer))
            return
        logger.info(
            "closing connection from %s: headers not complete within %s s",
            format_address(self.peer),
            self.handler.header_timeout,
        )
        self.send_error(_BadRequest(408, "headers not complete in time"), None)

    def read_body(self, message: _Message) -> None:
        """Receive more of ``message``'s body (the app is reading ``wsgi.input``)."""
        if message.error is not None:
            raise RequestBodyTooLarge(message.error.reason)
        if self.failure is not None and self.parsing is message:
            if self.failure.status == 413:
                raise RequestBodyTooLarge(self.failure.reason)
            raise ConnectionResetError(f"bad request body: {self.failure.reason}")
        try:
            if message.expect_continue and not message.continue_sent:
                message.continue_sent = True
                self.conn.settimeout(self.handler.timeout)
                self.conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            data = self.recv(self.handler.timeout)
            if not data:
                raise ConnectionResetError(
                    "the client closed the connection inside the request body"
                )
        except OSError as exc:  # TimeoutError included
            self.client_error = exc
            raise
        self.feed(data)
        if self.failure is not None and self.parsing is message and not message.chunks:
            if self.failure.status == 413:
                raise RequestBodyTooLarge(self.failure.reason)
            raise ConnectionResetError(f"bad request body: {self.failure.reason}")

    def close_if_idle(self) -> None:
        if self.idle:
            try:
                self.conn.shutdown(_socket.SHUT_RDWR)
            except OSError:
                pass

    # ---------------------------------------------------------------- serving

    def serve(self) -> None:
        while True:
            message = self.next_request()
            if message is None:
                return
            if message.error is not None:
                self.send_error(message.error, message)
                return
            if not self.respond(message):
                return

    def send_error(self, error: _BadRequest, message: _Message | None) -> None:
        """Answer ``error`` with a short text body and ``Connection: close``."""
        status = error.status
        reason = _REASONS.get(status, "Error")
        body = f"{status} {reason}: {error.reason}\n".encode("latin-1", "replace")
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            "Content-Type: text/plain; charset=latin-1\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n"
        ).encode("latin-1")
        if status < 500:
            logger.info(
                "refusing request from %s: %d %s (%s)",
                format_address(self.peer),
                status,
                reason,
                error.reason,
            )
        try:
            self.conn.settimeout(self.handler.timeout)
            self.conn.sendall(head + _clock.date() + b"\r\n" + body)
        except OSError:
            pass
        if message is not None:
            environ = self._minimal_environ(message)
            self._log_access(environ, f"{status} {reason}", [], len(body), 0.0)

    def _minimal_environ(self, message: _Message) -> dict[str, Any]:
        environ = dict(self.environ)
        environ["REQUEST_METHOD"] = message.method
        environ["RAW_URI"] = message.url.decode("latin-1")
        environ["SERVER_PROTOCOL"] = f"HTTP/{message.version}"
        return environ

    def build_environ(self, message: _Message) -> dict[str, Any]:
        environ = self.environ.copy()
        url = message.url.decode("latin-1")
        environ["REQUEST_METHOD"] = message.method
        environ["RAW_URI"] = url
        environ["SERVER_PROTOCOL"] = "HTTP/" + message.version
        path, _, query = url.partition("?")
        if not path.startswith("/") and path.startswith(("http://", "https://")):
            # absolute-form (RFC 9112 3.2.2): the path is what follows the authority
            after = path.split("//", 1)[1]
            slash = after.find("/")
            path = after[slash:] if slash >= 0 else "/"
        if "%" in path:
            path = unquote_to_bytes(path).decode("latin-1")
        environ["PATH_INFO"] = path
        environ["QUERY_STRING"] = query.partition("#")[0]
        header_key = self.handler.header_key
        for name, value in message.headers:
            key = header_key(name)
            if key is None:
                continue
            text = value.decode("latin-1")
            if key in environ:
                separator = "; " if key == "HTTP_COOKIE" else ", "
                environ[key] = environ[key] + separator + text
            else:
                environ[key] = text
        environ["wsgi.input"] = _Input(self, message)
        if message.transfer_encodings:
            # No CONTENT_LENGTH: this tells frameworks (werkzeug, Django)
            # to read wsgi.input to its end, which is the body's end.
            environ["wsgi.input_terminated"] = True
        return environ

    def respond(self, message: _Message) -> bool:
        """Run the app for ``message`` and send its response; True to keep the connection."""
        handler = self.handler
        handler.requests += 1
        environ = self.build_environ(message)
        response = _Response(self, message)
        result: Iterable[bytes] | None = None
        try:
            try:
                result = handler.app(environ, response.start_response)
                if not response.send_all(result):
                    return False
            finally:
                if result is not None:
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
        except OSError as exc:
            if not (response.client_gone or self.client_error is not None):
                return self._app_failed(response, environ)
            # The client's doing (gone, or too slow): routine, one quiet line.
            where = "response to" if response.client_gone else "request body of"
            logger.debug(
                "client %s: %s during the %s %r",
                format_address(self.peer),
                exc,
                where,
                response.request_line(),
            )
            if isinstance(exc, TimeoutError) and not response.headers_sent:
                self.send_error(_BadRequest(408, "timed out reading the request body"), None)
            return False
        except RequestBodyTooLarge as exc:
            if not response.headers_sent:
                self.send_error(_BadRequest(413, str(exc)), message)
            return False
        except Exception:
            return self._app_failed(response, environ)
        elapsed = time.monotonic() - message.started
        self._log_access(environ, response.status or "", response.headers, response.sent, elapsed)
        if not response.keep_alive:
            return False
        if not message.complete:
            return self._drain(message)
        return True

    def _app_failed(self, response: _Response, environ: dict[str, Any]) -> bool:
        """Log the app's exception with the request line; answer 500 if still possible."""
        logger.error(
            "app raised on %r from %s",
            response.request_line(),
            format_address(self.peer),
            exc_info=True,
        )
        if self.conn.fileno() >= 0 and not response.headers_sent:
            response.send_internal_error()
        elapsed = time.monotonic() - response.message.started
        self._log_access(environ, response.status or "", response.headers, response.sent, elapsed)
        return False

    def _drain(self, message: _Message) -> bool:
        """Read and drop the rest of a body the app left unread; False to close instead."""
        if message.expect_continue and not message.continue_sent:
            return False  # the client waits for our word: it may never send the body
        dropped = 0
        while not message.complete:
            message.chunks.clear()
            if dropped > DRAIN_LIMIT or self.failure is not None:
                return False
            try:
                data = self.recv(self.handler.timeout)
            except OSError:
                return False
            if not data:
                return False
            dropped += len(data)
            self.feed(data)
        message.chunks.clear()
        return True

    def _log_access(
        self,
        environ: dict[str, Any],
        status: str,
        headers: list[tuple[str, str]],
        sent: int,
        elapsed: float,
    ) -> None:
        handler = self.handler
        if handler.access_log and access_logger.isEnabledFor(logging.INFO):
            access_logger.info(
                '%s - - %s "%s %s %s" %s %s',
                environ.get("REMOTE_ADDR") or "-",
                _clock.log_time(),
                environ.get("REQUEST_METHOD", "-"),
                environ.get("RAW_URI", "-"),
                environ.get("SERVER_PROTOCOL", "-"),
                status.split(" ", 1)[0] or "-",
                sent or "-",
            )
        if handler.on_response is not None:
            try:
                handler.on_response(environ, status, headers, sent, elapsed)
            except Exception:
                logger.error("on_response hook raised", exc_info=True)


class _Response:
    """The response of one request: ``start_response``, ``write`` and the framing."""

    __slots__ = (
        "chunked",
        "client_gone",
        "connection",
        "content_length",
        "headers",
        "headers_sent",
        "keep_alive",
        "message",
        "no_body",
        "sent",
        "status",
        "status_code",
    )

    def __init__(self, connection: _Connection, message: _Message) -> None:
        self.connection = connection
        self.message = message
        self.status: str | None = None
        self.status_code = 0
        self.headers: list[tuple[str, str]] = []
        self.headers_sent = False
        self.chunked = False
        self.content_length: int | None = None
        handler = connection.handler
        self.keep_alive = (
            message.keep_alive
            and handler.keepalive > 0
            and not handler.closing
            and not connection.upgraded
        )
        self.no_body = message.method == "HEAD"
        self.sent = 0
        self.client_gone = False

    def request_line(self) -> str:
        message = self.message
        return f"{message.method} {message.url.decode('latin-1')} HTTP/{message.version}"

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: tuple[type[BaseException], BaseException, TracebackType] | None = None,
        /,
    ) -> Callable[[bytes], object]:
        """PEP 3333's ``start_response``; returns ``write``.

        A second call without ``exc_info`` raises ``RuntimeError``; with
        ``exc_info`` after the headers went out it re-raises that exception.
        Header names or values with CR/LF, non-str items and hop-by-hop
        headers raise ``ValueError``/``TypeError``.
        """
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise RuntimeError("start_response was already called (and without exc_info)")
        if type(status) is not str:
            raise TypeError(f"status must be a str, not {type(status).__name__}")
        try:
            code = int(status[:3])
        except ValueError:
            code = 0
        if code < 100 or len(status) < 4 or status[3] != " ":
            raise ValueError(f"status must be like '200 OK', not {status!r}")
        if type(headers) is not list:
            raise TypeError(f"headers must be a list, not {type(headers).__name__}")
        content_length: int | None = None
        for item in headers:
            if type(item) is not tuple or len(item) != 2:
                raise TypeError(f"each header must be a (name, value) tuple, not {item!r}")
            name, value = item
            if type(name) is not str or type(value) is not str:
                raise TypeError(f"header names and values must be str: {item!r}")
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name or ":" in name:
                raise ValueError(f"header {name!r} contains a line break or a colon")
            lower = name.lower()
            if lower == "content-length":
                content_length = int(value)
            elif lower == "connection":
                if "close" in value.lower():
                    self.keep_alive = False
            elif lower == "transfer-encoding" or lower in _HOP_BY_HOP:
                raise ValueError(f"hop-by-hop header {name!r} is the server's to set")
        self.status = status
        self.status_code = code
        self.headers = list(headers)  # the server adds framing headers: not to the app's list
        self.content_length = content_length
        if code in _NO_BODY_STATUS or code < 200:
            self.no_body = True
        return self.write

    def _head(self, chunked: bool) -> bytes:
        """The status line and headers, with the framing headers this response needs."""
        connection = self.connection
        message = self.message
        if connection.handler.closing:
            self.keep_alive = False
        elif not message.complete and self.keep_alive:
            # The app answers without reading the whole body: keeping the
            # connection means reading the rest, which makes sense only
            # for a small rest the client is sending anyway.
            waiting = message.expect_continue and not message.continue_sent
            rest = (
                None
                if message.content_length is None
                else message.content_length - message.body_size
            )
            if waiting or rest is None or rest > DRAIN_LIMIT:
                self.keep_alive = False
        self.chunked = chunked
        parts = [f"HTTP/1.1 {self.status}\r\n"]
        for name, value in self.headers:
            if name.lower() != "connection":
                parts.append(f"{name}: {value}\r\n")
        if chunked:
            parts.append("Transfer-Encoding: chunked\r\n")
        if not self.keep_alive:
            parts.append("Connection: close\r\n")
        elif message.version == "1.0":
            parts.append("Connection: keep-alive\r\n")
        parts.append("")
        return "".join(parts).encode("latin-1") + _clock.date() + b"\r\n"

    def _frame_for_stream(self) -> bool:
        """Choose the framing when the length is not known up front; True for chunked."""
        if self.content_length is not None or self.no_body:
            return False
        if self.message.version == "1.0":
            self.keep_alive = False  # the end of the body is the end of the connection
            return False
        return True

    def _send(self, data: bytes) -> None:
        conn = self.connection.conn
        try:
            conn.sendall(data)
        except OSError:
            # Reset, broken pipe, or a client not reading within the timeout.
            self.client_gone = True
            raise

    def _check_started(self) -> None:
        if self.status is None:
            raise RuntimeError("the app sent body data before calling start_response")

    def write(self, data: bytes) -> None:
        """The legacy ``write`` callable: sends the headers (if not yet) and ``data`` now."""
        self._check_started()
        if type(data) is not bytes:
            raise TypeError(f"response data must be bytes, not {type(data).__name__}")
        self.connection.conn.settimeout(self.connection.handler.timeout)
        if not self.headers_sent:
            head = self._head(self._frame_for_stream())
            self.headers_sent = True
            if not data:
                self._send(head)
                return
            self._send(head + self._body_piece(data))
        elif data:
            self._send(self._body_piece(data))
        self.sent += len(data)

    def _body_piece(self, data: bytes) -> bytes:
        if self.no_body:
            return b""
        if self.chunked:
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    def send_all(self, result: Iterable[bytes]) -> bool:
        """Send the app's iterable; False when the connection must close at once."""
        self.connection.conn.settimeout(self.connection.handler.timeout)
        if type(result) is FileWrapper and not self.headers_sent:
            self._check_started()
            if self._sendfile(result):
                return self._end()
        if type(result) in (list, tuple) and not self.headers_sent:
            # The common case: the whole body is known, so is its length.
            self._check_started()
            items: list[bytes] | tuple[bytes, ...] = result  # type: ignore[assignment]
            for item in items:
                if type(item) is not bytes:
                    raise TypeError(f"response data must be bytes, not {type(item).__name__}")
            body = b"".join(items)
            code = self.status_code
            if (
                self.content_length is None
                and code >= 200
                and code not in _NO_BODY_STATUS
                and (body or not self.no_body)  # HEAD with no body: the length is unknown
            ):
                self.headers.append(("Content-Length", str(len(body))))
                self.content_length = len(body)
            head = self._head(False)
            self.headers_sent = True
            if self.no_body or not body:
                self._send(head)
            elif len(body) <= COALESCE_LIMIT:
                self._send(head + body)
            else:
                self._send(head)
                self._send(body)
            self.sent = 0 if self.no_body else len(body)
            return self._end()
        for data in result:
            if data:
                self.write(data)
            elif type(data) is not bytes:
                raise TypeError(f"response data must be bytes, not {type(data).__name__}")
        if not self.headers_sent:
            self._check_started()
            if self.content_length is None and not self.no_body:
                self.headers.append(("Content-Length", "0"))
                self.content_length = 0
            self._send(self._head(False))
            self.headers_sent = True
        elif self.chunked:
            self._send(b"0\r\n\r\n")
        return self._end()

    def _end(self) -> bool:
        if self.content_length is not None and not self.no_body and self.sent < self.content_length:
            # The app promised more than it gave: the client would wait for
            # the rest, so the connection ends here.
            logger.error(
                "app sent %d of %d bytes (Content-Length) for %r",
                self.sent,
                self.content_length,
                self.request_line(),
            )
            return False
        return True

    def _sendfile(self, wrapper: FileWrapper) -> bool:
        """Send a file wrapper with ``sendfile``; False when it must be iterated instead."""
        filelike = wrapper.filelike
        try:
            fileno = filelike.fileno()
            offset = filelike.tell()
            size = os.fstat(fileno).st_size - offset
        except (AttributeError, OSError, ValueError):
            return False
        if size < 0:
            return False
        if self.content_length is None:
            self.headers.append(("Content-Length", str(size)))
            self.content_length = size
        count = min(size, self.content_length)
        self._send(self._head(False))
        self.headers_sent = True
        if self.no_body or count == 0:
            return True
        try:
            self.sent = self.connection.conn.sendfile(filelike, offset, count)
        except OSError:
            self.client_gone = True
            raise
        return True

    def send_internal_error(self) -> None:
        self.keep_alive = False
        body = b"500 Internal Server Error\n"
        self.status = "500 Internal Server Error"
        self.headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ]
        self.content_length = len(body)
        try:
            self._send(self._head(False) + (b"" if self.no_body else body))
        except OSError:
            return
        self.headers_sent = True
        self.sent = len(body)


# ------------------------------------------------------------------ public


def handler(app: WSGIApp, **options: Any) -> WSGIHandler:
    """A connection handler serving the WSGI ``app``, for ``newserver`` and ``run_server``.

    Options (see ``docs/wsgi.md``): ``keepalive`` (idle seconds between
    requests, 0 disables keep-alive; default 5), ``header_timeout`` (seconds
    for a header block; default 10), ``timeout`` (seconds any single socket
    call may wait while reading a body or writing a response; default 30),
    ``max_body_size`` (413 beyond it; default 100 MiB), ``max_request_line``
    (414), ``max_header_line``, ``max_header_size``, ``max_headers`` (431),
    ``access_log`` (Common Log Format lines on the ``socketloop.wsgi.access``
    logger), ``url_scheme``, ``multiprocess``, ``environ`` (extra environ
    keys) and ``on_response(environ, status, headers, sent, seconds)``.
    Raises ``TypeError``/``ValueError`` for a bad option at once.
    """
    return WSGIHandler(app, **options)


#: Options of ``serve`` that belong to the server rather than to the handler.
SERVER_OPTIONS = frozenset(
    {
        "backlog",
        "reuse_port",
        "max_accept",
        "max_connections",
        "handler_timeout",
        "tls",
        "handshake_timeout",
        "family",
    }
)

#: Seconds ``serve`` lets in-flight requests finish after SIGTERM/SIGINT.
DEFAULT_GRACE = 30.0


def serve(
    app: WSGIApp,
    host: str | None,
    port: int,
    *,
    workers: int = 1,
    grace: float = DEFAULT_GRACE,
    ready: Callable[[Any], object] | None = None,
    **options: Any,
) -> None:
    """Serve ``app`` on ``host``:``port`` until SIGTERM or SIGINT, then stop gracefully.

    ``workers=1`` serves in this process on its default loop; more workers
    run ``socketloop.run_server`` (one process each).  ``options`` are the
    handler's (see ``handler``) and the server's (``backlog``,
    ``reuse_port``, ``max_connections``, ``tls``, ...).  The stop closes idle
    keep-alive connections at once and gives in-flight requests up to
    ``grace`` seconds.  ``ready(server)`` is called once listening (in-process
    serving only).  Blocks;
    from the main OS thread only (it installs signal handlers).
    """
    import signal

    if workers < 1:
        raise ValueError("workers must be at least 1")
    server_options = {name: options.pop(name) for name in list(options) if name in SERVER_OPTIONS}
    if workers > 1:
        import socketloop

        socketloop.run_server(
            host,
            port,
            handler(app, multiprocess=True, **options),
            workers=workers,
            grace=grace,
            **server_options,
        )
        return

    from ._loop import get_loop

    loop = get_loop()
    server = loop.newserver(host, port, handler(app, **options), **server_options)

    def stop(signum: int) -> None:
        logger.info("%s: stopping (grace %s s)", signal.Signals(signum).name, grace)
        server.stop(grace)
        loop.stop()

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    for signum in previous:
        loop.on_signal(signum, stop)
    try:
        logger.info("serving WSGI on %s", format_address(server.address))
        if ready is not None:
            ready(server)
        while not server.closed:
            loop.start()
    finally:
        for signum in previous:
            loop.on_signal(signum, None)
        if not server.closed:
            server.close()
