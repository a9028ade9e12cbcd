"""What every benchmark server shares: address, backlog, the HTTP reply.

Each server is started as ``python SERVER.py PORT`` and listens on
127.0.0.1:PORT until it is killed.  Echo servers read up to 64 KiB and
write all of it back until EOF; HTTP servers read until the blank line
that ends the request headers, answer with ``RESPONSE`` and keep the
connection open.
"""

from __future__ import annotations

import socket
import sys

HOST = "127.0.0.1"
#: The same listen backlog for every server: deep enough for the idle
#: workload's bursts of 256 connects.
BACKLOG = socket.SOMAXCONN
#: Bytes asked for per read.
READ_SIZE = 65536
#: The one HTTP reply (keep-alive is the HTTP/1.1 default).
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world!"
#: End of the request headers.
END = b"\r\n\r\n"


def port() -> int:
    """The port given on the command line."""
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} PORT")
    return int(sys.argv[1])


def listener() -> socket.socket:
    """A bound, listening socket for the servers that take one ready-made."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port()))
    sock.listen(BACKLOG)
    return sock
