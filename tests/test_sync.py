"""Synchronisation primitives for loop threads: semantics, timeouts, fairness, kills."""

from __future__ import annotations

import queue
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import socketloop
from conftest import run
from socketloop import (
    BoundedSemaphore,
    Condition,
    CoroLoop,
    DeadlockError,
    Event,
    LifoQueue,
    Lock,
    Loop,
    PriorityQueue,
    Queue,
    RLock,
    Semaphore,
)

# -------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def close_default_loops() -> Iterator[None]:
    """Waiting outside loop threads may create a default loop: close both afterwards."""
    yield
    socketloop.get_loop().close()
    socketloop.coro.get_loop().close()


def drive(*loops: Loop, timeout: float = 5.0) -> None:
    """Step every loop in turn until none has anything left to do."""
    deadline = time.monotonic() + timeout
    while True:
        busy = [lp.step(0.01) for lp in loops]
        if not any(busy):
            return
        assert time.monotonic() < deadline, "the loops did not settle in time"


def hold_until_resumed(loop: Loop, lock: Any) -> None:
    """Take ``lock``, suspend until resumed, release it."""
    lock.acquire()
    loop.suspend()
    lock.release()


def lock_user(lock: Any, name: str, log: list[str]) -> Callable[[], None]:
    def use() -> None:
        with lock:
            log.append(name)

    return use


# ---------------------------------------------------------------------- Event


def test_event_wait_returns_at_once_when_set(loop: Loop) -> None:
    event = Event()
    event.set()
    assert event.is_set()
    assert run(loop, event.wait) is True


def test_event_clear_makes_wait_block_again(loop: Loop) -> None:
    event = Event()
    event.set()
    event.clear()
    assert not event.is_set()
    assert run(loop, event.wait, 0.01) is False


def test_event_set_wakes_every_waiter_in_fifo_order(loop: Loop) -> None:
    event = Event()
    log: list[str] = []

    def waiter(name: str) -> None:
        event.wait()
        log.append(name)

    for name in ("w1", "w2", "w3", "w4"):
        loop.newthread(waiter, name)
    loop.newthread(event.set)
    loop.start()
    assert log == ["w1", "w2", "w3", "w4"]


def test_event_wait_with_timeout_returns_false_and_leaves_no_waiter(loop: Loop) -> None:
    event = Event()
    assert run(loop, event.wait, 0.02) is False
    assert "waiters=0" in repr(event)


def test_event_waiter_that_timed_out_does_not_take_a_later_wake_up(loop: Loop) -> None:
    event = Event()
    log: list[Any] = []

    def waiter(name: str, timeout: float | None) -> None:
        log.append((name, event.wait(timeout)))

    loop.newthread(waiter, "impatient", 0.01)
    loop.newthread(waiter, "patient", None)

    def setter() -> None:
        loop.sleep(0.03)
        event.set()

    loop.newthread(setter)
    loop.start()
    assert log == [("impatient", False), ("patient", True)]


def test_event_set_reaches_the_others_when_a_waiter_is_killed(loop: Loop) -> None:
    event = Event()
    log: list[str] = []

    def waiter(name: str) -> None:
        event.wait()
        log.append(name)

    loop.newthread(waiter, "w1")
    victim = loop.newthread(waiter, "victim")
    loop.newthread(waiter, "w3")
    victim.kill()
    loop.newthread(event.set)
    loop.start()
    assert log == ["w1", "w3"]


def test_event_set_and_kill_of_a_waiter_in_the_same_step(loop: Loop) -> None:
    event = Event()
    log: list[str] = []

    def waiter(name: str) -> None:
        try:
            event.wait()
            log.append(name)
        finally:
            log.append(f"{name} finally")

    victim = loop.newthread(waiter, "victim")
    loop.newthread(waiter, "other")

    def setter() -> None:
        event.set()
        victim.kill(block=False)

    loop.newthread(setter)
    loop.start()
    assert log == ["victim finally", "other", "other finally"]


# ----------------------------------------------------------------------- Lock


def test_lock_acquire_and_release(loop: Loop) -> None:
    lock = Lock()

    def body() -> list[bool]:
        states = [lock.acquire(), lock.locked()]
        lock.release()
        states.append(lock.locked())
        return states

    assert run(loop, body) == [True, True, False]


def test_lock_as_context_manager(loop: Loop) -> None:
    lock = Lock()

    def body() -> bool:
        with lock:
            return lock.locked()

    assert run(loop, body) is True
    assert not lock.locked()


