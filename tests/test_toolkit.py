"""The thread toolkit: spawn, Thread.kill, timeout scopes, join deadlock detection."""

from __future__ import annotations

import logging
import queue
import threading
import types
from typing import Any

import pytest

from conftest import fill_send_buffer, run
from socketloop import AsyncSocket, DeadlockError, Event, Lock, Loop, Queue, Thread, ThreadExit

Pair = tuple[AsyncSocket, AsyncSocket]


def socketloop_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "socketloop" and r.levelno >= logging.ERROR]


# ---------------------------------------------------------------------- spawn


def test_spawn_returns_before_the_handler_runs(loop: Loop) -> None:
    log: list[str] = []
    thread = loop.spawn(log.append, "ran")
    log.append("spawn returned")
    assert thread.state == "ready"
    assert thread.is_alive()
    loop.step(0)
    assert log == ["spawn returned", "ran"]
    assert not thread.is_alive()


def test_spawned_threads_start_in_spawn_order_at_the_same_dispatch(loop: Loop) -> None:
    log: list[str] = []
    for name in ("a", "b", "c"):
        loop.spawn(log.append, name)
    assert log == []
    assert loop.step(0) is True
    assert log == ["a", "b", "c"]


def test_spawn_passes_args_and_kwargs_and_join_returns_the_result(loop: Loop) -> None:
    def handler(a: int, *, b: int) -> int:
        return a + b

    thread = loop.spawn(handler, 1, b=2)
    assert thread.join(5) == 3


def test_spawn_from_a_loop_thread_starts_after_the_spawner_suspends(loop: Loop) -> None:
    log: list[str] = []

    def spawner() -> None:
        loop.spawn(log.append, "child")
        log.append("spawner continues")
        loop.sleep(0)
        log.append("spawner resumed")

    run(loop, spawner)
    assert log == ["spawner continues", "child", "spawner resumed"]


def test_module_spawn_starts_at_the_next_dispatch_of_the_default_loop(
    api: types.ModuleType,
) -> None:
    log: list[str] = []
    thread = api.spawn(log.append, "ran")
    assert thread.loop is api.get_loop()
    assert log == []
    api.start()
    assert log == ["ran"]


# ---------------------------------------------------------------- Thread.kill


def test_kill_raises_thread_exit_at_the_suspension_point(loop: Loop) -> None:
    log: list[str] = []

    def victim() -> None:
        try:
            loop.suspend()
        except ThreadExit:
            log.append("ThreadExit at suspend")
            raise
        log.append("suspend returned")  # must not happen

    thread = loop.newthread(victim)
    thread.kill()
    assert log == ["ThreadExit at suspend"]
    assert not thread.is_alive()
    assert thread.join() is None


def test_kill_runs_finally_blocks_innermost_first(loop: Loop) -> None:
    log: list[str] = []

    def inner() -> None:
        try:
            loop.sleep(30)
        finally:
            log.append("inner finally")

    def victim() -> None:
        try:
            inner()
        finally:
            log.append("outer finally")

    thread = loop.newthread(victim)
    thread.kill()
    assert log == ["inner finally", "outer finally"]


def test_thread_exit_is_not_swallowed_by_except_exception(loop: Loop) -> None:
    log: list[str] = []

    def victim() -> None:
        try:
            loop.sleep(30)
        except Exception:
            log.append("swallowed")
        log.append("after the try")

    loop.newthread(victim).kill()
    assert log == []


def test_kill_of_a_sleeping_thread_cancels_its_timer(loop: Loop) -> None:
    thread = loop.newthread(loop.sleep, 30)
    assert loop.statistics()["timers"] == 1
    thread.kill()
    assert loop.statistics()["timers"] == 0
    assert loop.step() is False


def test_kill_of_a_reading_thread_releases_the_socket_for_another_thread(
    loop: Loop, pair: Pair
) -> None:
    a, b = pair
    thread = loop.newthread(a.recv, 10)
    assert loop.statistics()["waiting_readers"] == 1
    thread.kill()
    assert loop.statistics()["waiting_readers"] == 0
    reader = loop.newthread(a.recv, 10)  # no BusyResourceError: the direction is free
    b.sendall(b"data")
    assert reader.join(5) == b"data"


def test_kill_of_a_writing_thread_releases_the_socket_for_another_writer(
    loop: Loop, pair: Pair
) -> None:
    a, b = pair
    sent = fill_send_buffer(a)
    thread = loop.newthread(a.sendall, b"y" * 65536)
    assert loop.statistics()["waiting_writers"] == 1
    thread.kill()
    assert loop.statistics()["waiting_writers"] == 0
    writer = loop.newthread(a.sendall, b"z")  # no BusyResourceError: the direction is free

    def drain() -> bytes:
        data = b""
        while not data.endswith(b"z"):
            data += b.recv(65536)
        return data

    data = run(loop, drain)
    assert len(data) == sent + 1
    assert not writer.is_alive()


