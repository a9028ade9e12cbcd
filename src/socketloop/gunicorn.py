"""A gunicorn worker class: ``gunicorn -k socketloop.gunicorn.Worker module:app``.

Charter: fit socketloop.wsgi into gunicorn's worker contract.  gunicorn's
arbiter forks the worker, which calls ``init_process`` (signals, app
loading) and then ``run``: here ``run`` serves every inherited listener with
``socketloop.wsgi`` on the process's default loop, one loop thread per
connection, and a loop timer calls ``notify()`` (the heartbeat the arbiter
watches), so a blocked loop is a missing heartbeat and gets the worker
replaced.  It maps gunicorn's settings (``keepalive``, ``worker_connections``,
``graceful_timeout``, ``max_requests``, ``limit_request_*``, TLS) onto the
server's options; it must not parse HTTP itself nor touch the arbiter.
"""

from __future__ import annotations

import datetime
import os
import ssl
import sys
from types import FrameType, SimpleNamespace
from typing import Any

try:
    from gunicorn.workers.base import Worker as _BaseWorker  # type: ignore[import-untyped]
except ImportError as _exc:  # pragma: no cover - the module is useless without gunicorn
    raise ImportError(
        "socketloop.gunicorn is a worker class for gunicorn: pip install gunicorn"
    ) from _exc

from . import wsgi
from ._loop import Loop, get_loop
from ._server import Server

__all__ = ["Worker"]

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

    # ------------------------------------------------------------- signals

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
            "environ": {"SERVER_SOFTWARE": "gunicorn (socketloop worker)"},
        }
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
        log = self.log
        if getattr(log, "access_log_enabled", True):
            # gunicorn's access log formats from a response, a request and
            # the environ; these carry what its atoms read.
            request_headers = [
                (key[5:].replace("_", "-"), value)
                for key, value in environ.items()
                if key.startswith("HTTP_")
            ]
            response = SimpleNamespace(status=status, sent=sent, headers=headers)
            request = SimpleNamespace(headers=request_headers)
            log.access(response, request, environ, datetime.timedelta(seconds=seconds))
