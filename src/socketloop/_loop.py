"""The façade: ``Loop``, the public loop, assembled from the kernel and the layers above it.

Charter
-------
``Loop`` adds to the kernel (``_kernel``: threads, waits, dispatch) the
public services: wrapping sockets, connecting, servers, name resolution,
OS-thread pools, timeout scopes, signals, statistics, ``dump()`` and the
watchdog.  Each service lives in its own module; this one only creates them
and forwards to them, so it may import every layer below it, and nothing
below imports it (``Loop`` is named there only for type checking).  It must
not schedule threads or touch the kernel's tables: it uses the kernel's
service surface like every other layer (pools and signals register their
close and fork hooks).

The symmetric loop (``_coro.CoroLoop``) derives from it.
"""

from __future__ import annotations

import socket as _socket
import ssl
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

from . import _originals
from ._address import is_numeric_host
from ._asocket import AsyncSocket
from ._connect import open_connection, open_unix_connection
from ._errors import require_callable
from ._introspect import Watchdog
from ._introspect import dump as dump_report
from ._kernel import Kernel
from ._pool import DEFAULT_WORKERS, RESOLVER_WORKERS, ThreadPool, system_getaddrinfo
from ._server import Server
from ._signals import SignalHandlers
from ._threads import STATE_NAMES, Thread
from ._timeouts import Timeout

if TYPE_CHECKING:
    from ._tls import AsyncTLSSocket

#: A resolver: ``getaddrinfo``'s signature.  It is called in the calling loop
#: thread and may suspend it (e.g. a DNS client built on socketloop sockets).
Resolver = Callable[[Any, Any, int, int, int, int], list[tuple[Any, ...]]]

__all__ = ["Loop", "Resolver", "existing_loop", "get_loop"]

P = ParamSpec("P")
R = TypeVar("R")


