"""The standard library's own objects, captured before ``patch()`` can replace them.

Charter: socketloop's internals must always reach the real, blocking
standard-library functions and classes (a patched ``socket.getaddrinfo``
calling itself through socketloop would recurse, and a patched
``socket.socket`` would wrap sockets twice).  Every internal module takes
them from here, never from the possibly patched modules at call time.
"""

from __future__ import annotations

import _thread
import select as _select
import socket as _socket
import ssl as _ssl
import time as _time

socket_class = _socket.socket
getaddrinfo = _socket.getaddrinfo
gethostbyname = _socket.gethostbyname
gethostbyname_ex = _socket.gethostbyname_ex
gethostbyaddr = _socket.gethostbyaddr
getnameinfo = _socket.getnameinfo
getfqdn = _socket.getfqdn
create_server = _socket.create_server
socketpair = _socket.socketpair
fromfd = _socket.fromfd
SSLContext = _ssl.SSLContext
SSLContext_wrap_socket = _ssl.SSLContext.wrap_socket
create_default_context = _ssl.create_default_context
poll = _select.poll
select = _select.select
sleep = _time.sleep
allocate_lock = _thread.allocate_lock
