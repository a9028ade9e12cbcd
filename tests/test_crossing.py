"""Crossing into OS threads and back: run_in_thread, call_soon_threadsafe, resume_threadsafe."""

from __future__ import annotations

import os
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import pytest

from conftest import LOOP_KINDS, make_loop, run, wait_until_polling
from socketloop import Loop, Thread
from socketloop._pool import DEFAULT_WORKERS

WAIT = 10.0  # bound for every cross-thread wait: a hang fails instead of freezing


def start_os_thread(target: Callable[[], object]) -> threading.Thread:
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    return worker


# -------------------------------------------------------------- run_in_thread


def test_run_in_thread_returns_the_result(loop: Loop) -> None:
    def body() -> Any:
        return loop.run_in_thread(lambda a, b: (a + b, threading.get_ident()), 1, 2)

    value, ident = run(loop, body)
    assert value == 3
    assert ident != threading.get_ident()


def test_run_in_thread_passes_kwargs(loop: Loop) -> None:
    def join_words(*words: str, sep: str) -> str:
        return sep.join(words)

    assert run(loop, lambda: loop.run_in_thread(join_words, "a", "b", sep="-")) == "a-b"


def test_run_in_thread_reraises_the_exception_in_the_calling_thread(loop: Loop) -> None:
    def failing() -> None:
        raise KeyError("from the OS thread")

    def body() -> str:
        try:
            loop.run_in_thread(failing)
        except KeyError as exc:
            return str(exc)
        return "no error"

    assert run(loop, body) == "'from the OS thread'"


def test_run_in_thread_suspends_only_the_calling_thread(loop: Loop) -> None:
    release = threading.Event()
    log: list[str] = []

    def blocking() -> str:
        if not release.wait(WAIT):
            return "never released"
        return "result"

    def caller() -> None:
        log.append("call")
        log.append(loop.run_in_thread(blocking))

    def other() -> None:
        for i in range(3):
            log.append(f"other {i}")
            loop.sleep(0)
        release.set()

    loop.newthread(caller)
    loop.newthread(other)
    loop.start(WAIT)
    assert log == ["call", "other 0", "other 1", "other 2", "result"]


def test_run_in_thread_outside_a_loop_thread_calls_directly(loop: Loop) -> None:
    assert loop.run_in_thread(threading.get_ident) == threading.get_ident()


def test_run_in_thread_keeps_start_running_while_the_call_is_in_flight(loop: Loop) -> None:
    release = threading.Event()
    results: list[str] = []

    def blocking() -> str:
        release.wait(WAIT)
        return "done"

    def caller() -> None:
        results.append(loop.run_in_thread(blocking))

    loop.newthread(caller)
    assert loop.statistics()["pool_active"] == 1
    assert loop.statistics()["external_waits"] == 1
    loop.call_soon(release.set)  # released once start() runs: it must wait for the result
    loop.start(WAIT)
    assert results == ["done"]
    assert loop.statistics()["pool_active"] == 0


def test_run_in_thread_pool_is_bounded_and_extra_calls_queue(loop: Loop) -> None:
    calls = DEFAULT_WORKERS + 3
    cond = threading.Condition()
    state = {"started": 0, "running": 0, "max_running": 0}
    release = threading.Event()

    def blocking(i: int) -> int:
        with cond:
            state["started"] += 1
            state["running"] += 1
            state["max_running"] = max(state["max_running"], state["running"])
            cond.notify_all()
        release.wait(WAIT)
        with cond:
            state["running"] -= 1
        return i

    threads = [loop.newthread(loop.run_in_thread, blocking, i) for i in range(calls)]
    assert loop.statistics()["pool_active"] == calls
    with cond:
        assert cond.wait_for(lambda: state["started"] == DEFAULT_WORKERS, WAIT)
        # The rest are queued: they do not start while every worker is busy.
        assert not cond.wait_for(lambda: state["started"] > DEFAULT_WORKERS, 0.05)
    release.set()
    loop.start(WAIT)
    assert [t.join() for t in threads] == list(range(calls))
    assert state["max_running"] == DEFAULT_WORKERS