def test_lock_non_blocking_acquire_of_a_held_lock_returns_false(loop: Loop) -> None:
    lock = Lock()
    lock.acquire()
    assert run(loop, lock.acquire, False) is False
    lock.release()


def test_lock_acquire_with_timeout_returns_false_and_leaves_no_waiter(loop: Loop) -> None:
    lock = Lock()
    lock.acquire()
    assert run(loop, lambda: lock.acquire(timeout=0.02)) is False
    assert "waiters=0" in repr(lock)
    lock.release()
    assert not lock.locked()


def test_lock_timeout_with_non_blocking_raises_value_error() -> None:
    with pytest.raises(ValueError):
        Lock().acquire(False, 1)


def test_lock_release_of_an_unlocked_lock_raises() -> None:
    with pytest.raises(RuntimeError):
        Lock().release()


def test_lock_reacquire_by_its_owner_raises_instead_of_waiting_forever(loop: Loop) -> None:
    lock = Lock()

    def body() -> str:
        lock.acquire()
        try:
            lock.acquire()
        except RuntimeError:
            return "refused"
        finally:
            lock.release()
        return "acquired twice"

    assert run(loop, body) == "refused"


def test_lock_waiters_get_the_lock_in_fifo_order(loop: Loop) -> None:
    lock = Lock()
    log: list[str] = []

    def holder() -> None:
        with lock:
            log.append("holder")
            loop.sleep(0.01)

    loop.newthread(holder)
    for name in ("w1", "w2", "w3", "w4"):
        loop.newthread(lock_user(lock, name, log))
    loop.start()
    assert log == ["holder", "w1", "w2", "w3", "w4"]


def test_lock_release_hands_it_to_the_first_waiter_so_the_releaser_cannot_barge(
    loop: Loop,
) -> None:
    lock = Lock()
    log: list[Any] = []

    def holder() -> None:
        lock.acquire()
        loop.sleep(0.01)
        lock.release()
        log.append(("holder retakes", lock.acquire(blocking=False)))

    loop.newthread(holder)
    loop.newthread(lock_user(lock, "waiter", log))
    loop.start()
    assert log == [("holder retakes", False), "waiter"]
    assert not lock.locked()


def test_lock_a_killed_waiter_does_not_lose_the_next_waiters_turn(loop: Loop) -> None:
    lock = Lock()
    log: list[str] = []
    lock.acquire()
    victim = loop.newthread(lock_user(lock, "victim", log))
    loop.newthread(lock_user(lock, "next", log))
    victim.kill()
    lock.release()
    loop.start()
    assert log == ["next"]
    assert not lock.locked()


def test_lock_granted_to_a_waiter_killed_in_the_same_step_goes_to_the_next(loop: Loop) -> None:
    lock = Lock()
    log: list[str] = []
    victim_box: list[Any] = []

    def holder() -> None:
        lock.acquire()
        loop.sleep(0.01)
        lock.release()  # granted to the victim...
        victim_box[0].kill(block=False)  # ...which is killed before it resumes

    loop.newthread(holder)
    victim_box.append(loop.newthread(lock_user(lock, "victim", log)))
    loop.newthread(lock_user(lock, "next", log))
    loop.start()
    assert log == ["next"]
    assert not lock.locked()


def test_lock_granted_to_a_waiter_killed_in_the_same_step_is_freed_if_nobody_waits(
    loop: Loop,
) -> None:
    lock = Lock()
    lock.acquire()
    victim = loop.newthread(lock.acquire)
    lock.release()
    victim.kill(block=False)
    loop.start()
    assert not victim.is_alive()
    assert not lock.locked()


def test_lock_grant_and_acquire_timeout_in_the_same_step_lose_nothing(loop: Loop) -> None:
    lock = Lock()
    log: list[Any] = []
    lock.acquire()
    loop.call_at(0, lock.release)  # already due: runs in the same step as the timeout

    def impatient() -> None:
        got = lock.acquire(timeout=0)
        log.append(("impatient", got))
        if got:
            lock.release()

    loop.newthread(impatient)
    loop.newthread(lock_user(lock, "patient", log))
    loop.start()
    assert log in ([("impatient", True), "patient"], [("impatient", False), "patient"])
    assert not lock.locked()


