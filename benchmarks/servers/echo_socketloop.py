"""Echo server: socketloop, default (asymmetric) loop."""

from common import HOST, READ_SIZE, port

import socketloop as loop


def handle(sock: loop.AsyncSocket) -> None:
    while data := sock.recv(READ_SIZE):
        sock.sendall(data)


loop.newserver(HOST, port(), handle)
loop.start()
