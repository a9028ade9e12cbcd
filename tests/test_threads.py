"""Threads and the loop API: newthread, current, suspend, resume, sleep, step, start, stop."""

from __future__ import annotations

import contextvars
import gc
import logging
import sys
import threading
import time
import types
import warnings
import weakref
from typing import Any

import greenlet
import pytest

import socketloop
import socketloop._idle as idle_module
from conftest import LOOP_KINDS, make_loop, wait_until_polling
from socketloop import CoroLoop, Loop, Thread

# ------------------------------------------------------------------ newthread


def test_newthread_runs_handler_at_once_until_it_suspends(loop: Loop) -> None:
    log: list[str] = []

    def handler() -> None:
        log.append("started")
        loop.suspend()
        log.append("resumed")

    thread = loop.newthread(handler)
    log.append("newthread returned")
    assert log == ["started", "newthread returned"]
    assert isinstance(thread, Thread)
    assert thread.state == "suspended"
    loop.resume(thread)
    assert log == ["started", "newthread returned", "resumed"]
    assert not thread.is_alive()


def test_newthread_passes_args_and_kwargs(loop: Loop) -> None:
    seen: list[Any] = []

    def handler(a: int, b: int = 0) -> None:
        seen.append((a, b))

    loop.newthread(handler, 1, b=2)
    assert seen == [(1, 2)]


def test_newthread_of_a_handler_that_never_suspends_returns_a_dead_thread(loop: Loop) -> None:
    thread = loop.newthread(lambda: 42)
    assert not thread.is_alive()
    assert thread.join() == 42


def test_spawn_starts_the_thread_at_the_next_dispatch(loop: Loop) -> None:
    log: list[str] = []
    thread = loop.spawn(log.append, "ran")
    assert log == []
    assert thread.state == "ready"
    assert loop.step(0) is True
    assert log == ["ran"]


# -------------------------------------------------------------------- current


def test_current_is_the_thread_newthread_returned(loop: Loop) -> None:
    seen: list[Thread[Any] | None] = []
    thread = loop.newthread(lambda: seen.append(loop.current()))
    assert seen == [thread]


def test_current_is_none_outside_loop_threads(loop: Loop) -> None:
    assert loop.current() is None


def test_current_of_another_loop_is_none_inside_a_thread(loop: Loop) -> None:
    other = Loop()
    try:
        seen: list[Any] = []
        loop.newthread(lambda: seen.append(other.current()))
        assert seen == [None]
    finally:
        other.close()


# ----------------------------------------------------------- suspend / resume


def test_resume_passes_its_argument_as_the_value_of_suspend(loop: Loop) -> None:
    received: list[Any] = []

    def handler() -> None:
        received.append(loop.suspend())
        received.append(loop.suspend())

    thread = loop.newthread(handler)
    loop.resume(thread, "first")
    loop.resume(thread, "second")
    assert received == ["first", "second"]


def test_suspend_hands_control_back_to_the_resumer(loop: Loop) -> None:
    log: list[str] = []

    def inner() -> None:
        log.append("inner 1")
        loop.suspend()
        log.append("inner 2")

    def outer() -> None:
        t = loop.newthread(inner)
        log.append("outer after newthread")
        loop.resume(t)
        log.append("outer after resume")

    loop.newthread(outer)
    assert log == ["inner 1", "outer after newthread", "inner 2", "outer after resume"]


def test_suspend_outside_a_loop_thread_raises(loop: Loop) -> None:
    with pytest.raises(RuntimeError, match="thread of this loop"):
        loop.suspend()


def test_resume_of_a_dead_thread_raises(loop: Loop) -> None:
    thread = loop.newthread(lambda: None)
    with pytest.raises(RuntimeError, match="dead"):
        loop.resume(thread)


