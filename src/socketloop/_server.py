"""Servers: an accept thread per listening socket and a thread per connection.

Charter: accept connections, start a handler thread for each, close each
connection when its handler ends, and keep accepting whatever happens to a
handler or to ``accept()`` itself.  Policies (what an accept error means, how
many connections at once) live here as named constants, each with its reason.
"""

from __future__ import annotations

import errno
import logging
import os
import socket as _socket
import ssl
import stat
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _originals
from ._address import format_address
from ._asocket import AsyncSocket
from ._errors import require_callable
from ._sync import Event
from ._threads import Thread

if TYPE_CHECKING:
    from ._loop import Loop

__all__ = ["Server", "bind_socket"]

logger = logging.getLogger("socketloop")

#: What a connection thread over ``max_connections`` waits on (and how dump() says it).
_SLOT_WAIT = "a free connection slot"

#: Servers not yet closed, so that leaving ``socketloop.aio.hosted()`` on an
#: error can close those of its loop (see ``open_servers``).
_open: weakref.WeakSet[Server] = weakref.WeakSet()


def open_servers(loop: Loop) -> list[Server]:
    """The servers of ``loop`` that are not closed."""
    return [server for server in list(_open) if server._loop is loop and not server._closed]


#: Listen backlog: as deep as the OS allows, so bursts wait in the kernel
#: instead of being refused while the accept thread is busy.
DEFAULT_BACKLOG = _socket.SOMAXCONN

#: Connections accepted in a row before the accept thread yields once, so a
#: connection storm cannot starve the connections already being served.
DEFAULT_MAX_ACCEPT = 64

#: accept() errors that concern one connection only (Linux reports pending
#: network errors of the new connection through accept): skip it, go on.
PER_CONNECTION_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "EPERM",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ECONNRESET",
    )
    if hasattr(errno, name)
)

#: accept() errors that mean "out of resources": retrying at once would spin
#: at 100 % CPU (the listener stays readable), so accepting pauses instead.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

#: First pause after a resource error, doubled on each repeat up to the cap:
#: short enough that a transient fd shortage costs little latency, long
#: enough that a persistent one costs no CPU worth measuring.
ACCEPT_BACKOFF_MIN = 0.01
ACCEPT_BACKOFF_MAX = 1.0

#: Seconds a TLS client gets to complete its handshake (asyncio's default):
#: a client that never sends a ClientHello, or stalls in the middle, is
#: dropped after this without affecting anyone else.
DEFAULT_HANDSHAKE_TIMEOUT = 60.0

#: After stop() closes the connections of handlers that outlived their grace
#: period, it gives them this long to unwind (they get EBADF at once, so this
#: only matters for a handler that catches it and carries on).
STOP_UNWIND_TIMEOUT = 1.0

#: accept() errors that mean the listening socket itself is unusable.
FATAL_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK, errno.EINVAL})


def bind_socket(
    host: str | None,
    port: int,
    *,
    family: int = 0,
    reuse_port: bool = False,
    reuse_address: bool = True,
    backlog: int | None = DEFAULT_BACKLOG,
    getaddrinfo: Callable[..., list[tuple[Any, ...]]] = _originals.getaddrinfo,
) -> _socket.socket:
    """A plain TCP socket bound to ``host``:``port``, listening unless ``backlog`` is None.

    ``host`` None or ``""`` binds every interface, IPv6 first and dual-stack.
    ``SO_REUSEADDR`` is set unless ``reuse_address`` is false.  ``getaddrinfo``
    resolves the host (the loop's, from ``Server.listen``, so a name does not
    block the loop).  Raises ``OSError`` naming the address on a bind failure
    (``EADDRINUSE``...); the socket is closed on any error.
    """
    infos = getaddrinfo(host or None, port, family, _socket.SOCK_STREAM, 0, _socket.AI_PASSIVE)
    if not host and _socket.has_ipv6:
        infos.sort(key=lambda info: info[0] != _socket.AF_INET6)
    family, type_, proto, _canonname, sockaddr = infos[0]
    sock = _originals.socket_class(family, type_, proto)
    try:
        if reuse_address and hasattr(_socket, "SO_REUSEADDR"):
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
        if family == _socket.AF_INET6 and not host:
            sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 0)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            raise OSError(
                exc.errno, f"{exc.strerror} (binding {format_address(sockaddr)})"
            ) from None
        if backlog is not None:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


