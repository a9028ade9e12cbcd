"""HTTP/1.1 keep-alive "hello" responder: asyncio Protocol (also run on uvloop)."""

import asyncio

from common import BACKLOG, END, HOST, RESPONSE, port


class Hello(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while (end := buf.find(END)) >= 0:
            buf = buf[end + 4 :]
            self.transport.write(RESPONSE)
        self.buf = buf


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Hello, HOST, port(), backlog=BACKLOG)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
