"""Client process of ``test_lua_port.py`` (a port of the Lua socketloop test client).

Usage: ``python _lua_port_client.py KIND PORT`` with KIND ``asym`` (``socketloop``) or
``coro`` (``socketloop.coro``).  Runs ``THREADS`` loop threads on that module's default
loop; each connects to 127.0.0.1:PORT, does ``ROUNDS`` rounds of the three messages
(checking that every reply is the message reversed), sends ``close`` and waits for the
server to end the connection.  Prints ``ok <exchanges>`` and exits 0 when every thread
succeeded; any failure makes a thread's ``join()`` raise, which exits non-zero with a
traceback on stderr.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import socketloop

THREADS = 5
ROUNDS = 10
#: Upper bound for the whole run, so a broken server cannot hang the test.
RUN_TIMEOUT = 45.0


def messages(round_number: int) -> list[bytes]:
    """The three messages of one round, as the Lua test sends them."""
    return [b"goone", b"tit", b"erogenous zoone #%d" % round_number]


def client(api: Any, port: int) -> int:
    """One loop thread: 30 exchanges, then ``close``; return the number of exchanges."""
    conn = api.connect("127.0.0.1", port)
    reader = conn.makefile("rb")
    exchanges = 0
    try:
        for round_number in range(ROUNDS):
            for message in messages(round_number):
                conn.sendall(message + b"\n")
                reply = reader.readline()
                if reply != message[::-1] + b"\n":
                    raise AssertionError(f"sent {message!r}, got {reply!r}")
                exchanges += 1
        conn.sendall(b"close\n")
        rest = reader.read()  # the server ends the connection: end of stream
        if rest != b"":
            raise AssertionError(f"unexpected data after close: {rest!r}")
    finally:
        reader.close()
        conn.close()
    return exchanges


def main(argv: list[str]) -> int:
    kind, port = argv[1], int(argv[2])
    api: types.ModuleType = socketloop.coro if kind == "coro" else socketloop
    loop = api.get_loop()
    if loop.symmetric != (kind == "coro"):
        raise AssertionError(f"wrong loop kind for {kind!r}: {loop!r}")
    threads = [api.newthread(client, api, port) for _ in range(THREADS)]
    api.start(RUN_TIMEOUT)
    total = sum(thread.join(0) for thread in threads)  # re-raises a thread's failure
    print(f"ok {total}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
