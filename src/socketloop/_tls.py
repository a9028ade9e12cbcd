"""TLS over async sockets: ``AsyncTLSSocket`` and the handshake.

Charter: give a TLS connection the ``ssl.SSLSocket`` API with the same
cooperative behaviour as ``AsyncSocket``.  The ``ssl`` module does the TLS
work on the non-blocking fd; this module turns its "want read" / "want
write" answers into waits of the calling thread, in whichever direction
OpenSSL asks for (a read may need to write, and a write to read).

Reads never stall on data OpenSSL has already decrypted: every read tries
``SSL_read`` first, which returns buffered plaintext without touching the
socket, and only an ``SSLWantReadError`` (the kernel socket was read until
EAGAIN) leads to a wait, so edge-triggered readiness is never missed.
"""

from __future__ import annotations

import errno
import socket as _socket
import ssl as _ssl
from typing import TYPE_CHECKING, Any, NoReturn

from . import _originals
from ._asocket import AsyncSocket, register_starttls
from ._errors import BusyResourceError, SendallTimeoutError, closed_error
from ._sockcalls import _UNSET

if TYPE_CHECKING:
    from ._loop import Loop

__all__ = ["AsyncTLSSocket", "starttls"]

#: Plaintext handed to one SSL_write by sendall: small enough that a timeout
#: can report progress to within a chunk, large enough (four full TLS
#: records) that the per-call overhead is noise.
SENDALL_CHUNK = 64 * 1024


