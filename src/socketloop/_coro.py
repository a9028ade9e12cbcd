"""The symmetric-coroutine loop: same API as ``Loop`` plus ``transfer``.

Charter: say who the loop thread is (the one piece of state the symmetric
model adds) and offer ``transfer``; nothing else.  Thread states are written
by the kernel (``_resume_into``, ``_transfer``); sockets, timers and dispatch
are inherited unchanged.

The model (after Lua's ``coro`` module as used by socketloop):

- ``transfer(thread, arg)`` passes control straight to ``thread``; the caller
  stays suspended until someone transfers back to it or resumes it.
- There is one *loop thread* per loop: the greenlet that ``suspend()`` and
  every blocking socket call transfer to, and that a finishing thread hands
  control to.  The dispatcher is the loop thread while it dispatches.
- ``newthread`` and ``resume`` make their caller the loop thread for the
  duration of the call, so control comes back to the caller when the thread
  (or the chain of transfers it starts) next suspends or ends.
"""

from __future__ import annotations

from typing import Any

from greenlet import getcurrent, greenlet

from ._loop import Loop
from ._scheduler import Scheduler
from ._threads import NORMAL, Thread

__all__ = ["CoroLoop"]


class CoroLoop(Loop):
    """A loop whose threads are symmetric coroutines; see ``transfer``."""

    symmetric = True

    def __init__(self, *, poller: str | None = None) -> None:
        super().__init__(poller=poller)
        self._loop_thread = None  # (declared by the scheduler)

    def _loop_target(self) -> greenlet:
        target = self._loop_thread
        if target is None or target.dead:
            target = self._claim()
        return target

    # Switching out is the kernel's, unchanged: a thread hands control to
    # its ``_resumer``, and every way into a symmetric thread sets that to
    # the loop thread of the moment (the dispatcher, the caller of
    # resume/newthread, or for ``transfer`` the current loop thread).  It
    # cannot go stale: the binding only changes inside resume()/newthread()
    # calls the thread itself makes, which restore it before returning.

    # Every resume's path, so the symmetric version is a whole method of the
    # kernel's (state writes stay there), bound here without a wrapper frame.
    _resume_into = Scheduler._resume_into_symmetric

    def _step(self, timeout: float | None) -> bool:
        saved = self._loop_thread
        self._loop_thread = getcurrent()
        try:
            return super()._step(timeout)
        finally:
            self._loop_thread = saved

    def transfer(self, thread: Thread[Any], arg: Any = None) -> Any:
        """Pass control directly to ``thread``; return what the next transfer here passes.

        ``thread``'s pending ``transfer``/``suspend`` (or ``resume``) returns
        ``arg``.  The caller stays suspended until a thread transfers to it or
        it is resumed.  Raises ``RuntimeError`` for the running thread, a dead
        one, or one waiting in an async call or scheduled by the loop.
        """
        self._claim()
        current = getcurrent()
        if thread is current:
            raise RuntimeError(f"cannot transfer to {thread!r}: it is the running thread")
        if isinstance(thread, Thread) and thread._loop is self and thread._state == NORMAL:
            pass  # waiting in resume()/newthread() for control to come back: allowed
        else:
            self._check_resumable(thread, "transfer to")
        # Not the caller: a transferred-to thread that suspends or ends goes
        # to the loop thread, not back to whoever transferred to it.
        return self._transfer(thread, arg, self._loop_target())
