"""Calls from another OS thread reach the loop the user means, or say how to.

The module functions act on the calling OS thread's default loop; the
thread-safe ones (``call_soon_threadsafe``, ``stop``) called from a
secondary OS thread that has no loop of its own raise ``RuntimeError`` naming the way
(``loop = socketloop.get_loop()`` kept from the loop's OS thread, then
``loop.call_soon_threadsafe`` / ``loop.stop``) instead of acting on a loop
created on the spot that nobody runs.  ``close()`` of a socket from another
OS thread wakes the loop thread waiting on it.
"""

from __future__ import annotations

import errno
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import pytest

from conftest import make_loop, tcp_pair
from socketloop import Loop

WAIT = 10.0  # bound for every cross-thread wait: a hang fails instead of freezing


def in_os_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn()`` in a new OS thread; return its result or re-raise its exception."""
    outcome: list[Any] = []

    def body() -> None:
        try:
            outcome.append(("ok", fn()))
        except BaseException as error:
            outcome.append(("error", error))

    worker = threading.Thread(target=body, daemon=True)
    worker.start()
    worker.join(WAIT)
    assert outcome, "the OS thread did not finish"
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


def wait_until_polling(loop: Loop) -> None:
    """From outside the loop's OS thread: wait until it sleeps in the poller."""
    deadline = time.monotonic() + WAIT
    while not loop._polling and time.monotonic() < deadline:
        time.sleep(0.001)  # watching a flag from outside: nothing to synchronise with


def test_module_call_soon_threadsafe_from_an_os_thread_without_a_loop_raises(
    api: types.ModuleType,
) -> None:
    with pytest.raises(RuntimeError, match=r"loop\.call_soon_threadsafe\(\) from here"):
        in_os_thread(lambda: api.call_soon_threadsafe(print))


def test_module_stop_from_an_os_thread_without_a_loop_raises(api: types.ModuleType) -> None:
    with pytest.raises(RuntimeError, match=r"get_loop\(\)\) and call loop\.stop\(\)"):
        in_os_thread(api.stop)


def test_the_refused_call_creates_no_loop_in_the_calling_os_thread(
    api: types.ModuleType,
) -> None:
    def refused_then_look() -> Any:
        with pytest.raises(RuntimeError):
            api.call_soon_threadsafe(print)
        return api._existing_loop()

    assert in_os_thread(refused_then_look) is None


def test_module_call_soon_threadsafe_in_the_loops_own_os_thread_acts_on_its_default_loop(
    api: types.ModuleType,
) -> None:
    log: list[str] = []
    api.call_soon_threadsafe(log.append, "called")
    api.step(0)
    assert log == ["called"]


def test_module_resume_threadsafe_from_another_os_thread_resumes_on_the_threads_loop(
    api: types.ModuleType,
) -> None:
    thread = api.newthread(api.suspend)
    in_os_thread(lambda: api.resume_threadsafe(thread, "value"))
    api.start(timeout=WAIT)
    assert thread.join(0) == "value"


def test_the_kept_loop_is_reached_from_another_os_thread_while_a_server_keeps_it_running(
    api: types.ModuleType,
) -> None:
    loop = api.get_loop()
    server = api.newserver("127.0.0.1", 0, lambda conn: None)
    log: list[str] = []

    def other_os_thread() -> None:
        loop.call_soon_threadsafe(log.append, "called")
        loop.call_soon_threadsafe(loop.stop)

    # Started from a callback: start() is running by then, so stop() is not a no-op.
    api.call_soon(lambda: threading.Thread(target=other_os_thread, daemon=True).start())
    began = time.monotonic()
    api.start(timeout=WAIT)
    assert time.monotonic() - began < WAIT / 2, "stop() from the OS thread was lost"
    assert log == ["called"]
    server.close()
    api.step(0)


def test_stop_on_the_kept_loop_from_another_os_thread_ends_start(api: types.ModuleType) -> None:
    loop = api.get_loop()
    server = api.newserver("127.0.0.1", 0, lambda conn: None)

    def other_os_thread() -> None:
        wait_until_polling(loop)
        loop.stop()

    api.call_soon(lambda: threading.Thread(target=other_os_thread, daemon=True).start())
    began = time.monotonic()
    api.start(timeout=WAIT)
    assert time.monotonic() - began < WAIT / 2, "stop() from the OS thread was lost"
    server.close()
    api.step(0)


def test_close_from_another_os_thread_wakes_the_loop_thread_waiting_on_the_socket(
    loop: Loop,
) -> None:
    a, b = tcp_pair(loop)
    outcome: list[int] = []

    def reader() -> None:
        try:
            a.recv(100)
        except OSError as error:
            outcome.append(error.errno or 0)

    def closer() -> None:
        wait_until_polling(loop)
        a.close()

    thread = loop.newthread(reader)
    assert thread.state == "waiting"
    closing = threading.Thread(target=closer, daemon=True)
    closing.start()
    began = time.monotonic()
    try:
        loop.start(timeout=WAIT)
    finally:
        closing.join(WAIT)
        b.close()
    assert time.monotonic() - began < WAIT / 2, "the waiter was not woken"
    assert outcome == [errno.EBADF]
    assert a.socket.fileno() == -1


def test_close_from_another_os_thread_releases_the_fd_at_the_loops_next_step(loop: Loop) -> None:
    a, b = tcp_pair(loop)
    loop.step(0)  # the loop now belongs to this OS thread
    in_os_thread(a.close)
    assert loop.step(0) is True
    assert a.socket.fileno() == -1
    b.close()


def test_close_from_another_os_thread_releases_the_fd_when_the_loop_closes_first() -> None:
    lp = make_loop("asym")
    a, b = tcp_pair(lp)
    lp.step(0)
    in_os_thread(a.close)
    lp.close()
    assert a.socket.fileno() == -1
    b.close()
