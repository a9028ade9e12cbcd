"""The standard library's own objects, captured before ``patch()`` can replace them.

Charter: socketloop's internals must always reach the real, blocking
standard-library functions and classes (a patched ``socket.getaddrinfo``
calling itself through socketloop would recurse, and a patched
``socket.socket`` would wrap sockets twice).  Every internal module takes
them from here, never from the possibly patched modules at call time.

The standard library's helpers written in Python (``socketpair``,
``create_server``, ``fromfd``, ``getfqdn``, ...) look ``socket`` and their
other collaborators up in the ``socket`` module's namespace *when called*,
so after ``patch()`` they would build cooperative sockets, which the drop-in
would then wrap a second time.  Here they are rebound to a snapshot of that
namespace taken at import (before any patching): they always build plain
sockets.
"""

from __future__ import annotations

import _thread
import select as _select
import socket as _socket
import ssl as _ssl
import time as _time
import types
from typing import Any

#: The ``socket`` module's namespace as it was before anything could patch it.
_socket_namespace: dict[str, Any] = dict(vars(_socket))


def _unpatched(function: Any) -> Any:
    """``function`` (from the ``socket`` module), seeing only the original names."""
    if not isinstance(function, types.FunctionType):
        return function  # a C function: nothing to rebind
    clone = types.FunctionType(
        function.__code__,
        _socket_namespace,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    clone.__kwdefaults__ = function.__kwdefaults__
    clone.__doc__ = function.__doc__
    clone.__qualname__ = function.__qualname__
    return clone


socket_class = _socket.socket
getaddrinfo = _socket.getaddrinfo
gethostbyname = _socket.gethostbyname
gethostbyname_ex = _socket.gethostbyname_ex
gethostbyaddr = _socket.gethostbyaddr
getnameinfo = _socket.getnameinfo
getfqdn = _unpatched(_socket.getfqdn)
create_server = _unpatched(_socket.create_server)
socketpair = _unpatched(_socket.socketpair)
fromfd = _unpatched(_socket.fromfd)
create_connection = _unpatched(_socket.create_connection)
has_dualstack_ipv6 = _unpatched(_socket.has_dualstack_ipv6)
SSLContext = _ssl.SSLContext
SSLContext_wrap_socket = _ssl.SSLContext.wrap_socket
create_default_context = _ssl.create_default_context
poll = _select.poll
select = _select.select
sleep = _time.sleep
allocate_lock = _thread.allocate_lock
