"""Synchronisation primitives for loop threads: Event, Lock, RLock, Semaphore,
BoundedSemaphore, Condition, Queue, LifoQueue, PriorityQueue.

Charter: the ``threading``/``queue`` APIs, for loop threads.  A waiting thread
suspends (the rest of the loop runs); waiters are served in FIFO order; every
wait takes a timeout; a waiter that is killed or times out leaves nothing
behind and loses nobody's wake-up.

How fairness and "no lost wake-ups" are kept: a release never lets the
resource go back to the pool while someone waits; it is *granted* to the
first waiter (the lock's ownership, a semaphore unit, a queue item or slot)
and that waiter is scheduled.  If a granted waiter leaves with an exception
before it resumes (killed, or a timeout scope fired in the same instant),
its wait hands the grant on to the next waiter.

The primitives are bound to no loop: threads of any loop of the same OS
thread may share them.  Waiting from outside any loop thread runs the loop of
the thread that last used the primitive (or the default loop) until the wait
is over, and raises ``RuntimeError`` when nothing in that loop could end it.
They are not safe to share between OS threads (use
``loop.call_soon_threadsafe`` to cross).
"""

from __future__ import annotations

import collections
import heapq
import queue as _queue
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from greenlet import getcurrent, greenlet

from ._errors import DeadlockError
from ._kernel import TIMED_OUT, is_dispatching, run_until, step_loops
from ._threads import Thread

if TYPE_CHECKING:
    from ._loop import Loop

__all__ = [
    "BoundedSemaphore",
    "Condition",
    "Event",
    "LifoQueue",
    "Lock",
    "PriorityQueue",
    "Queue",
    "RLock",
    "Semaphore",
]

T = TypeVar("T")


class _Waiter:
    """One pending wait: who waits, and what it was granted."""

    __slots__ = ("granted", "owner", "thread", "value")

    def __init__(self, owner: greenlet, thread: Thread[Any] | None) -> None:
        self.owner = owner
        self.thread = thread
        self.granted = False
        self.value: Any = None


class _WaitQueue:
    """The FIFO of waiters of one primitive."""

    __slots__ = ("_loop_hint", "_waiters")

    def __init__(self) -> None:
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._loop_hint: Loop | None = None

    def __len__(self) -> int:
        return len(self._waiters)

    def grant_first(self, value: Any = None) -> _Waiter | None:
        """Grant ``value`` to the first waiter still waiting and schedule it."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            thread = waiter.thread
            if thread is not None and not thread._loop._wake(thread):
                continue  # interrupted (killed, timed out): it is on its way out
            waiter.granted = True
            waiter.value = value
            return waiter
        return None

    def wait(
        self,
        primitive: object,
        timeout: float | None,
        give_back: Callable[[_Waiter], None] | None = None,
    ) -> _Waiter:
        """Wait until granted; return the grant.  Raises ``TimeoutError``.

        ``give_back`` is called with the grant when the wait ends with an
        exception after the grant was made, so the resource reaches the next
        waiter instead of being lost.
        """
        current = getcurrent()
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        if isinstance(current, Thread):
            return self._wait_in_thread(current, primitive, deadline, give_back)
        return self._wait_outside(current, primitive, deadline, give_back)

    def _wait_in_thread(
        self,
        thread: Thread[Any],
        primitive: object,
        deadline: float | None,
        give_back: Callable[[_Waiter], None] | None,
    ) -> _Waiter:
        loop = thread._loop
        self._loop_hint = loop
        waiter = _Waiter(thread, thread)
        self._waiters.append(waiter)
        try:
            while True:
                value = loop._block(thread, primitive, deadline)
                if waiter.granted:
                    return waiter
                if value is TIMED_OUT:
                    raise TimeoutError(f"timed out waiting for {primitive!r}")
                # A wake-up without a grant: wait again (keeping the turn if
                # the queue still holds it).
                if waiter not in self._waiters:
                    self._waiters.append(waiter)
        except BaseException:
            self._discard(waiter)
            if waiter.granted and give_back is not None:
                give_back(waiter)
            raise

    def _wait_outside(
        self,
        current: greenlet,
        primitive: object,
        deadline: float | None,
        give_back: Callable[[_Waiter], None] | None,
    ) -> _Waiter:
        if is_dispatching(current):
            raise RuntimeError(
                f"waiting on {primitive!r} would block the whole loop: it was called from a "
                "loop callback (timer or call_soon), not from a loop thread"
            )
        waiter = _Waiter(current, None)
        self._waiters.append(waiter)
        try:
            # The same condition start() reports in loop threads when nothing
            # left could ever release this wait.
            run_until(
                lambda: waiter.granted,
                deadline,
                lambda remaining: step_loops(remaining, self._loop_hint),
                timed_out=f"timed out waiting for {primitive!r}",
                stuck=lambda: DeadlockError(
                    f"waiting on {primitive!r} outside any loop thread would block "
                    "forever: no loop of this OS thread has anything left that could "
                    "release it"
                ),
            )
            return waiter
        except BaseException:
            self._discard(waiter)
            if waiter.granted and give_back is not None:
                give_back(waiter)
            raise

    def _discard(self, waiter: _Waiter) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass


class _ContextLock:
    def __enter__(self) -> bool:
        return self.acquire()  # type: ignore[attr-defined, no-any-return]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()  # type: ignore[attr-defined]


def _timeout_arg(blocking: bool, timeout: float | None) -> float | None:
    """threading's convention: -1 (or None) waits forever; a timeout needs blocking."""
    if timeout is not None and timeout != -1 and not blocking:
        raise ValueError("can't specify a timeout for a non-blocking call")
    if timeout is None or timeout == -1:
        return None
    if timeout < 0:
        raise ValueError("timeout value must be a non-negative number")
    return timeout