def test_resume_of_the_running_thread_raises(loop: Loop) -> None:
    errors: list[BaseException] = []

    def handler() -> None:
        me = loop.current()
        assert me is not None
        try:
            loop.resume(me)
        except RuntimeError as exc:
            errors.append(exc)

    loop.newthread(handler)
    assert len(errors) == 1
    assert "running" in str(errors[0])


def test_resume_of_a_thread_that_is_resuming_another_raises(loop: Loop) -> None:
    errors: list[str] = []
    outer: list[Thread[Any]] = []

    def inner() -> None:
        try:
            loop.resume(outer[0])
        except RuntimeError as exc:
            errors.append(str(exc))

    def outer_fn() -> None:
        me = loop.current()
        assert me is not None
        outer.append(me)
        loop.newthread(inner)

    loop.newthread(outer_fn)
    assert len(errors) == 1
    assert "resuming another thread" in errors[0]


def test_resume_of_a_thread_waiting_in_an_async_call_raises(loop: Loop) -> None:
    thread = loop.newthread(loop.sleep, 30)
    with pytest.raises(RuntimeError, match="waiting in an async call"):
        loop.resume(thread)
    thread.kill()


def test_resume_of_a_thread_of_another_loop_raises(loop: Loop) -> None:
    other = Loop()
    try:
        thread = other.newthread(other.suspend)
        with pytest.raises(RuntimeError, match="another loop"):
            loop.resume(thread)
        other.resume(thread)
    finally:
        other.close()


# ----------------------------------------------------------------- exceptions


