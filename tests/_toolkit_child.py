"""Child programs for tests/test_process.py: Ctrl-C during start(), fork with a live loop.

Run as ``python tests/_toolkit_child.py MODE KIND``.  Every line the program
prints is a fact the parent test asserts on; "ready" tells the parent that the
loop is about to poll (or a thread is spinning) and the signal can be sent.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
from typing import Any

import socketloop
from socketloop import CoroLoop, Loop


def out(line: str) -> None:
    print(line, flush=True)


def make_loop(kind: str) -> Loop:
    if kind == "coro":
        return CoroLoop()
    if kind == "asym-poll":
        return Loop(poller="poll")
    return Loop()


def keeper(loop: Loop) -> None:
    """A thread suspended in a long sleep: its finally block shows when it is killed."""
    try:
        loop.sleep(30)
        out("keeper woke")
    finally:
        out("keeper finally")


def restart_and_close(loop: Loop) -> None:
    """After Ctrl-C: the loop must start again, then close() must kill what is left."""
    out(f"sigint handler restored {signal.getsignal(signal.SIGINT) is signal.default_int_handler}")

    def second() -> None:
        loop.sleep(0.01)
        out("second run")
        loop.stop()

    loop.newthread(second)
    loop.start(10)
    out("second start returned")
    loop.close()
    out("closed")


def sigint_while_polling(kind: str) -> None:
    loop = make_loop(kind)
    loop.newthread(keeper, loop)
    loop.call_soon(out, "ready")  # runs in the first step; the next one polls for 30 s
    try:
        loop.start(20)
        out("start returned")
    except KeyboardInterrupt:
        out("KeyboardInterrupt")
    restart_and_close(loop)


def sigint_while_a_thread_runs(kind: str) -> None:
    loop = make_loop(kind)
    loop.newthread(keeper, loop)

    def busy() -> None:
        try:
            out("ready")
            end = time.monotonic() + 20
            while time.monotonic() < end:
                pass
            out("busy loop finished")
        finally:
            out("busy finally")

    busy_thread = loop.spawn(busy)
    try:
        loop.start(30)
        out("start returned")
    except KeyboardInterrupt:
        out("KeyboardInterrupt")
    out(f"busy alive {busy_thread.is_alive()}")
    restart_and_close(loop)


def epoll_targets(epoll_fd: int) -> set[int]:
    """The fds an epoll instance watches (from /proc/self/fdinfo)."""
    targets = set()
    with open(f"/proc/self/fdinfo/{epoll_fd}") as info:
        for line in info:
            if line.startswith("tfd:"):
                targets.add(int(line.split()[1]))
    return targets


def fork_with_a_live_loop(kind: str) -> None:
    loop = make_loop(kind)
    parent_pid = os.getpid()

    def who() -> str:
        return "parent" if os.getpid() == parent_pid else "child"

    a, b = socket.socketpair()
    wa, wb = loop.wrap(a), loop.wrap(b)

    def sleeper() -> None:
        try:
            loop.sleep(0.05)
            out(f"sleeper resumed in {who()}")
        finally:
            out(f"sleeper finally in {who()}")

    def reader() -> None:
        out(f"reader got {wa.recv(10)!r} in {who()}")

    def suspended() -> None:
        try:
            loop.suspend()
        finally:
            out(f"suspended finally in {who()}")

    def spawned() -> None:
        out(f"spawned ran in {who()}")

    loop.newthread(sleeper)
    loop.newthread(reader)
    loop.newthread(suspended)
    loop.spawn(spawned)  # ready, not started yet
    old_poller: Any = loop._poller
    parent_targets = epoll_targets(old_poller.fileno())
    out(f"parent poller watches the socket {a.fileno() in parent_targets}")
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fork_child(loop, old_poller, a.fileno())
        except BaseException:
            out("child failed: " + traceback.format_exc().replace("\n", " | "))
            code = 1
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    out(f"child exit status {os.waitstatus_to_exitcode(status)}")
    wb.sendall(b"data")
    loop.start(10)
    loop.close()
    wa.close()
    wb.close()
    out("parent done")


def fork_child(loop: Loop, old_poller: Any, parent_socket_fd: int) -> None:
    out(f"child threads {len(loop.threads())}")
    out(f"child has a new poller {loop._poller is not old_poller}")
    watched = epoll_targets(loop._poller.fileno())
    out(f"child poller watches the parent's socket {parent_socket_fd in watched}")
    c, d = socket.socketpair()
    wc, wd = loop.wrap(c), loop.wrap(d)

    def echo() -> None:
        wc.sendall(wc.recv(10).upper())

    def client() -> bytes:
        loop.sleep(0.1)  # outlives the parent's sleeper: its timer must not fire here
        wd.sendall(b"ping")
        return wd.recv(10)

    loop.newthread(echo)
    client_thread = loop.newthread(client)
    loop.start(10)
    out(f"child client got {client_thread.join()!r}")
    out(f"child default loop usable {socketloop.newthread(lambda: 42).join() == 42}")
    socketloop.get_loop().close()
    loop.close()
    wc.close()
    wd.close()
    out("child closed")


def fork_inside_a_loop_thread(kind: str) -> None:
    """Fork from a loop thread: the child keeps only that thread, the parent everything."""
    loop = make_loop(kind)
    parent_pid = os.getpid()

    def who() -> str:
        return "parent" if os.getpid() == parent_pid else "child"

    def other() -> None:
        try:
            loop.sleep(0.05)
            out(f"other resumed in {who()}")
        finally:
            out(f"other finally in {who()}")

    def forker() -> str:
        loop.sleep(0)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            out(f"child threads {[t.name for t in loop.threads()]}")
            loop.sleep(0.1)  # outlives other's sleep: its timer must not fire here
            out("forker resumed in child")
            return "child"
        _, status = os.waitpid(pid, 0)
        out(f"child exit status {os.waitstatus_to_exitcode(status)}")
        return "parent"

    loop.newthread(other)
    forking = loop.newthread(forker)
    forking.name = "forker"
    try:
        loop.start(10)
        out(f"start returned in {who()} with {forking.join()}")
        loop.close()
    finally:
        if who() == "child":
            sys.stdout.flush()
            os._exit(0)
    out("parent done")


MODES = {
    "sigint-poll": sigint_while_polling,
    "sigint-cpu": sigint_while_a_thread_runs,
    "fork": fork_with_a_live_loop,
    "fork-in-thread": fork_inside_a_loop_thread,
}

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises, as in a shell
    MODES[sys.argv[1]](sys.argv[2])
