"""A drop-in ``socket`` module whose sockets are cooperative in loop threads.

Pass it wherever a library accepts a socket module::

    client = pymemcache.Client(("127.0.0.1", 11211), socket_module=socketloop.socket)

Every constant, exception and helper of the standard ``socket`` module is
re-exported unchanged, except:

- ``socket``: creates an ``AsyncSocket``.  Used from a
  loop thread it suspends only that thread; elsewhere it blocks like a plain
  socket.  It belongs to no loop until a loop thread first waits on it.
- ``create_connection``, ``create_server``, ``socketpair``, ``fromfd``:
  return such sockets.
- ``getaddrinfo``, ``gethostbyname``, ``gethostbyname_ex``, ``gethostbyaddr``,
  ``getnameinfo``, ``getfqdn``: from a loop thread they resolve off the loop
  (the loop's resolver, or its resolver thread pool) while only the calling
  thread waits; elsewhere they are the standard, blocking functions.
"""

from __future__ import annotations

import socket as _stdlib_socket
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from greenlet import getcurrent

from . import _originals
from ._address import is_numeric_host
from ._asocket import AsyncSocket
from ._loop import Loop
from ._threads import Thread

_exported = [name for name in _stdlib_socket.__all__ if name != "socket"]
globals().update({name: getattr(_stdlib_socket, name) for name in _exported})

__all__ = sorted(  # noqa: PLE0605  (the standard module's names, computed)
    {*_exported, "socket", "SocketType"}
)

R = TypeVar("R")

_GLOBAL_DEFAULT_TIMEOUT: Any = getattr(_stdlib_socket, "_GLOBAL_DEFAULT_TIMEOUT", object())


class _SocketClass(type):
    """Makes ``isinstance(x, socket)`` hold for every socket, cooperative or not.

    Under ``patch()`` this class *is* ``socket.socket``: a library's check
    ``isinstance(sock, socket.socket)`` must keep accepting the standard
    sockets (and ``ssl.SSLSocket``) made before patching or by the standard
    library itself, and also accept sockets from ``loop.wrap`` and
    ``loop.connect``.
    """

    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, (AsyncSocket, _originals.socket_class))

    def __subclasscheck__(cls, subclass: Any) -> bool:
        return isinstance(subclass, type) and issubclass(
            subclass, (AsyncSocket, _originals.socket_class)
        )


class socket(AsyncSocket, metaclass=_SocketClass):
    """``socket.socket(family, type, proto, fileno)``, cooperative in loop threads."""

    __slots__ = ()

    def __init__(
        self,
        family: int = -1,
        type: int = -1,
        proto: int = -1,
        fileno: int | None = None,
    ) -> None:
        if fileno is None:
            if family == -1:
                family = _stdlib_socket.AF_INET
            if type == -1:
                type = _stdlib_socket.SOCK_STREAM
            if proto == -1:
                proto = 0
        super().__init__(_originals.socket_class(family, type, proto, fileno))

    def __repr__(self) -> str:
        # This class stands in for socket.socket: it looks like one.
        return repr(self.socket)

    @classmethod
    def _adopt_plain(cls, sock: _stdlib_socket.socket, loop: Loop | None = None) -> socket:
        """Wrap an existing standard socket in this class.

        Under ``patch()`` the standard library's Python-level helpers
        (``socketpair``, ``create_server``, ``fromfd``) build their result
        with the patched ``socket.socket``, i.e. this class: such a socket
        is returned as it is.
        """
        if isinstance(sock, AsyncSocket):  # (not cls: its isinstance takes plain sockets)
            return sock
        new = cls.__new__(cls)
        AsyncSocket.__init__(new, sock, loop)
        return new


#: As in the standard library, the C base type of every socket: isinstance()
#: holds for plain sockets and (see AsyncSocket.__class__) cooperative ones.
SocketType = _stdlib_socket.SocketType


def _calling_loop() -> Loop | None:
    current = getcurrent()
    return current._loop if isinstance(current, Thread) else None


def _off_loop(fn: Callable[..., R], *args: Any) -> R:
    """Run a blocking resolver function without blocking the loop (in a loop thread)."""
    loop = _calling_loop()
    if loop is None:
        return fn(*args)
    return loop._resolver_pool.run(fn, *args)


