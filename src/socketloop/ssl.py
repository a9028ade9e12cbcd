"""A cooperative ``ssl`` module: ``SSLContext.wrap_socket`` accepts async sockets.

Use it wherever a library takes an ``ssl.SSLContext`` and calls
``context.wrap_socket(sock)`` on the socket it was given::

    import http.client
    from socketloop import ssl as cooperative_ssl

    context = cooperative_ssl.create_default_context()
    conn = http.client.HTTPSConnection(host, context=context)
    conn._create_connection = lambda addr, timeout, source: loop.connect(*addr)

Wrapping an ``AsyncSocket`` returns an ``AsyncTLSSocket`` whose handshake
and I/O suspend only the calling loop thread; wrapping a plain socket behaves
exactly like the standard library.  Everything else (constants, exceptions,
``SSLSocket``, ``Purpose``, ...) is the standard ``ssl`` module's, re-exported.
"""

from __future__ import annotations

import ssl as _stdlib_ssl
from typing import Any

from . import _originals
from ._asocket import AsyncSocket
from ._tls import AsyncTLSSocket, starttls  # noqa: F401  (AsyncTLSSocket: in __all__)

globals().update(
    {name: getattr(_stdlib_ssl, name) for name in dir(_stdlib_ssl) if not name.startswith("_")}
)

__all__ = sorted(  # noqa: PLE0605  (the standard module's names, computed)
    {name for name in dir(_stdlib_ssl) if not name.startswith("_")}
    | {"AsyncTLSSocket", "SSLContext", "create_default_context"}
)


def cooperative_wrap_socket(
    self: _stdlib_ssl.SSLContext,
    sock: Any,
    server_side: bool = False,
    do_handshake_on_connect: bool = True,
    suppress_ragged_eofs: bool = True,
    server_hostname: str | bytes | None = None,
    session: _stdlib_ssl.SSLSession | None = None,
) -> Any:
    """``SSLContext.wrap_socket`` that turns an ``AsyncSocket`` into an ``AsyncTLSSocket``.

    For an async socket the handshake (when ``do_handshake_on_connect``)
    suspends only the calling loop thread, within the socket's timeout; any
    other socket is wrapped exactly as the standard library does.
    """
    if isinstance(sock, AsyncSocket):
        hostname = (
            server_hostname.decode("idna")
            if isinstance(server_hostname, bytes)
            else server_hostname
        )
        return starttls(
            sock,
            self,
            hostname,
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


class SSLContext(_stdlib_ssl.SSLContext):
    """``ssl.SSLContext`` whose ``wrap_socket`` also takes socketloop sockets."""

    wrap_socket = cooperative_wrap_socket


def create_default_context(
    purpose: _stdlib_ssl.Purpose = _stdlib_ssl.Purpose.SERVER_AUTH,
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