class Lock(_ContextLock):
    """A mutual-exclusion lock for loop threads (the ``threading.Lock`` API).

    ``acquire`` suspends the calling thread while another holds the lock;
    waiters get it in FIFO order.  Re-acquiring a lock one already holds
    raises ``RuntimeError`` (it could never succeed).
    """

    def __init__(self) -> None:
        self._owner: greenlet | None = None
        self._waiters = _WaitQueue()

    def acquire(self, blocking: bool = True, timeout: float | None = -1) -> bool:
        """Take the lock; return False if not blocking or on timeout."""
        limit = _timeout_arg(blocking, timeout)
        me = getcurrent()
        if self._owner is None and not len(self._waiters):
            self._owner = me
            return True
        if not blocking:
            return False
        if self._owner is me:
            raise RuntimeError("this thread already holds the lock: it would wait forever")
        try:
            self._waiters.wait(self, limit, self._give_back)
        except TimeoutError:
            return False
        return True

    def release(self) -> None:
        """Release the lock, handing it to the first waiter if any."""
        if self._owner is None:
            raise RuntimeError("release unlocked lock")
        waiter = self._waiters.grant_first()
        self._owner = None if waiter is None else waiter.owner

    def _give_back(self, waiter: _Waiter) -> None:
        self._owner = waiter.owner
        self.release()

    def locked(self) -> bool:
        return self._owner is not None

    def _is_owned(self) -> bool:
        return self._owner is getcurrent()

    def _release_save(self) -> Any:
        self.release()
        return None

    def _acquire_restore(self, state: Any) -> None:
        self.acquire()

    def __repr__(self) -> str:
        state = "locked" if self._owner is not None else "unlocked"
        return f"<socketloop.Lock {state} waiters={len(self._waiters)}>"


class RLock(_ContextLock):
    """A reentrant lock for loop threads (the ``threading.RLock`` API)."""

    def __init__(self) -> None:
        self._owner: greenlet | None = None
        self._count = 0
        self._waiters = _WaitQueue()

    def acquire(self, blocking: bool = True, timeout: float | None = -1) -> bool:
        limit = _timeout_arg(blocking, timeout)
        me = getcurrent()
        if self._owner is me:
            self._count += 1
            return True
        if self._owner is None and not len(self._waiters):
            self._owner = me
            self._count = 1
            return True
        if not blocking:
            return False
        try:
            self._waiters.wait(self, limit, self._give_back)
        except TimeoutError:
            return False
        self._count = 1
        return True

    def release(self) -> None:
        if self._owner is not getcurrent():
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if self._count == 0:
            self._hand_on()

    def _hand_on(self) -> None:
        waiter = self._waiters.grant_first()
        self._owner = None if waiter is None else waiter.owner

    def _give_back(self, waiter: _Waiter) -> None:
        self._hand_on()

    def _is_owned(self) -> bool:
        return self._owner is getcurrent()

    def _release_save(self) -> Any:
        count = self._count
        self._count = 0
        self._hand_on()
        return count

    def _acquire_restore(self, state: Any) -> None:
        self.acquire()
        self._count = state

    def __repr__(self) -> str:
        return f"<socketloop.RLock count={self._count} waiters={len(self._waiters)}>"


