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

from . import _tls

globals().update(
    {name: getattr(_stdlib_ssl, name) for name in dir(_stdlib_ssl) if not name.startswith("_")}
)

__all__ = sorted(  # noqa: PLE0605  (the standard module's names, computed)
    {name for name in dir(_stdlib_ssl) if not name.startswith("_")}
    | {"AsyncTLSSocket", "SSLContext", "create_default_context"}
)


# The cooperative context lives with the TLS layer (which ``connect(tls=True)``
# uses); this module is its public face.  Bound after the standard names,
# which they replace.
AsyncTLSSocket = _tls.AsyncTLSSocket
SSLContext = _tls.SSLContext
SSLContext.__module__ = __name__
cooperative_wrap_socket = _tls.cooperative_wrap_socket
create_default_context = _tls.create_default_context
