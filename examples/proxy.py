"""A TCP proxy: relays each connection to a target, both directions at once.

Run:  python examples/proxy.py --target 127.0.0.1:8007 [--port 8008]

Each connection gets two loop threads, one per direction; when either side
closes, the other direction is shut down so the peer sees end of stream.
"""

from __future__ import annotations

import argparse
import signal
import socket
from collections.abc import Callable

import socketloop
import socketloop as loop


def pipe(source: socketloop.AsyncSocket, sink: socketloop.AsyncSocket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass  # reset or closed: the other direction notices too
    try:
        sink.shutdown(socket.SHUT_WR)  # pass the end of stream on
    except OSError:
        pass


def make_handler(host: str, port: int) -> Callable[[socketloop.AsyncSocket], None]:
    def relay(client: socketloop.AsyncSocket) -> None:
        with loop.connect(host, port, timeout=10) as upstream:
            back = loop.newthread(pipe, upstream, client)
            pipe(client, upstream)
            back.join()  # the server closes client when this handler returns

    return relay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, metavar="HOST:PORT")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8008, help="0 picks a free port")
    args = parser.parse_args()
    target_host, _, target_port = args.target.rpartition(":")
    server = loop.newserver(args.host, args.port, make_handler(target_host, int(target_port)))
    print(f"proxy on {args.host}:{server.port} -> {args.target}", flush=True)
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
