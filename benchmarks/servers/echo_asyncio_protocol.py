"""Echo server: asyncio Protocol callbacks (``uvloop_protocol`` runs it on uvloop).

Flow control as in the C reference: while the transport's write buffer is
full, stop reading.
"""

import asyncio

from common import BACKLOG, HOST, port


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, HOST, port(), backlog=BACKLOG)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
