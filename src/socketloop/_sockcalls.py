"""The part of ``AsyncSocket``'s API off the hot path: connect, datagrams, sendfile, files.

Charter: ``SocketCalls`` is the base class of ``_asocket.AsyncSocket`` and
holds the ``socket.socket`` methods that are not the request/response hot
path: connecting (with name resolution off the loop), datagram and
ancillary-data calls, ``sendfile``, reading the timeout, ``makefile``, the
context manager and ``repr``, and plain delegation to the wrapped socket.  It
waits only through ``AsyncSocket``'s own ``_wait`` / ``_read_op`` /
``_write_op`` (the one place that talks to the kernel) and keeps no state of
its own (``__slots__ = ()``).  It must not import ``_asocket`` or anything
above it.
"""

from __future__ import annotations

import _socket as _c_socket
import errno
import io
import os
import socket as _socket
import ssl
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from greenlet import getcurrent

from . import _originals
from ._address import format_address, is_numeric_host
from ._errors import closed_error
from ._files import make_file
from ._threads import Thread

if TYPE_CHECKING:
    from ._asocket import AsyncSocket
    from ._loop import Loop

__all__ = ["SocketCalls"]

R = TypeVar("R")
S = TypeVar("S", bound="SocketCalls")

_UNSET: Any = object()
_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN, errno.EWOULDBLOCK})
_CONNECTED = frozenset({0, errno.EISCONN})
# Raw C-level attributes: the ints, without socket.socket's enum conversion,
# which costs more than the accept() system call it accompanies.
# (Taken from the C type: socket.socket overrides family and type with
# converting properties.)
_RAW_FAMILY: Any = _c_socket.socket.family
_RAW_TYPE: Any = _c_socket.socket.type
_RAW_PROTO: Any = _c_socket.socket.proto
#: Sends never raise SIGPIPE, even in a program that restored its default
#: action (which kills the process): a vanished peer is a BrokenPipeError.
_NOSIGNAL: int = int(getattr(_socket, "MSG_NOSIGNAL", 0))  # a plain int: IntFlag "|" is slow

#: MSG_DONTWAIT: one call is non-blocking whatever the timeout (the kernel's
#: answer is final; waiting would turn it into a blocking call).
_DONTWAIT: int = int(getattr(_socket, "MSG_DONTWAIT", 0))


def _dont_wait(flags: Any) -> bool:
    """Whether ``flags`` (the flags argument of an I/O call, or not) has MSG_DONTWAIT."""
    return isinstance(flags, int) and bool(flags & _DONTWAIT)


#: The code of ``ssl.SSLSocket._create``, which the standard wrap_socket runs.
_SSLSOCKET_CREATE: Any = getattr(
    getattr(getattr(ssl.SSLSocket, "_create", None), "__func__", None), "__code__", None
)


def _connect_error(err: int, address: Any) -> OSError:
    # OSError(errno, text) returns the matching subclass (ConnectionRefusedError, ...).
    return OSError(err, f"{os.strerror(err)} (connecting to {format_address(address)})")