class AsyncTLSSocket(AsyncSocket):
    """A TLS connection with the ``ssl.SSLSocket`` API; made by ``starttls``,
    ``loop.connect(..., tls=...)``, TLS servers, or ``socketloop.ssl``.

    ``.socket`` is the ``ssl.SSLSocket``.  Blocking calls (handshake, reads,
    writes, ``unwrap``) suspend only the calling loop thread; timeouts cover
    each of them.  ``getpeercert``, ``cipher``, ``version``,
    ``selected_alpn_protocol``, ``pending``, ``server_hostname``, ... are the
    ``SSLSocket``'s own.
    """

    __slots__ = ()

    _tls = True
    socket: _ssl.SSLSocket

    def _tls_call(self, op: Any, *args: Any) -> Any:
        """Run an SSL operation, waiting in the direction OpenSSL asks for."""
        return self._tls_until(_UNSET, op, *args)

    def _tls_until(self, deadline: Any, op: Any, *args: Any) -> Any:
        # ``deadline`` _UNSET: the socket's timeout, counted from the first wait.
        try:
            return op(*args)
        except _ssl.SSLWantReadError:
            if self._timeout == 0.0:
                raise
            writing = False
        except _ssl.SSLWantWriteError:
            if self._timeout == 0.0:
                raise
            writing = True
        if deadline is _UNSET:
            deadline = self._deadline()
        while True:
            self._wait(writing, deadline)
            try:
                return op(*args)
            except _ssl.SSLWantReadError:
                writing = False
            except _ssl.SSLWantWriteError:
                writing = True

    def _recv_into_until(self, buffer: Any, deadline: float | None) -> int:
        result: int = self._tls_until(deadline, self.socket.recv_into, buffer)
        return result

    def _send_until(self, data: Any, deadline: float | None) -> int:
        if self._sending:
            raise BusyResourceError(f"another thread is in sendall() on {self!r}")
        result: int = self._tls_until(deadline, self.socket.send, data)
        return result

    def do_handshake(self, block: bool = False) -> None:
        """Perform the TLS handshake (suspends only the calling thread).

        Raises ``ssl.SSLError`` (``ssl.SSLCertVerificationError`` when the
        peer's certificate is refused), ``TimeoutError`` per ``settimeout``.
        """
        self._tls_call(self.socket.do_handshake)

    def recv(self, bufsize: int = 1024, flags: int = 0, /) -> bytes:
        if flags:
            raise ValueError(f"non-zero flags not allowed in calls to recv() on {type(self)}")
        result: bytes = self._tls_call(self.socket.recv, bufsize)
        self._spent()
        return result

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0, /) -> int:
        if flags:
            raise ValueError(f"non-zero flags not allowed in calls to recv_into() on {type(self)}")
        result: int = self._tls_call(self.socket.recv_into, buffer, nbytes)
        self._spent()
        return result

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        """``SSLSocket.read``: up to ``len`` bytes (or into ``buffer``)."""
        if buffer is None:
            return self._tls_call(self.socket.read, len)
        return self._tls_call(self.socket.read, len, buffer)

    def send(self, data: Any, flags: int = 0, /) -> int:
        if flags:
            raise ValueError(f"non-zero flags not allowed in calls to send() on {type(self)}")
        if self._sending:
            raise BusyResourceError(f"another thread is in sendall() on {self!r}")
        result: int = self._tls_call(self.socket.send, data)
        self._spent()
        return result

    def write(self, data: Any) -> int:
        """``SSLSocket.write``: send ``data``, return the count.

        ``ValueError`` once closed or unwrapped (``send`` would reach the
        plain socket then), as with ``ssl.SSLSocket``.
        """
        if self._sending:
            raise BusyResourceError(f"another thread is in sendall() on {self!r}")
        result: int = self._tls_call(self.socket.write, data)
        self._spent()
        return result

    def sendall(self, data: Any, flags: int = 0, /) -> None:
        if flags:
            raise ValueError(f"non-zero flags not allowed in calls to sendall() on {type(self)}")
        if self._sending:
            raise BusyResourceError(f"another thread is in sendall() on {self!r}")
        self._sending = True
        try:
            with memoryview(data) as view, view.cast("B") as octets:
                total = len(octets)
                if not total and self.socket.fileno() < 0:
                    raise closed_error("TLS socket")
                sent = 0
                deadline = self._deadline()
                while sent < total:
                    chunk = octets[sent : sent + SENDALL_CHUNK]
                    try:
                        sent += self._tls_send_until(chunk, deadline)
                    except TimeoutError:
                        raise SendallTimeoutError(sent) from None
            self._spent()
        finally:
            self._sending = False

    def _tls_send_until(self, chunk: Any, deadline: float | None) -> int:
        # As _tls_call, but against the deadline of the whole sendall.
        writing = True
        while True:
            try:
                return self.socket.send(chunk)
            except _ssl.SSLWantReadError:
                writing = False
            except _ssl.SSLWantWriteError:
                writing = True
            if self._timeout == 0.0:
                raise BlockingIOError("the TLS socket is not ready for writing")
            self._wait(writing, deadline)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send a file's contents (through TLS, so by reading and sending)."""
        if self._timeout == 0.0:
            raise ValueError("non-blocking sockets are not supported")
        return self._sendfile_use_send(file, offset, count)

    def _sendfile_use_sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        raise _socket._GiveupOnSendfile(  # type: ignore[attr-defined]
            "os.sendfile() cannot send through TLS"
        )

    # As ssl.SSLSocket: ValueError once TLS is set up, the plain socket's
    # answer (an OSError) before; never a wait, so the SSLSocket decides.
    def recvfrom(self, bufsize: int, flags: int = 0, /) -> tuple[bytes, Any]:
        return self.socket.recvfrom(bufsize, flags)

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0, /) -> tuple[int, Any]:
        return self.socket.recvfrom_into(buffer, nbytes, flags)

    def recvmsg(self, *args: Any) -> Any:
        raise NotImplementedError(f"recvmsg not allowed on instances of {type(self)}")

    def recvmsg_into(self, *args: Any) -> Any:
        raise NotImplementedError(f"recvmsg_into not allowed on instances of {type(self)}")

    def sendto(
        self, data: Any, flags_or_address: Any = _UNSET, address: Any = _UNSET, /, *extra: Any
    ) -> int:
        arguments = [arg for arg in (flags_or_address, address) if arg is not _UNSET]
        return int(self.socket.sendto(data, *arguments, *extra))

    def sendmsg(self, *args: Any) -> int:
        raise NotImplementedError(f"sendmsg not allowed on instances of {type(self)}")

    def connect(self, address: Any, /) -> None:
        """Connect a TLS socket wrapped before it was connected, then handshake.

        As with ``ssl.SSLSocket``: the handshake follows the connection when
        the socket was wrapped with ``do_handshake_on_connect`` (the
        default); both suspend only the calling thread, bounded by the
        timeout.  ``ValueError`` when already connected or server-side.
        """
        ssl_sock: Any = self.socket  # (typeshed lacks the SSLSocket's plain attributes)
        if ssl_sock.server_side:
            raise ValueError("can't connect in server-side mode")
        if _is_connected(ssl_sock):
            raise ValueError("attempt to connect already-connected SSLSocket!")
        # What ssl.SSLSocket.connect does, with the wait made cooperative:
        # the TLS object first, then the connection of the fd as a plain
        # socket (the SSLSocket's own connect_ex cannot be repeated while a
        # non-blocking connection is in progress), then the handshake.
        ssl_sock._sslobj = ssl_sock.context._wrap_socket(
            ssl_sock,
            False,
            ssl_sock.server_hostname,
            owner=ssl_sock,
            session=ssl_sock._session,
        )
        plain_connect_ex = _originals.socket_class.connect_ex.__get__(ssl_sock)
        try:
            self._connect(self._resolve(address), self._deadline(), plain_connect_ex)
        except BlockingIOError:
            raise  # non-blocking and in progress: the TLS object stays, as in CPython
        except BaseException:
            ssl_sock._sslobj = None
            raise
        ssl_sock._connected = True
        if ssl_sock.do_handshake_on_connect:
            self.do_handshake()

    def connect_ex(self, address: Any, /) -> int:
        """Like ``connect`` but return an errno instead of raising ``OSError``."""
        return super().connect_ex(address)

    def accept(self) -> tuple[AsyncSocket, Any]:
        """Accept a connection on a TLS listening socket; return ``(AsyncTLSSocket, address)``.

        As ``ssl.SSLSocket.accept``: the new connection is wrapped with this
        socket's context, server-side, and handshakes at once when this
        socket was wrapped with ``do_handshake_on_connect``.  Suspends only
        the calling thread (the accept and the handshake).
        """
        ssl_sock: Any = self.socket
        fd, address = self._read_op(ssl_sock._accept)
        plain = _originals.socket_class(ssl_sock.family, ssl_sock.type, ssl_sock.proto, fd)
        conn = AsyncSocket(plain, self._loop, timeout=_socket.getdefaulttimeout())
        tls = starttls(
            conn,
            ssl_sock.context,
            server_side=True,
            do_handshake=ssl_sock.do_handshake_on_connect,
            suppress_ragged_eofs=ssl_sock.suppress_ragged_eofs,
        )
        return tls, address

    def unwrap(self) -> AsyncSocket:
        """Shut TLS down (close_notify both ways) and return the plain async socket."""
        ssl_sock = self.socket
        self._tls_call(ssl_sock.unwrap)
        # SSLSocket.unwrap returns itself, still an SSLSocket: move the fd to a
        # plain socket object so the connection goes on in clear text.
        family, type_, proto = ssl_sock.family, ssl_sock.type, ssl_sock.proto
        plain = _originals.socket_class(family, type_, proto, ssl_sock.detach())
        self._closed = True
        asock = AsyncSocket(plain, self._loop, timeout=self._timeout)
        asock._poller, self._poller = self._poller, None
        return asock

    def dup(self) -> NoReturn:
        raise NotImplementedError(f"Can't dup() {type(self).__name__} instances")

    # The rest of the SSLSocket API, delegated.
    def getpeercert(self, binary_form: bool = False) -> Any:
        return self.socket.getpeercert(binary_form)

    def cipher(self) -> tuple[str, str, int] | None:
        return self.socket.cipher()

    def shared_ciphers(self) -> list[tuple[str, str, int]] | None:
        return self.socket.shared_ciphers()

    def compression(self) -> str | None:
        return self.socket.compression()

    def version(self) -> str | None:
        return self.socket.version()

    def selected_alpn_protocol(self) -> str | None:
        return self.socket.selected_alpn_protocol()

    def selected_npn_protocol(self) -> str | None:
        return self.socket.selected_npn_protocol()

    def pending(self) -> int:
        """Bytes of decrypted data buffered by OpenSSL, readable without waiting."""
        return self.socket.pending()

    def get_channel_binding(self, cb_type: str = "tls-unique") -> bytes | None:
        return self.socket.get_channel_binding(cb_type)

    def verify_client_post_handshake(self) -> None:
        self.socket.verify_client_post_handshake()

    @property
    def context(self) -> _ssl.SSLContext:
        return self.socket.context

    @context.setter
    def context(self, context: _ssl.SSLContext) -> None:
        self.socket.context = context

    @property
    def _sslobj(self) -> Any:
        """The ``SSLSocket``'s TLS object (some code, tests among it, reads it)."""
        return self.socket._sslobj  # type: ignore[attr-defined]

    @property
    def session(self) -> _ssl.SSLSession | None:
        return self.socket.session

    @session.setter
    def session(self, session: _ssl.SSLSession | None) -> None:
        self.socket.session = session

    @property
    def session_reused(self) -> bool | None:
        return self.socket.session_reused

    @property
    def server_side(self) -> bool:
        return self.socket.server_side

    @property
    def server_hostname(self) -> str | None:
        return self.socket.server_hostname

    def starttls(self, *args: Any, **kwargs: Any) -> AsyncTLSSocket:
        raise ValueError("TLS is already active on this socket")

    def __repr__(self) -> str:
        return super().__repr__().replace("AsyncSocket", "AsyncTLSSocket", 1)


