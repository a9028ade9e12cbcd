"""Shared fixtures: loops of every kind, connected socket pairs, leak checks.

Every test that takes ``loop`` runs on the asymmetric loop, the symmetric
(``coro``) loop and the asymmetric loop on the portable ``poll`` backend.
Tests of the module-level API take ``api`` (``socketloop`` and
``socketloop.coro``).  After each test the loop must have no thread, waiter
or timer left (mark a test ``leaves_threads`` when leaving suspended threads
is the point), and the process must hold no more file descriptors than
before.
"""

from __future__ import annotations

import gc
import os
import select
import socket
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import socketloop
from socketloop import AsyncSocket, CoroLoop, Loop, Server, coro
from socketloop._loop import _defaults as _loop_defaults
from socketloop._loop import _live_loops

LOOP_KINDS = ["asym", "coro", "asym-poll"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "leaves_threads: the test leaves threads behind on purpose")


def make_loop(kind: str) -> Loop:
    if kind == "coro":
        return CoroLoop()
    if kind == "asym-poll":
        return Loop(poller="poll")
    return Loop()


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Around every test: no file descriptor, loop, thread, waiter or timer left behind.

    Loops a test creates must be closed by it (fixtures do that for theirs);
    the per-OS-thread default loops may stay open but must be idle.
    """
    gc.collect()
    before = _open_fds()
    loops_before = set(_live_loops)
    yield
    leftovers = [lp for lp in list(_live_loops) if lp not in loops_before and not lp.closed]
    defaults = {_default_loop(socketloop), _default_loop(coro)}
    unclosed = [lp for lp in leftovers if lp not in defaults]
    for lp in unclosed:
        lp.close()
    assert not unclosed, f"loops left open: {unclosed}"
    for lp in list(_live_loops):
        if not lp.closed:
            _assert_idle(lp, request)
    gc.collect()
    leaked = _open_fds() - before
    # /proc listing itself may briefly hold one fd; check the survivors.
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"leaked fds: {sorted(leaked)}"


def _default_loop(module: Any) -> Loop | None:
    """The module's default loop for this OS thread, without creating one."""
    return getattr(module._defaults if module is coro else _loop_defaults, "loop", None)


def _assert_idle(lp: Loop, request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("leaves_threads"):
        return
    stats = lp.statistics()
    assert stats["threads"] == 0, f"threads left: {lp.threads()}"
    assert stats["waiting_readers"] == 0
    assert stats["waiting_writers"] == 0
    assert stats["timers"] == 0, "timers left"


@pytest.fixture(params=LOOP_KINDS)
def loop(request: pytest.FixtureRequest) -> Iterator[Loop]:
    """A fresh loop of each kind, closed after the test."""
    lp = make_loop(request.param)
    try:
        yield lp
        _assert_idle(lp, request)
    finally:
        lp.close()


@pytest.fixture(params=["socketloop", "socketloop.coro"])
def api(request: pytest.FixtureRequest) -> Iterator[types.ModuleType]:
    """The module-level API (asymmetric and symmetric) on a fresh default loop."""
    module: Any = socketloop if request.param == "socketloop" else socketloop.coro
    module.get_loop().close()  # start from a fresh default loop
    try:
        yield module
        _assert_idle(module.get_loop(), request)
    finally:
        module.get_loop().close()


def tcp_pair(lp: Loop, family: int = socket.AF_INET) -> tuple[AsyncSocket, AsyncSocket]:
    """Two connected TCP sockets on loopback, wrapped on ``lp``."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        client = socket.socket(family, socket.SOCK_STREAM)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    return lp.wrap(client), lp.wrap(server)


@pytest.fixture
def pair(loop: Loop) -> Iterator[tuple[AsyncSocket, AsyncSocket]]:
    """A connected TCP pair on the test's loop, closed afterwards."""
    a, b = tcp_pair(loop)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def unix_pair(loop: Loop) -> Iterator[tuple[AsyncSocket, AsyncSocket]]:
    """A connected Unix stream pair (``socket.socketpair``) on the test's loop."""
    a, b = socket.socketpair()
    wa, wb = loop.wrap(a), loop.wrap(b)
    try:
        yield wa, wb
    finally:
        wa.close()
        wb.close()


def step_until(lp: Loop, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Dispatch until ``predicate()`` holds; fail if it takes more than ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        assert remaining > 0, "condition not reached in time"
        assert lp.step(remaining), "the loop has nothing left to do"


def close_and_drain(lp: Loop, *servers: Server) -> None:
    """Close the servers and dispatch until every thread of ``lp`` has ended."""
    for server in servers:
        server.close()
    step_until(lp, lambda: not lp.threads())


def run(lp: Loop, fn: Callable[..., Any], *args: Any, timeout: float = 10) -> Any:
    """Run ``fn(*args)`` in a loop thread, dispatching until it ends; return its result."""
    return lp.newthread(fn, *args).join(timeout)


def fill_send_buffer(sock: AsyncSocket) -> int:
    """Write into ``sock`` until the kernel refuses more; return the byte count."""
    raw = sock.socket
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    chunk = b"x" * 65536
    total = 0
    while True:
        try:
            total += raw.send(chunk)
        except BlockingIOError:
            return total


@pytest.fixture
def hanging_address() -> Iterator[tuple[str, int]]:
    """A loopback address whose accept queue is full, so that a connect to it hangs.

    The listener has ``listen(0)`` and is never accepted from; fillers connect
    until one of them visibly hangs (not connected after 50 ms), which proves
    that the queue is full on this kernel.
    """
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address: tuple[str, int] = listener.getsockname()
        for _ in range(8):
            filler = socket.socket()
            fillers.append(filler)
            filler.setblocking(False)
            filler.connect_ex(address)
            poller = select.poll()
            poller.register(filler, select.POLLOUT)
            if not poller.poll(50):
                break  # this connect hangs: the queue is full
        else:
            pytest.fail("could not fill the accept queue of a loopback listener")
        yield address
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
