"""Process-level services: signals, Ctrl-C during start(), fork, close()."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import socketloop
from conftest import run, wait_until_polling
from socketloop import AsyncSocket, Event, Lock, Loop

CHILD = str(Path(__file__).with_name("_toolkit_child.py"))
WAIT = 10.0
Pair = tuple[AsyncSocket, AsyncSocket]


# ---------------------------------------------------------------- on_signal


@pytest.fixture
def usr1_restored() -> Iterator[None]:
    """Whatever a test does, SIGUSR1's handler is what it was before."""
    before = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, before)


def send_usr1_from_another_os_thread_when_polling(loop: Loop) -> threading.Thread:
    def target() -> None:
        wait_until_polling(loop, WAIT)
        os.kill(os.getpid(), signal.SIGUSR1)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    return worker


@pytest.mark.usefixtures("usr1_restored")
def test_on_signal_runs_the_handler_in_a_loop_thread_and_wakes_a_polling_loop(loop: Loop) -> None:
    keeper = loop.newthread(loop.sleep, 60)
    seen: list[Any] = []

    def handler(signum: int) -> None:
        me = loop.current()
        seen.append((signum, me is not None, me.name if me else None))
        keeper.kill()

    loop.on_signal(signal.SIGUSR1, handler)
    sender = send_usr1_from_another_os_thread_when_polling(loop)
    loop.start(WAIT)
    sender.join(WAIT)
    keeper.join(WAIT)  # on a loaded machine start(WAIT) may end before the kill is done
    loop.on_signal(signal.SIGUSR1, None)
    assert len(seen) == 1
    signum, in_thread, name = seen[0]
    assert signum == signal.SIGUSR1
    assert in_thread
    assert "SIGUSR1" in name
    assert not keeper.is_alive()


@pytest.mark.usefixtures("usr1_restored")
def test_a_signal_caught_by_another_os_thread_still_wakes_a_polling_loop(loop: Loop) -> None:
    """The C handler runs in the OS thread the signal was sent to; Python runs
    the handler in the main thread only when it next runs bytecode.  A loop
    polling with nothing else to wake it must still be woken (the same hole a
    signal landing just before the poll's system call falls into)."""
    keeper = loop.newthread(loop.sleep, 60)
    seen: list[int] = []

    def handler(signum: int) -> None:
        seen.append(signum)
        keeper.kill()

    def target() -> None:
        wait_until_polling(loop, WAIT)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # this OS thread, not main

    loop.on_signal(signal.SIGUSR1, handler)
    sender = threading.Thread(target=target, daemon=True)
    sender.start()
    loop.start(WAIT)
    sender.join(WAIT)
    loop.on_signal(signal.SIGUSR1, None)
    assert seen == [signal.SIGUSR1], "the loop polled on through the signal"
    assert not keeper.is_alive()


@pytest.fixture
def wakeup_fd_free() -> Iterator[None]:
    """The process's signal wake-up fd is unset around the test, and unset after."""
    previous = signal.set_wakeup_fd(-1)
    yield
    assert signal.set_wakeup_fd(previous) == -1, "a signal wake-up fd was left behind"


def current_wakeup_fd() -> int:
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


@pytest.mark.usefixtures("wakeup_fd_free")
def test_start_takes_the_signal_wakeup_fd_while_it_runs_and_gives_it_back(loop: Loop) -> None:
    seen: list[int] = []
    loop.call_soon(lambda: seen.append(current_wakeup_fd()))
    loop.start()
    assert seen == [loop._wakeup.write_fd]
    assert current_wakeup_fd() == -1


@pytest.mark.usefixtures("usr1_restored", "wakeup_fd_free")
def test_on_signal_holds_the_signal_wakeup_fd_until_the_handler_is_removed(loop: Loop) -> None:
    loop.on_signal(signal.SIGUSR1, lambda signum: None)
    loop.on_signal(signal.SIGUSR1, lambda signum: None)  # a replacement is not a second hold
    assert current_wakeup_fd() == loop._wakeup.write_fd
    loop.start()
    assert current_wakeup_fd() == loop._wakeup.write_fd
    loop.on_signal(signal.SIGUSR1, None)
    assert current_wakeup_fd() == -1


