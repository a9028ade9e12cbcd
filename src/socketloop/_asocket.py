"""The async socket: the ``socket.socket`` API, suspending only the calling thread.

Charter
-------
``AsyncSocket`` wraps a ``socket.socket`` (kept at ``.socket``, switched to
non-blocking underneath) and offers the same methods.  Every operation tries
the system call first and waits only when it reports EAGAIN; how the wait
happens depends on who calls:

- from a loop thread: the thread is suspended through its loop
  (``Kernel._wait_fd``) and the other threads keep running;
- from code outside any loop thread (the main program, another OS thread):
  the call blocks like a plain socket, honouring the timeout;
- from a loop callback (the dispatcher itself): ``RuntimeError``, because
  blocking there would freeze every thread.

Timeouts keep CPython's meaning (``settimeout``/``gettimeout`` report what the
user set; ``sendall`` has one deadline for the whole call; ``0`` means plain
non-blocking behaviour).  Closing follows a fixed order: mark closed, fail the
waiters with ``OSError(EBADF)``, unregister, close the fd; and it keeps
CPython's rule that file objects from ``makefile()`` keep the fd open.

What it must not do: keep state in the loop for idle sockets (so an idle
socket is garbage collected like a plain one), or allocate per operation on
the fast path.
"""

from __future__ import annotations

import io
import math
import select
import socket as _socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from greenlet import getcurrent, greenlet

from . import _originals
from ._address import format_address
from ._errors import BusyResourceError, SendallTimeoutError, closed_error
from ._kernel import is_dispatching, run_until
from ._sockcalls import (
    _DONTWAIT,
    _NOSIGNAL,
    _RAW_FAMILY,
    _RAW_PROTO,
    _RAW_TYPE,
    _UNSET,
    SocketCalls,
    _dont_wait,
)
from ._threads import Thread

if TYPE_CHECKING:
    from ._loop import Loop

__all__ = ["AsyncSocket", "format_address"]

R = TypeVar("R")
S = TypeVar("S", bound="AsyncSocket")

_SOCK_TYPE_MASK = 0xF  # strips SOCK_NONBLOCK / SOCK_CLOEXEC from the type
# io.text_encoding picks the default text encoding the way open() does (3.10+).
_text_encoding: Any = getattr(io, "text_encoding", lambda encoding: encoding)


#: ``_tls.starttls``, registered by ``_tls`` when it is imported: the TLS
#: socket class sits above this one, so this module must not import it.
_starttls: Callable[..., Any] | None = None


def register_starttls(implementation: Callable[..., Any]) -> None:
    """Called by ``_tls`` at import: the body of ``AsyncSocket.starttls``."""
    global _starttls
    _starttls = implementation


