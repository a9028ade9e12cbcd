"""Locks for ``patch(threading=True)``: real locks that loop threads wait on cooperatively.

Charter: a ``threading.Lock`` / ``RLock`` replacement that stays correct across
OS threads (it *is* a real lock underneath) while a loop thread that has to
wait for it suspends instead of blocking its whole loop.  The standard
library builds ``Condition``, ``Event``, ``Semaphore``, ``Barrier`` and
``queue.Queue`` out of these two, so patching them makes all of those
cooperative too.

Why this is opt-in: every lock created after patching pays a Python-level
wrapper on each acquire (including locks used only by OS threads, such as
those inside logging handlers or thread pools), and wake-ups of waiting loop
threads go through the loop's thread-safe wake-up.  Waiting loop threads are
woken in no particular order (a release wakes one waiter, which then
competes for the lock), unlike socketloop's own primitives, which are FIFO.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from greenlet import getcurrent, greenlet

from . import _originals
from ._kernel import TIMED_OUT
from ._threads import Thread

__all__ = ["HybridLock", "HybridRLock"]


class HybridLock:
    """``threading.Lock`` that suspends (not blocks) a waiting loop thread."""

    __slots__ = ("__weakref__", "_guard", "_lock", "_waiters")

    def __init__(self) -> None:
        self._lock = _originals.allocate_lock()
        self._guard = _originals.allocate_lock()  # protects _waiters across OS threads
        self._waiters: collections.deque[Thread[Any]] = collections.deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(False):
            return True
        if not blocking:
            if timeout != -1:
                raise ValueError("can't specify a timeout for a non-blocking call")
            return False
        current = getcurrent()
        if not isinstance(current, Thread):
            return self._lock.acquire(True, timeout)
        return self._acquire_in_thread(current, timeout)

    def _acquire_in_thread(self, thread: Thread[Any], timeout: float) -> bool:
        loop = thread._loop
        deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
        while True:
            with self._guard:
                if self._lock.acquire(False):
                    return True
                self._waiters.append(thread)
            # The release may come from another OS thread: the loop must keep
            # polling for it, like for any outside work.
            woken = False
            try:
                woken = loop._block(thread, self, deadline, external=True) is not TIMED_OUT
            finally:
                with self._guard:
                    try:
                        self._waiters.remove(thread)
                    except ValueError:
                        # A release picked us; if we leave without the lock
                        # (timeout, kill), the wake-up must go to someone else.
                        if not woken:
                            self._wake_one_locked()
            if not woken:
                return self._lock.acquire(False)

    def release(self) -> None:
        self._lock.release()
        with self._guard:
            self._wake_one_locked()

    def _wake_one_locked(self) -> None:
        # Called with _guard held.
        if self._waiters:
            thread = self._waiters.popleft()
            thread._loop._wake_threadsafe(thread, self)

    def locked(self) -> bool:
        return self._lock.locked()

    def _at_fork_reinit(self) -> None:
        self._lock = _originals.allocate_lock()
        self._guard = _originals.allocate_lock()
        self._waiters.clear()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "locked" if self._lock.locked() else "unlocked"
        return f"<socketloop hybrid Lock {state}>"


class HybridRLock:
    """``threading.RLock`` whose owner is the loop thread (greenlet), not the OS thread."""

    __slots__ = ("__weakref__", "_count", "_lock", "_owner")

    def __init__(self) -> None:
        self._lock = HybridLock()
        self._owner: greenlet | None = None
        self._count = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = getcurrent()
        if self._owner is me:
            self._count += 1
            return True
        if not self._lock.acquire(blocking, timeout):
            return False
        self._owner = me
        self._count = 1
        return True

    def release(self) -> None:
        if self._owner is not getcurrent():
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if self._count == 0:
            self._owner = None
            self._lock.release()

    def _is_owned(self) -> bool:
        return self._owner is getcurrent()

    def _release_save(self) -> tuple[int, greenlet | None]:
        state = (self._count, self._owner)
        self._count = 0
        self._owner = None
        self._lock.release()
        return state

    def _acquire_restore(self, state: tuple[int, greenlet | None]) -> None:
        self._lock.acquire()
        self._count, self._owner = state

    def _at_fork_reinit(self) -> None:
        self._lock._at_fork_reinit()
        self._owner = None
        self._count = 0

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<socketloop hybrid RLock count={self._count}>"


def allocate_lock() -> HybridLock:
    """``_thread.allocate_lock`` / ``threading._allocate_lock`` replacement."""
    return HybridLock()