@pytest.mark.usefixtures("usr1_restored", "wakeup_fd_free")
def test_a_wakeup_fd_set_by_someone_else_is_left_in_place(loop: Loop) -> None:
    theirs_r, theirs_w = os.pipe()
    os.set_blocking(theirs_w, False)
    try:
        signal.set_wakeup_fd(theirs_w)
        loop.on_signal(signal.SIGUSR1, lambda signum: None)
        loop.call_soon(lambda: None)
        loop.start()
        loop.on_signal(signal.SIGUSR1, None)
        assert signal.set_wakeup_fd(-1) == theirs_w
    finally:
        os.close(theirs_r)
        os.close(theirs_w)


@pytest.mark.usefixtures("usr1_restored", "wakeup_fd_free")
def test_close_gives_the_signal_wakeup_fd_back(loop: Loop) -> None:
    loop.on_signal(signal.SIGUSR1, lambda signum: None)
    loop.close()
    assert current_wakeup_fd() == -1


@pytest.mark.usefixtures("usr1_restored")
def test_on_signal_handler_runs_once_per_signal(loop: Loop) -> None:
    count = [0]
    handled = threading.Event()

    def handler(signum: int) -> None:
        count[0] += 1
        handled.set()

    loop.on_signal(signal.SIGUSR1, handler)
    for expected in (1, 2):
        handled.clear()
        os.kill(os.getpid(), signal.SIGUSR1)
        while not handled.is_set():
            assert loop.step(WAIT), "the signal never reached the loop"
        assert count[0] == expected
    loop.on_signal(signal.SIGUSR1, None)


@pytest.mark.usefixtures("usr1_restored")
def test_on_signal_handler_runs_in_its_own_thread_not_inside_the_interrupted_one(
    loop: Loop,
) -> None:
    log: list[str] = []
    loop.on_signal(signal.SIGUSR1, lambda signum: log.append("handler"))

    def sender() -> None:
        os.kill(os.getpid(), signal.SIGUSR1)
        log.append("sender continues")
        loop.sleep(0)
        log.append("sender resumed")

    run(loop, sender)
    loop.start()
    loop.on_signal(signal.SIGUSR1, None)
    assert log[0] == "sender continues"  # the handler did not run inside the sender
    assert sorted(log[1:]) == ["handler", "sender resumed"]


@pytest.mark.usefixtures("usr1_restored")
def test_on_signal_removal_restores_the_previous_python_handler(loop: Loop) -> None:
    def previous(signum: int, frame: types.FrameType | None) -> None:
        pass

    signal.signal(signal.SIGUSR1, previous)
    loop.on_signal(signal.SIGUSR1, lambda signum: None)
    assert signal.getsignal(signal.SIGUSR1) is not previous
    loop.on_signal(signal.SIGUSR1, None)
    assert signal.getsignal(signal.SIGUSR1) is previous


@pytest.mark.usefixtures("usr1_restored")
def test_on_signal_removal_restores_the_default_disposition(loop: Loop) -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    loop.on_signal(signal.SIGUSR1, lambda signum: None)
    loop.on_signal(signal.SIGUSR1, None)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


@pytest.mark.usefixtures("usr1_restored")
def test_on_signal_replacing_the_handler_still_restores_the_original_one(loop: Loop) -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    log: list[str] = []
    loop.on_signal(signal.SIGUSR1, lambda signum: log.append("first"))
    loop.on_signal(signal.SIGUSR1, lambda signum: log.append("second"))
    os.kill(os.getpid(), signal.SIGUSR1)
    loop.start()
    assert log == ["second"]
    loop.on_signal(signal.SIGUSR1, None)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN


@pytest.mark.usefixtures("usr1_restored")
def test_close_restores_the_signal_handlers_the_loop_installed(loop: Loop) -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    loop.on_signal(signal.SIGUSR1, lambda signum: None)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN


@pytest.mark.usefixtures("usr1_restored")
def test_module_on_signal_uses_the_default_loop(api: types.ModuleType) -> None:
    seen: list[Any] = []
    api.on_signal(signal.SIGUSR1, lambda signum: seen.append(api.current()))
    os.kill(os.getpid(), signal.SIGUSR1)
    api.start()
    api.on_signal(signal.SIGUSR1, None)
    assert len(seen) == 1
    assert seen[0] is not None
    assert seen[0].loop is api.get_loop()