class Loop(Kernel):
    """An event loop whose threads are asymmetric coroutines (resume/suspend).

    Each OS thread has a default loop (``socketloop.get_loop()``) that the
    module-level functions use; create more with ``Loop()``.  A loop is bound
    to the OS thread that first runs or creates threads in it; using it from
    another OS thread raises ``RuntimeError`` except through
    ``call_soon_threadsafe`` and ``stop``.

    ``poller`` selects the readiness backend: ``"epoll"`` (default on Linux)
    or ``"poll"`` (portable, level-triggered).
    """

    def __init__(self, *, poller: str | None = None) -> None:
        super().__init__(poller=poller)
        self._pool = ThreadPool(self, DEFAULT_WORKERS, "socketloop-worker")
        self._resolver_pool = ThreadPool(self, RESOLVER_WORKERS, "socketloop-resolver")
        self._resolver: Resolver | None = None
        self._signal_handlers = SignalHandlers()
        self._watchdog: Watchdog | None = None
        self._on_close(self._release_services)
        self._on_fork(self._forget_services)

    def _release_services(self) -> None:
        self._signal_handlers.restore_all()
        if self._watchdog is not None:
            self._watchdog.stop()
        self._pool.shutdown()
        self._resolver_pool.shutdown()

    def _forget_services(self) -> None:
        self._pool.forget()
        self._resolver_pool.forget()
        self._watchdog = None

    # ------------------------------------------------------ sockets, servers

    def wrap(self, sock: _socket.socket) -> AsyncSocket:
        """Wrap a ``socket.socket`` into an async socket with the same API.

        The original stays reachable as ``asock.socket`` (now non-blocking
        underneath; use the wrapper).  Any family and type works: TCP, UDP,
        Unix, IPv6.  The socket's timeout (``gettimeout()``) carries over.
        A socket that is already an ``AsyncSocket`` (under ``patch()``,
        ``socket.socket()`` makes those) is returned as it is.
        """
        if self._closed:
            raise RuntimeError("this loop is closed")
        if isinstance(sock, AsyncSocket):
            return sock
        return AsyncSocket(sock, self)

    @overload
    def connect(
        self,
        address: str,
        port: int | str,
        local_address: str | None = ...,
        local_port: int | None = ...,
        *,
        timeout: float | None = ...,
        tls: Literal[False] | None = ...,
        server_hostname: str | None = ...,
        happy_eyeballs_delay: float | None = ...,
    ) -> AsyncSocket: ...

    @overload
    def connect(
        self,
        address: str,
        port: int | str,
        local_address: str | None = ...,
        local_port: int | None = ...,
        *,
        timeout: float | None = ...,
        tls: Literal[True] | ssl.SSLContext,
        server_hostname: str | None = ...,
        happy_eyeballs_delay: float | None = ...,
    ) -> AsyncTLSSocket: ...

    def connect(
        self,
        address: str,
        port: int | str,
        local_address: str | None = None,
        local_port: int | None = None,
        *,
        timeout: float | None = None,
        tls: bool | ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        happy_eyeballs_delay: float | None = 0.25,
    ) -> AsyncSocket:
        """Open a TCP connection to ``address``:``port`` and return it wrapped.

        ``address`` may be an IPv4 or IPv6 literal or a host name, resolved
        without blocking the loop.  When it resolves to several addresses
        (IPv6 and IPv4), the attempts race in the manner of RFC 8305: one
        starts every ``happy_eyeballs_delay`` seconds (or at once when the
        previous failed), the first to connect wins, the others are closed;
        ``None`` tries them one after another.  ``local_address`` /
        ``local_port`` bind the local end first.  ``timeout`` bounds the whole
        call (resolution and TLS handshake included); the returned socket has
        the default timeout (``socket.getdefaulttimeout()``).

        ``tls=True`` starts TLS with ``socketloop.ssl.create_default_context()``
        (certificate and host name verified); ``tls=context`` uses that
        ``ssl.SSLContext``; ``server_hostname`` defaults to ``address``.  The
        result is then an ``AsyncTLSSocket``.

        From a loop thread this suspends only that thread; elsewhere it
        blocks.  Raises ``ConnectionRefusedError`` & co. (naming the
        address), ``TimeoutError``, ``socket.gaierror``, ``ssl.SSLError``.
        """
        return open_connection(
            self,
            address,
            port,
            local_address,
            local_port,
            timeout=timeout,
            tls=tls,
            server_hostname=server_hostname,
            happy_eyeballs_delay=happy_eyeballs_delay,
        )

    @overload
    def connect_unix(
        self,
        path: str | bytes,
        *,
        timeout: float | None = ...,
        tls: Literal[False] | None = ...,
        server_hostname: str | None = ...,
    ) -> AsyncSocket: ...

    @overload
    def connect_unix(
        self,
        path: str | bytes,
        *,
        timeout: float | None = ...,
        tls: Literal[True] | ssl.SSLContext,
        server_hostname: str | None = ...,
    ) -> AsyncTLSSocket: ...

    def connect_unix(
        self,
        path: str | bytes,
        *,
        timeout: float | None = None,
        tls: bool | ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> AsyncSocket:
        """Open a Unix-domain stream connection to ``path`` (like ``connect``)."""
        return open_unix_connection(
            self, path, timeout=timeout, tls=tls, server_hostname=server_hostname
        )

    def newserver(
        self,
        host: str | None,
        port: int,
        handler: Callable[[AsyncSocket], object],
        **options: Any,
    ) -> Server:
        """Listen on ``host``:``port`` and run ``handler(asock)`` on a new thread per connection.

        See ``socketloop.Server`` for the options (``backlog``,
        ``reuse_port``, ``tls``, ``max_connections``, ...).  ``port=0`` picks a
        free port (``server.port``); ``host`` None or ``""`` listens on every
        interface, IPv6 and IPv4.  The connection is closed when the handler
        returns or raises; handler exceptions are logged with the peer
        address and never stop the server.
        """
        return Server.listen(self, host, port, handler, **options)

    def newserver_unix(
        self,
        path: str | bytes,
        handler: Callable[[AsyncSocket], object],
        **options: Any,
    ) -> Server:
        """Listen on the Unix-domain socket ``path`` (created; removed on close)."""
        return Server.listen_unix(self, path, handler, **options)

    def serve(
        self,
        sock: AsyncSocket | _socket.socket,
        handler: Callable[[AsyncSocket], object],
        **options: Any,
    ) -> Server:
        """Serve connections accepted from an already listening socket of any family."""
        return Server(self, sock, handler, **options)

    def getaddrinfo(
        self,
        host: str | bytes | None,
        port: str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[tuple[Any, ...]]:
        """``socket.getaddrinfo`` that never blocks the loop.

        From a loop thread, names are resolved by the resolver (by default
        the system resolver in a small dedicated OS-thread pool) while only
        the calling thread waits; numeric addresses never reach it.  Outside
        loop threads it simply blocks.  ``socket.gaierror`` names the host.
        """
        try:
            if self._needs_resolver(host) and self.current() is not None:
                resolver = self._resolver or self._resolve_in_pool
                return resolver(host, port, family, type, proto, flags)
            return _originals.getaddrinfo(host, port, family, type, proto, flags)
        except _socket.gaierror as exc:
            raise _socket.gaierror(exc.errno, f"{exc.strerror} (resolving {host!r})") from None

    @staticmethod
    def _needs_resolver(host: str | bytes | None) -> bool:
        if host is None:
            return False
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        return not is_numeric_host(host)

    def _resolve_in_pool(
        self, host: Any, port: Any, family: int, type: int, proto: int, flags: int
    ) -> list[tuple[Any, ...]]:
        return self._resolver_pool.run(system_getaddrinfo, host, port, family, type, proto, flags)

    def set_resolver(self, resolver: Resolver | None) -> None:
        """Replace how names are resolved (None restores the default).

        ``resolver(host, port, family, type, proto, flags)`` must return what
        ``socket.getaddrinfo`` returns.  It runs in the calling loop thread and
        may suspend it, so a resolver written with socketloop sockets works.
        ``TypeError`` if it is neither callable nor None.
        """
        if resolver is not None:
            require_callable(resolver, "the resolver")
        self._resolver = resolver

    # ------------------------------------------------ OS threads and signals

    def run_in_thread(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a blocking call in a bounded OS-thread pool; suspend only the caller.

        Returns the call's result or re-raises its exception in the calling
        loop thread.  Outside loop threads the call runs directly.  Killing the
        waiting thread abandons the result (an OS thread cannot be
        interrupted; the call runs to completion in the pool).
        """
        return self._pool.run(fn, *args, **kwargs)

    def resume_threadsafe(self, thread: Thread[Any], arg: Any = None) -> None:
        """Resume a suspended loop thread from any OS thread (asynchronously).

        The resume happens in the loop's OS thread at its next step, as if
        ``resume(thread, arg)`` were called from a loop callback; if the thread
        is not suspended by then, the error is logged.  ``TypeError`` at the
        call if ``thread`` is not a ``Thread``.
        """
        if not isinstance(thread, Thread):
            raise TypeError(f"resume_threadsafe() expects a Thread, got {type(thread).__name__}")
        self.call_soon_threadsafe(self._resume_soon, thread, arg)

    def _resume_soon(self, thread: Thread[Any], arg: Any) -> None:
        self._check_resumable(thread, "resume")
        self._resume_into(thread, arg)

    def on_signal(self, signum: int, handler: Callable[[int], object] | None) -> None:
        """Run ``handler(signum)`` in a new loop thread each time the signal arrives.

        ``None`` removes the handler and restores the one that was there
        before.  Only from the main OS thread (a limit of Python's signals).
        The signal wakes a polling loop at once.
        """
        self._claim()
        if self._host is not None:  # hosted: through the host's add_signal_handler
            self._host.on_signal(signum, handler)
            return
        if handler is None:
            if self._signal_handlers.restore(signum):
                self._wakeup.release_signal_fd()
            return
        require_callable(handler, "the signal handler")
        if self._signal_handlers.set(self, signum, handler):
            # So that a signal arriving just before the poll's system call
            # still ends it (see _wakeup).
            self._wakeup.hold_signal_fd()

    # ------------------------------------------------------- timeout scopes

    def timeout(self, seconds: float | None) -> Timeout:
        """``with loop.timeout(s):`` raises ``TimeoutError`` if the block takes longer.

        Applies to whatever the current thread waits on inside (sockets,
        sleeps, primitives, joins).  Nested scopes work: the inner scope that
        expires is the one reported.  ``None`` means no limit.  Only in loop
        threads.
        """
        return Timeout(self, seconds, silent=False)

    def move_on_after(self, seconds: float | None) -> Timeout:
        """Like ``timeout`` but leaves the block silently; check ``.expired`` after."""
        return Timeout(self, seconds, silent=True)

    def statistics(self) -> dict[str, Any]:
        """Counts for monitoring and leak checks: threads by state, waits, timers."""
        by_state: dict[str, int] = dict.fromkeys(STATE_NAMES, 0)
        for thread in self._threads:
            by_state[STATE_NAMES[thread._state]] += 1
        return {
            "threads": len(self._threads),
            "threads_by_state": by_state,
            "waiting_readers": len(self._readers),
            "waiting_writers": len(self._writers),
            "timers": len(self._timers),
            "ready": len(self._ready),
            "callbacks": len(self._callbacks) + len(self._threadsafe),
            "external_waits": self._external_waits,
            "pool_active": self._pool.active,
            "resolver_active": self._resolver_pool.active,
        }

    def threads(self) -> list[Thread[Any]]:
        """The threads of this loop that have not ended yet."""
        return list(self._threads)

    def dump(self) -> str:
        """A report of every thread: name, state, what it waits on, and its stack."""
        return dump_report(self)

    def watchdog(self, threshold: float | None = 0.1, interval: float | None = None) -> None:
        """Log (rate-limited) when code keeps this loop from polling for ``threshold`` s.

        A monitoring OS thread checks whether the loop has polled recently
        while it is dispatching; if not, it logs a warning with the blocking
        thread's name and stack (one report per blocking episode).
        ``None`` stops it.  ``ValueError`` for a threshold or interval that
        is not positive.
        """
        if threshold is not None:
            self._claim()
            if not threshold > 0 or (interval is not None and not interval > 0):
                raise ValueError("watchdog threshold and interval must be positive")
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if threshold is not None:
            self._watchdog = Watchdog(self, threshold, interval)


_defaults = threading.local()


def existing_loop() -> Loop | None:
    """The calling OS thread's default loop if it has an open one; never creates it."""
    loop: Loop | None = getattr(_defaults, "loop", None)
    return None if loop is None or loop._closed else loop


def get_loop() -> Loop:
    """The calling OS thread's default (asymmetric) loop, created on first use.

    A default loop that has been closed is replaced by a fresh one.
    """
    loop: Loop | None = getattr(_defaults, "loop", None)
    if loop is None or loop._closed:
        loop = _defaults.loop = Loop()
        loop._implicit = True
    return loop
