"""The response side of ``socketloop.wsgi``: ``start_response``, framing, sending.

Charter: turn what a WSGI app returns into HTTP/1.1 bytes on the connection:
``start_response`` and its checks, the status line and headers, chunked or
sized bodies, ``HEAD``, ``write()``, coalescing small bodies with the
headers, ``wsgi.file_wrapper`` sent by ``sendfile``, and the 500 answer for
an app that fails before its headers.  It must not read requests or their
bodies (that is ``_wsgiconn``); it only says whether the connection may be
kept after this response.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._http import (
    _HOP_BY_HOP,
    _NO_BODY_STATUS,
    COALESCE_LIMIT,
    DRAIN_LIMIT,
    _clock,
    _Message,
    logger,
)

if TYPE_CHECKING:
    from ._wsgiconn import _Connection


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