# --------------------------------------------------------- child programs


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> tuple[str, bytes]:
    """One line from the child's stdout, bounded by ``timeout``; also return any excess."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no line from the child in {timeout} s (got {buffer!r})"
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 4096)
            assert chunk, f"the child closed its stdout early (got {buffer!r})"
            buffer += chunk
    line, _, rest = buffer.partition(b"\n")
    return line.decode(), rest


def run_child(mode: str, kind: str, *, interrupt: bool = False) -> list[str]:
    """Run the child program; with ``interrupt``, send SIGINT once it printed "ready"."""
    proc = subprocess.Popen(
        [sys.executable, CHILD, mode, kind],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    try:
        head: list[str] = []
        rest = b""
        if interrupt:
            line, rest = read_line(proc, WAIT)
            head.append(line)
            assert line == "ready"
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, f"child failed ({proc.returncode}): {err.decode()}"
    return head + (rest + out).decode().splitlines()


CHILD_KINDS = ["asym", "coro", "asym-poll"]
AFTER_INTERRUPT = [
    "KeyboardInterrupt",
    "sigint handler restored True",
    "second run",
    "second start returned",
    "keeper finally",
    "closed",
]


@pytest.mark.parametrize("kind", CHILD_KINDS)
def test_ctrl_c_while_polling_raises_out_of_start_and_the_loop_starts_again(kind: str) -> None:
    lines = run_child("sigint-poll", kind, interrupt=True)
    assert lines == ["ready", *AFTER_INTERRUPT]


@pytest.mark.parametrize("kind", CHILD_KINDS)
def test_ctrl_c_while_a_thread_runs_cpu_bound_code_raises_out_of_start(kind: str) -> None:
    lines = run_child("sigint-cpu", kind, interrupt=True)
    expected = ["ready", "busy finally", "KeyboardInterrupt", "busy alive False"]
    assert lines == expected + AFTER_INTERRUPT[1:]


FORK_KINDS = ["asym", "coro"]


@pytest.mark.parametrize("kind", FORK_KINDS)
def test_fork_gives_the_child_a_fresh_poller_and_none_of_the_parents_threads(kind: str) -> None:
    lines = run_child("fork", kind)
    child = [line for line in lines if line.startswith("child")]
    assert child == [
        "child threads 0",
        "child has a new poller True",
        "child poller watches the parent's socket False",
        "child client got b'PING'",
        "child default loop usable True",
        "child closed",
        "child exit status 0",
    ]
    assert "parent poller watches the socket True" in lines
    assert not [line for line in lines if line.endswith("in child")], lines


@pytest.mark.parametrize("kind", FORK_KINDS)
def test_fork_leaves_the_parent_loop_working(kind: str) -> None:
    lines = run_child("fork", kind)
    parent = [line for line in lines if line.endswith("in parent")]
    assert sorted(parent) == sorted(
        [
            "reader got b'data' in parent",
            "sleeper resumed in parent",
            "sleeper finally in parent",
            "spawned ran in parent",
            "suspended finally in parent",
        ]
    )
    assert lines[-1] == "parent done"


@pytest.mark.parametrize("kind", FORK_KINDS)
def test_fork_inside_a_loop_thread_keeps_only_that_thread_in_the_child(kind: str) -> None:
    lines = run_child("fork-in-thread", kind)
    assert lines == [
        "child threads ['forker']",
        "forker resumed in child",
        "start returned in child with child",
        "child exit status 0",
        "other resumed in parent",
        "other finally in parent",
        "start returned in parent with parent",
        "parent done",
    ]


# ----------------------------------------------------------------- close()


def test_close_kills_remaining_threads_and_their_finally_blocks_run(loop: Loop, pair: Pair) -> None:
    a, _ = pair
    finished: list[str] = []
    event = Event()
    lock = Lock()
    lock.acquire()
    release = threading.Event()

    def guarded(name: str, wait: Callable[[], object]) -> Callable[[], None]:
        def body() -> None:
            try:
                wait()
            finally:
                finished.append(name)

        return body

    sleeper = loop.newthread(guarded("sleep", lambda: loop.sleep(60)))
    waits: dict[str, Callable[[], object]] = {
        "recv": lambda: a.recv(10),
        "suspend": loop.suspend,
        "event": event.wait,
        "lock": lock.acquire,
        "join": sleeper.join,
        "run_in_thread": lambda: loop.run_in_thread(release.wait, WAIT),
    }
    for name, wait in waits.items():
        loop.newthread(guarded(name, wait))
    loop.spawn(guarded("not started", lambda: None))
    loop.close()
    release.set()
    assert sorted(finished) == sorted(["sleep", *waits])
    assert loop.threads() == []
    assert loop.closed


def test_close_leaves_the_threads_sockets_usable_outside_the_loop(loop: Loop, pair: Pair) -> None:
    a, b = pair
    loop.newthread(a.recv, 10)
    loop.close()
    b.sendall(b"after close")
    assert a.recv(20) == b"after close"


def test_close_is_idempotent(loop: Loop) -> None:
    loop.newthread(loop.sleep, 60)
    loop.close()
    loop.close()
    assert loop.closed


@pytest.mark.parametrize(
    "use",
    [
        pytest.param(lambda lp: lp.newthread(lambda: None), id="newthread"),
        pytest.param(lambda lp: lp.spawn(lambda: None), id="spawn"),
        pytest.param(lambda lp: lp.step(0), id="step"),
        pytest.param(lambda lp: lp.start(), id="start"),
        pytest.param(lambda lp: lp.call_soon(lambda: None), id="call_soon"),
        pytest.param(lambda lp: lp.call_later(1, lambda: None), id="call_later"),
        pytest.param(lambda lp: lp.on_signal(signal.SIGUSR1, lambda signum: None), id="on_signal"),
        pytest.param(lambda lp: lp.newserver("127.0.0.1", 0, lambda s: None), id="newserver"),
        pytest.param(lambda lp: lp.watchdog(0.05), id="watchdog"),
    ],
)
def test_using_a_closed_loop_raises_runtime_error(
    loop: Loop, use: Callable[[Loop], object]
) -> None:
    loop.close()
    threads_before = threading.active_count()
    try:
        with pytest.raises(RuntimeError, match="closed"):
            use(loop)
        assert threading.active_count() == threads_before, "an OS thread was started"
    finally:
        loop.watchdog(None)


def test_resume_of_a_thread_of_a_closed_loop_raises(loop: Loop) -> None:
    thread = loop.newthread(loop.suspend)
    loop.close()
    with pytest.raises(RuntimeError, match="this loop is closed"):
        loop.resume(thread)


def test_close_is_refused_from_a_thread_of_the_loop(loop: Loop) -> None:
    def body() -> str:
        try:
            loop.close()
        except RuntimeError:
            return "refused"
        return "closed"

    assert run(loop, body) == "refused"
    assert not loop.closed


def test_close_is_refused_while_start_is_running(loop: Loop) -> None:
    errors: list[BaseException] = []

    def callback() -> None:
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(exc)

    loop.call_soon(callback)
    loop.start()
    assert len(errors) == 1
    assert not loop.closed


def test_the_default_loop_is_replaced_after_it_is_closed(api: types.ModuleType) -> None:
    old = api.get_loop()
    thread = api.newthread(api.sleep, 60)
    api.close()
    assert old.closed
    assert not thread.is_alive()
    new = api.get_loop()
    assert new is not old
    assert not new.closed
    assert api.newthread(lambda: "works").join() == "works"


def test_close_stops_the_watchdog(loop: Loop) -> None:
    loop.watchdog(0.05)
    assert any(t.name == "socketloop-watchdog" for t in threading.enumerate())
    loop.close()
    assert not any(t.name == "socketloop-watchdog" for t in threading.enumerate())


def test_close_of_a_loop_with_a_socket_registered_releases_the_poller_fd(loop: Loop) -> None:
    a, b = socket.socketpair()
    wa = loop.wrap(a)
    b.sendall(b"x")
    assert run(loop, wa.recv, 1) == b"x"
    thread = loop.newthread(wa.recv, 1)
    loop.close()
    assert not thread.is_alive()
    wa.close()
    b.close()


def test_default_loops_of_both_modules_are_independent_when_closed() -> None:
    asym, sym = socketloop.get_loop(), socketloop.coro.get_loop()
    asym.close()
    assert not sym.closed
    assert socketloop.coro.get_loop() is sym
    sym.close()
    socketloop.get_loop().close()
