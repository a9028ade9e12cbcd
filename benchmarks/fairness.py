"""Timer lateness under a hogging thread, in milliseconds, on both loops.

The unit tests (tests/test_faults.py, scenario 37) prove fairness by
counting operations between a timer's deadline and its firing; this script
gives the figure a user feels: how late a 10 ms sleep wakes while another
thread hogs the loop, either with a ``sleep(0)`` loop or by reading one byte
at a time from a socket that always has data.  It prints the median and the
maximum over ``--rounds`` sleeps; a busy machine shows in the maximum.

usage: python benchmarks/fairness.py [--rounds N]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from collections.abc import Callable

import socketloop


def lateness(loop: socketloop.Loop, rounds: int) -> list[float]:
    """In a loop thread: sleep 10 ms ``rounds`` times; return how late each wake-up was (s)."""
    late: list[float] = []
    for _ in range(rounds):
        due = time.monotonic() + 0.01
        loop.sleep(0.01)
        late.append(time.monotonic() - due)
    return late


def sleep0_hog(loop: socketloop.Loop, done: threading.Event) -> Callable[[], None]:
    def hog() -> None:
        while not done.is_set():
            loop.sleep(0)

    return hog


def reader_hog(loop: socketloop.Loop, done: threading.Event) -> Callable[[], None]:
    a, b = socket.socketpair()
    sock = loop.wrap(a)

    def feeder() -> None:
        b.setblocking(True)
        try:
            while not done.is_set():
                b.sendall(b"y" * 65536)
        except OSError:
            pass
        finally:
            b.close()

    threading.Thread(target=feeder, daemon=True).start()

    def hog() -> None:
        try:
            while not done.is_set():
                sock.recv(1)
        finally:
            sock.close()

    return hog


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=200)
    args = p.parse_args(argv)
    hogs = {"sleep(0) loop": sleep0_hog, "reader of a ready socket": reader_hog}
    kinds: dict[str, Callable[[], socketloop.Loop]] = {
        "socketloop": socketloop.Loop,
        "socketloop.coro": socketloop.CoroLoop,
    }
    print(f"{'hog':28} {'loop':16} {'median ms':>10} {'max ms':>8}")
    for hog_name, make_hog in hogs.items():
        for kind, make_loop in kinds.items():
            loop = make_loop()
            done = threading.Event()
            hog = loop.newthread(make_hog(loop, done))
            try:
                late = loop.newthread(lateness, loop, args.rounds).join(60)
            finally:
                done.set()
                hog.join(10)
                loop.close()
            ms = [x * 1000 for x in late]
            print(f"{hog_name:28} {kind:16} {statistics.median(ms):10.3f} {max(ms):8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
