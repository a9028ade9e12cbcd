"""Echo server: socketloop.coro (symmetric loop)."""

from common import HOST, READ_SIZE, port

from socketloop import AsyncSocket
from socketloop import coro as loop


def handle(sock: AsyncSocket) -> None:
    while data := sock.recv(READ_SIZE):
        sock.sendall(data)


loop.newserver(HOST, port(), handle)
loop.start()