def test_lock_waiter_whose_timeout_scope_expires_passes_its_grant_on(loop: Loop) -> None:
    lock = Lock()
    log: list[str] = []
    lock.acquire()
    loop.call_at(0, lock.release)  # due before the scope's own timer, in the same step

    def scoped() -> None:
        try:
            with loop.timeout(0):
                lock.acquire()
                log.append("scoped got it")
                lock.release()
        except TimeoutError:
            log.append("scoped timed out")

    loop.newthread(scoped)
    loop.newthread(lock_user(lock, "next", log))
    loop.start()
    assert log == ["scoped timed out", "next"]
    assert not lock.locked()


def test_lock_waited_on_from_outside_a_loop_thread_runs_the_loop(loop: Loop) -> None:
    lock = Lock()
    log: list[str] = []

    def holder() -> None:
        with lock:
            loop.sleep(0.01)
            log.append("holder releases")

    loop.newthread(holder)
    loop.newthread(lock_user(lock, "thread waiter", log))  # the loop has used the lock
    with lock:
        log.append("main")
    assert log == ["holder releases", "thread waiter", "main"]
    loop.start()


def test_lock_waited_on_from_outside_with_nothing_to_release_it_raises(
    api: types.ModuleType,
) -> None:
    lock = Lock()
    held = api.newthread(hold_until_resumed, api.get_loop(), lock)
    with pytest.raises(RuntimeError):
        lock.acquire()
    assert "waiters=0" in repr(lock)
    api.resume(held)
    assert not lock.locked()


# ---------------------------------------------------------------------- RLock


def test_rlock_can_be_acquired_again_by_its_owner(loop: Loop) -> None:
    rlock = RLock()

    def body() -> str:
        with rlock, rlock:
            pass
        return "ok"

    assert run(loop, body) == "ok"
    assert "count=0" in repr(rlock)


def test_rlock_is_released_to_a_waiter_only_after_the_last_release(loop: Loop) -> None:
    rlock = RLock()
    log: list[str] = []

    def owner() -> None:
        rlock.acquire()
        rlock.acquire()
        loop.sleep(0.01)
        rlock.release()
        log.append("owner released once")
        loop.sleep(0.01)
        log.append("owner releases again")
        rlock.release()

    loop.newthread(owner)
    loop.newthread(lock_user(rlock, "waiter", log))
    loop.start()
    assert log == ["owner released once", "owner releases again", "waiter"]


def test_rlock_release_by_another_thread_raises(loop: Loop) -> None:
    rlock = RLock()
    owner = loop.newthread(hold_until_resumed, loop, rlock)

    def intruder() -> str:
        try:
            rlock.release()
        except RuntimeError:
            return "refused"
        return "released"

    assert run(loop, intruder) == "refused"
    loop.resume(owner)
    assert not owner.is_alive()


def test_rlock_waiters_in_fifo_order_and_a_killed_waiter_loses_nobody_s_turn(
    loop: Loop,
) -> None:
    rlock = RLock()
    log: list[str] = []
    rlock.acquire()
    loop.newthread(lock_user(rlock, "w1", log))
    victim = loop.newthread(lock_user(rlock, "victim", log))
    loop.newthread(lock_user(rlock, "w3", log))
    victim.kill()
    rlock.release()
    loop.start()
    assert log == ["w1", "w3"]


def test_rlock_acquire_with_timeout_returns_false(loop: Loop) -> None:
    rlock = RLock()
    holder = loop.newthread(hold_until_resumed, loop, rlock)
    assert run(loop, lambda: rlock.acquire(timeout=0.02)) is False
    loop.resume(holder)


# ------------------------------------------------------------------ Semaphore


def test_semaphore_counts_units(loop: Loop) -> None:
    sem = Semaphore(2)

    def body() -> list[Any]:
        results: list[Any] = [sem.acquire(), sem.acquire(), sem.acquire(blocking=False)]
        results.append(sem.value)
        sem.release(2)
        results.append(sem.value)
        return results

    assert run(loop, body) == [True, True, False, 0, 2]


def test_semaphore_negative_initial_value_raises() -> None:
    with pytest.raises(ValueError):
        Semaphore(-1)


def test_semaphore_acquire_with_timeout_returns_false_and_leaves_no_waiter(loop: Loop) -> None:
    sem = Semaphore(0)
    assert run(loop, lambda: sem.acquire(timeout=0.02)) is False
    assert "waiters=0" in repr(sem)
    sem.release()
    assert sem.value == 1


