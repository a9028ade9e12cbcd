"""An echo server: every connection gets back what it sends, each in its own loop thread.

Run:  python examples/echo_server.py [--port 8007]
Try:  printf 'hello\\n' | nc 127.0.0.1 8007      (Ctrl-C stops the server)
"""

from __future__ import annotations

import argparse
import signal

import socketloop
import socketloop as loop


def echo(conn: socketloop.AsyncSocket) -> None:
    # recv suspends only this connection's thread; the server closes conn afterwards.
    while data := conn.recv(65536):
        conn.sendall(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8007, help="0 picks a free port")
    args = parser.parse_args()
    server = loop.newserver(args.host, args.port, echo)
    print(f"echo server on {args.host}:{server.port}", flush=True)
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
