"""HTTP/1.1 keep-alive "hello" responder: asyncio streams (also run on uvloop)."""

import asyncio

from common import BACKLOG, END, HOST, READ_SIZE, RESPONSE, port


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    buf = b""
    try:
        while data := await reader.read(READ_SIZE):
            buf += data
            while (end := buf.find(END)) >= 0:
                buf = buf[end + 4 :]
                writer.write(RESPONSE)
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
