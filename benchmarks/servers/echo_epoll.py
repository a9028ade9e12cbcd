"""Echo server: pure-Python epoll callbacks, no coroutines (the Python ceiling).

Level-triggered, like the C reference: one recv of up to 64 KiB per
readiness event, sent straight back; what does not fit is kept and the
connection waits for EPOLLOUT instead of reading (back-pressure).
"""

import select
import socket
from collections.abc import Callable

from common import READ_SIZE, listener

IN, OUT = select.EPOLLIN, select.EPOLLOUT
server = listener()
server.setblocking(False)
ep = select.epoll()
handlers: dict[int, Callable[[], None]] = {}
pending: dict[int, bytes] = {}


def drop(sock: socket.socket) -> None:
    fd = sock.fileno()
    handlers.pop(fd, None)
    pending.pop(fd, None)
    sock.close()


def on_accept() -> None:
    for _ in range(64):
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        handlers[conn.fileno()] = make_handler(conn)
        ep.register(conn.fileno(), IN)


def make_handler(sock: socket.socket) -> Callable[[], None]:
    fd = sock.fileno()
    recv, send = sock.recv, sock.send

    def on_event() -> None:
        try:
            data = pending.pop(fd, None)
            flushing = data is not None
            if data is None:
                data = recv(READ_SIZE)
                if not data:
                    drop(sock)
                    return
            try:
                n = send(data)
            except BlockingIOError:
                n = 0
            if n < len(data):
                pending[fd] = data[n:]
                if not flushing:
                    ep.modify(fd, OUT)
            elif flushing:
                ep.modify(fd, IN)
        except BlockingIOError:
            pass
        except OSError:
            drop(sock)

    return on_event


handlers[server.fileno()] = on_accept
ep.register(server.fileno(), IN)
while True:
    for fd, _ in ep.poll():
        handler = handlers.get(fd)
        if handler is not None:
            handler()