class Semaphore(_ContextLock):
    """A counting semaphore for loop threads (the ``threading.Semaphore`` API)."""

    def __init__(self, value: int = 1) -> None:
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        self._value = value
        self._waiters = _WaitQueue()

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take one unit; return False if not blocking or on timeout."""
        limit = _timeout_arg(blocking, timeout)
        if self._value > 0 and not len(self._waiters):
            self._value -= 1
            return True
        if not blocking:
            return False
        try:
            self._waiters.wait(self, limit, self._give_back)
        except TimeoutError:
            return False
        return True

    def release(self, n: int = 1) -> None:
        """Return ``n`` units, each to the first waiter if any."""
        if n < 1:
            raise ValueError("n must be one or more")
        for _ in range(n):
            self._release_one()

    def _release_one(self) -> None:
        if self._waiters.grant_first() is None:
            self._value += 1

    def _give_back(self, waiter: _Waiter) -> None:
        self._release_one()

    @property
    def value(self) -> int:
        """Units available now."""
        return self._value

    def __repr__(self) -> str:
        return (
            f"<socketloop.{type(self).__name__} value={self._value} waiters={len(self._waiters)}>"
        )


class BoundedSemaphore(Semaphore):
    """A semaphore whose ``release`` refuses to exceed the initial value."""

    def __init__(self, value: int = 1) -> None:
        super().__init__(value)
        self._initial = value

    def _release_one(self) -> None:
        if self._waiters.grant_first() is None:
            if self._value >= self._initial:
                raise ValueError("Semaphore released too many times")
            self._value += 1


class Event:
    """A flag loop threads can wait for (the ``threading.Event`` API)."""

    def __init__(self) -> None:
        self._flag = False
        self._waiters = _WaitQueue()

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        self._flag = True
        while self._waiters.grant_first() is not None:
            pass

    def clear(self) -> None:
        self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the flag is set; return False on timeout."""
        if self._flag:
            return True
        try:
            self._waiters.wait(self, timeout)
        except TimeoutError:
            return False
        return True

    def __repr__(self) -> str:
        state = "set" if self._flag else "unset"
        return f"<socketloop.Event {state} waiters={len(self._waiters)}>"


