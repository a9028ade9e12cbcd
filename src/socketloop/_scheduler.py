"""The scheduler half of the kernel: threads, their states, the ready queue, timers.

Charter: the thread state machine (``_threads`` documents the states) and
the one wait protocol of the package (``_block``/``_wake``/``_interrupt``,
see the charter of ``_kernel``), switching into threads, the one way to
wait from outside any loop thread (``run_until``), and the timer and
callback queues with the one place that calls user callbacks
(``_call_user``).  ``Scheduler`` is the base class of
``_control.ThreadControl`` (join, kill, deadlocks) and so of
``_kernel.Kernel``, which adds the driver, the fd waiter tables and the
dispatcher; they are one object, so the hot path finds every table and
counter in one place.  It must not know about
file descriptors, sockets or anything above the kernel.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from greenlet import getcurrent, greenlet

from . import _originals
from ._errors import require_callable
from ._idle import IdlePool
from ._threads import (
    DEAD,
    NORMAL,
    READY,
    RUNNING,
    STATE_NAMES,
    SUSPENDED,
    WAITING,
    Thread,
)
from ._timers import MAX_DELAY, TimerHandle, TimerHeap

if TYPE_CHECKING:
    from ._loop import Loop

__all__ = [
    "FAIRNESS_BUDGET",
    "SHARED_STEP",
    "TIMED_OUT",
    "Scheduler",
    "is_dispatching",
    "loops_of_this_os_thread",
    "open_loops",
    "run_until",
    "step_loops",
]

logger = logging.getLogger("socketloop")

P = ParamSpec("P")
R = TypeVar("R")

#: How many socket operations a thread may complete without ever waiting
#: before it is made to yield (as if it called ``sleep(0)``).  Without this
#: a thread reading a socket that is always ready (a fast sender on
#: loopback) would never give the loop a chance to run timers or other
#: threads.  64 operations take well under a millisecond, and a thread that
#: waits on I/O normally never reaches the limit, so the common path pays
#: only a counter decrement.
FAIRNESS_BUDGET = 64


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: What ``_block`` returns when the wait's deadline passed.
TIMED_OUT: Any = _Sentinel("TIMED_OUT")


#: Every loop not yet closed (for the fork hook and for finding the loops of an OS thread).
_live_loops: weakref.WeakSet[Loop] = weakref.WeakSet()


def is_dispatching(g: greenlet) -> bool:
    """Whether ``g`` is the dispatcher of a loop that is dispatching right now.

    A blocking call made there (from a loop callback) is refused instead of
    freezing every thread.  Only slow paths ask, so this scans the loops.
    """
    if any(loop._dispatching and loop._dispatcher is g for loop in loops_of_this_os_thread()):
        return True
    if host_guard is not None:  # hosting: see Kernel's "host driver entry points"
        host_guard(g, None)
    return False


#: Set by the host driver (``_hostdriver``) while any loop is hosted on an
#: asyncio loop: ``host_guard(g, what)`` raises ``RuntimeError`` when ``g``
#: is asyncio code (not a loop thread) of an OS thread whose running asyncio
#: loop hosts a socketloop loop, since a blocking call there would freeze
#: asyncio.  ``what`` names the call (None: a socket call or primitive wait).
host_guard: Callable[[greenlet, str | None], None] | None = None


def open_loops() -> list[Loop]:
    """Every loop not yet closed, of any OS thread."""
    return [loop for loop in list(_live_loops) if not loop._closed]


def loops_of_this_os_thread() -> list[Loop]:
    """The open loops bound to (or not yet bound to any) calling OS thread."""
    ident = threading.get_ident()
    return [loop for loop in list(_live_loops) if loop._owner in (None, ident) and not loop._closed]


#: When a wait outside loop threads must run several loops of one OS thread,
#: each gets a step of at most this long in turn, so none is starved and the
#: wait notices its end promptly.
SHARED_STEP = 0.01


def run_until(
    done: Callable[[], bool],
    deadline: float | None,
    step: Callable[[float | None], bool],
    *,
    timed_out: str,
    stuck: Callable[[], BaseException] | None = None,
) -> None:
    """Wait from outside any loop thread: call ``step`` until ``done()`` is true.

    The one way a caller that is not a loop thread (the main program, another
    OS thread, a foreign greenlet) waits for something: ``step(remaining)``
    makes progress for at most ``remaining`` seconds (None: as long as it
    needs), typically one ``step()`` of the loop(s) that can end the wait
    (``step_loops``), or a plain ``poll(2)``.  It returns False when nothing
    could ever make ``done()`` true; ``stuck()`` is then raised (the caller's
    ``RuntimeError``/``DeadlockError`` with its own message).  At
    ``deadline`` (a ``time.monotonic()`` value, None: never) raises
    ``TimeoutError(timed_out)``; ``done()`` is checked before the deadline,
    so a wait already over never times out, and a deadline already passed
    raises without stepping.  Blocks the calling OS thread; refusing to be
    called from a dispatcher (``is_dispatching``) is the caller's job, with
    its own message.
    """
    while not done():
        remaining = None
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(timed_out)
        if not step(remaining) and stuck is not None:
            raise stuck()


def step_loops(timeout: float | None, first: Loop | None = None) -> bool:
    """One step of the loop(s) of this OS thread that could end a wait; False if none can.

    ``first`` (when open and with something pending) is the only loop
    stepped; otherwise every open loop of this OS thread with something
    pending is a candidate, and several candidates share the time in steps
    of at most ``SHARED_STEP`` each.  A ``step`` for ``run_until``.
    """
    if first is not None and not first._closed and first._has_pending():
        return first.step(timeout)
    candidates = [loop for loop in loops_of_this_os_thread() if loop._has_pending()]
    if not candidates:
        return False
    if len(candidates) == 1:
        return candidates[0].step(timeout)
    for loop in candidates:
        slice_ = SHARED_STEP if timeout is None else min(timeout, SHARED_STEP)
        loop.step(slice_ / len(candidates))
    return True


class Scheduler(IdlePool):
    """Threads and the wait protocol; the base of ``Kernel`` (see ``_kernel``)."""

    #: True for the symmetric-coroutine loop (``socketloop.coro``).
    symmetric = False
    #: The symmetric model's current loop thread (None: the OS thread's root
    #: greenlet), kept by ``_resume_into_symmetric``.  Unused by the
    #: asymmetric model.
    _loop_thread: greenlet | None = None

    def __init__(self) -> None:
        self._ready: collections.deque[Thread[Any]] = collections.deque()
        self._callbacks: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._timers = TimerHeap()
        self._threads: set[Thread[Any]] = set()
        #: Greenlets of ended threads kept for reuse (see _idle).
        self._idle: list[Thread[Any]] = []
        self._weakself: Any = weakref.ref(self)
        self._measuring = False
        #: Waits on things outside the loop (other OS threads) that will come
        #: back through call_soon_threadsafe: they keep start() running.
        self._external_waits = 0
        self._budget = FAIRNESS_BUDGET
        self._dispatching = False
        self._dispatcher: greenlet | None = None
        self._in_callback = False
        self._closed = False
        self._owner: int | None = None
        self._root: greenlet | None = None
        #: The host driver while hosted on an asyncio loop, and its wake-up
        #: call (see Kernel's "host driver entry points").
        self._host: Any = None
        self._host_kick: Callable[[], None] | None = None

    def _has_runnable_besides(self, thread: Thread[Any]) -> bool:
        """Whether a thread other than ``thread`` is running or scheduled to run."""
        return any(t is not thread and t._state in (READY, RUNNING) for t in self._threads) or any(
            t is not thread for t in self._ready
        )

    # Provided by the kernel.
    def step(self, timeout: float | None = None) -> bool:
        raise NotImplementedError

    def _has_pending(self) -> bool:
        raise NotImplementedError

    def _describe_wait(self, thread: Thread[Any]) -> str:
        raise NotImplementedError

    def _claim(self) -> greenlet:
        """Bind the loop to the calling OS thread on first use; return its root greenlet.

        Raises ``RuntimeError`` for a closed loop or from another OS thread
        than the one it is bound to.
        """
        if self._closed:
            raise RuntimeError("this loop is closed")
        ident = threading.get_ident()
        if self._owner != ident:
            if self._owner is None:
                self._owner = ident
            else:
                raise RuntimeError(
                    "this loop belongs to another OS thread; use call_soon_threadsafe() to reach it"
                )
        root = self._root
        if root is None:
            root = getcurrent()
            while root.parent is not None:
                root = root.parent
            self._root = root
        return root

    # Hosted variants of _claim and _schedule.  Work added from asyncio code
    # (outside a dispatch) needs a step the host must be asked for.  Every
    # public call passes _claim and every wake-up _schedule, so instead of a
    # hosting check on those paths for every loop (measured: 1-3 % on
    # resume, sleep(0) and timer micro-benchmarks), the kernel puts these
    # two in a hosted loop's instance dict while it is hosted, where they
    # shadow the class's (``Kernel._host_attach``/``_host_detach``).

    def _claim_hosted(self) -> greenlet:
        root = type(self)._claim(self)
        kick = self._host_kick
        if kick is not None and not self._dispatching:
            kick()  # whatever this call adds (threads, callbacks, timers) needs a step
        return root

    def _schedule_hosted(
        self, thread: Thread[Any], value: object = None, exc: BaseException | None = None
    ) -> None:
        type(self)._schedule(self, thread, value, exc)
        kick = self._host_kick
        if kick is not None and not self._dispatching:
            kick()  # made ready from asyncio code

    # -------------------------------------------------------------- threads

    def newthread(self, handler: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Thread[R]:
        """Create a thread running ``handler(*args, **kwargs)`` and run it at once.

        The new thread runs until it first suspends (an async socket call
        that would block, ``suspend()``, ``sleep()``) or ends; then
        ``newthread`` returns it.  An exception in the handler does not
        propagate here: it is logged and kept for ``join()``.  A ``handler``
        that is not callable raises ``TypeError`` here.
        """
        if not callable(handler):  # inline: a call costs more than the check
            require_callable(handler, "the thread's handler")
        root = self._claim()
        thread: Thread[R] = (
            self._take_idle(handler, args, kwargs, root)
            if self._idle
            else Thread(self, handler, args, kwargs, root)
        )
        self._threads.add(thread)
        self._resume_into(thread, None)
        return thread

    def spawn(self, handler: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Thread[R]:
        """Create a thread that starts at the next dispatch; return it at once.

        A ``handler`` that is not callable raises ``TypeError`` here.
        """
        if not callable(handler):  # inline: a call costs more than the check
            require_callable(handler, "the thread's handler")
        root = self._claim()
        thread: Thread[R] = (
            self._take_idle(handler, args, kwargs, root)
            if self._idle
            else Thread(self, handler, args, kwargs, root)
        )
        self._threads.add(thread)
        self._schedule(thread)
        return thread

    def current(self) -> Thread[Any] | None:
        """The running thread of this loop, or None outside its threads."""
        g = getcurrent()
        if isinstance(g, Thread) and g._loop is self:
            return g
        return None

    def suspend(self) -> Any:
        """Suspend the current thread until ``resume(thread, arg)``; return ``arg``.

        Raises ``RuntimeError`` outside a thread of this loop.
        """
        thread = self._current_or_raise("suspend()")
        thread._state = SUSPENDED
        return self._switch_out(thread)

    def resume(self, thread: Thread[Any], arg: Any = None) -> Any:
        """Resume a thread suspended by ``suspend()``; ``suspend()`` returns ``arg``.

        The thread runs until it suspends again (or waits, or ends); then
        ``resume`` returns.  Raises ``RuntimeError`` for a thread that is dead,
        running, resuming another thread, waiting in an async call (the loop
        resumes it when that completes) or already scheduled.
        """
        self._claim()
        self._check_resumable(thread, "resume")
        return self._resume_into(thread, arg)

    def sleep(self, seconds: float) -> None:
        """Suspend the current thread for ``seconds``; ``sleep(0)`` yields to ready threads.

        Outside loop threads this is ``time.sleep``; inside a loop callback it
        raises ``RuntimeError`` (it would freeze the loop).
        """
        g = getcurrent()
        if not (isinstance(g, Thread) and g._loop is self):
            self._refuse_in_dispatcher(g, "sleep()")
            _originals.sleep(max(0.0, seconds))
            return
        if math.isnan(seconds):
            raise ValueError("sleep length is NaN")
        if seconds <= 0:
            self._schedule(g)
            self._switch_out(g)
            return
        # The timer wakes the thread with None (a plain wake-up), not TIMED_OUT.
        handle = self._timers.add(
            time.monotonic() + min(seconds, MAX_DELAY), self._timer_wake, (g,)
        )
        try:
            self._block(g, handle)
        finally:
            handle.cancel()

    def _current_or_raise(self, what: str) -> Thread[Any]:
        g = getcurrent()
        if isinstance(g, Thread) and g._loop is self:
            return g
        raise RuntimeError(f"{what} must be called from a thread of this loop")

    def _refuse_in_dispatcher(self, g: greenlet, what: str) -> None:
        if host_guard is not None:
            host_guard(g, what)
        if is_dispatching(g):
            raise RuntimeError(
                f"{what} would block the whole loop: it was called from a loop callback "
                "(timer or call_soon), not from a loop thread; start a thread for it"
            )

    def _check_resumable(self, thread: Thread[Any], verb: str) -> None:
        if not isinstance(thread, Thread):
            raise TypeError(f"{verb}() expects a Thread, got {type(thread).__name__}")
        if thread._loop is not self and thread._state != DEAD:
            raise RuntimeError(f"cannot {verb} {thread!r}: it belongs to another loop")
        state = thread._state
        if state == SUSPENDED:
            return
        if state == READY and thread._fn_args is not None:
            # Spawned but not started yet: starting it now is what the caller
            # asks for, and the scheduled start is dropped.
            try:
                self._ready.remove(thread)
            except ValueError:
                pass
            return
        reason = {
            DEAD: "it is dead",
            RUNNING: "it is the running thread",
            NORMAL: "it is resuming another thread",
            WAITING: "it is waiting in an async call; the loop resumes it when that completes",
            READY: "it is already scheduled to run",
        }.get(state, STATE_NAMES[state])
        raise RuntimeError(f"cannot {verb} {thread!r}: {reason}")

    # ------------------------------------------------------------ switching
    #
    # A thread hands control back to its ``_resumer``: whoever resumed it
    # last (the caller of newthread/resume, or the dispatcher).  The
    # symmetric model (``_coro``) differs only in who that is, which every
    # way into a thread sets; switching out is the same for both.

    # A plain method, not a staticmethod: CPython 3.11 specializes method
    # calls on functions only, and this is every thread's way out.
    def _switch_out(self, thread: Thread[Any]) -> Any:
        """Leave the running ``thread`` (whose state the caller has set); return its wake value."""
        return thread._resumer.switch(None)

    def _resume_into(self, thread: Thread[Any], arg: Any) -> Any:
        """Switch into ``thread`` from the caller, which waits (NORMAL) until control is back.

        Returns None.  The symmetric model (``_coro``) uses
        ``_resume_into_symmetric`` in its place.
        """
        current = getcurrent()
        caller = current if isinstance(current, Thread) else None
        thread._resumer = current
        thread._state = RUNNING
        self._budget = FAIRNESS_BUDGET
        if caller is not None:
            caller._state = NORMAL
        try:
            thread.switch(arg)
            if thread._state == RUNNING:
                self._foreign_switch(thread)
        finally:
            if caller is not None and caller._state == NORMAL:
                caller._state = RUNNING
        if caller is not None:
            self._deliver_pending_kill(caller)
        return None

    def _resume_into_symmetric(self, thread: Thread[Any], arg: Any) -> Any:
        """``_resume_into`` of the symmetric model: the caller is the loop thread
        while ``thread`` runs; returns what the thread's next switch out passes
        (a ``transfer`` back).

        A method of its own rather than flags in ``_resume_into``: each model
        pays only for its own bookkeeping on every resume.  No foreign-switch
        check: here a thread switching straight to another (``transfer``) is
        the normal case.
        """
        current = getcurrent()
        caller = current if isinstance(current, Thread) else None
        saved = self._loop_thread
        self._loop_thread = current
        thread._resumer = current
        thread._state = RUNNING
        self._budget = FAIRNESS_BUDGET
        if caller is not None:
            caller._state = NORMAL
        try:
            value = thread.switch(arg)
        finally:
            self._loop_thread = saved
            if caller is not None and caller._state == NORMAL:
                caller._state = RUNNING
        if caller is not None:
            self._deliver_pending_kill(caller)
        return value

    def _transfer(self, thread: Thread[Any], arg: Any, resumer: greenlet) -> Any:
        """Switch straight from the caller into ``thread``, which will return to ``resumer``.

        The caller, if a thread of this loop, is SUSPENDED until someone
        switches back into it; returns what that switch passes.
        """
        current = getcurrent()
        if isinstance(current, Thread) and current._loop is self:
            current._state = SUSPENDED
        thread._resumer = resumer
        thread._state = RUNNING
        self._budget = FAIRNESS_BUDGET
        value = thread.switch(arg)
        if isinstance(current, Thread):
            self._deliver_pending_kill(current)
        return value

    @staticmethod
    def _deliver_pending_kill(thread: Thread[Any]) -> None:
        error = thread._pending_kill
        if error is not None:
            thread._pending_kill = None
            raise error

    def _schedule(
        self, thread: Thread[Any], value: object = None, exc: BaseException | None = None
    ) -> None:
        """Make ``thread`` READY: it is switched into at the next dispatch."""
        thread._state = READY
        thread._wake_value = value
        thread._wake_exc = exc
        self._ready.append(thread)

    def _timer_wake(self, thread: Thread[Any], value: object = None) -> None:
        """Timer callback: end a wait (sleep) if it is still in progress."""
        if thread._state == WAITING:
            self._switch_from_dispatcher(thread, value)

    def _wait_expired(self, thread: Thread[Any]) -> None:
        """Timer callback: a wait's deadline passed."""
        if thread._state == WAITING:
            self._switch_from_dispatcher(thread, TIMED_OUT)

    def _switch_from_dispatcher(self, thread: Thread[Any], value: object) -> None:
        dispatcher = self._dispatcher
        assert dispatcher is not None
        thread._resumer = dispatcher
        thread._state = RUNNING
        self._budget = FAIRNESS_BUDGET
        thread.switch(value)
        if thread._state == RUNNING:
            self._foreign_switch(thread)

    def _thread_finished(self, thread: Thread[Any]) -> None:
        """Called by a thread as its last act: mark it dead and wake its joiners."""
        thread._state = DEAD
        self._threads.discard(thread)
        joiners = thread._joiners
        if joiners:
            thread._joiners = None
            for joiner in joiners:
                self._wake(joiner, source=thread)
        if getcurrent() is thread:
            # Ending hands control to the last resumer, which greenlet
            # reaches via the parent.
            target = thread._resumer
            if not target.dead:
                thread.parent = target

    def _yield_for_fairness(self) -> None:
        """A thread used up its budget of non-blocking operations: let others run."""
        self._budget = FAIRNESS_BUDGET
        g = getcurrent()
        if isinstance(g, Thread) and g._loop is self and g._state == RUNNING:
            self._schedule(g)
            self._switch_out(g)

    # ------------------------------------------------- the wait protocol

    def _block(
        self,
        thread: Thread[Any],
        source: object,
        deadline: float | None = None,
        *,
        external: bool = False,
    ) -> Any:
        """Switch the running ``thread`` out until woken; see the module charter.

        Returns the ``_wake`` value, or ``TIMED_OUT`` at ``deadline`` (a
        ``time.monotonic()`` value).  Raises what ``_wake``/``_interrupt``
        delivers (kill, timeout scope).
        """
        handle = None
        if deadline is not None:
            handle = self._timers.add(deadline, self._wait_expired, (thread,))
        if external:
            self._external_waits += 1
        thread._state = WAITING
        thread._waiting_on = source
        try:
            return thread._resumer.switch(None)
        finally:
            thread._waiting_on = None
            if external:
                self._external_waits -= 1
            if handle is not None:
                handle.cancel()

    def _wake(
        self,
        thread: Thread[Any],
        value: object = None,
        exc: BaseException | None = None,
        source: object = None,
    ) -> bool:
        """End ``thread``'s wait at the next dispatch; False if it was not blocked.

        With ``source``, only a wait on that source is ended.  The woken
        ``_block`` returns ``value`` or raises ``exc``.
        """
        if thread._state != WAITING or (source is not None and thread._waiting_on is not source):
            return False
        self._schedule(thread, value, exc)
        return True

    def _interrupt(self, thread: Thread[Any], error: BaseException, *, priority: bool) -> None:
        """Raise ``error`` in ``thread`` where it is suspended (kill, timeout, deadlock).

        Whatever the thread waits on is released by the ``finally`` blocks of
        the wait it is in.  A pending interruption is replaced only by one
        with ``priority`` (a kill beats a timeout; the first timeout wins).
        """
        state = thread._state
        if state == DEAD:
            return
        if state == NORMAL:
            if thread._pending_kill is None or priority:
                thread._pending_kill = error
        elif state == READY:
            if thread._wake_exc is None or priority:
                thread._wake_value = None
                thread._wake_exc = error
        elif state in (WAITING, SUSPENDED):
            self._schedule(thread, None, error)
        else:  # pragma: no cover - RUNNING means current; callers handle that
            raise RuntimeError(f"cannot interrupt {thread!r}")

    @staticmethod
    def _foreign_switch(thread: Thread[Any]) -> None:
        """``thread`` left by a raw greenlet switch, not through socketloop: fail it.

        Nothing could ever resume it correctly (the loop does not know what
        it waits for), so raise in it at once rather than leave it "running"
        for ever.
        """
        if thread._state == RUNNING and not thread.dead:
            thread.throw(
                RuntimeError(
                    f"{thread.name!r} switched away with a raw greenlet switch; loop "
                    "threads may only wait through socketloop (sockets, sleep, suspend, "
                    "transfer, primitives)"
                )
            )

    def _run_timers(self) -> None:
        now = time.monotonic()
        heap = self._timers
        before = heap.snapshot()
        while True:
            handle = heap.pop_due(now, before)
            if handle is None:
                return
            callback = handle._callback
            args = handle._args
            handle._callback = None
            handle._args = ()
            if callback is not None:
                self._call_user(callback, args)

    def _run_ready(self, me: greenlet) -> None:
        ready = self._ready
        for _ in range(len(ready)):
            if not ready:
                return
            thread = ready.popleft()
            if thread._state != READY:
                continue
            value = thread._wake_value
            exc = thread._wake_exc
            thread._wake_value = None
            thread._wake_exc = None
            thread._resumer = me
            thread._state = RUNNING
            self._budget = FAIRNESS_BUDGET
            if exc is not None:
                thread.throw(exc)
            else:
                thread.switch(value)
            if thread._state == RUNNING:
                self._foreign_switch(thread)

    def _run_callbacks(self) -> None:
        calls = self._callbacks
        for _ in range(len(calls)):
            if not calls:
                return
            fn, args = calls.popleft()
            self._call_user(fn, args)

    def _call_user(self, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        """The one place user callbacks run: errors are logged, never propagated."""
        self._in_callback = True
        try:
            fn(*args)
        except Exception:
            logger.exception("callback %r raised", fn)
        finally:
            self._in_callback = False

    # -------------------------------------------------------------- callbacks

    def call_soon(self, fn: Callable[..., object], /, *args: Any) -> None:
        """Call ``fn(*args)`` from the dispatcher at the next step (FIFO).

        Callbacks must not block: a socket call made from one raises
        ``RuntimeError``.  Errors are logged.  ``TypeError`` here if ``fn`` is
        not callable.
        """
        self._claim()
        if not callable(fn):  # inline: a call costs more than the check
            require_callable(fn, "the callback")
        self._callbacks.append((fn, args))

    def call_later(self, delay: float, fn: Callable[..., object], /, *args: Any) -> TimerHandle:
        """Call ``fn(*args)`` after ``delay`` seconds; return a cancellable handle.

        Zero or negative delays run at the next step; equal deadlines run in
        the order they were scheduled; huge delays are clamped.
        """
        if math.isnan(delay):
            raise ValueError("delay is NaN")
        return self.call_at(time.monotonic() + min(max(0.0, delay), MAX_DELAY), fn, *args)

    def call_at(self, when: float, fn: Callable[..., object], /, *args: Any) -> TimerHandle:
        """Call ``fn(*args)`` at ``when`` (a ``time.monotonic()`` value)."""
        self._claim()
        if not callable(fn):  # inline: a call costs more than the check
            require_callable(fn, "the callback")
        if math.isnan(when):
            raise ValueError("when is NaN")
        return self._timers.add(when, fn, args)