class AsyncSocket(SocketCalls):
    """A socket whose blocking calls suspend only the calling loop thread.

    Create one with ``loop.wrap(sock)``, ``loop.connect(...)`` or
    ``accept()``.  It offers the ``socket.socket`` API; the wrapped socket is
    ``.socket``.  Not thread-safe across OS threads (like a plain socket used
    from several threads at once).  Two loop threads may not both read (or
    both write) at the same time: the second gets ``BusyResourceError``.
    """

    __slots__ = (
        "__weakref__",
        "_clean_turn",
        "_closed",
        "_drained_turn",
        "_io_refs",
        "_loop",
        "_poller",
        "_sending",
        "_stream",
        "_timeout",
        "socket",
    )

    #: True for the TLS subclass, whose ``socket`` is an ``ssl.SSLSocket``.
    _tls = False

    # Libraries check types (``isinstance(sock, socket.socket)``,
    # ``isinstance(sock, ssl.SSLSocket)``); an AsyncSocket has the whole API
    # of the socket it wraps, so it answers those checks as that socket's
    # class (socket.socket, ssl.SSLSocket or a context's sslsocket_class).
    # isinstance() consults __class__ only when the real type does not
    # match, so checks against AsyncSocket itself cost nothing more, and
    # type(asock) stays the truth.
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self.socket)

    def __init__(
        self,
        sock: _socket.socket,
        loop: Loop | None = None,
        *,
        timeout: float | None = _UNSET,
        stream: bool | None = None,
    ) -> None:
        if isinstance(sock, AsyncSocket):
            raise TypeError("the socket is already wrapped")
        if not isinstance(sock, _originals.socket_class):
            raise TypeError(f"expected a socket.socket, got {type(sock).__name__}")
        if type(sock).__module__ == "ssl" and not self._tls:
            raise TypeError(
                "wrap the plain socket, then start TLS with asock.starttls() or "
                "socketloop.ssl (an ssl.SSLSocket cannot become cooperative)"
            )
        self.socket = sock
        self._timeout: float | None = sock.gettimeout() if timeout is _UNSET else timeout
        sock.setblocking(False)
        if stream is None:
            stream = (_RAW_TYPE.__get__(sock) & _SOCK_TYPE_MASK) == _socket.SOCK_STREAM
        self._stream: bool = stream
        self._loop = loop
        #: The poller this socket's fd is registered with (see _poll_epoll).
        self._poller: Any = None
        #: The loop turn in which a read drained the socket, and the turn in
        #: which a readiness wake-up without hang-up bits arrived; see recv().
        self._drained_turn = -1
        self._clean_turn = -1
        self._sending = False
        self._io_refs = 0
        self._closed = False

    # ------------------------------------------------------------- waiting

    def _deadline(self) -> float | None:
        timeout = self._timeout
        return None if timeout is None else time.monotonic() + timeout

    def _wait(self, writing: bool, deadline: float | None) -> int:
        """Wait until the socket may be ready in one direction (see the module charter).

        Returns the poller's event mask when a loop woke the thread for
        readiness, else 0.
        """
        g = getcurrent()
        if type(g) is Thread:  # (never subclassed; faster than isinstance)
            loop = g._loop
            if loop._closed:
                raise RuntimeError("the loop of the calling thread is closed")
            if self._loop is not loop:
                self._loop = loop
                self._drained_turn = -1
            fd = self.socket.fileno()
            if fd < 0:
                raise closed_error()
            events = loop._wait_fd(g, self, fd, writing, deadline)
            if not writing and self._stream:
                # Only stream sockets: a short datagram read says nothing.
                self._clean_turn = loop._turn if events and not events & loop._HANGUP else -1
            return events
        self._wait_blocking(g, writing, deadline)
        return 0

    def _wait_blocking(self, g: greenlet, writing: bool, deadline: float | None) -> None:
        if is_dispatching(g):
            raise RuntimeError(
                "a blocking socket call from a loop callback (timer or call_soon) would "
                "freeze the loop; make the call from a loop thread instead"
            )
        fd = self.socket.fileno()
        if fd < 0:
            raise closed_error()
        poller = _originals.poll()
        poller.register(fd, select.POLLOUT if writing else select.POLLIN)
        ready = False

        def poll_once(remaining: float | None) -> bool:
            # A plain poll(2), no loop: outside loop threads a socket blocks
            # like a plain one.  It can always make progress (the peer may
            # write), so the wait ends only when ready or at the deadline.
            nonlocal ready
            ready = bool(poller.poll(None if remaining is None else math.ceil(remaining * 1000)))
            return True

        run_until(lambda: ready, deadline, poll_once, timed_out="timed out")

    def _spent(self) -> None:
        """Count one completed operation against the thread's fairness budget."""
        loop = self._loop
        if loop is not None:
            loop._budget -= 1
            if loop._budget <= 0:
                loop._yield_for_fairness()

    def _read_op(self, op: Callable[..., R], *args: Any) -> R:
        try:
            result = op(*args)
        except BlockingIOError:
            if self._timeout == 0.0 or (args and _dont_wait(args[-1])):
                raise
        else:
            self._spent()
            return result
        deadline = self._deadline()
        while True:
            self._wait(False, deadline)
            try:
                return op(*args)
            except BlockingIOError:
                continue

    def _write_op(
        self, op: Callable[..., R], *args: Any, _nowait: bool = False, **kwargs: Any
    ) -> R:
        # ``_nowait``: the call's flags have MSG_DONTWAIT.
        if self._sending:
            raise BusyResourceError(f"another thread is in sendall() on {self!r}")
        try:
            result = op(*args, **kwargs)
        except BlockingIOError:
            if self._timeout == 0.0 or _nowait:
                raise
        else:
            self._spent()
            return result
        deadline = self._deadline()
        while True:
            self._wait(True, deadline)
            try:
                return op(*args, **kwargs)
            except BlockingIOError:
                continue

    # ------------------------------------------------------------- reading

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        """Receive up to ``bufsize`` bytes; ``b""`` at end of stream.

        Suspends the calling loop thread while no data is available.
        Raises ``TimeoutError`` per ``settimeout``, ``OSError(EBADF)`` if the
        socket is closed (also while waiting), ``ConnectionResetError``.
        """
        loop = self._loop
        # Skipping a read that would fail: when this thread was woken in the
        # current loop turn by readiness *without* hang-up bits, and a read
        # then returned less than asked, the socket was drained and no end of
        # stream or error was pending when the loop polled.  Anything arriving
        # since is a new edge the next poll reports, so another read in the
        # same turn can only hit EAGAIN and the thread may wait at once.
        # (Without the hang-up condition an end of stream that arrived with
        # the last data would never be reported again: edge-triggered epoll
        # reports it once.)
        if loop is None or self._drained_turn != loop._turn or flags:
            try:
                data = self.socket.recv(bufsize, flags) if flags else self.socket.recv(bufsize)
            except BlockingIOError:
                if self._timeout == 0.0 or flags & _DONTWAIT:
                    raise
                data = None  # wait below: never park inside an except block, which
                # would keep the exception and its traceback alive for the whole wait
            if data is None:
                return self._recv_wait(bufsize, flags)
            if not data and not bufsize and self.socket.fileno() < 0:
                raise closed_error()  # CPython answers recv(0) without a system call
            if loop is not None:
                if 0 < len(data) < bufsize and self._clean_turn == loop._turn and not flags:
                    self._drained_turn = loop._turn
                loop._budget -= 1
                if loop._budget <= 0:
                    loop._yield_for_fairness()
            return data
        if self._timeout == 0.0:
            return self.socket.recv(bufsize, flags)
        return self._recv_wait(bufsize, flags)

    def _recv_wait(self, bufsize: int, flags: int) -> bytes:
        timeout = self._timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # _wait(), inlined for the usual case (a thread of the socket's own
            # loop): this is the hot path of every request/response server.
            g = getcurrent()
            loop = self._loop
            if type(g) is Thread and g._loop is loop and loop is not None and not loop._closed:
                fd = self.socket.fileno()
                if fd < 0:
                    raise closed_error()
                events = loop._wait_fd(g, self, fd, False, deadline)
                if self._stream:
                    self._clean_turn = loop._turn if events and not events & loop._HANGUP else -1
            else:
                self._wait(False, deadline)
            try:
                data = self.socket.recv(bufsize, flags) if flags else self.socket.recv(bufsize)
            except BlockingIOError:
                continue
            loop = self._loop
            if (
                loop is not None
                and self._clean_turn == loop._turn  # see recv()
                and 0 < len(data) < bufsize
                and not flags
            ):
                self._drained_turn = loop._turn
            return data

    def _note_short_read(self, loop: Loop) -> None:
        if self._clean_turn == loop._turn:
            self._drained_turn = loop._turn

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0, /) -> int:
        """Receive into ``buffer`` (up to ``nbytes``, default its size); return the count."""
        loop = self._loop
        if loop is None or self._drained_turn != loop._turn or flags:
            try:
                count = self.socket.recv_into(buffer, nbytes, flags)
            except BlockingIOError:
                if self._timeout == 0.0 or flags & _DONTWAIT:
                    raise
                count = -1  # wait below, outside the except block (see recv)
            if count < 0:
                return self._recv_into_wait(buffer, nbytes, flags)
            if loop is not None:
                # len() of a non-byte buffer counts items, so this under-claims: safe.
                short = 0 < count < (nbytes or len(buffer)) and not flags
                if short and self._clean_turn == loop._turn:
                    self._drained_turn = loop._turn
                loop._budget -= 1
                if loop._budget <= 0:
                    loop._yield_for_fairness()
            return count
        if self._timeout == 0.0:
            return self.socket.recv_into(buffer, nbytes, flags)
        return self._recv_into_wait(buffer, nbytes, flags)

    def _recv_into_wait(self, buffer: Any, nbytes: int, flags: int) -> int:
        deadline = self._deadline()
        while True:
            self._wait(False, deadline)
            try:
                count = self.socket.recv_into(buffer, nbytes, flags)
            except BlockingIOError:
                continue
            loop = self._loop
            if loop is not None and 0 < count < (nbytes or len(buffer)) and not flags:
                self._note_short_read(loop)
            return count

    def _recv_into_until(self, buffer: Any, deadline: float | None) -> int:
        """``recv_into`` bounded by an absolute deadline (for file operations)."""
        try:
            return self.socket.recv_into(buffer)
        except BlockingIOError:
            if self._timeout == 0.0:
                raise
        while True:
            self._wait(False, deadline)
            try:
                return self.socket.recv_into(buffer)
            except BlockingIOError:
                continue

    def _send_until(self, data: Any, deadline: float | None) -> int:
        """``send`` bounded by an absolute deadline (for file operations)."""
        if self._sending:
            raise BusyResourceError(f"another thread is in sendall() on {self!r}")
        try:
            return self.socket.send(data, _NOSIGNAL)
        except BlockingIOError:
            if self._timeout == 0.0:
                raise
        while True:
            self._wait(True, deadline)
            try:
                return self.socket.send(data, _NOSIGNAL)
            except BlockingIOError:
                continue

    # ------------------------------------------------------------- writing

    def send(self, data: Any, flags: int = 0, /) -> int:
        """Send some of ``data``; return how many bytes the kernel took.

        Suspends the calling loop thread while the send buffer is full.
        Raises ``BrokenPipeError``/``ConnectionResetError`` when the peer is
        gone (never SIGPIPE), ``TimeoutError`` per ``settimeout``.
        """
        if self._sending:
            raise BusyResourceError(f"another thread is in sendall() on {self!r}")
        flags |= _NOSIGNAL
        try:
            count = self.socket.send(data, flags)
        except BlockingIOError:
            if self._timeout == 0.0 or flags & _DONTWAIT:
                raise
        else:
            loop = self._loop
            if loop is not None:
                loop._budget -= 1
                if loop._budget <= 0:
                    loop._yield_for_fairness()
            return count
        deadline = self._deadline()
        while True:
            self._wait(True, deadline)
            try:
                return self.socket.send(data, flags)
            except BlockingIOError:
                continue

    def sendall(self, data: Any, flags: int = 0, /) -> None:
        """Send all of ``data``, suspending as often as needed.

        The timeout is one deadline for the whole call; on expiry
        ``SendallTimeoutError`` (a ``TimeoutError``) says how many bytes went
        out.  A second thread calling a send method meanwhile gets
        ``BusyResourceError``: the bytes of two calls never interleave.
        """
        if self._sending:
            raise BusyResourceError(f"another thread is in sendall() on {self!r}")
        flags |= _NOSIGNAL
        try:
            sent = self.socket.send(data, flags)
        except BlockingIOError:
            if self._timeout == 0.0:
                raise
            sent = 0
        if type(data) is bytes and sent == len(data):
            loop = self._loop
            if loop is not None:
                loop._budget -= 1
                if loop._budget <= 0:
                    loop._yield_for_fairness()
            return
        self._sending = True
        try:
            self._sendall_rest(data, sent, flags)
        finally:
            self._sending = False

    def _sendall_rest(self, data: Any, sent: int, flags: int) -> None:
        with memoryview(data) as view, view.cast("B") as octets:
            total = len(octets)
            if sent >= total:
                self._spent()
                return
            if self._timeout == 0.0:
                # CPython's non-blocking sendall: send what fits, then EAGAIN.
                while sent < total:
                    sent += self.socket.send(octets[sent:], flags)
                return
            deadline = self._deadline()
            while sent < total:
                try:
                    self._wait(True, deadline)
                except TimeoutError:
                    raise SendallTimeoutError(sent) from None
                try:
                    sent += self.socket.send(octets[sent:], flags)
                except BlockingIOError:
                    continue

    # ------------------------------------------------- connecting, accepting

    def accept(self) -> tuple[AsyncSocket, Any]:
        """Accept a connection; return ``(AsyncSocket, address)``.

        Suspends the calling loop thread until a client connects.  The new
        socket gets the default timeout (``socket.getdefaulttimeout()``).
        """
        raw = self.socket
        try:
            fd, address = raw._accept()  # type: ignore[attr-defined]
        except BlockingIOError:
            if self._timeout == 0.0:
                raise
            fd = -1  # wait below, outside the except block (see recv)
        if fd < 0:
            fd, address = self._read_op(raw._accept)  # type: ignore[attr-defined]
        else:
            self._spent()
        return self._adopt(fd), address

    def _accept(self) -> tuple[int, Any]:
        """``socket._accept``: accept and return ``(fd, address)`` (cooperative)."""
        result: tuple[int, Any] = self._read_op(self.socket._accept)  # type: ignore[attr-defined]
        return result

    def _adopt(self, fd: int) -> AsyncSocket:
        """Wrap a freshly accepted fd, skipping the probes ``socket()`` would make.

        The result has this socket's class (the drop-in ``socketloop.socket``
        class accepts sockets of its own class).  The checks of ``__init__``
        are skipped: this is a plain stream socket we just made.
        """
        raw = self.socket
        sock = _originals.socket_class(
            _RAW_FAMILY.__get__(raw), _RAW_TYPE.__get__(raw), _RAW_PROTO.__get__(raw), fd
        )
        sock.setblocking(False)
        new = object.__new__(type(self))
        new.socket = sock
        new._timeout = _socket.getdefaulttimeout()
        new._stream = self._stream
        loop = new._loop = self._loop
        new._poller = None
        new._drained_turn = -1
        # Not registered with any poller yet: the first wait registers it,
        # and registering reports whatever is pending (data, end of stream),
        # so a short first read may skip the retry that could only fail,
        # exactly as after a clean wake-up (see recv).
        new._clean_turn = -1 if loop is None else loop._turn
        new._sending = False
        new._io_refs = 0
        new._closed = False
        return new

    def starttls(
        self,
        context: Any,
        server_hostname: str | None = None,
        server_side: bool = False,
        **options: Any,
    ) -> Any:
        """Start TLS on this connected socket; return the ``AsyncTLSSocket``.

        The handshake runs now, suspending only the calling thread, bounded
        by this socket's timeout; ``do_handshake=False`` defers it.  This
        object is detached afterwards (the fd belongs to the TLS socket).
        Raises ``ssl.SSLError`` (``ssl.SSLCertVerificationError``) or
        ``TimeoutError``; the socket is closed then.
        """
        if _starttls is None:  # pragma: no cover - _tls is imported with the package
            raise RuntimeError("TLS support is not loaded (import socketloop)")
        return _starttls(self, context, server_hostname, server_side, **options)

    # ------------------------------------------------------------- timeouts

    def settimeout(self, value: float | None, /) -> None:
        """Set the timeout for blocking calls: None waits forever, 0 is non-blocking."""
        if value is None:
            self._timeout = None
            return
        value = float(value)
        if math.isnan(value) or value < 0:
            raise ValueError("Timeout value out of range")
        self._timeout = value

    def setblocking(self, flag: bool, /) -> None:
        """``setblocking(True)`` is ``settimeout(None)``; ``False`` is ``settimeout(0)``.

        The OS socket stays non-blocking either way (see the charter), but
        the call reaches it, so an invalid fd raises ``OSError`` as in CPython.
        """
        self.socket.setblocking(False)
        self._timeout = None if flag else 0.0

    # -------------------------------------------------------------- closing

    def close(self) -> None:
        """Close the socket; harmless when already closed.

        A thread waiting on it wakes with ``OSError(EBADF)``.  While file
        objects from ``makefile()`` are open, the fd stays open for them.

        Thread-safe: called from an OS thread other than the one running the
        socket's loop, the close (waking the waiters, releasing the fd) is
        handed to the loop's OS thread through ``call_soon_threadsafe`` and
        completes at its next step (or when the loop is closed); ``close``
        itself returns at once.
        """
        self._closed = True
        if self._io_refs <= 0:
            self._real_close()

    def _real_close(self) -> None:
        sock = self.socket
        fd = sock.fileno()
        if fd >= 0:
            loop = self._loop
            poller = self._poller
            if poller is None or poller.owner is loop:  # the usual case: one loop
                if loop is not None and not loop._closed:
                    owner = loop._owner
                    if owner is not None and owner != threading.get_ident():
                        # The loop's tables belong to its OS thread, and closing
                        # the fd here could let a new socket reuse its number
                        # before the loop drops the old registration.
                        loop._release_threadsafe(self._close_in_loop)
                        return
                    loop._closing(self, fd)
            else:
                self._forget(fd)
        sock.close()

    def _close_in_loop(self) -> None:
        """The part of a close from a foreign OS thread that runs in the loop's OS thread."""
        fd = self.socket.fileno()
        if fd >= 0:
            loop = self._loop
            if loop is not None and not loop._closed:
                loop._closing(self, fd)
        self.socket.close()

    def _loops(self) -> list[Loop]:
        """The loops that may hold waiters or a registration for this socket."""
        loops = []
        for loop in (self._loop, None if self._poller is None else self._poller.owner):
            if loop is not None and not loop._closed and loop not in loops:
                loops.append(loop)
        return loops

    def _forget(self, fd: int, closing: bool = True) -> None:
        for loop in self._loops():
            loop._closing(self, fd, closing)

    def detach(self) -> int:
        """Release the fd without closing it (waiters get ``OSError(EBADF)``); return it."""
        fd = self.socket.fileno()
        if fd >= 0:
            self._forget(fd, closing=False)  # the fd lives on: unregister it
        self._closed = True
        return self.socket.detach()

    def shutdown(self, how: int, /) -> None:
        """Shut down one or both directions; a thread reading here sees end of stream."""
        self.socket.shutdown(how)
        if how in (_socket.SHUT_RD, _socket.SHUT_RDWR):
            fd = self.socket.fileno()
            for loop in self._loops():
                loop._wake_reader(self, fd)

    def dup(self: S) -> S:
        """A new async socket of the same class on a duplicate fd, with the same timeout."""
        new = object.__new__(type(self))
        AsyncSocket.__init__(new, self.socket.dup(), self._loop, timeout=self._timeout)
        return new

    def _decref_socketios(self) -> None:
        if self._io_refs > 0:
            self._io_refs -= 1
        if self._closed:
            self.close()

    # No __getattr__ forwarding on purpose: a class with __getattr__ routes
    # every attribute access through a slower lookup and defeats CPython's
    # attribute specialisation, which the hot path depends on.  The whole
    # socket.socket API is spelled out, here and in ``SocketCalls``.
