"""The per-connection machinery of ``socketloop.wsgi``: reading requests, building environs.

Charter: serve one connection: feed its bytes to the llhttp parser and
enforce the limits on what it delivers (sizes, the header deadline,
transfer codings), refuse bad input with an HTTP error, build each request's
environ and ``wsgi.input``, call the app, and decide keep-alive, draining and
the access log line.  Responses are framed by ``_wsgiresponse``.  It must
not know about servers or processes, nor re-parse framing itself.
"""

from __future__ import annotations

import logging
import socket as _socket
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

import httptools

from ._asocket import AsyncSocket, format_address
from ._http import (
    _REASONS,
    DRAIN_LIMIT,
    RECV_SIZE,
    RequestBodyTooLarge,
    _BadRequest,
    _clock,
    _Message,
    access_logger,
    errors_logger,
    logger,
)
from ._tls import AsyncTLSSocket
from ._wsgiresponse import _Response

if TYPE_CHECKING:
    from .wsgi import WSGIHandler


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
        #: The scheme headers believed on this connection (none unless the
        #: peer is a trusted proxy).
        self.scheme_keys = handler.scheme_keys_for(self.peer)
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
        if message.method:
            # A trailer field (after a chunked body: the method is set when
            # the header block completes).  WSGI has no place for trailers,
            # and taken as headers they would let a client behind a proxy
            # that only vets the header block set X-Forwarded-Proto.
            return
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

    def send_error(self, error: _BadRequest, message: _Message | None) -> tuple[str, int]:
        """Answer ``error`` with a short text body and ``Connection: close``.

        With ``message``, the refusal is logged (access log, ``on_response``)
        here.  Returns the status line and the bytes that reached the client
        (0 when the write failed).
        """
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
        sent = len(body)
        try:
            self.conn.settimeout(self.handler.timeout)
            self.conn.sendall(head + _clock.date() + b"\r\n" + body)
        except OSError:
            sent = 0  # the client is gone: nothing reached it
        if message is not None:
            environ = self._minimal_environ(message)
            self._log_access(environ, f"{status} {reason}", [], sent, 0.0)
        return f"{status} {reason}", sent

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
        """Run the app for ``message`` and send its response; True to keep the connection.

        Every request that reaches this point gets exactly one access-log
        line and one ``on_response`` call, however it ends (answered, refused
        while its body was read, app failure, client gone).
        """
        handler = self.handler
        handler.requests += 1
        environ = self.build_environ(message)
        if self.scheme_keys:
            try:
                self.apply_forwarded_scheme(environ)
            except _BadRequest as error:
                self.send_error(error, message)
                return False
        response = _Response(self, message)
        try:
            keep = self._run_app(message, environ, response)
        finally:
            elapsed = time.monotonic() - message.started
            self._log_access(
                environ, response.status or "", response.headers, response.sent, elapsed
            )
        if keep and not message.complete:
            # After the log line: the rest of an unread upload is the
            # client's time, not the response's.
            return self._drain(message)
        return keep

    def _run_app(self, message: _Message, environ: dict[str, Any], response: _Response) -> bool:
        handler = self.handler
        result: Iterable[bytes] | None = None
        try:
            try:
                if handler.on_request is not None:
                    handler.on_request(environ)
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
                return self._app_failed(response)
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
                timed_out = _BadRequest(408, "timed out reading the request body")
                self._refuse_instead(response, timed_out)
            return False
        except RequestBodyTooLarge as exc:
            if not response.headers_sent:
                self._refuse_instead(response, _BadRequest(413, str(exc)))
            return False
        except Exception:
            return self._app_failed(response)
        return response.keep_alive

    def _refuse_instead(self, response: _Response, error: _BadRequest) -> None:
        """Answer ``error`` in place of the app's response (nothing of it was sent)."""
        status, sent = self.send_error(error, None)
        response.status, response.headers, response.sent = status, [], sent

    def _app_failed(self, response: _Response) -> bool:
        """Log the app's exception with the request line; answer 500 if still possible."""
        logger.error(
            "app raised on %r from %s",
            response.request_line(),
            format_address(self.peer),
            exc_info=True,
        )
        if self.conn.fileno() >= 0 and not response.headers_sent:
            response.send_internal_error()
        return False

    def apply_forwarded_scheme(self, environ: dict[str, Any]) -> None:
        """Set ``wsgi.url_scheme`` from a trusted proxy's scheme headers, if it sent any.

        Raises ``_BadRequest`` (400) when the headers contradict each other.
        """
        verdicts = set()
        for key, secure_value in self.scheme_keys:
            value = environ.get(key)
            if value is not None:
                # Repeated lines arrive joined with ", " (see build_environ).
                for part in value.split(","):
                    verdicts.add(part.strip().lower() == secure_value)
        if len(verdicts) > 1:
            raise _BadRequest(400, "contradictory forwarded scheme headers")
        if verdicts:
            environ["wsgi.url_scheme"] = "https" if True in verdicts else "http"

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