def test_run_in_thread_killing_the_waiting_thread_leaves_nothing_pending(loop: Loop) -> None:
    release = threading.Event()
    finished = threading.Event()
    log: list[str] = []

    def blocking() -> str:
        release.wait(WAIT)
        finished.set()
        return "abandoned result"

    def caller() -> None:
        try:
            log.append(loop.run_in_thread(blocking))
        finally:
            log.append("caller finally")

    thread = loop.newthread(caller)
    thread.kill()
    assert log == ["caller finally"]
    stats = loop.statistics()
    assert stats["external_waits"] == 0
    assert stats["pool_active"] == 0
    assert loop.step() is False  # nothing keeps the loop busy any more
    release.set()
    assert finished.wait(WAIT)


def test_module_run_in_thread_uses_the_default_loop(api: types.ModuleType) -> None:
    def body() -> int:
        return api.run_in_thread(pow, 2, 10)  # type: ignore[no-any-return]

    thread = api.newthread(body)
    api.start()
    assert thread.join() == 1024


# ------------------------------------------------------ call_soon_threadsafe


def test_call_soon_threadsafe_8_os_threads_x_10000_calls_lose_none_and_keep_fifo(
    loop: Loop,
) -> None:
    n_threads, n_calls = 8, 10_000
    received: list[list[int]] = [[] for _ in range(n_threads)]
    keeper = loop.newthread(loop.sleep, 60)  # keeps start() polling

    def pusher(index: int) -> None:
        out = received[index]
        for i in range(n_calls):
            loop.call_soon_threadsafe(out.append, i)

    def finisher() -> None:
        for worker in pushers:
            worker.join(WAIT)
        loop.call_soon_threadsafe(loop.stop)

    pushers = [threading.Thread(target=pusher, args=(i,)) for i in range(n_threads)]
    for worker in pushers:
        worker.start()
    finishing = start_os_thread(finisher)
    loop.start(30)
    finishing.join(WAIT)
    for calls in received:
        assert calls == list(range(n_calls))
    keeper.kill()


def test_call_soon_threadsafe_wakes_a_polling_loop(loop: Loop) -> None:
    keeper = loop.newthread(loop.sleep, 60)
    log: list[str] = []

    def from_outside() -> None:
        wait_until_polling(loop, WAIT)
        loop.call_soon_threadsafe(log.append, "called")
        loop.call_soon_threadsafe(loop.stop)

    worker = start_os_thread(from_outside)
    loop.start(WAIT)
    worker.join(WAIT)
    assert log == ["called"]
    keeper.kill()


def test_call_soon_threadsafe_many_calls_while_the_loop_is_busy_neither_block_nor_get_lost(
    loop: Loop,
) -> None:
    count = 100_000
    received: list[int] = []

    def pusher() -> None:
        for i in range(count):
            loop.call_soon_threadsafe(received.append, i)

    worker = start_os_thread(pusher)
    worker.join(WAIT)  # the loop is not dispatching meanwhile
    assert not worker.is_alive(), "call_soon_threadsafe blocked"
    assert received == []
    assert loop.step(0) is True
    assert received == list(range(count))
    assert loop.step(0) is False