def test_semaphore_waiters_are_served_in_fifo_order(loop: Loop) -> None:
    sem = Semaphore(0)
    log: list[str] = []

    def waiter(name: str) -> None:
        sem.acquire()
        log.append(name)

    for name in ("w1", "w2", "w3"):
        loop.newthread(waiter, name)

    def releaser() -> None:
        for _ in range(3):
            loop.sleep(0)
            sem.release()

    loop.newthread(releaser)
    loop.start()
    assert log == ["w1", "w2", "w3"]
    assert sem.value == 0


def test_semaphore_release_n_wakes_n_waiters(loop: Loop) -> None:
    sem = Semaphore(0)
    log: list[str] = []

    def waiter(name: str) -> None:
        sem.acquire()
        log.append(name)

    threads = [loop.newthread(waiter, name) for name in ("w1", "w2", "w3")]
    sem.release(2)
    loop.step(0)
    assert log == ["w1", "w2"]
    assert threads[2].is_alive()
    sem.release()
    loop.start()
    assert log == ["w1", "w2", "w3"]


def test_semaphore_a_unit_granted_to_a_killed_waiter_goes_to_the_next(loop: Loop) -> None:
    sem = Semaphore(0)
    log: list[str] = []

    def waiter(name: str) -> None:
        sem.acquire()
        log.append(name)

    victim = loop.newthread(waiter, "victim")
    loop.newthread(waiter, "next")
    sem.release()  # granted to the victim
    victim.kill(block=False)  # killed before it resumed
    loop.start()
    assert log == ["next"]
    assert sem.value == 0


def test_semaphore_a_unit_granted_to_a_killed_waiter_returns_when_nobody_waits(
    loop: Loop,
) -> None:
    sem = Semaphore(0)
    victim = loop.newthread(sem.acquire)
    sem.release()
    victim.kill(block=False)
    loop.start()
    assert sem.value == 1


def test_bounded_semaphore_refuses_to_exceed_its_initial_value() -> None:
    sem = BoundedSemaphore(1)
    with pytest.raises(ValueError):
        sem.release()
    assert sem.value == 1


def test_bounded_semaphore_release_to_a_waiter_is_allowed(loop: Loop) -> None:
    sem = BoundedSemaphore(1)
    sem.acquire()
    waiter = loop.newthread(sem.acquire)
    sem.release()
    loop.start()
    assert waiter.join() is True
    assert sem.value == 0
    sem.release()
    assert sem.value == 1


def test_semaphore_waited_on_from_outside_a_loop_thread_runs_the_loop(loop: Loop) -> None:
    sem = Semaphore(0)
    log: list[str] = []

    def thread_waiter() -> None:
        sem.acquire()
        log.append("thread waiter")

    def releaser() -> None:
        loop.sleep(0.01)
        sem.release(2)

    loop.newthread(thread_waiter)  # the loop has used the semaphore
    loop.newthread(releaser)
    assert sem.acquire(timeout=5) is True
    log.append("main")
    assert log == ["thread waiter", "main"]


# ------------------------------------------------------------------ Condition


def test_condition_notify_wakes_the_first_waiter_only(loop: Loop) -> None:
    cond = Condition()
    log: list[str] = []

    def waiter(name: str) -> None:
        with cond:
            cond.wait()
            log.append(name)

    waiters = [loop.newthread(waiter, name) for name in ("w1", "w2")]

    def notifier() -> None:
        with cond:
            cond.notify()

    run(loop, notifier)
    loop.step(0)
    assert log == ["w1"]
    assert waiters[1].is_alive()
    run(loop, notifier)
    loop.step(0)
    assert log == ["w1", "w2"]


def test_condition_notify_all_wakes_waiters_in_fifo_order(loop: Loop) -> None:
    cond = Condition()
    log: list[str] = []

    def waiter(name: str) -> None:
        with cond:
            cond.wait()
            log.append(name)

    for name in ("w1", "w2", "w3"):
        loop.newthread(waiter, name)

    def notifier() -> None:
        with cond:
            cond.notify_all()

    run(loop, notifier)
    loop.start()
    assert log == ["w1", "w2", "w3"]


def test_condition_wait_releases_the_lock_and_reacquires_it(loop: Loop) -> None:
    lock = Lock()
    cond = Condition(lock)
    log: list[Any] = []

    def waiter() -> None:
        with cond:
            cond.wait()
            log.append(("waiter holds the lock", lock.locked()))

    def notifier() -> None:
        with cond:  # only possible because wait() released the lock
            log.append("notifier has the lock")
            cond.notify()
            loop.sleep(0.01)
            log.append("notifier releases")

    loop.newthread(waiter)
    loop.newthread(notifier)
    loop.start()
    assert log == [
        "notifier has the lock",
        "notifier releases",
        ("waiter holds the lock", True),
    ]
    assert not lock.locked()