def getaddrinfo(
    host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
) -> list[tuple[Any, ...]]:
    """``socket.getaddrinfo``, resolving off the loop in loop threads."""
    loop = _calling_loop()
    if loop is None:
        return _originals.getaddrinfo(host, port, family, type, proto, flags)
    return loop.getaddrinfo(host, port, family, type, proto, flags)


def gethostbyname(hostname: str) -> str:
    """``socket.gethostbyname``, resolving off the loop in loop threads."""
    if is_numeric_host(hostname):
        return _originals.gethostbyname(hostname)
    loop = _calling_loop()
    if loop is None:
        return _originals.gethostbyname(hostname)
    infos = loop.getaddrinfo(hostname, None, _stdlib_socket.AF_INET, _stdlib_socket.SOCK_STREAM)
    return str(infos[0][4][0])


def gethostbyname_ex(hostname: str) -> tuple[str, list[str], list[str]]:
    """``socket.gethostbyname_ex``, resolving off the loop in loop threads."""
    return _off_loop(_originals.gethostbyname_ex, hostname)


def gethostbyaddr(ip_address: str) -> tuple[str, list[str], list[str]]:
    """``socket.gethostbyaddr``, resolving off the loop in loop threads."""
    return _off_loop(_originals.gethostbyaddr, ip_address)


def getnameinfo(sockaddr: tuple[Any, ...], flags: int) -> tuple[str, str]:
    """``socket.getnameinfo``, resolving off the loop in loop threads."""
    if not isinstance(sockaddr, tuple) or not isinstance(flags, int):
        # Refused at once by the C function: no need for a resolver thread.
        # The TypeError's traceback holds this frame: drop the caller's
        # object from it, as the C function holds no reference either.
        try:
            return _originals.getnameinfo(sockaddr, flags)
        finally:
            del sockaddr
    return _off_loop(_originals.getnameinfo, sockaddr, flags)


def getfqdn(name: str = "") -> str:
    """``socket.getfqdn``, resolving off the loop in loop threads."""
    fqdn: str = _off_loop(_originals.getfqdn, name)
    return fqdn


def create_connection(
    address: tuple[str, int],
    timeout: Any = _GLOBAL_DEFAULT_TIMEOUT,
    source_address: tuple[str, int] | None = None,
    *,
    all_errors: bool = False,
) -> socket:
    """``socket.create_connection``: try each resolved address in turn.

    As in the standard library, ``timeout`` applies to each attempt and
    stays set on the returned socket.
    """
    host, port = address
    errors: list[OSError] = []
    # The standard function builds with socket.socket as it is at call time;
    # when that is replaced (by patch(), which makes it this module's class,
    # or by a test's mock) the replacement is used here too.
    factory: Any = _stdlib_socket.socket
    if factory is _originals.socket_class:
        factory = socket
    for family, type_, proto, _canonname, sockaddr in getaddrinfo(
        host, port, 0, _stdlib_socket.SOCK_STREAM
    ):
        sock: socket = factory(family, type_, proto)
        try:
            if timeout is not _GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    if not errors:
        raise OSError("getaddrinfo returns an empty list")
    if all_errors and sys.version_info >= (3, 11):
        raise ExceptionGroup("create_connection failed", errors)  # noqa: F821 (3.11+)
    raise errors[0]


def create_server(
    address: tuple[str, int],
    *,
    family: int = _stdlib_socket.AF_INET,
    backlog: int | None = None,
    reuse_port: bool = False,
    dualstack_ipv6: bool = False,
) -> socket:
    """``socket.create_server``, returning a cooperative listening socket."""
    plain = _originals.create_server(
        address,
        family=family,
        backlog=backlog,
        reuse_port=reuse_port,
        dualstack_ipv6=dualstack_ipv6,
    )
    return socket._adopt_plain(plain)


def socketpair(
    family: int | None = None, type: int = _stdlib_socket.SOCK_STREAM, proto: int = 0
) -> tuple[socket, socket]:
    """``socket.socketpair``, both ends cooperative."""
    a, b = _originals.socketpair(family, type, proto)
    return socket._adopt_plain(a), socket._adopt_plain(b)


def fromfd(fd: int, family: int, type: int, proto: int = 0) -> socket:
    """``socket.fromfd`` (duplicates ``fd``), cooperative."""
    return socket._adopt_plain(_originals.fromfd(fd, family, type, proto))
