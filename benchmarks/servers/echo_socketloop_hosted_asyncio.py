"""Echo server: socketloop threads (the code of ``echo_socketloop``) hosted on asyncio."""

import asyncio

from common import HOST, READ_SIZE, port

import socketloop as loop
import socketloop.aio


def handle(sock: loop.AsyncSocket) -> None:
    while data := sock.recv(READ_SIZE):
        sock.sendall(data)


async def main() -> None:
    async with socketloop.aio.hosted():
        loop.newserver(HOST, port(), handle)  # open until killed: hosted() waits


if __name__ == "__main__":
    asyncio.run(main())
