"""Child program for tests/test_faults.py: a server whose accept loop runs out of fds.

Run as ``python tests/_faults_child.py emfile KIND``.  The child starts a server
on 127.0.0.1 whose handlers hold their connection until released, then lowers
its own ``RLIMIT_NOFILE`` so that only a few more descriptors can be opened,
prints ``port P free F`` and waits for a line on stdin (the parent connects its
clients meanwhile; the kernel queues them in the backlog).  Then it runs the
loop until ``accept()`` has failed with EMFILE, measures a pause of
``PAUSE`` seconds of running the loop (CPU time of the whole process, accept
errors, warnings logged), releases the handlers (which frees fds) and runs the
loop until every client has been accepted.  Every line it prints is a fact the
parent asserts on.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time

from socketloop import AsyncSocket, CoroLoop, Event, Loop

#: Seconds of running the loop while accept() keeps failing with EMFILE.
PAUSE = 1.0
#: Descriptor numbers left free under the lowered limit.
FREE = 3
#: Upper bound for any phase, so that a broken child ends instead of hanging.
PHASE_LIMIT = 20.0


def out(line: str) -> None:
    print(line, flush=True)


def make_loop(kind: str) -> Loop:
    if kind == "coro":
        return CoroLoop()
    if kind == "asym-poll":
        return Loop(poller="poll")
    return Loop()


class Collect(logging.Handler):
    """Keeps every record of the ``socketloop`` logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emfile(kind: str) -> None:
    collect = Collect()
    log = logging.getLogger("socketloop")
    log.addHandler(collect)
    log.setLevel(logging.DEBUG)
    loop = make_loop(kind)
    release = Event()

    def handler(conn: AsyncSocket) -> None:
        conn.sendall(b"hi")
        release.wait()

    server = loop.newserver("127.0.0.1", 0, handler)
    open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
    limit = max(open_fds) + 1 + FREE
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    out(f"port {server.port} free {limit - len(open_fds)}")
    clients = int(sys.stdin.readline())

    deadline = time.monotonic() + PHASE_LIMIT
    while server.statistics()["accept_errors"] == 0:
        assert time.monotonic() < deadline, "accept() never failed"
        loop.step(0.1)
    accepted_before = server.statistics()["accepted"]
    errors_before = server.statistics()["accept_errors"]
    cpu_before = cpu_seconds()
    started = time.monotonic()
    loop.start(PAUSE)
    elapsed = time.monotonic() - started
    cpu = cpu_seconds() - cpu_before
    stats = server.statistics()
    warnings = [r for r in collect.records if r.levelno >= logging.WARNING]
    args = [arg for r in warnings if isinstance(r.args, tuple) for arg in r.args]
    errnos = sorted({arg.errno for arg in args if isinstance(arg, OSError) and arg.errno})
    out(f"accepted before the pause {accepted_before}")
    out(f"pause seconds {elapsed:.3f}")
    out(f"pause cpu seconds {cpu:.3f}")
    out(f"pause accept errors {stats['accept_errors'] - errors_before}")
    out(f"accepted during the pause {stats['accepted'] - accepted_before}")
    out(f"warnings during the burst {len(warnings)}")
    out(f"warning errnos {errnos}")
    out(f"warning mentions pausing {all('pausing' in r.getMessage() for r in warnings)}")

    release.set()
    deadline = time.monotonic() + PHASE_LIMIT
    while server.statistics()["accepted"] < clients:
        assert time.monotonic() < deadline, "accepting never resumed"
        loop.step(0.1)
    while server.statistics()["active"]:
        assert time.monotonic() < deadline, "handlers never ended"
        loop.step(0.1)
    out(f"accepted in total {server.statistics()['accepted']}")
    out(f"warnings in total {len([r for r in collect.records if r.levelno >= logging.WARNING])}")
    server.close()
    while loop.threads():
        assert time.monotonic() < deadline, "the accept thread never ended"
        loop.step(0.1)
    loop.close()
    out("closed")


MODES = {"emfile": emfile}

if __name__ == "__main__":
    MODES[sys.argv[1]](sys.argv[2])
