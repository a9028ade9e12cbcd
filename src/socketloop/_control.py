"""Join, kill and deadlock breaking: what one thread does to another's life.

Charter
-------
``ThreadControl`` is the base class of ``_lifecycle.Lifecycle`` (and so of
``_kernel.Kernel``) and a subclass of ``_scheduler.Scheduler``: it holds the
slow verbs behind ``Thread.join()``, ``Thread.kill()`` and the idle hook
that fails threads waiting for what can never come (``DeadlockError``).
They are written on top of the scheduler's one wait protocol
(``_block``/``_wake``/``_interrupt``) and ``run_until``; none of them
switches into a thread itself.

What it must not do: sit on the hot path, write a thread's state other than
through the scheduler (``_thread_finished`` for a thread that never
started), know file descriptors or sockets, or import anything above the
scheduler.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from greenlet import getcurrent

from . import _scheduler
from ._errors import DeadlockError, ThreadExit
from ._scheduler import TIMED_OUT, Scheduler, loops_of_this_os_thread, run_until
from ._threads import DEAD, NORMAL, READY, SUSPENDED, WAITING, Thread

__all__ = ["ThreadControl"]

logger = logging.getLogger("socketloop")


class ThreadControl(Scheduler):
    """Join, kill and the deadlock breaker; see the module charter."""

    def _join(self, thread: Thread[Any], timeout: float | None) -> None:
        g = getcurrent()
        if g is thread:
            raise RuntimeError(f"{thread!r} cannot join itself")
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        if isinstance(g, Thread) and g._loop is self:
            joiners = thread._joiners
            if joiners is None:
                joiners = thread._joiners = []
            joiners.append(g)
            try:
                value = self._block(g, thread, deadline)
            finally:
                if thread._joiners is not None and g in thread._joiners:
                    thread._joiners.remove(g)
            if value is TIMED_OUT:
                raise TimeoutError(f"timed out joining {thread!r}")
            return
        self._refuse_in_dispatcher(g, "join()")
        run_until(
            lambda: thread._state == DEAD,
            deadline,
            self.step,
            timed_out=f"timed out joining {thread!r}",
            stuck=lambda: RuntimeError(
                f"{thread!r} can never finish: nothing in the loop is waiting on I/O "
                "or timers that could wake it"
            ),
        )

    def _kill(
        self,
        thread: Thread[Any],
        exc: type[BaseException] | BaseException,
        *,
        block: bool,
        timeout: float | None,
    ) -> None:
        self._claim()
        if not isinstance(exc, BaseException) and not (
            isinstance(exc, type) and issubclass(exc, BaseException)
        ):
            # Checked before anything changes: throwing a non-exception into
            # the thread would fail in the dispatcher and leave it stranded.
            raise TypeError(f"kill() expects an exception class or instance, not {exc!r}")
        if thread._state == DEAD:
            return
        guard = _scheduler.host_guard
        if block and guard is not None:
            guard(getcurrent(), "a blocking kill()")
        error = exc() if isinstance(exc, type) else exc
        if thread._fn_args is not None:  # never started: it simply never runs
            thread._fn_args = None
            if thread._state == READY:
                try:
                    self._ready.remove(thread)
                except ValueError:
                    pass
            if not isinstance(error, ThreadExit):
                thread._exc = error
            self._thread_finished(thread)
            if thread.gr_frame is not None:  # a reused greenlet, idle in _thread_main
                self._return_to_idle(thread)
            return
        thread._kill_exc = error
        if getcurrent() is thread:
            raise error
        if thread._state == NORMAL:
            # It is resuming (directly or not) the caller, so it receives the
            # exception when control comes back to it; waiting for that here
            # would deadlock, so this kill never blocks.
            self._interrupt(thread, error, priority=True)
            return
        self._interrupt(thread, error, priority=True)
        if block:
            self._join(thread, timeout)

    def _break_deadlock(self) -> bool:
        """Nothing is pending: fail threads that wait for what can never come.

        Threads still WAITING now wait on joins or primitives that no thread
        of the loop can ever satisfy (every other thread is suspended or
        waiting too).  Rather than return from ``start()`` leaving them stuck,
        raise ``DeadlockError`` in each, naming the threads involved.
        """
        stuck = [t for t in self._threads if t._state == WAITING]
        if not stuck:
            return False
        if any(other._has_pending() for other in loops_of_this_os_thread() if other is not self):
            # A thread of another loop of this OS thread may still set the
            # event or release the lock; running that loop is the caller's job.
            return False
        suspended = [t for t in self._threads if t._state == SUSPENDED]
        lines = [f"{t.name!r} waits on {self._describe_wait(t)}" for t in stuck]
        lines += [f"{t.name!r} is suspended (only resume() can wake it)" for t in suspended]
        message = "no thread can make progress: " + "; ".join(lines)
        logger.warning("deadlock: %s", message)
        for thread in stuck:
            self._interrupt(thread, DeadlockError(message), priority=False)
        return True
