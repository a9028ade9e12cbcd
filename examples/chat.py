"""A chat room: every line a client sends goes to all the others.

Run:  python examples/chat.py [--port 8009]
Try:  nc 127.0.0.1 8009   in two terminals, and type.

Each client has a reader thread (the connection handler) and a writer thread
fed by a socketloop.Queue, so a slow client delays only its own messages and
two senders never write to one socket at once.
"""

from __future__ import annotations

import argparse
import itertools
import signal

import socketloop
import socketloop as loop

rooms: dict[str, socketloop.Queue[bytes | None]] = {}
numbers = itertools.count(1)


def writer(conn: socketloop.AsyncSocket, outbox: socketloop.Queue[bytes | None]) -> None:
    try:
        while (message := outbox.get()) is not None:
            conn.sendall(message)
    except OSError:
        pass  # the client went away (or its connection was closed): drop the rest


def client(conn: socketloop.AsyncSocket) -> None:
    name = f"user{next(numbers)}"
    outbox: socketloop.Queue[bytes | None] = socketloop.Queue()
    loop.newthread(writer, conn, outbox)
    outbox.put(f"welcome, you are {name}\n".encode())
    rooms[name] = outbox
    try:
        with conn.makefile("rb") as lines:
            for line in lines:
                for other, box in rooms.items():
                    if other != name:
                        box.put(f"{name}: ".encode() + line)
    except OSError:
        pass  # the client went away
    finally:
        del rooms[name]
        outbox.put(None)  # the writer ends after what is queued before it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8009, help="0 picks a free port")
    args = parser.parse_args()
    server = loop.newserver(args.host, args.port, client)
    print(f"chat on {args.host}:{server.port}", flush=True)
    # Ctrl-C: leave start() at the next step instead of raising KeyboardInterrupt
    # wherever the loop happens to be; close() then ends the connections' threads.
    loop.on_signal(signal.SIGINT, lambda signum: loop.stop())
    try:
        loop.start()  # runs until stopped: an open server keeps it running
    finally:
        loop.on_signal(signal.SIGINT, None)
        server.close()
        loop.get_loop().close()


if __name__ == "__main__":
    main()
