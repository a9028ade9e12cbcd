"""The seam a host event loop will drive the kernel through (docs/design.md).

A host watches the epoll driver's fd, runs ``step(0)`` when it is readable,
and arms one timer for ``_next_timeout(None)``.  These tests drive a loop
exactly that way, with ``select.poll`` standing in for the host.
"""

from __future__ import annotations

import select
import threading
import time

import pytest

from socketloop import CoroLoop, Loop

WAIT = 10.0


def test_next_timeout_is_zero_while_a_thread_is_ready(loop: Loop) -> None:
    thread = loop.spawn(lambda: None)
    assert loop._next_timeout(None) == 0.0
    thread.join(WAIT)


def test_next_timeout_is_the_delay_to_the_next_timer(loop: Loop) -> None:
    handle = loop.call_later(5.0, lambda: None)
    try:
        delay = loop._next_timeout(None)
        assert delay is not None
        assert 4.0 < delay <= 5.0
        assert loop._next_timeout(1.0) == 1.0  # the caller's limit when it is sooner
    finally:
        handle.cancel()


def test_next_timeout_is_none_when_only_io_could_wake_the_loop(loop: Loop) -> None:
    assert loop._next_timeout(None) is None


def _readable(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


@pytest.mark.parametrize("make", [Loop, CoroLoop], ids=["asym", "coro"])
def test_a_call_from_another_os_thread_makes_the_epoll_fd_readable(make: type[Loop]) -> None:
    lp = make(poller="epoll")
    try:
        epoll_fd = lp._poller.fileno()
        lp.step(0)  # nothing pending: returns at once
        assert not _readable(epoll_fd, 0)
        ran: list[int] = []
        sender = threading.Thread(target=lambda: lp.call_soon_threadsafe(ran.append, 1))
        sender.start()
        sender.join(WAIT)
        assert _readable(epoll_fd, WAIT)
        lp.step(0)  # what the host runs when the fd is readable
        assert ran == [1]
    finally:
        lp.close()


@pytest.mark.parametrize("make", [Loop, CoroLoop], ids=["asym", "coro"])
def test_a_host_driving_step_zero_runs_sleeping_threads_to_the_end(make: type[Loop]) -> None:
    lp = make(poller="epoll")
    try:
        done: list[str] = []

        def worker() -> None:
            lp.sleep(0.02)
            done.append("slept")

        thread = lp.spawn(worker)
        epoll_fd = lp._poller.fileno()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            lp.step(0)
            if not thread.is_alive():
                break
            delay = lp._next_timeout(None)
            if delay is None:
                delay = WAIT
            _readable(epoll_fd, delay)  # the host sleeps until I/O or its one timer
        assert done == ["slept"]
    finally:
        lp.close()
