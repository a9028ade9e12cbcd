"""A gunicorn worker class: ``gunicorn -k socketloop.gunicorn.Worker module:app``.

Charter: fit socketloop.wsgi into gunicorn's worker contract.  gunicorn's
arbiter forks the worker, which calls ``init_process`` (signals, app
loading) and then ``run``: here ``run`` serves every inherited listener with
``socketloop.wsgi`` on the process's default loop, one loop thread per
connection, and a loop timer calls ``notify()`` (the heartbeat the arbiter
watches), so a blocked loop is a missing heartbeat and gets the worker
replaced.  It maps gunicorn's settings (``keepalive``, ``worker_connections``,
``graceful_timeout``, ``max_requests``, ``limit_request_*``, TLS,
``forwarded_allow_ips``/``secure_scheme_headers``) onto the server's
options and runs gunicorn's ``pre_request``/``post_request`` hooks around
each request; it must not parse HTTP itself nor touch the arbiter.
"""

from __future__ import annotations

import datetime
import logging
import os
import queue
import signal
import ssl
import sys
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

try:
    from gunicorn.workers.base import Worker as _BaseWorker  # type: ignore[import-untyped]
except ImportError as _exc:  # pragma: no cover - the module is useless without gunicorn
    raise ImportError(
        "socketloop.gunicorn is a worker class for gunicorn: pip install gunicorn"
    ) from _exc

from . import wsgi
from ._loop import Loop, get_loop
from ._server import Server

__all__ = ["Request", "Response", "Worker"]

#: Where a request's ``Request`` waits in its environ between the two hooks.
_REQUEST_KEY = "socketloop.gunicorn.request"


class Request:
    """What gunicorn's ``pre_request``/``post_request`` hooks get as ``req``.

    The attributes of gunicorn's own request object that hooks read, with
    its meanings: ``method``, ``uri`` (as sent), ``path``, ``query`` and
    ``fragment`` (split from ``uri``, not percent-decoded), ``version`` (a
    tuple), ``headers`` (``(NAME, value)`` pairs, names upper-cased),
    ``scheme``, ``remote_addr`` and ``peer_addr`` (the peer's ``(host,
    port)``), ``body`` (the request body, ``wsgi.input``), ``trailers``
    (None: trailers are not passed on) and ``proxy_protocol_info`` (None).
    A hook may set attributes of its own; the same object reaches
    ``post_request``.  Unlike gunicorn, the environ is built before
    ``pre_request`` runs: changing ``req`` does not change what the app sees.
    """

    def __init__(self, environ: dict[str, Any]) -> None:
        uri = str(environ.get("RAW_URI", ""))
        parts = urlsplit(uri)
        self.method = str(environ.get("REQUEST_METHOD", ""))
        self.uri = uri
        self.path = parts.path
        self.query = parts.query
        self.fragment = parts.fragment
        protocol = str(environ.get("SERVER_PROTOCOL", "HTTP/1.1"))
        major, _, minor = protocol.partition("/")[2].partition(".")
        self.version = (int(major or 1), int(minor or 0))
        self.headers = [
            (key[5:].replace("_", "-"), value)
            for key, value in environ.items()
            if key.startswith("HTTP_")
        ]
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if key in environ:
                self.headers.append((key.replace("_", "-"), environ[key]))
        self.scheme = str(environ.get("wsgi.url_scheme", "http"))
        host = str(environ.get("REMOTE_ADDR", ""))
        port = str(environ.get("REMOTE_PORT", ""))
        self.peer_addr: tuple[str, int] | str = (host, int(port)) if port.isdigit() else host
        self.remote_addr = self.peer_addr
        self.body = environ.get("wsgi.input")
        self.trailers = None
        self.proxy_protocol_info = None


class Response:
    """What ``post_request`` and gunicorn's access log get as ``resp``.

    ``status`` (the status line, e.g. ``"200 OK"``), ``status_code``,
    ``headers`` (as the app gave them, plus the server's framing headers)
    and ``sent`` (body bytes written).
    """

    def __init__(self, status: str, headers: list[tuple[str, str]], sent: int) -> None:
        self.status = status
        code = status.split(" ", 1)[0]
        self.status_code = int(code) if code.isdigit() else None
        self.headers = headers
        self.sent = sent


