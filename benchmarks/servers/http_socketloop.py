"""HTTP/1.1 keep-alive "hello" responder: socketloop, default loop."""

from common import END, HOST, READ_SIZE, RESPONSE, port

import socketloop as loop


def handle(sock: loop.AsyncSocket) -> None:
    buf = b""
    while data := sock.recv(READ_SIZE):
        buf += data
        while (end := buf.find(END)) >= 0:
            buf = buf[end + 4 :]
            sock.sendall(RESPONSE)


loop.newserver(HOST, port(), handle)
loop.start()
