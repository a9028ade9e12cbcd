"""Echo server: trio."""

from functools import partial

import trio
from common import BACKLOG, HOST, READ_SIZE, port


async def handle(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some(READ_SIZE):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


trio.run(partial(trio.serve_tcp, handle, port(), host=HOST, backlog=BACKLOG))
