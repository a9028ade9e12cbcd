"""Running a ``socketloop.wsgi`` server for the tests: in its own OS thread, on loopback.

The server runs on a loop of the chosen kind in a background OS thread, so
the tests talk to it with ordinary blocking clients (``http.client``,
``requests``, raw sockets, curl).  Every app is wrapped in the standard
library's ``wsgiref.validate.validator`` unless a test says why not.  The
records the ``socketloop`` loggers emit are kept, so a test can assert that
nothing was logged as an error.
"""

from __future__ import annotations

import http.client
import io
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.validate import validator

from conftest import make_loop
from socketloop import Loop, Server
from socketloop import wsgi as slwsgi

#: Longest a test waits for the server thread to start or to end.
THREAD_TIMEOUT = 10.0


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self.guard:
            self.records.append(record)


class RunningServer:
    """A WSGI server in a background OS thread; ``stop(grace)`` ends it."""

    def __init__(self, app: Any, kind: str, validate: bool, options: dict[str, Any]) -> None:
        self.app = validator(app) if validate else app
        self.kind = kind
        self.options = options
        self.loop: Loop | None = None
        self.server: Server | None = None
        self.handler: slwsgi.WSGIHandler | None = None
        self.port = 0
        self.stopped_in: float | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="wsgi-test-server", daemon=True)
        self._records = _Records()

    # ---------------------------------------------------------- lifecycle

    def start(self) -> RunningServer:
        logger = logging.getLogger("socketloop")
        logger.addHandler(self._records)
        self._previous_level = logger.level
        logger.setLevel(logging.DEBUG)
        self._thread.start()
        if not self._ready.wait(THREAD_TIMEOUT):
            raise RuntimeError("the server thread did not start")
        if self._failure is not None:
            raise self._failure
        return self

    def _run(self) -> None:
        loop = make_loop(self.kind)
        self.loop = loop
        try:
            options = dict(self.options)
            server_options = {
                name: options.pop(name) for name in list(options) if name in slwsgi.SERVER_OPTIONS
            }
            self.handler = slwsgi.handler(self.app, **options)
            self.server = loop.newserver("127.0.0.1", 0, self.handler, **server_options)
            self.port = self.server.port
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            while self.stopped_in is None:
                loop.start()
        finally:
            loop.close()

    def stop(self, grace: float | None = None) -> float:
        """Stop the server with ``stop(grace)``; return how long that stop took."""
        loop = self.loop
        if loop is None or not self._thread.is_alive():
            return 0.0

        def stopper() -> None:
            started = time.monotonic()
            assert self.server is not None
            self.server.stop(grace)
            self.stopped_in = time.monotonic() - started
            loop.stop()

        def start_stopper() -> None:
            loop.spawn(stopper)

        loop.call_soon_threadsafe(start_stopper)
        self._thread.join(THREAD_TIMEOUT + (grace or 0))
        assert not self._thread.is_alive(), "the server thread did not end"
        logger = logging.getLogger("socketloop")
        logger.removeHandler(self._records)
        logger.setLevel(self._previous_level)
        return self.stopped_in or 0.0

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` in the server's loop (from the test's thread)."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn)

    # ------------------------------------------------------------ helpers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def records(self, level: int = logging.ERROR) -> list[logging.LogRecord]:
        with self._records.guard:
            return [r for r in self._records.records if r.levelno >= level]

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records(level)]

    def forget_records(self) -> None:
        with self._records.guard:
            self._records.records.clear()

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def http(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)


@contextmanager
def running(
    app: Any, kind: str = "asym", validate: bool = True, **options: Any
) -> Iterator[RunningServer]:
    """Serve ``app`` while the block runs; fail if the server logged an unexpected error."""
    server = RunningServer(app, kind, validate, options).start()
    try:
        yield server
    finally:
        server.stop()


class _NoCloseReader(io.BufferedReader):
    """One buffered reader shared by several ``HTTPResponse`` objects (pipelining)."""

    def close(self) -> None:
        pass


class _SharedFile:
    def __init__(self, sock: socket.socket) -> None:
        self.file = _NoCloseReader(socket.SocketIO(sock, "rb"))

    def makefile(self, mode: str) -> io.BufferedReader:
        return self.file


def read_responses(
    sock: socket.socket, count: int, method: str = "GET", methods: list[str] | None = None
) -> list[tuple[int, http.client.HTTPMessage, bytes]]:
    """Read ``count`` responses in a row from ``sock`` with the stdlib's parser.

    ``methods`` gives the request method of each when they differ (HEAD).
    """
    shared = _SharedFile(sock)
    responses = []
    for i in range(count):
        this = methods[i] if methods else method
        response = http.client.HTTPResponse(shared, method=this)  # type: ignore[arg-type]
        response.begin()
        responses.append((response.status, response.headers, response.read()))
    return responses


def exchange(server: RunningServer, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, then read until the server closes the connection."""
    with server.connect(timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(raw: bytes) -> int:
    """The status code of the first response in ``raw``."""
    line = raw.split(b"\r\n", 1)[0]
    assert line.startswith(b"HTTP/1.1 "), raw[:200]
    return int(line.split()[1])


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)  # polling a condition of another thread, with a deadline


def hello_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello\n"]