def test_condition_wait_with_timeout_returns_false_holding_the_lock(loop: Loop) -> None:
    lock = Lock()
    cond = Condition(lock)

    def body() -> tuple[bool, bool]:
        with cond:
            result = cond.wait(0.02)
            return result, lock.locked()

    assert run(loop, body) == (False, True)


def test_condition_wait_for_returns_when_the_predicate_holds(loop: Loop) -> None:
    cond = Condition()
    state = {"value": 0}

    def waiter() -> int:
        with cond:
            return cond.wait_for(lambda: state["value"] >= 3)

    thread = loop.newthread(waiter)

    def producer() -> None:
        for _ in range(3):
            loop.sleep(0)
            with cond:
                state["value"] += 1
                cond.notify_all()

    loop.newthread(producer)
    loop.start()
    assert thread.join() is True
    assert state["value"] == 3


def test_condition_wait_for_with_timeout_returns_the_false_predicate_value(loop: Loop) -> None:
    cond = Condition()

    def body() -> Any:
        with cond:
            return cond.wait_for(lambda: 0, timeout=0.02)

    assert run(loop, body) == 0


def test_condition_wait_and_notify_without_the_lock_raise(loop: Loop) -> None:
    cond = Condition()

    def body() -> list[str]:
        errors = []
        for action in (cond.wait, cond.notify):
            try:
                action()
            except RuntimeError:
                errors.append(action.__name__)
        return errors

    assert run(loop, body) == ["wait", "notify"]


def test_condition_notification_of_a_killed_waiter_passes_to_the_next(loop: Loop) -> None:
    cond = Condition()
    log: list[str] = []

    def waiter(name: str) -> None:
        with cond:
            cond.wait()
            log.append(name)

    victim = loop.newthread(waiter, "victim")
    loop.newthread(waiter, "next")

    def notifier() -> None:
        with cond:
            cond.notify()  # goes to the victim...
        victim.kill(block=False)  # ...killed before it resumed

    loop.newthread(notifier)
    loop.start()
    assert log == ["next"]


@pytest.mark.parametrize("lock_type", [Lock, RLock], ids=["Lock", "RLock"])
def test_condition_waiter_killed_while_reacquiring_the_lock_leaves_it_to_its_owner(
    loop: Loop, lock_type: type[Lock] | type[RLock], caplog: pytest.LogCaptureFixture
) -> None:
    lock = lock_type()
    cond = Condition(lock)
    log: list[str] = []

    def waiter() -> None:
        try:
            with cond:
                cond.wait()
        except BaseException as exc:
            log.append(f"waiter ended with {type(exc).__name__}")
            raise

    waiting = loop.newthread(waiter)

    def notifier() -> None:
        with cond:
            cond.notify()
            loop.sleep(0)  # the notified waiter now waits to re-acquire the lock
            waiting.kill(block=False)
            loop.sleep(0)  # the kill is delivered
            log.append(f"notifier still holds the lock: {lock._is_owned()}")

    loop.newthread(notifier)
    loop.start()
    # The waiter leaves wait() holding the lock again (as its with block expects),
    # so it can only end once the notifier has released it.
    assert log == ["notifier still holds the lock: True", "waiter ended with ThreadExit"]
    assert not [r for r in caplog.records if r.name == "socketloop" and r.levelname == "ERROR"]


def test_condition_a_timed_out_waiter_does_not_spend_a_notification(loop: Loop) -> None:
    cond = Condition()
    log: list[Any] = []

    def waiter(name: str, timeout: float | None) -> None:
        with cond:
            log.append((name, cond.wait(timeout)))

    loop.newthread(waiter, "impatient", 0.01)
    loop.newthread(waiter, "patient", None)

    def notifier() -> None:
        loop.sleep(0.03)
        with cond:
            cond.notify()

    loop.newthread(notifier)
    loop.start()
    assert log == [("impatient", False), ("patient", True)]


# ---------------------------------------------------------------------- Queue