def starttls(
    asock: AsyncSocket,
    context: _ssl.SSLContext,
    server_hostname: str | bytes | None = None,
    server_side: bool = False,
    *,
    do_handshake: bool = True,
    suppress_ragged_eofs: bool = True,
    session: _ssl.SSLSession | None = None,
) -> AsyncTLSSocket:
    """The body of ``AsyncSocket.starttls``."""
    if isinstance(asock, AsyncTLSSocket):
        raise ValueError("TLS is already active on this socket")
    raw = asock.socket
    fd = raw.fileno()
    for loop in asock._loops():
        if loop._has_waiter(fd):
            raise BusyResourceError(f"cannot start TLS while a thread waits on {asock!r}")
    # As with ssl.SSLSocket, a socket not connected yet handshakes in
    # connect() (or, listening, in accept()), not now.
    connected = _is_connected(raw)
    # The base class method: a socketloop.ssl.SSLContext would route back here.
    ssl_sock = _originals.SSLContext_wrap_socket(
        context,
        raw,
        server_side=server_side,
        do_handshake_on_connect=False,
        suppress_ragged_eofs=suppress_ragged_eofs,
        server_hostname=server_hostname,
        session=session,
    )
    # The fd (and its poller registration) now belongs to the TLS socket.
    tls = AsyncTLSSocket(ssl_sock, asock._loop, timeout=asock._timeout, stream=True)
    tls._poller, asock._poller = asock._poller, None
    asock._closed = True
    # Remembered for connect() and accept(); the SSLSocket itself never
    # handshakes on its own (it was made with do_handshake_on_connect=False).
    ssl_sock.do_handshake_on_connect = do_handshake  # type: ignore[attr-defined]
    if do_handshake and connected:
        try:
            tls.do_handshake()
        except BaseException:
            tls.close()
            raise
    return tls


