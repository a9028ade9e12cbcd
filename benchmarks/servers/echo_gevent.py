"""Echo server: gevent StreamServer (no monkey-patching needed)."""

from typing import Any

from common import BACKLOG, HOST, READ_SIZE, port
from gevent.server import StreamServer


def handle(sock: Any, address: Any) -> None:
    try:
        while data := sock.recv(READ_SIZE):
            sock.sendall(data)
    except ConnectionError:  # a reset is routine here: no traceback on stderr
        pass


StreamServer((HOST, port()), handle, backlog=BACKLOG).serve_forever()