def test_queue_is_fifo(loop: Loop) -> None:
    q: Queue[int] = Queue()
    for i in range(5):
        q.put(i)
    assert q.qsize() == 5
    assert [run(loop, q.get) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert q.empty()


def test_lifo_queue_returns_the_last_item_first(loop: Loop) -> None:
    q: LifoQueue[int] = LifoQueue()
    for i in range(4):
        q.put(i)
    assert [run(loop, q.get) for _ in range(4)] == [3, 2, 1, 0]


def test_priority_queue_returns_the_smallest_item_first(loop: Loop) -> None:
    q: PriorityQueue[tuple[int, str]] = PriorityQueue()
    for item in [(3, "c"), (1, "a"), (2, "b")]:
        q.put(item)
    assert [run(loop, q.get) for _ in range(3)] == [(1, "a"), (2, "b"), (3, "c")]


def test_queue_get_nowait_on_an_empty_queue_raises_empty() -> None:
    with pytest.raises(queue.Empty):
        Queue[int]().get_nowait()
    with pytest.raises(queue.Empty):
        Queue[int]().get(block=False)


def test_queue_put_nowait_on_a_full_queue_raises_full() -> None:
    q: Queue[int] = Queue(maxsize=1)
    q.put_nowait(1)
    assert q.full()
    with pytest.raises(queue.Full):
        q.put_nowait(2)
    with pytest.raises(queue.Full):
        q.put(2, block=False)


def test_queue_get_with_timeout_raises_empty_and_leaves_no_getter(loop: Loop) -> None:
    q: Queue[int] = Queue()

    def body() -> str:
        try:
            q.get(timeout=0.02)
        except queue.Empty:
            return "empty"
        return "got"

    assert run(loop, body) == "empty"
    assert "getters=0" in repr(q)


def test_queue_put_with_timeout_on_a_full_queue_raises_full(loop: Loop) -> None:
    q: Queue[int] = Queue(maxsize=1)
    q.put(1)

    def body() -> str:
        try:
            q.put(2, timeout=0.02)
        except queue.Full:
            return "full"
        return "put"

    assert run(loop, body) == "full"
    assert "putters=0" in repr(q)
    assert q.qsize() == 1


def test_queue_getters_are_served_in_fifo_order(loop: Loop) -> None:
    q: Queue[str] = Queue()
    log: list[tuple[str, str]] = []

    def getter(name: str) -> None:
        log.append((name, q.get()))

    for name in ("g1", "g2", "g3"):
        loop.newthread(getter, name)
    for item in ("a", "b", "c"):
        q.put(item)
    loop.start()
    assert log == [("g1", "a"), ("g2", "b"), ("g3", "c")]


def test_queue_with_maxsize_blocks_putters_and_serves_them_in_fifo_order(loop: Loop) -> None:
    q: Queue[str] = Queue(maxsize=1)
    q.put("first")
    log: list[str] = []

    def putter(item: str) -> None:
        q.put(item)
        log.append(f"put {item}")

    for item in ("p1", "p2", "p3"):
        loop.newthread(putter, item)
    assert log == []

    def consumer() -> None:
        for _ in range(4):
            log.append(f"got {q.get()}")
            loop.sleep(0)

    loop.newthread(consumer)
    loop.start()
    assert [entry for entry in log if entry.startswith("got")] == [
        "got first",
        "got p1",
        "got p2",
        "got p3",
    ]
    assert [entry for entry in log if entry.startswith("put")] == ["put p1", "put p2", "put p3"]
    assert q.empty()


def test_queue_item_handed_to_a_killed_getter_reaches_the_next_getter(loop: Loop) -> None:
    q: Queue[str] = Queue()
    log: list[tuple[str, str]] = []

    def getter(name: str) -> None:
        log.append((name, q.get()))

    victim = loop.newthread(getter, "victim")
    loop.newthread(getter, "next")
    q.put("item")  # handed to the victim...
    victim.kill(block=False)  # ...killed before it resumed
    loop.start()
    assert log == [("next", "item")]
    assert q.empty()


def test_queue_item_handed_to_a_killed_getter_stays_in_the_queue_if_nobody_waits(
    loop: Loop,
) -> None:
    q: Queue[str] = Queue()
    victim = loop.newthread(q.get)
    q.put("item")
    victim.kill(block=False)
    loop.start()
    assert q.qsize() == 1
    assert q.get_nowait() == "item"


def test_queue_item_returned_by_a_killed_getter_keeps_its_place_at_the_front(
    loop: Loop,
) -> None:
    q: Queue[str] = Queue()
    victim = loop.newthread(q.get)

    def producer() -> None:
        q.put("first")
        victim.kill(block=False)
        q.put("second")

    loop.newthread(producer)
    loop.start()
    assert [q.get_nowait(), q.get_nowait()] == ["first", "second"]


def test_queue_item_handed_to_a_getter_whose_timeout_scope_expires_is_not_lost(
    loop: Loop,
) -> None:
    q: Queue[str] = Queue()
    loop.call_at(0, q.put, "item")  # due before the scope's own timer, in the same step
    log: list[str] = []

    def scoped() -> None:
        try:
            with loop.timeout(0):
                log.append(q.get())
        except TimeoutError:
            log.append("timed out")

    loop.newthread(scoped)
    loop.start()
    assert log == ["timed out"]
    assert q.get_nowait() == "item"


def test_queue_get_with_timeout_racing_a_put_in_the_same_step_loses_nothing(loop: Loop) -> None:
    q: Queue[str] = Queue()
    loop.call_at(0, q.put, "item")
    log: list[str] = []

    def getter() -> None:
        try:
            log.append(q.get(timeout=0))
        except queue.Empty:
            log.append("empty")

    loop.newthread(getter)
    loop.start()
    assert log in (["item"], ["empty"])
    assert q.qsize() == (1 if log == ["empty"] else 0)


def test_queue_slot_granted_to_a_killed_putter_goes_to_the_next_putter(loop: Loop) -> None:
    q: Queue[str] = Queue(maxsize=1)
    q.put("first")
    victim = loop.newthread(q.put, "victim's")
    loop.newthread(q.put, "next's")

    def consumer() -> None:
        assert q.get() == "first"  # grants the slot to the victim...
        victim.kill(block=False)  # ...killed before it resumed

    loop.newthread(consumer)
    loop.start()
    assert q.qsize() == 1
    assert q.get_nowait() == "next's"
    assert "putters=0" in repr(q)


def test_queue_slot_granted_to_a_killed_putter_is_free_again_if_nobody_waits(
    loop: Loop,
) -> None:
    q: Queue[str] = Queue(maxsize=1)
    q.put("first")
    victim = loop.newthread(q.put, "victim's")
    assert q.get_nowait() == "first"
    victim.kill(block=False)
    loop.start()
    assert q.empty()
    assert not q.full()
    q.put_nowait("fits")


def test_queue_task_done_and_join(loop: Loop) -> None:
    q: Queue[int] = Queue()
    log: list[str] = []

    def worker() -> None:
        for _ in range(3):
            item = q.get()
            loop.sleep(0.001)
            log.append(f"done {item}")
            q.task_done()

    def joiner() -> None:
        q.join()
        log.append("joined")

    for i in range(3):
        q.put(i)
    loop.newthread(worker)
    loop.newthread(joiner)
    loop.start(5)
    assert log == ["done 0", "done 1", "done 2", "joined"]


def test_queue_join_from_outside_a_loop_thread_runs_the_loop(loop: Loop) -> None:
    q: Queue[int] = Queue()
    log: list[str] = []

    def worker() -> None:
        for _ in range(2):
            item = q.get()
            loop.sleep(0.001)
            log.append(f"done {item}")
            q.task_done()

    thread = loop.newthread(worker)  # waits on the queue: the loop has used it
    q.put(1)
    q.put(2)
    try:
        q.join()
        log.append("joined")
    finally:
        thread.join(5)
    assert log == ["done 1", "done 2", "joined"]


def test_queue_task_done_too_often_raises() -> None:
    q: Queue[int] = Queue()
    q.put(1)
    q.get_nowait()
    q.task_done()
    with pytest.raises(ValueError):
        q.task_done()


# ------------------------------------------------- waiting outside loop threads


def test_event_waited_on_from_outside_a_loop_thread_runs_the_default_loop(
    api: types.ModuleType,
) -> None:
    event = Event()
    log: list[str] = []

    def setter() -> None:
        api.sleep(0.01)
        log.append("set")
        event.set()

    thread = api.newthread(setter)
    try:
        assert event.wait(5) is True
        log.append("main woke")
    finally:
        thread.join(5)
    assert log == ["set", "main woke"]


def test_queue_get_from_outside_a_loop_thread_runs_the_default_loop(
    api: types.ModuleType,
) -> None:
    q: Queue[str] = Queue()

    def producer() -> None:
        api.sleep(0.01)
        q.put("item")

    thread = api.newthread(producer)
    try:
        assert q.get(timeout=5) == "item"
    finally:
        thread.join(5)


def test_lock_held_by_a_thread_of_any_loop_acquired_from_outside_runs_that_loop(
    loop: Loop,
) -> None:
    lock = Lock()
    log: list[str] = []

    def holder() -> None:
        with lock:  # taken without waiting
            loop.sleep(0.01)
            log.append("holder releases")

    thread = loop.newthread(holder)
    try:
        with lock:
            log.append("main")
    finally:
        thread.join(5)
    assert log == ["holder releases", "main"]


def test_event_waited_on_from_outside_with_nothing_to_set_it_raises(
    api: types.ModuleType,
) -> None:
    event = Event()
    with pytest.raises(DeadlockError, match="outside any loop thread would block forever"):
        event.wait()
    assert "waiters=0" in repr(event)


def test_event_waited_on_from_outside_with_timeout_returns_false(api: types.ModuleType) -> None:
    event = Event()
    sleeper = api.newthread(api.sleep, 30)
    try:
        assert event.wait(0.02) is False
    finally:
        sleeper.kill()


def test_queue_get_from_outside_with_nothing_to_feed_it_raises(api: types.ModuleType) -> None:
    q: Queue[int] = Queue()
    with pytest.raises(DeadlockError, match="outside any loop thread would block forever"):
        q.get()


# -------------------------------------------- sharing between the two loop kinds


@pytest.fixture
def two_loops() -> Any:
    asym, sym = Loop(), CoroLoop()
    yield asym, sym
    for lp in (asym, sym):
        assert lp.statistics()["threads"] == 0
        lp.close()


def test_queue_shared_by_threads_of_both_loop_kinds(two_loops: tuple[Loop, CoroLoop]) -> None:
    asym, sym = two_loops
    q: Queue[int] = Queue(maxsize=2)
    received: list[int] = []

    def producer() -> None:
        for i in range(10):
            q.put(i)
        q.put(-1)

    def consumer() -> None:
        while (item := q.get()) != -1:
            received.append(item)

    asym.newthread(consumer)
    sym.newthread(producer)
    drive(asym, sym)
    assert received == list(range(10))


def test_lock_shared_by_threads_of_both_loop_kinds_keeps_fifo_order(
    two_loops: tuple[Loop, CoroLoop],
) -> None:
    asym, sym = two_loops
    lock = Lock()
    log: list[str] = []

    def holder() -> None:
        with lock:
            log.append("holder")
            asym.sleep(0.01)

    asym.newthread(holder)
    sym.newthread(lock_user(lock, "sym 1", log))
    asym.newthread(lock_user(lock, "asym 2", log))
    sym.newthread(lock_user(lock, "sym 3", log))
    drive(asym, sym)
    assert log == ["holder", "sym 1", "asym 2", "sym 3"]
    assert not lock.locked()


def test_event_set_in_one_loop_wakes_waiters_of_both(two_loops: tuple[Loop, CoroLoop]) -> None:
    asym, sym = two_loops
    event = Event()
    log: list[str] = []

    def waiter(name: str) -> None:
        event.wait()
        log.append(name)

    asym.newthread(waiter, "asym waiter")
    sym.newthread(waiter, "sym waiter")

    def setter() -> None:
        sym.sleep(0.01)
        event.set()

    sym.newthread(setter)
    drive(asym, sym)
    assert sorted(log) == ["asym waiter", "sym waiter"]


def test_semaphore_shared_by_both_loop_kinds_a_killed_waiter_passes_the_unit_on(
    two_loops: tuple[Loop, CoroLoop],
) -> None:
    asym, sym = two_loops
    sem = Semaphore(0)
    log: list[str] = []

    def waiter(name: str) -> None:
        sem.acquire()
        log.append(name)

    victim = asym.newthread(waiter, "asym victim")
    sym.newthread(waiter, "sym next")
    sem.release()
    victim.kill(block=False)
    drive(asym, sym)
    assert log == ["sym next"]
    assert sem.value == 0


def test_module_level_loops_share_a_queue(api: types.ModuleType) -> None:
    other: Any = socketloop.coro if api is socketloop else socketloop
    q: Queue[str] = Queue()
    got: list[str] = []
    api.newthread(lambda: got.append(q.get()))
    try:
        other.newthread(q.put, "across")
        drive(api.get_loop(), other.get_loop())
    finally:
        other.get_loop().close()
    assert got == ["across"]
