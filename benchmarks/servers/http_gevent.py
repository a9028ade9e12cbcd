"""HTTP/1.1 keep-alive "hello" responder: a raw gevent StreamServer loop (no pywsgi)."""

from typing import Any

from common import BACKLOG, END, HOST, READ_SIZE, RESPONSE, port
from gevent.server import StreamServer


def handle(sock: Any, address: Any) -> None:
    buf = b""
    try:
        while data := sock.recv(READ_SIZE):
            buf += data
            while (end := buf.find(END)) >= 0:
                buf = buf[end + 4 :]
                sock.sendall(RESPONSE)
    except ConnectionError:  # a reset is routine here: no traceback on stderr
        pass


StreamServer((HOST, port()), handle, backlog=BACKLOG).serve_forever()