class SocketCalls:
    """The ``socket.socket`` methods of ``AsyncSocket`` that are off the hot path."""

    __slots__ = ()

    # Provided by AsyncSocket.
    socket: _socket.socket
    _timeout: float | None
    _stream: bool
    _loop: Loop | None

    def _deadline(self) -> float | None:
        raise NotImplementedError

    def _wait(self, writing: bool, deadline: float | None) -> int:
        raise NotImplementedError

    def _read_op(self, op: Callable[..., R], *args: Any) -> R:
        raise NotImplementedError

    def _write_op(self, op: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        raise NotImplementedError

    def sendall(self, data: Any, flags: int = 0, /) -> None:
        raise NotImplementedError

    def send(self, data: Any, flags: int = 0, /) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def recvfrom(self, bufsize: int, flags: int = 0, /) -> tuple[bytes, Any]:
        """Receive a datagram (or stream data) and the sender's address."""
        return self._read_op(self.socket.recvfrom, bufsize, flags)

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0, /) -> tuple[int, Any]:
        """Receive into ``buffer``; return ``(count, address)``."""
        return self._read_op(self.socket.recvfrom_into, buffer, nbytes, flags)

    def recvmsg(
        self, bufsize: int, ancbufsize: int = 0, flags: int = 0, /
    ) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
        """Receive data and ancillary data, like ``socket.recvmsg``."""
        return self._read_op(self.socket.recvmsg, bufsize, ancbufsize, flags)

    def recvmsg_into(
        self, buffers: Any, ancbufsize: int = 0, flags: int = 0, /
    ) -> tuple[int, list[tuple[int, int, bytes]], int, Any]:
        """Scatter-receive into ``buffers``, like ``socket.recvmsg_into``."""
        # A one-shot iterable (a generator) would be used up by a first
        # attempt that meets EAGAIN.
        buffers = buffers if isinstance(buffers, (list, tuple)) else list(buffers)
        return self._read_op(self.socket.recvmsg_into, buffers, ancbufsize, flags)

    def sendto(
        self, data: Any, flags_or_address: Any = _UNSET, address: Any = _UNSET, /, *extra: Any
    ) -> int:
        """Send a datagram to ``address`` (``sendto(data[, flags], address)``)."""
        if flags_or_address is _UNSET or extra:
            # Wrong arguments: let the socket itself raise its TypeError.
            arguments = [arg for arg in (flags_or_address, address) if arg is not _UNSET]
            return int(self.socket.sendto(data, *arguments, *extra))
        if address is _UNSET:
            return self._write_op(
                self.socket.sendto, data, _NOSIGNAL, self._resolve(flags_or_address)
            )
        return self._write_op(
            self.socket.sendto,
            data,
            flags_or_address | _NOSIGNAL,
            self._resolve(address),
            _nowait=_dont_wait(flags_or_address),
        )

    def sendmsg(
        self,
        buffers: Any,
        ancdata: Any = (),
        flags: int = 0,
        address: Any = None,
        /,
    ) -> int:
        """Gather-send ``buffers`` with ancillary data, like ``socket.sendmsg``."""
        nowait = _dont_wait(flags)
        flags |= _NOSIGNAL
        if address is None:
            return self._write_op(self.socket.sendmsg, buffers, ancdata, flags, _nowait=nowait)
        return self._write_op(self.socket.sendmsg, buffers, ancdata, flags, address, _nowait=nowait)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send a file's contents (``os.sendfile`` where possible); return bytes sent.

        Like ``socket.sendfile``: the file position is left after the last
        byte sent; non-blocking sockets are refused with ``ValueError``; a
        file ``os.sendfile`` cannot take is sent by reading and sending.
        """
        try:
            return self._sendfile_use_sendfile(file, offset, count)
        except _socket._GiveupOnSendfile:  # type: ignore[attr-defined]
            return self._sendfile_use_send(file, offset, count)

    def _check_sendfile_params(self, file: Any, offset: int, count: int | None) -> None:
        # The standard library's checks, in its order (its tests call these
        # helpers by name).
        if "b" not in getattr(file, "mode", "b"):
            raise ValueError("file should be opened in binary mode")
        if not self._stream:
            raise ValueError("only SOCK_STREAM type sockets are supported")
        if count is not None:
            if not isinstance(count, int):
                raise TypeError(f"count must be a positive integer (got {count!r})")
            if count <= 0:
                raise ValueError(f"count must be a positive integer (got {count!r})")

    def _sendfile_use_sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """``os.sendfile`` in a loop; ``socket._GiveupOnSendfile`` when it cannot be used."""
        giveup: Any = _socket._GiveupOnSendfile  # type: ignore[attr-defined]
        self._check_sendfile_params(file, offset, count)
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation) as exc:
            raise giveup(exc) from None  # not a regular file
        try:
            size = os.fstat(fileno).st_size
        except OSError as exc:
            raise giveup(exc) from None  # not a regular file
        if not size:
            return 0
        if not hasattr(os, "sendfile"):  # pragma: no cover - every POSIX we run on has it
            raise giveup("os.sendfile() not available on this platform")
        if self._timeout == 0.0:
            raise ValueError("non-blocking sockets are not supported")
        blocksize = min(count or size, 2**30)
        total = 0
        deadline = self._deadline()
        try:
            while True:
                if count:
                    blocksize = min(count - total, blocksize)
                    if blocksize <= 0:
                        break
                try:
                    fd = self.socket.fileno()
                    if fd < 0:
                        raise closed_error()
                    sent = os.sendfile(fd, fileno, offset, blocksize)
                except BlockingIOError:
                    sent = -1  # wait below, outside the except block (see recv)
                except OSError as exc:
                    if total == 0:
                        # Can happen with a file os.sendfile cannot read (a
                        # special file system): fall back to send().
                        raise giveup(exc) from None
                    raise
                if sent < 0:
                    self._wait(True, deadline)
                    continue
                if sent == 0:
                    break
                offset += sent
                total += sent
            return total
        finally:
            if total > 0 and hasattr(file, "seek"):
                file.seek(offset)

    def _sendfile_use_send(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send a file by reading and sending it (any file object with ``read``)."""
        self._check_sendfile_params(file, offset, count)
        if self._timeout == 0.0:
            raise ValueError("non-blocking sockets are not supported")
        if offset:
            file.seek(offset)
        blocksize = min(count, 8192) if count else 8192
        total = 0
        try:
            while True:
                if count:
                    blocksize = min(count - total, blocksize)
                    if blocksize <= 0:
                        break
                data = memoryview(file.read(blocksize))
                if not data:
                    break
                while data:
                    sent = self.send(data)
                    total += sent
                    data = data[sent:]
            return total
        finally:
            if total > 0 and hasattr(file, "seek"):
                file.seek(offset + total)

    def _resolve(self, address: Any) -> Any:
        """Resolve a host name in an IP address off the loop (CPython would block)."""
        if type(address) is not tuple or len(address) < 2 or not isinstance(address[0], str):
            return address
        host = address[0]
        if not host or is_numeric_host(host):
            return address
        family = _RAW_FAMILY.__get__(self.socket)
        if family not in (_socket.AF_INET, _socket.AF_INET6):
            return address
        g = getcurrent()
        loop = g._loop if isinstance(g, Thread) else self._loop
        getaddrinfo = _originals.getaddrinfo if loop is None else loop.getaddrinfo
        infos = getaddrinfo(host, address[1], family, _RAW_TYPE.__get__(self.socket) & 0xF)
        resolved = infos[0][4]
        if family == _socket.AF_INET6 and len(address) == 4:
            resolved = (resolved[0], resolved[1], address[2], address[3])
        return resolved

    def connect(self, address: Any, /) -> None:
        """Connect to ``address``; suspends the calling loop thread until done.

        Raises ``ConnectionRefusedError`` & co. with the address in the
        message, ``TimeoutError`` per ``settimeout`` (the socket stays open, as
        with CPython; its state is undefined, so close it).  Host names are
        resolved without blocking the loop.
        """
        self._connect(self._resolve(address), self._deadline())

    def _connect(
        self, address: Any, deadline: float | None, connect_ex: Callable[[Any], int] | None = None
    ) -> None:
        # ``connect_ex``: how to ask the kernel (the TLS subclass connects the
        # fd under an SSLSocket that has no TLS session yet).
        if connect_ex is None:
            connect_ex = self.socket.connect_ex
        err = connect_ex(address)
        if err == 0:
            return
        if err not in _IN_PROGRESS:
            raise _connect_error(err, address)
        if self._timeout == 0.0:
            text = f"{os.strerror(err)} (connecting to {format_address(address)})"
            raise BlockingIOError(err, text)
        while True:
            try:
                self._wait(True, deadline)
            except TimeoutError:
                raise TimeoutError(f"timed out connecting to {format_address(address)}") from None
            # Asking connect() again is how the kernel reports the outcome
            # (0/EISCONN: connected; EALREADY: still going; else the error),
            # and it stays correct after a spurious wake-up.
            err = connect_ex(address)
            if err in _CONNECTED:
                return
            if err in _IN_PROGRESS:
                continue
            raise _connect_error(err, address)

    def connect_ex(self, address: Any, /) -> int:
        """Like ``connect`` but return an errno instead of raising ``OSError`` (0: success)."""
        try:
            self.connect(address)
        except TimeoutError:
            return errno.EAGAIN
        except _socket.gaierror:
            raise  # as with CPython: name resolution errors are raised
        except OSError as exc:
            if exc.errno is None:
                raise
            return exc.errno
        return 0

    def gettimeout(self) -> float | None:
        """The timeout set by the user (the OS socket is always non-blocking)."""
        return self._timeout

    @property
    def timeout(self) -> float | None:
        """Same as ``gettimeout()``."""
        return self._timeout

    def getblocking(self) -> bool:
        """False only in non-blocking mode (timeout 0)."""
        return self._timeout != 0.0

    @property
    def family(self) -> _socket.AddressFamily:
        return self.socket.family

    @property
    def type(self) -> _socket.SocketKind:
        return self.socket.type

    @property
    def proto(self) -> int:
        return self.socket.proto

    def fileno(self) -> int:
        return self.socket.fileno()

    def bind(self, address: Any, /) -> None:
        self.socket.bind(address)

    def listen(self, *backlog: int) -> None:
        self.socket.listen(*backlog)

    def getsockname(self) -> Any:
        return self.socket.getsockname()

    def getpeername(self) -> Any:
        return self.socket.getpeername()

    def setsockopt(self, *args: Any) -> None:
        self.socket.setsockopt(*args)

    def getsockopt(self, *args: Any) -> Any:
        if sys._getframe(1).f_code is _SSLSOCKET_CREATE:
            # The standard ssl.SSLContext.wrap_socket asks this first; going
            # on would give a *blocking* ssl.SSLSocket on our fd, whose
            # handshake and reads would freeze every thread of the loop.
            raise TypeError(
                "an ssl.SSLContext of the standard library cannot wrap a socketloop socket "
                "cooperatively: use a socketloop.ssl context (socketloop.ssl."
                "create_default_context(), socketloop.ssl.SSLContext), asock.starttls(), or "
                "socketloop.patch()"
            )
        return self.socket.getsockopt(*args)

    def get_inheritable(self) -> bool:
        return self.socket.get_inheritable()

    def set_inheritable(self, inheritable: bool, /) -> None:
        self.socket.set_inheritable(inheritable)

    def sendmsg_afalg(self, *args: Any, **kwargs: Any) -> int:
        """``socket.sendmsg_afalg`` (Linux AF_ALG sockets), cooperative."""
        return self._write_op(self.socket.sendmsg_afalg, *args, **kwargs)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --------------------------------------------------------------- files

    def makefile(
        self,
        mode: str = "r",
        buffering: int | None = None,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> Any:
        """A file object over the socket (modes ``r``, ``w``, ``b`` combined).

        Reads and writes suspend only the calling loop thread.  The socket's
        timeout is a deadline for each file operation as a whole: a
        ``readline()`` fed one byte at a time cannot outlast it.  The socket's
        fd stays open until both the socket and every such file are closed.
        """
        return make_file(cast("AsyncSocket", self), mode, buffering, encoding, errors, newline)

    def __repr__(self) -> str:
        text = repr(self.socket)
        prefix = "<socket.socket"
        if text.startswith(prefix):
            return "<socketloop.AsyncSocket" + text[len(prefix) :]
        return f"<socketloop.AsyncSocket {text}>"