class Condition(_ContextLock):
    """A condition variable for loop threads (the ``threading.Condition`` API).

    The lock defaults to a new ``RLock``.
    """

    def __init__(self, lock: Lock | RLock | None = None) -> None:
        self._lock: Lock | RLock = RLock() if lock is None else lock
        self._waiters = _WaitQueue()

    def acquire(self, blocking: bool = True, timeout: float | None = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock, wait for a notify, re-acquire; return False on timeout."""
        if not self._lock._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        saved = self._lock._release_save()
        try:
            self._waiters.wait(self, timeout, self._pass_on)
        except TimeoutError:
            return False
        finally:
            self._reacquire(saved)
        return True

    def _reacquire(self, saved: Any) -> None:
        # The lock must be held again before wait() returns or raises (the
        # caller's `with` releases it).  A kill or timeout that arrives while
        # re-acquiring is kept and raised once the lock is back.
        interrupted: BaseException | None = None
        while True:
            try:
                self._lock._acquire_restore(saved)
                break
            except BaseException as exc:
                if interrupted is None:
                    interrupted = exc
        if interrupted is not None and sys.exc_info()[1] is None:
            raise interrupted

    def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        """Wait until ``predicate()`` is true (or the timeout passes); return its value."""
        deadline = None if timeout is None else time.monotonic() + timeout
        result = predicate()
        while not result:
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
            self.wait(remaining)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters, first come first served."""
        if not self._lock._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        for _ in range(n):
            if self._waiters.grant_first() is None:
                break

    def notify_all(self) -> None:
        self.notify(len(self._waiters))

    def _pass_on(self, waiter: _Waiter) -> None:
        # A notified waiter that leaves with an exception passes the
        # notification on, so nobody waits for one that was spent.
        self._waiters.grant_first()

    def __repr__(self) -> str:
        return f"<socketloop.Condition {self._lock!r} waiters={len(self._waiters)}>"


class Queue(Generic[T]):
    """A FIFO queue for loop threads (the ``queue.Queue`` API, same exceptions).

    ``maxsize`` <= 0 means unbounded.  Items go straight to a waiting
    ``get`` (in FIFO order of the getters); a ``put`` on a full queue waits for
    a slot, and slots are granted to putters in FIFO order.
    """

    def __init__(self, maxsize: int = 0) -> None:
        self.maxsize = maxsize
        self._init(maxsize)
        self._getters = _WaitQueue()
        self._putters = _WaitQueue()
        self._all_done = _WaitQueue()
        self._reserved = 0  # slots granted to putters that have not resumed yet
        self.unfinished_tasks = 0

    # Storage, overridden by the LIFO and priority variants.
    def _init(self, maxsize: int) -> None:
        self.queue: Any = collections.deque()

    def _qsize(self) -> int:
        return len(self.queue)

    def _put(self, item: T) -> None:
        self.queue.append(item)

    def _get(self) -> T:
        return self.queue.popleft()  # type: ignore[no-any-return]

    def _unget(self, item: T) -> None:
        self.queue.appendleft(item)

    # The queue.Queue API.
    def qsize(self) -> int:
        return self._qsize()

    def empty(self) -> bool:
        return not self._qsize()

    def full(self) -> bool:
        return 0 < self.maxsize <= self._qsize() + self._reserved

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``, waiting for a free slot if full; ``queue.Full`` on timeout."""
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        if self._getters.grant_first(item) is not None:
            self.unfinished_tasks += 1
            return
        if self.full():
            if not block:
                raise _queue.Full
            try:
                self._putters.wait(self, timeout, self._pass_slot_on)
            except TimeoutError:
                raise _queue.Full from None
            self._reserved -= 1
            if self._getters.grant_first(item) is not None:
                self.unfinished_tasks += 1
                return
        self._put(item)
        self.unfinished_tasks += 1

    def put_nowait(self, item: T) -> None:
        self.put(item, block=False)

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        """Remove and return an item, waiting if empty; ``queue.Empty`` on timeout."""
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        if self._qsize():
            item = self._get()
            self._grant_slot()
            return item
        if not block:
            raise _queue.Empty
        try:
            waiter = self._getters.wait(self, timeout, self._put_back)
        except TimeoutError:
            raise _queue.Empty from None
        return waiter.value  # type: ignore[no-any-return]

    def get_nowait(self) -> T:
        return self.get(block=False)

    def task_done(self) -> None:
        if self.unfinished_tasks <= 0:
            raise ValueError("task_done() called too many times")
        self.unfinished_tasks -= 1
        if self.unfinished_tasks == 0:
            while self._all_done.grant_first() is not None:
                pass

    def join(self) -> None:
        """Wait until every item put has been marked done with ``task_done``."""
        while self.unfinished_tasks:
            self._all_done.wait(self, None)

    # Hand-off bookkeeping.
    def _grant_slot(self) -> None:
        has_room = self.maxsize > 0 and self._qsize() + self._reserved < self.maxsize
        if has_room and self._putters.grant_first() is not None:
            self._reserved += 1

    def _pass_slot_on(self, waiter: _Waiter) -> None:
        self._reserved -= 1
        self._grant_slot()

    def _put_back(self, waiter: _Waiter) -> None:
        # A getter was handed an item but leaves without it: the item goes to
        # the next getter, or back to the front of the queue.
        item = waiter.value
        if self._getters.grant_first(item) is None:
            self._unget(item)

    def __repr__(self) -> str:
        return (
            f"<socketloop.{type(self).__name__} size={self._qsize()} maxsize={self.maxsize} "
            f"getters={len(self._getters)} putters={len(self._putters)}>"
        )


class LifoQueue(Queue[T]):
    """A last-in, first-out ``Queue``."""

    def _init(self, maxsize: int) -> None:
        self.queue = []

    def _get(self) -> T:
        return self.queue.pop()  # type: ignore[no-any-return]

    def _unget(self, item: T) -> None:
        self.queue.append(item)


class PriorityQueue(Queue[T]):
    """A ``Queue`` that returns the smallest item first (``heapq`` order)."""

    def _init(self, maxsize: int) -> None:
        self.queue = []

    def _put(self, item: T) -> None:
        heapq.heappush(self.queue, item)

    def _get(self) -> T:
        return heapq.heappop(self.queue)  # type: ignore[no-any-return]

    def _unget(self, item: T) -> None:
        heapq.heappush(self.queue, item)
