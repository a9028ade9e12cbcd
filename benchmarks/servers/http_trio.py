"""HTTP/1.1 keep-alive "hello" responder: trio."""

from functools import partial

import trio
from common import BACKLOG, END, HOST, READ_SIZE, RESPONSE, port


async def handle(stream: trio.SocketStream) -> None:
    buf = b""
    try:
        while data := await stream.receive_some(READ_SIZE):
            buf += data
            while (end := buf.find(END)) >= 0:
                buf = buf[end + 4 :]
                await stream.send_all(RESPONSE)
    except trio.BrokenResourceError:
        pass


trio.run(partial(trio.serve_tcp, handle, port(), host=HOST, backlog=BACKLOG))