def test_a_wake_up_written_after_the_loop_cleared_the_flag_does_not_make_it_spin(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Interleaving: the caller raises the flag, the loop consumes the flag and the call,
    # and only then does the caller's write to the wake-up fd land.
    about_to_write = threading.Event()
    go = threading.Event()
    real_write = os.write
    pusher_ident: list[int] = []

    def slow_write(fd: int, data: bytes) -> int:
        if pusher_ident and threading.get_ident() == pusher_ident[0]:
            about_to_write.set()
            go.wait(WAIT)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", slow_write)
    log: list[str] = []
    sleeper = loop.newthread(loop.sleep, 60)

    def pusher() -> None:
        pusher_ident.append(threading.get_ident())
        loop.call_soon_threadsafe(log.append, "called")

    worker = threading.Thread(target=pusher, daemon=True)
    worker.start()
    assert about_to_write.wait(WAIT)
    loop.step(0)  # consumes the flag and runs the call
    assert log == ["called"]
    go.set()
    worker.join(WAIT)
    steps = 0
    deadline = time.monotonic() + 0.1
    while time.monotonic() < deadline:
        loop.step(0.1)  # nothing is due: each step should wait, not return at once
        steps += 1
    sleeper.kill()
    assert steps < 20, f"the loop spun: {steps} steps in 0.1 s with nothing to do"


def test_a_wake_up_that_lands_while_the_loop_empties_the_pipe_is_not_swallowed(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Interleaving: while the loop empties its wake-up pipe, a signal handler
    # (between two bytecodes of the loop's own OS thread) queues a call.  The
    # flag must not end up raised over an empty pipe: every later caller
    # would then skip its write and a polling loop would sleep through it.
    wakeup_fd = loop._wakeup.fd
    real_read = os.read
    interleaved: list[str] = []

    def read_with_a_call_landing(fd: int, size: int) -> bytes:
        if fd == wakeup_fd and not interleaved:
            interleaved.append("queued")
            loop.call_soon_threadsafe(interleaved.append, "ran")
        return real_read(fd, size)

    monkeypatch.setattr(os, "read", read_with_a_call_landing)
    loop.call_soon_threadsafe(lambda: None)
    loop.step(0)  # empties the pipe; the call that landed meanwhile runs too
    assert interleaved == ["queued", "ran"]
    monkeypatch.setattr(os, "read", real_read)
    keeper = loop.newthread(loop.sleep, 60)
    ran = threading.Event()
    woken: list[bool] = []

    def pusher() -> None:
        wait_until_polling(loop, WAIT)
        loop.call_soon_threadsafe(ran.set)
        woken.append(ran.wait(WAIT))  # the polling loop must run it, not sleep on
        loop.call_soon_threadsafe(lambda: keeper.kill(block=False))

    worker = start_os_thread(pusher)
    loop.start(3 * WAIT)
    worker.join(WAIT)
    assert woken == [True], "the loop slept through a wake-up"
    assert not keeper.is_alive()


def test_call_soon_threadsafe_from_the_loops_own_thread_and_from_a_callback(loop: Loop) -> None:
    log: list[str] = []

    def first() -> None:
        log.append("first")
        loop.call_soon_threadsafe(log.append, "from callback")

    loop.call_soon_threadsafe(first)
    loop.newthread(lambda: loop.call_soon_threadsafe(log.append, "from thread"))
    loop.start()
    assert log == ["first", "from thread", "from callback"]


@pytest.mark.expect_errors
def test_call_soon_threadsafe_error_is_logged_and_later_calls_still_run(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []

    def failing() -> None:
        raise ValueError("in a threadsafe call")

    def pusher() -> None:
        loop.call_soon_threadsafe(failing)
        loop.call_soon_threadsafe(log.append, "after")

    worker = start_os_thread(pusher)
    worker.join(WAIT)
    loop.start()
    assert log == ["after"]
    assert any(r.exc_info and r.exc_info[0] is ValueError for r in caplog.records)


def test_call_soon_threadsafe_after_close_is_a_harmless_no_op(loop: Loop) -> None:
    log: list[str] = []
    loop.close()
    errors: list[BaseException] = []

    def late() -> None:
        try:
            loop.call_soon_threadsafe(log.append, "late")
        except BaseException as exc:
            errors.append(exc)

    worker = start_os_thread(late)
    worker.join(WAIT)
    loop.call_soon_threadsafe(log.append, "late, same thread")
    assert errors == []
    assert log == []


def test_call_soon_threadsafe_racing_close_never_raises(loop: Loop) -> None:
    errors: list[BaseException] = []
    ready = threading.Event()
    stop = threading.Event()

    def pusher() -> None:
        ready.set()
        try:
            while not stop.is_set():
                loop.call_soon_threadsafe(lambda: None)
        except BaseException as exc:
            errors.append(exc)

    worker = start_os_thread(pusher)
    ready.wait(WAIT)
    loop.step(0)
    loop.close()
    stop.set()
    worker.join(WAIT)
    assert errors == []


# ---------------------------------------------------------- resume_threadsafe


def test_resume_threadsafe_from_another_os_thread_wakes_a_polling_loop(loop: Loop) -> None:
    keeper = loop.newthread(loop.sleep, 60)
    log: list[Any] = []

    def suspended() -> None:
        log.append(("resumed with", loop.suspend()))
        keeper.kill()

    thread = loop.newthread(suspended)

    def from_outside() -> None:
        wait_until_polling(loop, WAIT)
        loop.resume_threadsafe(thread, "value")

    worker = start_os_thread(from_outside)
    loop.start(WAIT)
    worker.join(WAIT)
    assert log == [("resumed with", "value")]
    assert not thread.is_alive()


@pytest.mark.expect_errors
def test_resume_threadsafe_of_a_thread_that_is_not_suspended_logs_an_error(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    sleeper = loop.newthread(loop.sleep, 60)
    worker = start_os_thread(lambda: loop.resume_threadsafe(sleeper, "x"))
    worker.join(WAIT)
    loop.step(0)
    assert sleeper.state == "waiting"
    assert any(r.exc_info and r.exc_info[0] is RuntimeError for r in caplog.records)
    sleeper.kill()


def test_resume_threadsafe_after_close_is_a_harmless_no_op(loop: Loop) -> None:
    thread = loop.newthread(loop.suspend)
    loop.close()
    assert call_from_other_os_thread(lambda: loop.resume_threadsafe(thread, "late")) is None
    loop.resume_threadsafe(thread, "late, same thread")  # must not raise either
    assert not thread.is_alive()


def test_module_resume_threadsafe_via_the_loop_object(api: types.ModuleType) -> None:
    log: list[Any] = []
    target_loop = api.get_loop()
    thread: Thread[Any] = api.newthread(lambda: log.append(api.suspend()))
    worker = start_os_thread(lambda: target_loop.resume_threadsafe(thread, "hello"))
    worker.join(WAIT)
    api.step(0)
    assert log == ["hello"]


# -------------------------------------------------- loops bound to an OS thread


def call_from_other_os_thread(fn: Callable[[], object]) -> BaseException | None:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    worker = start_os_thread(target)
    worker.join(WAIT)
    assert not worker.is_alive()
    return errors[0] if errors else None


@pytest.mark.parametrize(
    "use",
    [
        pytest.param(lambda lp: lp.newthread(lambda: None), id="newthread"),
        pytest.param(lambda lp: lp.spawn(lambda: None), id="spawn"),
        pytest.param(lambda lp: lp.call_soon(lambda: None), id="call_soon"),
        pytest.param(lambda lp: lp.call_later(1, lambda: None), id="call_later"),
        pytest.param(lambda lp: lp.step(0), id="step"),
        pytest.param(lambda lp: lp.start(0), id="start"),
        pytest.param(lambda lp: lp.on_signal(10, None), id="on_signal"),
    ],
)
def test_a_loop_used_from_another_os_thread_raises_runtime_error(
    loop: Loop, use: Callable[[Loop], object]
) -> None:
    sleeper = loop.newthread(loop.sleep, 60)  # binds the loop to this OS thread
    error = call_from_other_os_thread(lambda: use(loop))
    assert isinstance(error, RuntimeError), error
    assert sleeper.state == "waiting"
    assert not loop.closed
    sleeper.kill()


def test_resuming_a_thread_from_another_os_thread_raises_runtime_error(loop: Loop) -> None:
    thread = loop.newthread(loop.suspend)
    error = call_from_other_os_thread(lambda: loop.resume(thread))
    assert isinstance(error, RuntimeError)
    assert thread.state == "suspended"
    loop.resume(thread)


@pytest.mark.parametrize("block", [True, False], ids=["block", "no-block"])
def test_killing_a_thread_from_another_os_thread_raises_and_leaves_it_untouched(
    loop: Loop, block: bool
) -> None:
    thread = loop.newthread(loop.sleep, 60)
    try:
        error = call_from_other_os_thread(lambda: thread.kill(block=block))
        assert isinstance(error, RuntimeError), error
        assert thread.state == "waiting"
        assert loop.statistics()["ready"] == 0
    finally:
        thread.kill()


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_closing_a_loop_from_another_os_thread_raises_and_leaves_it_intact(kind: str) -> None:
    lp = make_loop(kind)
    try:
        sleeper = lp.newthread(lp.sleep, 60)
        error = call_from_other_os_thread(lp.close)
        assert isinstance(error, RuntimeError), error
        assert not lp.closed
        assert sleeper.state == "waiting"
        sleeper.kill()
        assert not sleeper.is_alive()
    finally:
        lp.close()


def test_stop_from_another_os_thread_is_allowed(loop: Loop) -> None:
    assert call_from_other_os_thread(loop.stop) is None
