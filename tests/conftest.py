"""Shared fixtures: loops of every kind, connected socket pairs, leak checks.

Every test that takes ``loop`` runs on the asymmetric loop, the symmetric
(``coro``) loop and the asymmetric loop on the portable ``poll`` backend.
Tests of the module-level API take ``api`` (``socketloop`` and
``socketloop.coro``).  After each test the loop must have no thread, waiter
or timer left (mark a test ``leaves_threads`` when leaving suspended threads
is the point), and the process must hold no more file descriptors than
before.

The leak check also covers what is harder to see (see ``no_leaks``): nothing
left in a loop's ready queue or callbacks, no call still out in a pool or
the resolver, no OS thread left running, no socket or file left to the
garbage collector (``ResourceWarning`` is an error, pyproject.toml), and no
ERROR record from the ``socketloop`` logger unless the test is marked
``expect_errors``.
"""

from __future__ import annotations

import gc
import logging
import os
import select
import socket
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import socketloop
from socketloop import AsyncSocket, CoroLoop, Loop, Server, coro
from socketloop._loop import _defaults as _loop_defaults
from socketloop._scheduler import _live_loops

LOOP_KINDS = ["asym", "coro", "asym-poll"]

#: In CI a skip not listed in tests/allowed_skips.txt fails the test.
pytest_plugins = ["_skip_policy"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "leaves_threads: the test leaves threads behind on purpose")
    config.addinivalue_line(
        "markers",
        "expect_errors: the test provokes ERROR records from the socketloop logger on purpose",
    )


def make_loop(kind: str) -> Loop:
    if kind == "coro":
        return CoroLoop()
    if kind == "asym-poll":
        return Loop(poller="poll")
    return Loop()


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


class _ErrorRecords(logging.Handler):
    """Collects ERROR (and worse) records of the ``socketloop`` logger and its children."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Around every test: no file descriptor, loop, thread, waiter or timer left behind.

    Loops a test creates must be closed by it (fixtures do that for theirs);
    the per-OS-thread default loops may stay open but must be idle.  OS
    threads started during the test must have ended (the idle workers of a
    loop that is still open excepted), and the ``socketloop`` logger must
    not have logged an error unless the test is marked ``expect_errors``.
    """
    gc.collect()
    before = _open_fds()
    loops_before = set(_live_loops)
    os_threads_before = set(threading.enumerate())
    errors = _ErrorRecords()
    library_logger = logging.getLogger("socketloop")
    library_logger.addHandler(errors)
    try:
        yield
    finally:
        library_logger.removeHandler(errors)
    leftovers = [lp for lp in list(_live_loops) if lp not in loops_before and not lp.closed]
    defaults = {_default_loop(socketloop), _default_loop(coro)}
    unclosed = [lp for lp in leftovers if lp not in defaults]
    for lp in unclosed:
        lp.close()
    assert not unclosed, f"loops left open: {unclosed}"
    for lp in list(_live_loops):
        if not lp.closed:
            _assert_idle(lp, request)
    if not request.node.get_closest_marker("expect_errors"):
        unexpected = [_describe_record(r) for r in errors.records]
        assert not unexpected, f"unexpected ERROR records from socketloop: {unexpected}"
    _assert_os_threads_ended(os_threads_before)
    gc.collect()
    leaked = _open_fds() - before
    # /proc listing itself may briefly hold one fd; check the survivors.
    leaked = {fd for fd in leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"leaked fds: {sorted(leaked)}"


def _describe_record(record: logging.LogRecord) -> str:
    text = f"{record.name}: {record.getMessage()}"
    if record.exc_info and record.exc_info[1] is not None:
        text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
    return text


#: How long an OS thread that is no longer needed may take to end (a pool
#: worker of a closed loop finishes the call it runs, then exits).
OS_THREAD_GRACE = 5.0


def _assert_os_threads_ended(before: set[threading.Thread]) -> None:
    """Fail if an OS thread started during the test is still running.

    The workers of a loop that is still open (a default loop) may stay,
    idle: the pool keeps them for the next call.
    """
    deadline = time.monotonic() + OS_THREAD_GRACE
    while True:
        kept = _pool_workers_of_open_loops()
        left = [
            t
            for t in threading.enumerate()
            if t not in before and t.is_alive() and t.ident not in kept
        ]
        if not left or time.monotonic() > deadline:
            break
        left[0].join(0.05)
    assert not left, f"OS threads left running: {[t.name for t in left]}"


def _pool_workers_of_open_loops() -> set[int | None]:
    """The idents of the OS threads that the pools of open loops keep (idle or not)."""
    idents: set[int | None] = set()
    for lp in list(_live_loops):
        if not lp.closed:
            idents.update(loop_private_state(lp)["pool_workers"])
    return idents


def loop_private_state(lp: Loop) -> dict[str, Any]:
    """What the tests need to know of a loop that no public method tells.

    The one place where tests read private loop state; keep it in step with
    the loop's internals.  ``polling``: the dispatcher is in (or just about
    to enter) the poller's wait, so a wake-up from another OS thread must
    interrupt a real sleep; ``turn``: polls done so far; ``pool_workers``:
    idents of the OS threads its two pools (``run_in_thread`` and the
    resolver) hold.
    """
    workers: set[int | None] = set()
    for pool in (lp._pool, lp._resolver_pool):
        executor = pool._executor
        if executor is not None:
            workers.update(t.ident for t in list(executor._threads))
    return {"polling": lp._polling, "turn": lp._turn, "pool_workers": workers}


def wait_until_polling(lp: Loop, timeout: float = 10.0) -> None:
    """From another OS thread: return once ``lp`` sleeps in its poller.

    A flag set by ``call_soon`` is not enough for "the loop sleeps": the
    callback runs before the poll that follows it.  The loop counts as
    sleeping when it is seen in the same poll (same turn) twice, a
    millisecond apart, so a zero-timeout poll does not count.  Raises
    ``TimeoutError`` when the loop does not sleep within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    seen_turn: int | None = None
    while True:
        state = loop_private_state(lp)
        if state["polling"]:
            if state["turn"] == seen_turn:
                return
            seen_turn = state["turn"]
        else:
            seen_turn = None
        if time.monotonic() > deadline:
            raise TimeoutError(f"{lp!r} did not poll within {timeout} s")
        time.sleep(0.001)  # watching a flag of another OS thread: nothing to wait on


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
    assert stats["ready"] == 0, "threads left in the ready queue"
    assert stats["callbacks"] == 0, "callbacks left unrun"
    assert stats["external_waits"] == 0, "waits on other OS threads left"
    assert stats["pool_active"] == 0, "run_in_thread() calls left in the pool"
    assert stats["resolver_active"] == 0, "name lookups left in the resolver pool"


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
