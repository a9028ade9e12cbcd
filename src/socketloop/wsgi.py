"""A WSGI server (PEP 3333) over HTTP/1.1: one socketloop thread per connection.

Charter: turn the bytes of a connection into WSGI calls and the app's
answers back into HTTP/1.1 responses, with keep-alive, pipelining, chunked
bodies both ways, ``Expect: 100-continue``, ``HEAD``, ``wsgi.file_wrapper``
(``sendfile``) and an access log.  The request framing is parsed by
``httptools`` (llhttp, the parser of Node.js): the server enforces the limits
llhttp leaves to its caller (sizes, deadlines, transfer codings) and never
re-parses framing itself.  It must not know about processes (that is
``socketloop.run_server``) nor block the loop: the app runs in the
connection's own thread, so a blocking app only ever waits cooperatively
when its I/O is cooperative (``socketloop.patch()``).

Bad input ends in a clear HTTP error and the connection is closed; the
server goes on.  See ``docs/wsgi.md`` for the limits and their defaults.

This module is the public face: ``handler``, ``WSGIHandler`` and its
options, ``serve``.  The work is done in the rooms below it: ``_wsgiconn``
(one connection: parsing, limits, environs, keep-alive), ``_wsgiresponse``
(``start_response`` and the framing of answers) and ``_http`` (the limits,
a parsed request, the ``Date`` clock); it must not grow their work back.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any

try:
    # Imported first so that a missing parser is named here, not deep inside.
    import httptools  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "socketloop.wsgi needs the HTTP parser httptools: pip install 'socketloop[wsgi]' "
        "(or pip install httptools)"
    ) from _exc

from ._asocket import AsyncSocket, format_address
from ._http import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_KEEPALIVE,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_HEADER_LINE,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_HEADERS,
    DEFAULT_MAX_REQUEST_LINE,
    DEFAULT_TIMEOUT,
    HEADER_KEY_CACHE_SIZE,
    RequestBodyTooLarge,
    logger,
)
from ._wsgiconn import _Connection
from ._wsgiresponse import FileWrapper

# Defined in the rooms below; shown (reprs, tracebacks, docs) under the name users import.
FileWrapper.__module__ = RequestBodyTooLarge.__module__ = __name__

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_KEEPALIVE",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_HEADER_LINE",
    "DEFAULT_MAX_HEADER_SIZE",
    "DEFAULT_MAX_REQUEST_LINE",
    "DEFAULT_SECURE_SCHEME_HEADERS",
    "DEFAULT_TIMEOUT",
    "SERVER_OPTIONS",
    "FileWrapper",
    "RequestBodyTooLarge",
    "WSGIHandler",
    "handler",
    "serve",
]


#: A WSGI application (``start_response`` is typed loosely so that apps typed
#: against ``wsgiref.types`` or framework stubs fit).
WSGIApp = Callable[[dict[str, Any], Any], Iterable[bytes]]
#: ``on_response(environ, status, response_headers, body_bytes_sent, seconds)``
ResponseHook = Callable[[dict[str, Any], str, list[tuple[str, str]], int, float], object]
#: ``on_request(environ)``, called before the app with the request's environ.
RequestHook = Callable[[dict[str, Any]], object]

#: The headers a trusted proxy sets to say the client's connection used TLS,
#: and the value that means so (gunicorn's defaults, so that configurations
#: carry over).  Consulted only for peers listed in ``trusted_proxies``.
DEFAULT_SECURE_SCHEME_HEADERS: dict[str, str] = {
    "X-FORWARDED-PROTOCOL": "ssl",
    "X-FORWARDED-PROTO": "https",
    "X-FORWARDED-SSL": "on",
}


def _trusted_networks(
    trusted_proxies: str | Iterable[str],
) -> tuple[bool, bool, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]]:
    """``trusted_proxies`` read as (every peer, Unix-domain peers, networks)."""
    if isinstance(trusted_proxies, str):
        entries = [part.strip() for part in trusted_proxies.split(",")]
    else:
        entries = [str(part).strip() for part in trusted_proxies]
    every = unix = False
    networks = []
    for entry in entries:
        if not entry:
            continue
        if entry == "*":
            every = True
        elif entry == "unix":
            unix = True
        else:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {entry!r} is not an IP address, a network, '*' or 'unix'"
                ) from None
    return every, unix, tuple(networks)


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
        on_request: RequestHook | None = None,
        on_response: ResponseHook | None = None,
        trusted_proxies: str | Iterable[str] = (),
        secure_scheme_headers: Mapping[str, str] | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be a WSGI callable, not {type(app).__name__}")
        for name, hook in (("on_request", on_request), ("on_response", on_response)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be callable, not {type(hook).__name__}")
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
        self.on_request = on_request
        self.on_response = on_response
        self._trust_every, self._trust_unix, self._trusted = _trusted_networks(trusted_proxies)
        if secure_scheme_headers is None:
            secure_scheme_headers = DEFAULT_SECURE_SCHEME_HEADERS
        self._scheme_keys: tuple[tuple[str, str], ...] = tuple(
            ("HTTP_" + name.strip().upper().replace("-", "_"), value.strip().lower())
            for name, value in secure_scheme_headers.items()
        )
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

    def scheme_keys_for(self, peer: Any) -> tuple[tuple[str, str], ...]:
        """The scheme headers (environ key, secure value) believed from ``peer``.

        None unless ``peer`` is a trusted proxy: anyone else could claim
        ``https`` and make the app build secure links, or trust a session
        cookie, on a plain connection.
        """
        if not self._scheme_keys:
            return ()
        if self._trust_every:
            return self._scheme_keys
        if not isinstance(peer, tuple):  # a Unix-domain socket (or unknown)
            return self._scheme_keys if self._trust_unix and peer is not None else ()
        if not self._trusted:
            return ()
        try:
            address = ipaddress.ip_address(str(peer[0]).partition("%")[0])
        except ValueError:
            return ()
        mapped = getattr(address, "ipv4_mapped", None)
        for network in self._trusted:
            if address in network or (mapped is not None and mapped in network):
                return self._scheme_keys
        return ()

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
    keys), ``on_request(environ)`` (before the app; an exception there is
    a 500 like the app's), ``on_response(environ, status, headers, sent,
    seconds)`` (once per request, however it ended), ``trusted_proxies``
    (addresses, networks, ``"unix"`` or ``"*"`` whose
    ``secure_scheme_headers`` set ``wsgi.url_scheme``; default: none).
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