class Server:
    """A listening socket served by an accept thread; made by ``loop.newserver``.

    Attributes: ``socket`` (the listening ``AsyncSocket``), ``address`` (as
    ``getsockname()`` returns it), ``port``.  ``close()`` stops accepting at
    once; running handlers continue.  A context manager (closes on exit).

    Options: ``backlog`` (listen queue, default ``socket.SOMAXCONN``),
    ``reuse_port`` (``SO_REUSEPORT``, for several processes serving one
    port), ``max_accept`` (accepts in a row before yielding),
    ``max_connections`` (stop accepting while that many handlers run; the
    rest wait in the backlog), ``idle_timeout`` (seconds a connection may
    wait in any single socket call before it is closed quietly),
    ``handler_timeout`` (an absolute limit for the whole handler, which
    trickling bytes cannot extend), ``tls`` (an ``ssl.SSLContext``: the
    handshake runs in the connection's own thread) and
    ``handshake_timeout`` (default 60 s).  ``exclusive`` registers the
    listener with ``EPOLLEXCLUSIVE``, for a listener that several processes
    serve (``run_server(balance="shared")``): a new connection wakes one of
    the waiting processes instead of all (the portable poll backend has no
    such flag and wakes all).
    """

    def __init__(
        self,
        loop: Loop,
        sock: AsyncSocket | _socket.socket,
        handler: Callable[[AsyncSocket], object],
        *,
        max_accept: int = DEFAULT_MAX_ACCEPT,
        max_connections: int | None = None,
        idle_timeout: float | None = None,
        handler_timeout: float | None = None,
        tls: ssl.SSLContext | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        exclusive: bool = False,
    ) -> None:
        require_callable(handler, "the connection handler")
        if not isinstance(sock, AsyncSocket):
            sock = AsyncSocket(sock, loop, timeout=None)
        if max_accept < 1:
            raise ValueError("max_accept must be at least 1")
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._loop = loop
        self.socket = sock
        self.address: Any = sock.getsockname()
        self._handler = handler
        self.max_accept = max_accept
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.handler_timeout = handler_timeout
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self._exclusive = exclusive
        self._unix_path: str | bytes | None = None
        self._closed = False
        #: Each running handler's connection, and its thread once it started.
        self._connections: dict[AsyncSocket, Thread[Any] | None] = {}
        self._stopper: Thread[Any] | None = None  # a handler thread that called stop()
        self._stopped = 0
        self._accepted = 0
        self._errors = 0
        self._handler_errors = 0
        self._refused = 0
        self._idle_closed = 0
        self._drained: Event | None = None  # set when the last handler ends during stop()
        self._backoff = 0.0
        self._slot_waiter: Thread[Any] | None = None
        _open.add(self)
        self._thread = loop.newthread(self._accept_loop)
        self._thread.name = f"server {format_address(self.address)}"

    @classmethod
    def listen(
        cls,
        loop: Loop,
        host: str | None,
        port: int,
        handler: Callable[[AsyncSocket], object],
        *,
        backlog: int | None = None,
        reuse_port: bool = False,
        family: int = 0,
        **options: Any,
    ) -> Server:
        """Bind ``host``:``port`` (``None``/``""``: every interface, dual-stack) and serve."""
        sock = bind_socket(
            host,
            port,
            family=family,
            reuse_port=reuse_port,
            backlog=DEFAULT_BACKLOG if backlog is None else backlog,
            getaddrinfo=loop.getaddrinfo,
        )
        listener = AsyncSocket(sock, loop, timeout=None)
        try:
            return cls(loop, listener, handler, **options)
        except BaseException:  # a bad option: do not leave the port bound
            listener.close()
            raise

    @classmethod
    def listen_unix(
        cls,
        loop: Loop,
        path: str | bytes,
        handler: Callable[[AsyncSocket], object],
        *,
        backlog: int | None = None,
        **options: Any,
    ) -> Server:
        """Bind a Unix-domain stream socket at ``path`` and serve it.

        A stale socket file left at ``path`` is replaced; any other existing
        file is an error.  The file is removed when the server closes.
        """
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        sock = _originals.socket_class(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(DEFAULT_BACKLOG if backlog is None else backlog)
        except BaseException:
            sock.close()
            raise
        listener = AsyncSocket(sock, loop, timeout=None)
        try:
            server = cls(loop, listener, handler, **options)
        except BaseException:  # a bad option: remove what was just created
            listener.close()
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        server._unix_path = path
        return server

    # -------------------------------------------------------------- public

    @property
    def port(self) -> int:
        """The bound port (useful after ``port=0``)."""
        address = self.address
        return int(address[1]) if isinstance(address, tuple) else 0

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop accepting at once (new connects are refused); handlers keep running.

        A handler object with a ``server_closing()`` method is told here
        (``socketloop.wsgi`` ends HTTP keep-alive with it).  Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        _open.discard(self)
        self._unregister_listener()
        self.socket.close()
        server_closing = getattr(self._handler, "server_closing", None)
        if server_closing is not None:
            try:
                server_closing()
            except Exception:
                logger.error("server_closing() of the handler raised", exc_info=True)
        if self._unix_path is not None:
            try:
                os.unlink(self._unix_path)
            except OSError:
                pass
        self._wake_slot_waiter()

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting at once, let handlers finish, then close their connections.

        New connects are refused from the first instant.  Running handlers get
        up to ``grace`` seconds (None: no waiting) to end by themselves;
        whatever is still running then has its connection closed, so its
        thread gets ``OSError(EBADF)`` at its next socket call (that is not
        logged as a handler error), and ``stop`` waits up to
        ``STOP_UNWIND_TIMEOUT`` more for those handlers to unwind.  From a
        loop thread this suspends only the caller; from outside it runs the
        loop.  Called from one of this server's handlers, it neither waits
        for nor closes the caller's own connection.  Idempotent.
        """
        self.close()
        self._stopper = self._loop.current()
        try:
            if grace is not None and grace > 0 and self._others_running():
                self._wait_drained(grace)
            closing = [c for c, t in self._connections.items() if t is not self._stopper]
            for conn in closing:
                conn.close()
            if closing and self._others_running():
                self._wait_drained(STOP_UNWIND_TIMEOUT)
        finally:
            self._stopper = None

    def _others_running(self) -> bool:
        return any(thread is not self._stopper for thread in self._connections.values())

    def _wait_drained(self, timeout: float) -> None:
        self._drained = Event()
        try:
            self._drained.wait(timeout)
        finally:
            self._drained = None

    def connections(self) -> list[AsyncSocket]:
        """The connections whose handlers are running."""
        return list(self._connections)

    def statistics(self) -> dict[str, int]:
        """Counters: ``active`` handlers, ``accepted`` connections, ``refused`` ones
        (closed before the handler ran: failed TLS handshakes), ``idle_closed``
        (idle or handler timeout), ``stopped`` (closed by ``stop()``),
        ``accept_errors`` and ``handler_errors``."""
        return {
            "active": len(self._connections),
            "accepted": self._accepted,
            "refused": self._refused,
            "idle_closed": self._idle_closed,
            "stopped": self._stopped,
            "accept_errors": self._errors,
            "handler_errors": self._handler_errors,
        }

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving"
        return (
            f"<socketloop.Server {format_address(self.address)} {state} "
            f"active={len(self._connections)}>"
        )

    # ------------------------------------------------------------ internals

    def _unregister_listener(self) -> None:
        # A listener inherited by forked workers stays open in the other
        # processes after our close, and epoll keeps a registration as long
        # as the file is open anywhere (epoll(7), "closing a file descriptor"):
        # it would go on waking this loop and, with EPOLLEXCLUSIVE, swallow
        # wake-ups meant for the processes still accepting.  So remove it
        # explicitly (one system call per server close).
        self._loop._drop_registration(self.socket)

    def _register_exclusive(self) -> None:
        self._loop._register_exclusive(self.socket)

    def _accept_loop(self) -> None:
        lsock = self.socket
        raw: Any = lsock.socket
        loop = self._loop
        streak = 0
        if self._exclusive:
            self._register_exclusive()
        while not self._closed:
            if self.max_connections is not None and len(self._connections) >= self.max_connections:
                self._wait_for_slot()
                continue
            # Waits and back-offs happen outside the except blocks, so no
            # exception (and its traceback) is kept alive while suspended.
            failure: OSError | None = None
            try:
                fd, address = raw._accept()
            except BlockingIOError:
                fd = -1
            except OSError as exc:
                fd = -1
                failure = exc
            if fd < 0:
                if failure is None:
                    streak = 0
                    try:
                        lsock._wait(False, None)
                    except OSError as exc:  # the listener was closed under us, or worse
                        failure = exc
                if failure is not None and not self._accept_failed(failure):
                    return
                failure = None
                continue
            self._backoff = 0.0
            self._accepted += 1
            try:
                conn = lsock._adopt(fd)
            except OSError as exc:  # the fd could not be made non-blocking: drop it
                _socket.close(fd)
                logger.debug("dropping connection from %s: %s", format_address(address), exc)
                continue
            self._connections[conn] = None
            loop.newthread(self._serve, conn, address)
            streak += 1
            if streak >= self.max_accept:
                streak = 0
                loop.sleep(0)

    def _handshake(self, conn: AsyncSocket, address: Any) -> AsyncSocket | None:
        """The TLS handshake, in the connection's own thread and within its deadline."""
        assert self.tls is not None
        conn.settimeout(self.handshake_timeout)
        try:
            secure: AsyncSocket = conn.starttls(self.tls, server_side=True)
        except (OSError, ValueError) as exc:
            # Scanners, plain-text clients and stalled handshakes are routine
            # on a public TLS port: one quiet line, no traceback.
            logger.debug("TLS handshake with %s failed: %s", format_address(address), exc)
            self._refused += 1
            return None
        self._connections[secure] = self._connections.pop(conn, None)
        secure.settimeout(None)
        return secure

    def _wake_slot_waiter(self) -> None:
        waiter = self._slot_waiter
        if waiter is not None and self._loop._wake(waiter, source=_SLOT_WAIT):
            self._slot_waiter = None

    def _wait_for_slot(self) -> None:
        thread = self._loop.current()
        assert thread is not None
        self._slot_waiter = thread
        try:
            self._loop._block(thread, _SLOT_WAIT)
        finally:
            if self._slot_waiter is thread:
                self._slot_waiter = None

    def _accept_failed(self, exc: OSError) -> bool:
        """Apply the accept error policy; return False to end the accept loop."""
        if self._closed:
            return False
        self._errors += 1
        code = exc.errno
        if code in PER_CONNECTION_ERRNOS:
            logger.debug("accept on %s: %s (skipped)", format_address(self.address), exc)
            return True
        if code in RESOURCE_ERRNOS:
            if self._backoff == 0.0:
                # Once per burst: the back-off below keeps a persistent
                # shortage from turning into a log flood.
                logger.warning(
                    "accept on %s: %s; pausing accepts (%.0f ms, doubling up to %.0f s)",
                    format_address(self.address),
                    exc,
                    ACCEPT_BACKOFF_MIN * 1000,
                    ACCEPT_BACKOFF_MAX,
                )
                self._backoff = ACCEPT_BACKOFF_MIN
            else:
                self._backoff = min(self._backoff * 2, ACCEPT_BACKOFF_MAX)
            self._loop.sleep(self._backoff)
            return True
        if code in FATAL_ERRNOS:
            logger.error(
                "accept on %s failed: %s; closing the server", format_address(self.address), exc
            )
        else:
            logger.error(
                "accept on %s failed unexpectedly; closing the server",
                format_address(self.address),
                exc_info=exc,
            )
        self.close()
        return False

    def _serve(self, conn: AsyncSocket, address: Any) -> None:
        thread = self._loop.current()
        if thread is not None:
            thread._name = ("connection from", address)  # formatted when asked for
            self._connections[conn] = thread
        try:
            if self.tls is not None:
                secure = self._handshake(conn, address)
                if secure is None:
                    return
                conn = secure
            if self.idle_timeout is not None:
                conn.settimeout(self.idle_timeout)
            self._run_handler(conn, address)
        finally:
            conn.close()
            self._connections.pop(conn, None)
            self._wake_slot_waiter()
            if self._drained is not None and not self._others_running():
                self._drained.set()

    def _run_handler(self, conn: AsyncSocket, address: Any) -> None:
        try:
            if self.handler_timeout is None:
                self._handler(conn)
            else:
                with self._loop.move_on_after(self.handler_timeout) as scope:
                    self._handler(conn)
                if scope.expired:
                    self._idle_closed += 1
                    logger.info(
                        "closing connection from %s: handler_timeout", format_address(address)
                    )
        except TimeoutError:
            # With idle_timeout set, the connection's calls time out: that is
            # the idle client being dropped (a TimeoutError of the handler's
            # own making is indistinguishable from it here).
            if self.idle_timeout is None:
                self._handler_errors += 1
                logger.error("handler for %s raised", format_address(address), exc_info=True)
            else:
                self._idle_closed += 1
                logger.info("closing idle connection from %s", format_address(address))
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as exc:
            # Resets and broken pipes are the peer's doing and routine for a
            # server: one line, no traceback.  (A ConnectionRefusedError, from
            # the handler's own outgoing connection, is a handler error.)
            logger.info("connection from %s ended: %s", format_address(address), exc)
        except OSError as exc:
            if exc.errno == errno.EBADF and self._closed and conn.fileno() < 0:
                # stop() closed this connection after its grace period.
                self._stopped += 1
                logger.info("connection from %s closed by stop()", format_address(address))
            else:
                self._handler_errors += 1
                logger.error("handler for %s raised", format_address(address), exc_info=True)
        except Exception:
            self._handler_errors += 1
            logger.error("handler for %s raised", format_address(address), exc_info=True)