def _is_connected(sock: _socket.socket) -> bool:
    """Whether ``sock`` has a peer (the test ``ssl.SSLSocket`` makes)."""
    try:
        _originals.socket_class.getpeername(sock)
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise
        return False
    return True


def wrap_new(
    loop: Loop | None,
    sock: _socket.socket,
    context: _ssl.SSLContext,
    **kwargs: Any,
) -> AsyncTLSSocket:
    """Wrap a plain ``socket.socket`` and start TLS on it."""
    return starttls(AsyncSocket(sock, loop), context, **kwargs)


def cooperative_wrap_socket(
    self: _ssl.SSLContext,
    sock: Any,
    server_side: bool = False,
    do_handshake_on_connect: bool = True,
    suppress_ragged_eofs: bool = True,
    server_hostname: str | bytes | None = None,
    session: _ssl.SSLSession | None = None,
) -> Any:
    """``SSLContext.wrap_socket`` that turns an ``AsyncSocket`` into an ``AsyncTLSSocket``.

    For an async socket the handshake (when ``do_handshake_on_connect``)
    suspends only the calling loop thread, within the socket's timeout; any
    other socket is wrapped exactly as the standard library does.
    """
    if isinstance(sock, AsyncSocket):
        return starttls(
            sock,
            self,
            server_hostname,  # bytes too: the context encodes it, as for any socket
            server_side,
            do_handshake=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            session=session,
        )
    return _originals.SSLContext_wrap_socket(
        self,
        sock,
        server_side=server_side,
        do_handshake_on_connect=do_handshake_on_connect,
        suppress_ragged_eofs=suppress_ragged_eofs,
        server_hostname=server_hostname,
        session=session,
    )


class SSLContext(_ssl.SSLContext):
    """``ssl.SSLContext`` whose ``wrap_socket`` also takes socketloop sockets."""

    wrap_socket = cooperative_wrap_socket


def create_default_context(
    purpose: _ssl.Purpose = _ssl.Purpose.SERVER_AUTH,
    *,
    cafile: str | None = None,
    capath: str | None = None,
    cadata: str | bytes | None = None,
) -> SSLContext:
    """``ssl.create_default_context`` returning a cooperative ``SSLContext``.

    The settings are exactly the standard library's (certificate and host
    name verification for ``SERVER_AUTH``, system trust store unless CA
    locations are given): the context is made by it and then given this
    module's class, which only adds how ``wrap_socket`` treats async sockets.
    """
    context = _originals.create_default_context(
        purpose, cafile=cafile, capath=capath, cadata=cadata
    )
    context.__class__ = SSLContext
    return context  # type: ignore[return-value]


register_starttls(starttls)