def test_kill_of_a_thread_waiting_on_a_lock_leaves_no_waiter(loop: Loop) -> None:
    lock = Lock()
    lock.acquire()
    thread = loop.newthread(lock.acquire)
    assert "waiters=1" in repr(lock)
    thread.kill()
    assert "waiters=0" in repr(lock)
    lock.release()
    assert not lock.locked()


def test_kill_of_a_thread_waiting_on_an_event_leaves_no_waiter(loop: Loop) -> None:
    event = Event()
    thread = loop.newthread(event.wait)
    thread.kill()
    assert "waiters=0" in repr(event)
    assert loop.step() is False


def test_kill_of_a_joining_thread_leaves_the_joined_thread_running(loop: Loop) -> None:
    log: list[str] = []

    def target() -> str:
        loop.sleep(0.01)
        log.append("target ended")
        return "result"

    target_thread = loop.newthread(target)
    joiner = loop.newthread(target_thread.join)
    joiner.kill()
    assert not joiner.is_alive()
    assert target_thread.join(5) == "result"
    assert log == ["target ended"]


def test_a_killed_thread_is_not_logged_as_an_error(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    thread = loop.newthread(loop.sleep, 30)
    with caplog.at_level(logging.DEBUG, logger="socketloop"):
        thread.kill()
    assert socketloop_errors(caplog) == []


def test_kill_of_a_dead_thread_is_harmless(loop: Loop) -> None:
    thread = loop.newthread(lambda: "done")
    thread.kill()
    thread.kill(ValueError("late"))
    assert thread.join() == "done"


def test_kill_of_a_spawned_thread_before_it_starts_means_it_never_runs(loop: Loop) -> None:
    log: list[str] = []
    thread = loop.spawn(log.append, "ran")
    thread.kill()
    assert not thread.is_alive()
    assert loop.step() is False
    assert log == []
    assert thread.join() is None


def test_kill_with_a_custom_exception_instance_is_raised_in_the_thread_and_by_join(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[BaseException] = []

    def victim() -> None:
        try:
            loop.sleep(30)
        except BaseException as exc:
            seen.append(exc)
            raise

    thread = loop.newthread(victim)
    error = ValueError("stop now")
    with caplog.at_level(logging.DEBUG, logger="socketloop"):
        thread.kill(error)
    assert seen == [error]
    assert socketloop_errors(caplog) == []
    with pytest.raises(ValueError, match="stop now"):
        thread.join()


def test_kill_with_an_exception_class_instantiates_it(loop: Loop) -> None:
    seen: list[BaseException] = []

    def victim() -> None:
        try:
            loop.suspend()
        except KeyError as exc:
            seen.append(exc)

    thread = loop.newthread(victim)
    thread.kill(KeyError)
    assert len(seen) == 1
    assert type(seen[0]) is KeyError
    assert not thread.is_alive()


def test_kill_without_block_returns_before_the_thread_has_ended(loop: Loop) -> None:
    log: list[str] = []

    def victim() -> None:
        try:
            loop.sleep(30)
        finally:
            log.append("finally")

    thread = loop.newthread(victim)
    thread.kill(block=False)
    assert log == []
    assert thread.is_alive()
    loop.step(0)
    assert log == ["finally"]
    assert not thread.is_alive()


def test_kill_from_outside_a_loop_thread_waits_for_finally_blocks_that_suspend(
    loop: Loop,
) -> None:
    log: list[str] = []

    def victim() -> None:
        try:
            loop.sleep(30)
        finally:
            loop.sleep(0.01)
            log.append("slow finally done")

    thread = loop.newthread(victim)
    thread.kill()
    log.append("kill returned")
    assert log == ["slow finally done", "kill returned"]


def test_kill_from_outside_with_timeout_raises_timeout_error_if_the_thread_lingers(
    loop: Loop,
) -> None:
    def stubborn() -> None:
        try:
            loop.sleep(30)
        finally:
            loop.sleep(30)

    thread = loop.newthread(stubborn)
    with pytest.raises(TimeoutError):
        thread.kill(timeout=0.02)
    assert thread.is_alive()
    thread.kill()  # the second kill interrupts the sleep in the finally block
    assert not thread.is_alive()


def test_kill_from_another_loop_thread_suspends_the_killer_until_the_victim_ended(
    loop: Loop,
) -> None:
    log: list[str] = []

    def victim() -> None:
        try:
            loop.sleep(30)
        finally:
            loop.sleep(0.01)
            log.append("victim finally")

    victim_thread = loop.newthread(victim)

    def killer() -> None:
        log.append("killer kills")
        victim_thread.kill()
        log.append("killer continues")

    run(loop, killer)
    assert log == ["killer kills", "victim finally", "killer continues"]


def test_kill_of_the_running_thread_raises_at_once(loop: Loop) -> None:
    log: list[str] = []

    def suicidal() -> None:
        me = loop.current()
        assert me is not None
        try:
            me.kill()
        finally:
            log.append("finally")
        log.append("after kill")  # must not happen

    thread = loop.newthread(suicidal)
    assert log == ["finally"]
    assert not thread.is_alive()


def test_kill_of_the_thread_that_resumed_the_killer_is_delivered_when_control_returns(
    loop: Loop,
) -> None:
    log: list[str] = []
    outer_threads: list[Thread[Any]] = []

    def inner() -> None:
        outer_threads[0].kill()  # outer is resuming us: the kill cannot block
        log.append("inner after kill")

    def outer() -> None:
        me = loop.current()
        assert me is not None
        outer_threads.append(me)
        try:
            loop.newthread(inner)
            log.append("outer after newthread")  # must not happen
        except ThreadExit:
            log.append("outer got ThreadExit")
            raise

    thread = loop.newthread(outer)
    assert log == ["inner after kill", "outer got ThreadExit"]
    assert not thread.is_alive()


def test_kill_of_many_waiting_threads_ends_each(loop: Loop, pair: Pair) -> None:
    a, _ = pair
    lock = Lock()
    lock.acquire()
    q: Queue[int] = Queue()
    threads: list[Thread[Any]] = [
        loop.newthread(a.recv, 1),
        loop.newthread(loop.sleep, 30),
        loop.newthread(lock.acquire),
        loop.newthread(q.get),
        loop.newthread(loop.suspend),
    ]
    for thread in threads:
        thread.kill()
    assert [t.is_alive() for t in threads] == [False] * 5
    lock.release()


# ------------------------------------------------------------- timeout scopes


def in_thread(loop: Loop, fn: Any) -> Any:
    return loop.newthread(fn).join(10)


def test_timeout_scope_interrupts_a_socket_recv(loop: Loop, pair: Pair) -> None:
    a, b = pair

    def body() -> str:
        try:
            with loop.timeout(0.02):
                a.recv(10)
        except TimeoutError:
            return "timed out"
        return "received"

    assert in_thread(loop, body) == "timed out"
    assert loop.statistics()["waiting_readers"] == 0
    b.sendall(b"later")
    assert run(loop, a.recv, 10) == b"later"  # the socket is still usable


def test_timeout_scope_interrupts_a_sleep(loop: Loop) -> None:
    def body() -> str:
        try:
            with loop.timeout(0.02):
                loop.sleep(30)
        except TimeoutError:
            return "timed out"
        return "slept"

    assert in_thread(loop, body) == "timed out"


def test_timeout_scope_interrupts_an_event_wait(loop: Loop) -> None:
    event = Event()

    def body() -> str:
        try:
            with loop.timeout(0.02):
                event.wait()
        except TimeoutError:
            return "timed out"
        return "set"

    assert in_thread(loop, body) == "timed out"
    assert "waiters=0" in repr(event)


def test_timeout_scope_interrupts_a_lock_acquire(loop: Loop) -> None:
    lock = Lock()
    lock.acquire()

    def body() -> str:
        try:
            with loop.timeout(0.02):
                lock.acquire()
        except TimeoutError:
            return "timed out"
        return "acquired"

    assert in_thread(loop, body) == "timed out"
    lock.release()
    assert not lock.locked()


def test_timeout_scope_interrupts_a_queue_get(loop: Loop) -> None:
    q: Queue[str] = Queue()

    def body() -> str:
        try:
            with loop.timeout(0.02):
                q.get()
        except TimeoutError:
            return "timed out"
        return "got"

    assert in_thread(loop, body) == "timed out"
    q.put("item")
    assert q.get_nowait() == "item"


def test_timeout_scope_interrupts_a_join(loop: Loop) -> None:
    sleeper = loop.newthread(loop.sleep, 30)

    def body() -> str:
        try:
            with loop.timeout(0.02):
                sleeper.join()
        except TimeoutError:
            return "timed out"
        return "joined"

    assert in_thread(loop, body) == "timed out"
    assert sleeper.is_alive()
    sleeper.kill()


def test_timeout_scope_is_not_swallowed_by_except_exception_inside_the_block(loop: Loop) -> None:
    log: list[str] = []

    def body() -> None:
        try:
            with loop.timeout(0.02):
                try:
                    loop.sleep(30)
                except Exception:
                    log.append("swallowed inside")
        except TimeoutError:
            log.append("timed out")

    in_thread(loop, body)
    assert log == ["timed out"]


def test_timeout_scope_finishing_in_time_raises_nothing_and_leaves_no_timer(loop: Loop) -> None:
    def body() -> tuple[bool, int]:
        with loop.timeout(10) as scope:
            loop.sleep(0.001)
        return scope.expired, loop.statistics()["timers"]

    assert in_thread(loop, body) == (False, 0)


def test_timeout_scope_does_not_fire_after_the_block_ended(loop: Loop) -> None:
    def body() -> str:
        with loop.timeout(0.01):
            pass
        loop.sleep(0.03)  # outlives the scope's deadline
        return "no late timeout"

    assert in_thread(loop, body) == "no late timeout"


def test_nested_timeout_the_inner_expiring_is_the_one_reported(loop: Loop) -> None:
    log: list[Any] = []

    def body() -> None:
        with loop.timeout(10) as outer:
            try:
                with loop.timeout(0.02) as inner:
                    loop.sleep(30)
            except TimeoutError:
                log.append("inner reported")
            log.append(("inner expired", inner.expired))
            log.append(("outer expired", outer.expired))

    in_thread(loop, body)
    assert log == ["inner reported", ("inner expired", True), ("outer expired", False)]


def test_nested_timeout_an_outer_expiry_passes_through_the_inner_scope(loop: Loop) -> None:
    log: list[Any] = []

    def body() -> None:
        try:
            with loop.timeout(0.02) as outer:
                try:
                    with loop.timeout(10) as inner:
                        loop.sleep(30)
                except TimeoutError:
                    log.append("caught between the scopes")
                log.append("after the inner scope")
        except TimeoutError:
            log.append("outer reported")
        log.append(("outer expired", outer.expired))
        log.append(("inner expired", inner.expired))

    in_thread(loop, body)
    assert log == ["outer reported", ("outer expired", True), ("inner expired", False)]


def test_move_on_after_leaves_the_block_silently_and_sets_expired(loop: Loop) -> None:
    log: list[Any] = []

    def body() -> None:
        with loop.move_on_after(0.02) as scope:
            loop.sleep(30)
            log.append("after sleep")  # must not happen
        log.append(("after block", scope.expired))

    in_thread(loop, body)
    assert log == [("after block", True)]


def test_move_on_after_finishing_in_time_is_not_expired(loop: Loop) -> None:
    def body() -> bool:
        with loop.move_on_after(10) as scope:
            loop.sleep(0)
        return scope.expired

    assert in_thread(loop, body) is False


def test_move_on_after_inside_a_timeout_scope_reports_only_its_own_expiry(loop: Loop) -> None:
    log: list[Any] = []

    def body() -> None:
        with loop.timeout(10):
            with loop.move_on_after(0.02) as scope:
                loop.sleep(30)
            log.append(("moved on", scope.expired))
            loop.sleep(0)
            log.append("still in outer scope")

    in_thread(loop, body)
    assert log == [("moved on", True), "still in outer scope"]


def test_timeout_none_means_no_limit(loop: Loop) -> None:
    def body() -> tuple[int, bool]:
        with loop.timeout(None) as scope:
            timers = loop.statistics()["timers"]
            loop.sleep(0.01)
        return timers, scope.expired

    assert in_thread(loop, body) == (0, False)


def test_timeout_entered_outside_a_loop_thread_raises_runtime_error(loop: Loop) -> None:
    with pytest.raises(RuntimeError), loop.timeout(1):
        pass
    with pytest.raises(RuntimeError), loop.move_on_after(1):
        pass
    assert loop.statistics()["timers"] == 0


def test_module_timeout_and_move_on_after_act_on_the_default_loop(api: types.ModuleType) -> None:
    log: list[str] = []

    def body() -> None:
        try:
            with api.timeout(0.02):
                api.sleep(30)
        except TimeoutError:
            log.append("timed out")
        with api.move_on_after(0.02) as scope:
            api.sleep(30)
        log.append(f"moved on {scope.expired}")

    api.newthread(body)
    api.start()
    assert log == ["timed out", "moved on True"]


def test_timeout_scope_of_a_killed_thread_leaves_no_timer(loop: Loop) -> None:
    def body() -> None:
        with loop.timeout(30):
            loop.sleep(30)

    thread = loop.newthread(body)
    thread.kill()
    assert loop.statistics()["timers"] == 0


def test_kill_beats_a_timeout_expiring_in_the_same_step(loop: Loop) -> None:
    seen: list[str] = []

    def body() -> None:
        me = loop.current()
        assert me is not None
        try:
            with loop.timeout(0):
                # Due right after the scope's own timer: both fire in one step.
                loop.call_later(0, lambda: me.kill(block=False))
                loop.suspend()
        except BaseException as exc:
            seen.append(type(exc).__name__)
            raise

    thread = loop.newthread(body)
    thread.join(5)
    assert seen == ["ThreadExit"]


def test_timeout_scope_interrupts_a_put_on_a_full_queue(loop: Loop) -> None:
    q: Queue[int] = Queue(maxsize=1)
    q.put_nowait(1)

    def body() -> str:
        try:
            with loop.timeout(0.02):
                q.put(2)
        except TimeoutError:
            return "timed out"
        except queue.Full:
            return "full"
        return "put"

    assert in_thread(loop, body) == "timed out"
    assert q.get_nowait() == 1
    assert q.empty()


# ----------------------------------------------------------- deadlock detection


def test_a_thread_joining_a_suspended_thread_gets_deadlock_error_from_start(loop: Loop) -> None:
    stuck = loop.newthread(loop.suspend)
    stuck.name = "stuck-one"
    errors: list[BaseException] = []

    def joiner() -> None:
        try:
            stuck.join()
        except DeadlockError as exc:
            errors.append(exc)

    joining = loop.newthread(joiner)
    joining.name = "the-joiner"
    loop.start()
    assert len(errors) == 1
    message = str(errors[0])
    assert "the-joiner" in message
    assert "stuck-one" in message
    assert not joining.is_alive()
    loop.resume(stuck)


@pytest.mark.expect_errors
def test_an_uncaught_deadlock_error_ends_the_thread_and_join_reraises_it(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    stuck = loop.newthread(loop.suspend)
    joining = loop.newthread(stuck.join)
    with caplog.at_level(logging.WARNING, logger="socketloop"):
        loop.start()
    assert not joining.is_alive()
    with pytest.raises(DeadlockError):
        joining.join()
    assert any("deadlock" in r.getMessage() for r in caplog.records)
    loop.resume(stuck)


def test_two_threads_joining_each_other_both_get_deadlock_error(loop: Loop) -> None:
    threads: dict[str, Thread[Any]] = {}
    messages: dict[str, str] = {}

    def joiner(me: str, other: str) -> None:
        loop.sleep(0)  # let both exist before joining
        try:
            threads[other].join()
        except DeadlockError as exc:
            messages[me] = str(exc)

    threads["alpha"] = loop.spawn(joiner, "alpha", "beta")
    threads["alpha"].name = "alpha"
    threads["beta"] = loop.spawn(joiner, "beta", "alpha")
    threads["beta"].name = "beta"
    loop.start()
    assert sorted(messages) == ["alpha", "beta"]
    for message in messages.values():
        assert "alpha" in message
        assert "beta" in message


def test_a_thread_waiting_on_an_event_nobody_will_set_gets_deadlock_error(loop: Loop) -> None:
    event = Event()
    errors: list[str] = []

    def waiter() -> None:
        try:
            event.wait()
        except DeadlockError as exc:
            errors.append(str(exc))

    thread = loop.newthread(waiter)
    thread.name = "event-waiter"
    loop.start()
    assert len(errors) == 1
    assert "event-waiter" in errors[0]
    assert "waiters=0" in repr(event)


def test_no_deadlock_error_while_a_timer_can_still_wake_the_joined_thread(loop: Loop) -> None:
    sleeper = loop.newthread(loop.sleep, 0.02)
    results: list[str] = []

    def joiner() -> None:
        sleeper.join()
        results.append("joined")

    loop.newthread(joiner)
    loop.start()
    assert results == ["joined"]


def test_no_deadlock_error_while_another_os_thread_can_still_wake_the_loop(loop: Loop) -> None:
    event = Event()
    results: list[str] = []
    go = threading.Event()

    def waiter() -> None:
        event.wait()
        results.append("woken")

    def helper() -> None:
        go.wait(5)
        loop.call_soon_threadsafe(event.set)

    loop.newthread(waiter)
    worker = threading.Thread(target=helper)
    worker.start()

    def poke() -> None:
        go.set()
        loop.run_in_thread(worker.join, 5)  # an outside wait keeps start() running

    loop.newthread(poke)
    loop.start()
    worker.join(5)
    assert results == ["woken"]