def _queued_by_the_arbiters_handler(handler: object) -> list[int]:
    """The signals ``handler`` (the arbiter's, inherited over fork) queued in this process.

    Empty when ``handler`` is not the arbiter's or its queue has another
    shape than gunicorn's (a ``SimpleQueue`` in recent versions, a list in older ones).
    """
    pending = getattr(getattr(handler, "__self__", None), "SIG_QUEUE", None)
    if isinstance(pending, list):
        taken = [sig for sig in pending if isinstance(sig, int)]
        pending.clear()
        return taken
    get_nowait = getattr(pending, "get_nowait", None)
    if get_nowait is None:
        return []
    taken = []
    while True:
        try:
            sig = get_nowait()
        except queue.Empty:
            return taken
        if isinstance(sig, int):
            taken.append(sig)


#: Longest pause between two heartbeats (gunicorn's own timeout may be larger).
HEARTBEAT_MAX_INTERVAL = 1.0


class Worker(_BaseWorker):  # type: ignore[misc]
    """gunicorn worker serving a WSGI app with socketloop threads.

    Signals (gunicorn's contract): SIGTERM stops gracefully (no new
    connections, idle keep-alive connections closed at once, in-flight
    requests get ``graceful_timeout`` seconds and ``Connection: close``);
    SIGINT/SIGQUIT stop at once; SIGUSR1 reopens the log files; SIGABRT
    (the arbiter's timeout) exits.  After ``max_requests`` (plus jitter)
    requests the worker stops gracefully and the arbiter starts a new one.
    """

    loop: Loop
    servers: list[Server]
    _pre_request: Any
    _post_request: Any

    # ------------------------------------------------------------- signals

    def init_signals(self) -> None:
        """gunicorn's handlers, plus the stop signals that came before them.

        Between the fork and this call the arbiter's own handler, inherited,
        is still in place: it queues a SIGTERM sent to a booting worker in
        the child's copy of the arbiter, where nobody reads it, and the
        worker would serve on until the arbiter's ``graceful_timeout`` ran
        out and it was killed.  Those signals are taken from that copy and
        handled here.  gunicorn's wake-up pipe is not the process's signal
        wake-up fd here: the loop has its own (see ``socketloop._wakeup``).
        """
        inherited = signal.getsignal(signal.SIGTERM)
        super().init_signals()
        signal.set_wakeup_fd(-1)
        for sig in _queued_by_the_arbiters_handler(inherited):
            if sig == signal.SIGTERM:
                self.handle_exit(sig, None)
            elif sig in (signal.SIGINT, signal.SIGQUIT):
                self.handle_quit(sig, None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A Python signal handler runs between bytecodes wherever the main
        # OS thread is (maybe inside a connection's thread): only set the
        # flag and wake the loop, the stop itself runs in a loop thread.
        self.alive = False
        self._wake()

    def handle_quit(self, sig: int, frame: FrameType | None) -> None:
        # gunicorn's own handler exits right inside the signal handler; here
        # the loop returns first, then run() exits.
        self.alive = False
        self._quick = True
        self.cfg.worker_int(self)
        self._wake()

    def _wake(self) -> None:
        loop = getattr(self, "loop", None)
        if loop is not None and not loop.closed:
            loop.call_soon_threadsafe(self._check)

    # ----------------------------------------------------------- main loop

    def init_process(self) -> None:
        """gunicorn's start of a worker, after refusing settings it cannot honour.

        Raises ``RuntimeError`` before the worker counts as booted, so the
        arbiter stops with "Worker failed to boot" instead of restarting it
        for ever.
        """
        # gunicorn 24+ names a mode ("off", "v1", "v2", "auto"); older ones a bool.
        if getattr(self.cfg, "proxy_protocol", False) not in (False, None, "", "off"):
            # Serving without reading the PROXY header would hand its bytes
            # to the app as the start of a request.
            raise RuntimeError("the socketloop worker does not speak the PROXY protocol")
        super().init_process()

    def run(self) -> None:
        """Serve until told to stop; returns when the loop has finished."""
        self._quick = False
        self._stopping = False
        self._done = False
        self.loop = loop = get_loop()
        cfg = self.cfg
        tls: ssl.SSLContext | None = None
        if cfg.is_ssl:
            from gunicorn.sock import ssl_context  # type: ignore[import-untyped]

            tls = ssl_context(cfg)
        keepalive = float(cfg.keepalive) if cfg.keepalive and cfg.keepalive > 0 else 0.0
        options: dict[str, Any] = {
            "keepalive": keepalive,
            "timeout": float(cfg.timeout) if cfg.timeout else None,
            "max_request_line": cfg.limit_request_line or None,
            "max_headers": cfg.limit_request_fields or None,
            "max_header_line": cfg.limit_request_field_size or None,
            "multiprocess": cfg.workers > 1,
            "on_response": self._on_response,
            # gunicorn believes the scheme headers of the listed peers and of
            # every Unix-domain peer (a proxy on this host).
            "trusted_proxies": [*cfg.forwarded_allow_ips, "unix"],
            "secure_scheme_headers": cfg.secure_scheme_headers or {},
            "environ": {"SERVER_SOFTWARE": "gunicorn (socketloop worker)"},
        }
        self._pre_request = self._hook("pre_request")
        self._post_request = self._hook("post_request")
        if self._pre_request is not None or self._post_request is not None:
            options["on_request"] = self._on_request
        # Beat before serving: creating a server accepts (and starts serving)
        # connections already waiting in the backlog at once, and a request
        # that blocks there must find a heartbeat the arbiter can age; the
        # heartbeat file's first timestamp (its creation time, on another
        # clock) never looks old to it.
        self.notify()
        self.servers = []
        for listener in self.sockets:
            handler = wsgi.handler(self.wsgi, **options)
            # gunicorn's listener objects wrap a socket.socket as ``.sock``.
            sock = getattr(listener, "sock", listener)
            self.servers.append(
                loop.serve(
                    sock,
                    handler,
                    max_connections=cfg.worker_connections or None,
                    tls=tls,
                )
            )
        interval = HEARTBEAT_MAX_INTERVAL
        if self.timeout:
            interval = min(interval, max(self.timeout / 2, 0.05))
        self._interval = interval
        loop.call_soon(self._tick)
        try:
            while not (self._done or self._quick):
                loop.start()
        finally:
            for server in self.servers:
                server.close()
        if self._quick:
            sys.exit(0)

    def _tick(self) -> None:
        self.notify()
        self._check()
        if not self._done:
            self.loop.call_later(self._interval, self._tick)

    def _check(self) -> None:
        """From the loop: start the stop once ``alive`` went false or the parent changed."""
        if self.alive and self.ppid != os.getppid():
            self.log.info("Parent changed, shutting down: %s", self)
            self.alive = False
        if self._quick:
            self.loop.stop()
            return
        if not self.alive and not self._stopping:
            self._stopping = True
            self.loop.spawn(self._graceful_stop)

    def _graceful_stop(self) -> None:
        """Stop accepting, let in-flight requests finish within graceful_timeout, end."""
        grace = float(self.cfg.graceful_timeout)
        for server in self.servers:
            server.close()  # every listener stops at once, before any waiting
        stoppers = [self.loop.newthread(server.stop, grace) for server in self.servers]
        for stopper in stoppers:
            stopper.join()
        self._done = True
        self.loop.stop()

    # ------------------------------------------------------------ requests

    def _hook(self, name: str) -> Any:
        """The ``pre_request``/``post_request`` hook to run, or None for none.

        gunicorn's defaults are skipped (building a ``Request`` per request
        costs a few microseconds): ``post_request`` does nothing and
        ``pre_request`` logs the request line at DEBUG, so it is kept while
        the error log is at that level.
        """
        hook = getattr(self.cfg, name)
        setting = getattr(self.cfg, "settings", {}).get(name)
        if setting is None or hook is not getattr(type(setting), "default", None):
            return hook
        error_log = getattr(self.log, "error_log", None)
        debugging = error_log is not None and error_log.isEnabledFor(logging.DEBUG)
        return hook if name == "pre_request" and debugging else None

    def _on_request(self, environ: dict[str, Any]) -> None:
        request = environ[_REQUEST_KEY] = Request(environ)
        if self._pre_request is not None:
            self._pre_request(self, request)

    def _on_response(
        self,
        environ: dict[str, Any],
        status: str,
        headers: list[tuple[str, str]],
        sent: int,
        seconds: float,
    ) -> None:
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
            self.loop.call_soon(self._check)
        request = environ.get(_REQUEST_KEY)
        response = None
        if request is not None and self._post_request is not None:
            # pre_request ran: so does post_request, as in gunicorn
            response = Response(status, headers, sent)
            try:
                self._post_request(self, request, environ, response)
            except Exception:
                self.log.exception("Exception in post_request hook")
        log = self.log
        if getattr(log, "access_log_enabled", True):
            # gunicorn's access log formats from a response, a request and
            # the environ; requests refused before the app get a Request too.
            log.access(
                response or Response(status, headers, sent),
                request or Request(environ),
                environ,
                datetime.timedelta(seconds=seconds),
            )