@pytest.mark.expect_errors
def test_exception_in_a_thread_does_not_reach_the_caller_of_newthread(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    def handler() -> None:
        raise ValueError("boom")

    with caplog.at_level(logging.ERROR, logger="socketloop"):
        thread = loop.newthread(handler)
    assert not thread.is_alive()
    assert thread.state == "dead"
    [record] = [r for r in caplog.records if r.name == "socketloop"]
    assert thread.name in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[0] is ValueError


@pytest.mark.expect_errors
def test_exception_in_a_thread_does_not_reach_the_caller_of_resume(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    def handler() -> None:
        loop.suspend()
        raise ValueError("after resume")

    thread = loop.newthread(handler)
    with caplog.at_level(logging.ERROR, logger="socketloop"):
        loop.resume(thread)
    assert not thread.is_alive()
    with pytest.raises(ValueError, match="after resume"):
        thread.join()


@pytest.mark.expect_errors
def test_exception_in_a_thread_woken_by_the_loop_does_not_stop_the_loop(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    def failing() -> None:
        loop.sleep(0.001)
        raise ValueError("in the loop")

    survivor = loop.newthread(loop.sleep, 0.002)
    failed = loop.newthread(failing)
    with caplog.at_level(logging.ERROR, logger="socketloop"):
        loop.start()
    assert not survivor.is_alive()
    with pytest.raises(ValueError, match="in the loop"):
        failed.join()


def test_keyboard_interrupt_in_a_thread_propagates_out_of_start_and_the_loop_stays_usable(
    loop: Loop,
) -> None:
    def interrupted() -> None:
        loop.sleep(0)
        raise KeyboardInterrupt

    loop.newthread(interrupted)
    survivor = loop.newthread(loop.sleep, 0.001)
    with pytest.raises(KeyboardInterrupt):
        loop.start()
    loop.start()  # usable afterwards: the survivor finishes
    assert not survivor.is_alive()


def test_system_exit_in_a_thread_propagates_out_of_step(loop: Loop) -> None:
    def exiting() -> None:
        loop.sleep(0)
        raise SystemExit(3)

    loop.newthread(exiting)
    with pytest.raises(SystemExit):
        loop.step(0)
    assert loop.step(0) is False


# ----------------------------------------------------------------------- join


def test_join_returns_the_handler_result(loop: Loop) -> None:
    def handler() -> str:
        loop.sleep(0)
        return "result"

    assert loop.newthread(handler).join() == "result"


@pytest.mark.expect_errors
def test_join_reraises_the_handler_exception(loop: Loop) -> None:
    def handler() -> None:
        loop.sleep(0)
        raise KeyError("missing")

    thread = loop.newthread(handler)
    with pytest.raises(KeyError):
        thread.join()


def test_join_from_a_loop_thread_suspends_only_that_thread(loop: Loop) -> None:
    log: list[str] = []

    def worker() -> str:
        log.append("worker start")
        loop.sleep(0.001)
        log.append("worker end")
        return "done"

    worker_thread = loop.newthread(worker)

    def joiner() -> None:
        log.append("joiner waits")
        log.append(f"joined {worker_thread.join()}")

    loop.newthread(joiner)
    loop.start()
    assert log == ["worker start", "joiner waits", "worker end", "joined done"]


def test_join_times_out_with_timeout_error(loop: Loop) -> None:
    sleeper = loop.newthread(loop.sleep, 30)
    with pytest.raises(TimeoutError):
        sleeper.join(timeout=0.01)
    sleeper.kill()


def test_join_from_a_loop_thread_times_out_with_timeout_error(loop: Loop) -> None:
    sleeper = loop.newthread(loop.sleep, 30)

    def joiner() -> str:
        try:
            sleeper.join(timeout=0.01)
        except TimeoutError:
            return "timed out"
        return "joined"

    assert run(loop, joiner) == "timed out"
    sleeper.kill()


@pytest.mark.leaves_threads
def test_join_of_a_thread_nothing_can_wake_raises_instead_of_hanging(loop: Loop) -> None:
    stuck = loop.newthread(loop.suspend)
    with pytest.raises(RuntimeError, match="can never finish"):
        stuck.join()


def test_a_thread_cannot_join_itself(loop: Loop) -> None:
    def handler() -> str:
        me = loop.current()
        assert me is not None
        try:
            me.join()
        except RuntimeError:
            return "refused"
        return "joined"

    assert loop.newthread(handler).join() == "refused"


# ---------------------------------------------------------------------- sleep


def test_sleep_zero_lets_the_other_ready_threads_run(loop: Loop) -> None:
    log: list[str] = []

    def worker(name: str) -> None:
        for i in range(3):
            log.append(f"{name}{i}")
            loop.sleep(0)

    loop.spawn(worker, "a")
    loop.spawn(worker, "b")
    loop.start()
    assert log == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_sleeps_end_in_deadline_order(loop: Loop) -> None:
    log: list[float] = []

    def sleeper(seconds: float) -> None:
        loop.sleep(seconds)
        log.append(seconds)

    for seconds in (0.03, 0.01, 0.02):
        loop.newthread(sleeper, seconds)
    loop.start()
    assert log == [0.01, 0.02, 0.03]


def test_sleep_with_negative_time_behaves_like_sleep_zero(loop: Loop) -> None:
    thread = loop.newthread(loop.sleep, -5)
    assert thread.state == "ready"
    loop.step(0)
    assert not thread.is_alive()


def test_sleep_outside_loop_threads_blocks_like_time_sleep(loop: Loop) -> None:
    ran: list[str] = []

    def ready_thread() -> None:
        loop.sleep(0)  # now in the ready queue: only a dispatch runs the rest
        ran.append("loop thread")

    loop.newthread(ready_thread)
    started = time.monotonic()
    loop.sleep(0.05)
    elapsed = time.monotonic() - started
    assert elapsed >= 0.05, f"returned after {elapsed:.3f} s"
    assert ran == [], "sleep() outside loop threads ran the loop, as time.sleep would not"
    loop.step(0)
    assert ran == ["loop thread"]


def test_sleep_inside_a_loop_callback_raises(loop: Loop) -> None:
    errors: list[BaseException] = []

    def callback() -> None:
        try:
            loop.sleep(0.01)
        except RuntimeError as exc:
            errors.append(exc)

    loop.call_soon(callback)
    loop.step(0)
    assert len(errors) == 1
    assert "callback" in str(errors[0])


# ------------------------------------------------------------- step and start


def test_step_returns_false_at_once_when_nothing_is_pending(loop: Loop) -> None:
    assert loop.step() is False
    assert loop.step(10) is False


def test_step_returns_false_when_only_suspended_threads_remain(loop: Loop) -> None:
    thread = loop.newthread(loop.suspend)
    assert loop.step() is False
    loop.resume(thread)


def test_step_waits_for_a_timer_and_dispatches_it(loop: Loop) -> None:
    thread = loop.newthread(loop.sleep, 0.01)
    while thread.is_alive():
        assert loop.step(1) is True


def test_step_with_timeout_returns_true_after_waiting_when_nothing_is_ready(loop: Loop) -> None:
    sleeper = loop.newthread(loop.sleep, 30)
    assert loop.step(0.001) is True
    assert sleeper.is_alive()
    sleeper.kill()


def test_start_returns_when_nothing_is_left_waiting(loop: Loop) -> None:
    threads = [loop.newthread(loop.sleep, 0.001 * i) for i in range(5)]
    loop.start()
    assert not any(t.is_alive() for t in threads)


def test_start_with_timeout_returns_while_threads_still_wait(loop: Loop) -> None:
    sleeper = loop.newthread(loop.sleep, 30)
    loop.start(0.01)
    assert sleeper.is_alive()
    sleeper.kill()


def test_stop_from_a_loop_thread_makes_start_return(loop: Loop) -> None:
    sleeper = loop.newthread(loop.sleep, 30)

    def stopper() -> None:
        loop.sleep(0.001)
        loop.stop()

    loop.newthread(stopper)
    loop.start()
    assert sleeper.is_alive()
    sleeper.kill()


def test_stop_from_another_os_thread_wakes_a_polling_loop(loop: Loop) -> None:
    sleeper = loop.newthread(loop.sleep, 30)

    def stop_when_running() -> None:
        wait_until_polling(loop)
        loop.stop()

    helper = threading.Thread(target=stop_when_running)
    helper.start()
    loop.start()
    helper.join()
    assert sleeper.is_alive()
    sleeper.kill()


def test_stop_when_not_running_is_a_noop(loop: Loop) -> None:
    loop.stop()
    thread = loop.newthread(loop.sleep, 0.001)
    loop.start()
    assert not thread.is_alive()


def test_start_inside_a_thread_of_the_same_loop_raises(loop: Loop) -> None:
    def handler() -> str:
        try:
            loop.start()
        except RuntimeError:
            return "refused"
        return "ran"

    assert loop.newthread(handler).join() == "refused"


# ------------------------------------------------------------------ identity


def test_thread_repr_shows_name_state_and_what_it_waits_on(loop: Loop) -> None:
    thread = loop.newthread(loop.sleep, 30)
    thread.name = "sleepy"
    text = repr(thread)
    assert "sleepy" in text
    assert "waiting" in text
    assert "sleep" in text
    thread.kill()
    assert "dead" in repr(thread)


def test_thread_is_alive_until_its_handler_ends(loop: Loop) -> None:
    thread = loop.newthread(loop.suspend)
    assert thread.is_alive()
    loop.resume(thread)
    assert not thread.is_alive()


def test_each_os_thread_has_its_own_default_loops() -> None:
    here = (socketloop.get_loop(), socketloop.coro.get_loop())
    there: list[Any] = []

    def other() -> None:
        there.extend([socketloop.get_loop(), socketloop.coro.get_loop()])
        for lp in there:
            lp.close()

    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    assert here[0] is not there[0]
    assert here[1] is not there[1]
    assert isinstance(here[1], CoroLoop)
    assert not isinstance(here[0], CoroLoop)
    for lp in here:
        lp.close()


def test_a_loop_used_from_another_os_thread_raises(loop: Loop) -> None:
    loop.newthread(lambda: None)  # binds the loop to this OS thread
    errors: list[BaseException] = []

    def other() -> None:
        try:
            loop.newthread(lambda: None)
        except RuntimeError as exc:
            errors.append(exc)

    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    assert len(errors) == 1
    assert "another OS thread" in str(errors[0])


# ------------------------------------------------- reuse of ended threads
# An ended thread's greenlet is kept and reused for a later thread when
# nothing can tell the difference: no handle to the ended thread exists.


def test_an_ended_thread_that_nothing_refers_to_is_reused_for_the_next_thread(loop: Loop) -> None:
    seen: list[int] = []
    loop.newthread(lambda: seen.append(id(loop.current())))
    loop.newthread(lambda: seen.append(id(loop.current())))
    assert seen[0] == seen[1]


def test_an_ended_thread_whose_handle_is_kept_is_not_reused(loop: Loop) -> None:
    first = loop.newthread(lambda: "first")
    second = loop.newthread(lambda: "second")
    assert second is not first
    assert first.join() == "first"
    assert second.join() == "second"
    assert first.state == "dead"
    assert first.dead
    assert first.loop is loop


def test_an_ended_thread_with_a_weak_reference_is_not_reused(loop: Loop) -> None:
    refs: list[weakref.ref[Any]] = []
    loop.newthread(lambda: refs.append(weakref.ref(loop.current())))
    again = loop.newthread(loop.current)
    assert refs[0]() is not again.join()


def test_a_reused_thread_starts_with_fresh_context_variables(loop: Loop) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    def first() -> None:
        var.set("set by the first thread")

    def second() -> None:
        seen.append(var.get())

    loop.newthread(first)
    loop.newthread(second)
    assert seen == ["unset"]


def test_a_reused_thread_has_a_new_name_and_a_fresh_state(loop: Loop) -> None:
    names: list[str] = []

    def first() -> None:
        names.append(loop.current().name)  # type: ignore[union-attr]

    def second() -> None:
        names.append(loop.current().name)  # type: ignore[union-attr]
        loop.suspend()

    loop.newthread(first)
    thread = loop.newthread(second)
    assert names[0] != names[1]
    assert "second" in names[1]
    assert thread.state == "suspended"
    loop.resume(thread)
    assert thread.join() is None


def test_a_thread_that_raised_is_not_reused(loop: Loop, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []

    def fails() -> None:
        seen.append(id(loop.current()))
        raise ValueError("boom")

    with caplog.at_level(logging.CRITICAL, logger="socketloop"):
        loop.newthread(fails)
    assert loop._idle == []
    loop.newthread(lambda: seen.append(id(loop.current())))
    assert len(loop._idle) == 1


def test_the_loop_keeps_a_bounded_number_of_ended_threads(loop: Loop) -> None:
    from socketloop._idle import IDLE_THREADS_KEPT

    blockers = [loop.newthread(loop.suspend) for _ in range(IDLE_THREADS_KEPT + 10)]
    for thread in blockers:
        loop.resume(thread)
    del thread, blockers
    assert len(loop._idle) == IDLE_THREADS_KEPT


def test_attributes_set_on_a_thread_do_not_reach_a_later_thread(loop: Loop) -> None:
    seen: list[Any] = []

    def first() -> None:
        loop.current().request_id = "first"  # type: ignore[union-attr]

    def second() -> None:
        seen.append(getattr(loop.current(), "request_id", None))

    loop.newthread(first)
    loop.newthread(second)
    assert seen == [None]


def test_a_reused_thread_may_resume_the_thread_that_started_its_predecessor(loop: Loop) -> None:
    def starter() -> None:
        loop.newthread(lambda: None)  # ends at once, while this thread resumes it
        loop.suspend()

    first = loop.newthread(starter)

    def resumer() -> str:
        loop.resume(first)  # first ends; control comes back here
        return "done"

    second = loop.newthread(resumer)
    assert second.join() == "done"
    assert not first.is_alive()
    assert loop.threads() == []


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_a_thread_killed_before_it_started_on_a_reused_greenlet_leaves_nothing_behind(
    kind: str,
) -> None:
    def scenario() -> tuple[weakref.ref[Any], weakref.ref[Loop]]:
        lp = make_loop(kind)
        lp.newthread(lambda: None)
        box: list[Thread[Any]] = []
        thread = lp.spawn(lambda: box[0].name)  # refers to its own handle
        box.append(thread)
        thread.kill()
        lp.close()
        return weakref.ref(thread), weakref.ref(lp)

    thread_ref, loop_ref = scenario()
    gc.collect()
    assert thread_ref() is None
    assert loop_ref() is None


@pytest.mark.parametrize("kind", LOOP_KINDS)
@pytest.mark.parametrize(
    "leave_behind",
    ["a closure over the loop", "a thread killed while sleeping", "a result that is the loop"],
)
def test_a_loop_dropped_without_close_is_collected_whatever_its_ended_threads_refer_to(
    kind: str, leave_behind: str
) -> None:
    def scenario() -> weakref.ref[Loop]:
        lp = make_loop(kind)
        if leave_behind == "a closure over the loop":
            lp.newthread(lambda: lp.current() and None)
        elif leave_behind == "a thread killed while sleeping":
            lp.newthread(lp.sleep, 30).kill()
        else:
            lp.newthread(lambda: lp)
        return weakref.ref(lp)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        loop_ref = scenario()
        gc.collect()
    assert loop_ref() is None


def test_attributes_set_on_a_thread_killed_before_it_started_do_not_reach_a_later_thread(
    loop: Loop,
) -> None:
    loop.newthread(lambda: None)
    killed = loop.spawn(lambda: None)
    killed.request_id = "killed"  # type: ignore[attr-defined]
    killed.kill()
    del killed
    seen: list[Any] = []
    loop.newthread(lambda: seen.append(getattr(loop.current(), "request_id", None)))
    assert seen == [None]


def test_a_handler_whose_attributes_cannot_be_read_ends_normally(loop: Loop) -> None:
    class Strict:
        def __call__(self) -> None:
            pass

        def __getattr__(self, name: str) -> Any:
            raise RuntimeError(f"no attribute {name} outside a request")

    loop.newthread(lambda: None)
    thread = loop.newthread(Strict())
    assert thread.state == "dead"
    assert thread.join() is None


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_a_loop_driven_from_a_dropped_greenlet_is_collected(kind: str) -> None:
    main = greenlet.getcurrent()

    def drive(lp: Loop) -> None:
        while True:
            lp.step(0)
            main.switch()

    def scenario() -> tuple[weakref.ref[Loop], weakref.ref[greenlet.greenlet]]:
        lp = make_loop(kind)
        lp.newthread(lambda: None)
        driver = greenlet.greenlet(drive)
        lp.spawn(lambda: None)  # ends in the driver's dispatch
        driver.switch(lp)
        return weakref.ref(lp), weakref.ref(driver)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        loop_ref, driver_ref = scenario()
        gc.collect()
    assert loop_ref() is None
    assert driver_ref() is None


def test_a_kept_handle_is_never_reused_even_if_the_first_reuse_finds_the_list_full(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idle_module, "_idle_refs", None)  # measure again, here
    handles = [loop.newthread(loop.suspend) for _ in range(idle_module.IDLE_THREADS_KEPT)]
    for thread in handles:
        loop.resume(thread)  # all end and park; the list is full
    loop.newthread(lambda: None)  # the first reuse: the measurement happens now
    kept = loop.newthread(lambda: None)
    alias = kept
    fresh = loop.newthread(loop.suspend)
    assert fresh is not kept
    assert alias.state == "dead"
    loop.resume(fresh)


def test_reuse_waits_for_a_tracer_to_leave_before_measuring(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idle_module, "_idle_refs", None)

    def tracer(frame: types.FrameType, event: str, arg: Any) -> Any:
        frame.f_locals  # noqa: B018 - a debugger's tracer keeps frame locals alive
        return tracer

    sys.settrace(tracer)
    try:
        loop.newthread(lambda: None)
        loop.newthread(lambda: None)
    finally:
        sys.settrace(None)
    assert idle_module._idle_refs is None
    seen: list[int] = []
    loop.newthread(lambda: seen.append(id(loop.current())))
    loop.newthread(lambda: seen.append(id(loop.current())))
    assert seen[0] == seen[1]


def test_closing_the_loop_ends_the_greenlets_of_ended_threads() -> None:
    lp = Loop()
    lp.newthread(lambda: None)
    parked = list(lp._idle)
    assert parked
    lp.close()
    assert all(greenlet.greenlet.dead.__get__(g) for g in parked)


def test_switching_into_an_ended_threads_greenlet_goes_to_its_parent_as_for_a_dead_one(
    loop: Loop,
) -> None:
    inner: list[greenlet.greenlet] = []

    def handler() -> None:
        # A raw greenlet whose parent is this thread, left unfinished.
        inner.append(greenlet.greenlet(lambda: "inner finished"))

    loop.newthread(handler)
    # The raw greenlet ends after its parent thread has: control goes on to
    # where the thread ended (here), as it would for a dead greenlet.
    assert inner[0].switch() == "inner finished"


# ----------------------------------------------------- the module-level API


def test_module_functions_act_on_the_default_loop(api: types.ModuleType) -> None:
    log: list[Any] = []

    def handler() -> None:
        log.append(api.current())
        api.sleep(0.001)
        log.append(api.suspend())

    thread = api.newthread(handler)
    assert log == [thread]
    assert thread.loop is api.get_loop()
    assert api.step(1) is True  # the sleep ends
    assert thread.state == "suspended"
    assert api.step() is False  # only a suspended thread is left
    api.resume(thread, "value")
    assert log == [thread, "value"]
    assert api.current() is None


def test_module_spawn_and_start_use_the_default_loop(api: types.ModuleType) -> None:
    log: list[str] = []

    def stopper() -> None:
        api.sleep(0.001)
        api.stop()
        log.append("stopped")

    api.spawn(log.append, "spawned")
    api.newthread(stopper)
    api.start()
    assert log == ["spawned", "stopped"]


# ----------------------------------------------------------- symmetric loop


@pytest.fixture
def coro_loop() -> Any:
    lp = CoroLoop()
    yield lp
    lp.close()


def test_transfer_passes_values_both_ways(coro_loop: CoroLoop) -> None:
    log: list[Any] = []
    threads: dict[str, Thread[Any]] = {}

    def ping() -> None:
        value = coro_loop.transfer(threads["pong"], "ping 1")
        log.append(("ping got", value))
        value = coro_loop.transfer(threads["pong"], "ping 2")
        log.append(("ping got", value))

    def pong() -> None:
        value = coro_loop.suspend()
        while True:
            log.append(("pong got", value))
            if value == "ping 2":
                return
            value = coro_loop.transfer(threads["ping"], value.upper())

    threads["pong"] = coro_loop.newthread(pong)
    threads["ping"] = coro_loop.spawn(ping)
    coro_loop.resume(threads["ping"])
    assert log == [
        ("pong got", "ping 1"),
        ("ping got", "PING 1"),
        ("pong got", "ping 2"),
    ]
    assert not threads["pong"].is_alive()
    assert threads["ping"].state == "suspended"
    coro_loop.resume(threads["ping"], "end")
    assert not threads["ping"].is_alive()


def test_suspend_in_a_symmetric_thread_returns_to_the_loop_thread(coro_loop: CoroLoop) -> None:
    log: list[str] = []
    threads: list[Thread[Any]] = []

    def second() -> None:
        log.append("second suspends")
        coro_loop.suspend()
        log.append("second resumed")

    def first() -> None:
        log.append("first transfers")
        coro_loop.transfer(threads[1])
        log.append("first back")

    threads.append(coro_loop.spawn(first))
    threads.append(coro_loop.spawn(second))
    coro_loop.resume(threads[0])
    # second suspended: control came back to us (the resumer), not to first
    assert log == ["first transfers", "second suspends"]
    assert threads[0].state == "suspended"
    coro_loop.resume(threads[1])
    assert log[-1] == "second resumed"
    coro_loop.transfer(threads[0])
    assert log[-1] == "first back"


def test_ending_thread_hands_control_to_the_loop_thread_not_the_last_transferrer(
    coro_loop: CoroLoop,
) -> None:
    log: list[str] = []
    threads: list[Thread[Any]] = []

    def short() -> None:
        log.append("short ends")

    def transferrer() -> None:
        coro_loop.transfer(threads[1])
        log.append("transferrer resumed")  # must not happen when short ends

    threads.append(coro_loop.spawn(transferrer))
    threads.append(coro_loop.spawn(short))
    coro_loop.resume(threads[0])
    log.append("back in the loop thread")
    assert log == ["short ends", "back in the loop thread"]
    assert threads[0].state == "suspended"
    threads[0].kill()


def test_transfer_chain_of_100000_hops_does_not_grow_the_stack(coro_loop: CoroLoop) -> None:
    hops = 100_000
    count = [0]
    depths: set[int] = set()
    threads: list[Thread[Any]] = []

    def depth() -> int:
        frame = sys._getframe()
        n = 0
        while frame is not None:
            n += 1
            frame = frame.f_back  # type: ignore[assignment]
        return n

    def hopper(index: int) -> None:
        while count[0] < hops:
            count[0] += 1
            if count[0] % 10_000 == 0:
                depths.add(depth())
            coro_loop.transfer(threads[1 - index])

    threads.append(coro_loop.spawn(hopper, 0))
    threads.append(coro_loop.spawn(hopper, 1))
    coro_loop.resume(threads[0])
    assert count[0] == hops
    assert len(depths) <= 2  # the two hoppers' own depths, not growing
    for t in threads:
        if t.is_alive():
            t.kill()


def test_transfer_to_the_running_thread_raises(coro_loop: CoroLoop) -> None:
    def handler() -> str:
        me = coro_loop.current()
        assert me is not None
        try:
            coro_loop.transfer(me)
        except RuntimeError:
            return "refused"
        return "transferred"

    assert coro_loop.newthread(handler).join() == "refused"


def test_transfer_to_a_dead_thread_raises(coro_loop: CoroLoop) -> None:
    dead = coro_loop.newthread(lambda: None)
    with pytest.raises(RuntimeError, match="dead"):
        coro_loop.transfer(dead)


@pytest.mark.expect_errors
def test_error_in_a_transferred_to_thread_is_logged_and_control_returns_to_the_loop_thread(
    coro_loop: CoroLoop, caplog: pytest.LogCaptureFixture
) -> None:
    threads: list[Thread[Any]] = []

    def failing() -> None:
        raise ValueError("in transferred thread")

    def transferrer() -> None:
        coro_loop.transfer(threads[1])

    threads.append(coro_loop.spawn(transferrer))
    threads.append(coro_loop.spawn(failing))
    with caplog.at_level(logging.ERROR, logger="socketloop"):
        coro_loop.resume(threads[0])
    assert any(r.exc_info and r.exc_info[0] is ValueError for r in caplog.records)
    with pytest.raises(ValueError):
        threads[1].join()
    threads[0].kill()


def run(lp: Loop, fn: Any, *args: Any) -> Any:
    return lp.newthread(fn, *args).join(10)
