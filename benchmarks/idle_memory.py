"""Where the memory of an idle connection goes, in a socketloop echo server.

Opens N connections to an in-process socketloop echo server from a child
process, echoes one message on each (so every connection thread is suspended
in ``recv``, as in the ``idle-10k`` workload), then reports:

- the server process's RSS growth per connection (``VmRSS``), and
- the Python-level allocations per connection that ``tracemalloc`` sees,
  grouped by the source line that made them.

The difference between the two is memory ``tracemalloc`` cannot see, chiefly
each thread's interpreter data-stack chunk (greenlet gives every greenlet its
own, allocated with ``mmap``; its first page is touched).

usage: python benchmarks/idle_memory.py [--connections N] [--top K] [--loop default|coro]
"""

from __future__ import annotations

import argparse
import gc
import linecache
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import socketloop
from socketloop import AsyncSocket

CLIENT = textwrap.dedent(
    """
    import socket, sys
    port, n = int(sys.argv[1]), int(sys.argv[2])
    conns = []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port))
        c.sendall(b"x" * 64)
        conns.append(c)
    for c in conns:
        got = b""
        while len(got) < 64:
            got += c.recv(64 - len(got))
    print("ready", flush=True)
    sys.stdin.read()  # hold the connections until the parent closes our stdin
    """
)


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def handler(sock: AsyncSocket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--top", type=int, default=12, help="source lines to list")
    p.add_argument("--loop", choices=["default", "coro"], default="default")
    a = p.parse_args()
    loop: Any = socketloop.Loop() if a.loop == "default" else socketloop.CoroLoop()
    server = loop.newserver("127.0.0.1", 0, handler)

    def connect_and_wait(count: int) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(server.port), str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        fd = child.stdout.fileno()
        os.set_blocking(fd, False)
        got = b""
        while b"ready" not in got:
            loop.step(0.01)  # the server accepts and echoes meanwhile
            try:
                chunk = os.read(fd, 64)
            except BlockingIOError:
                continue
            if not chunk:
                raise RuntimeError("the client process failed")
            got += chunk
        return child

    # Warm up: a first batch comes and goes, as in a long-running server.
    warm = connect_and_wait(200)
    assert warm.stdin is not None
    warm.stdin.close()
    warm.wait()
    while server.statistics()["active"]:
        loop.step(0.05)

    def hold(count: int) -> subprocess.Popen[str]:
        child = connect_and_wait(count)
        loop.step(0)
        gc.collect()
        return child

    def release(child: subprocess.Popen[str]) -> None:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
        while server.statistics()["active"]:
            loop.step(0.05)

    n = a.connections
    # RSS first, without tracemalloc (whose bookkeeping would add to it).
    gc.collect()
    before_rss = rss_kib()
    child = hold(n)
    rss = (rss_kib() - before_rss) * 1024
    release(child)
    # Then what Python allocates, with tracemalloc on.
    gc.collect()
    tracemalloc.start(1)
    before_snapshot = tracemalloc.take_snapshot()
    child = hold(n)
    after_snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    release(child)
    stats = after_snapshot.compare_to(before_snapshot, "lineno")
    traced = sum(s.size_diff for s in stats)
    print(f"socketloop ({a.loop} loop), {n} idle connections, Python {sys.version.split()[0]}")
    print(f"  RSS growth per connection:        {rss / n / 1024:6.2f} KiB")
    print(f"  traced by tracemalloc:            {traced / n / 1024:6.2f} KiB")
    print(f"  not traced (mostly data stacks):  {(rss - traced) / n / 1024:6.2f} KiB")
    print("  top source lines (bytes per connection):")
    for stat in stats[: a.top]:
        frame = stat.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        code = linecache.getline(frame.filename, frame.lineno).strip()
        print(f"    {stat.size_diff / n:7.0f}  {where:22} {code}")
    server.close()
    while loop.threads():
        loop.step(0.05)
    loop.close()


if __name__ == "__main__":
    main()
