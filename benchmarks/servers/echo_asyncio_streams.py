"""Echo server: asyncio streams (``uvloop_streams`` runs the same code on uvloop)."""

import asyncio

from common import BACKLOG, HOST, READ_SIZE, port


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, HOST, port(), backlog=BACKLOG)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
