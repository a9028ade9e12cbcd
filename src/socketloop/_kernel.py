"""The kernel: threads, the ready queue, the fd waiter tables and the dispatcher.

Charter
-------
``Kernel`` is the one place that switches into loop threads and writes their
states.  ``step()`` polls the I/O driver once and switches into every thread
whose wait is over; nothing else in the package decides when a thread runs.
The kernel knows sockets only as file descriptors plus an identity used to
tell a stale registration from a live one; socket logic (try the system call
first, timeouts, the close protocol) lives in ``_asocket``, readiness in the
driver (``_driver``), greenlet reuse in ``_idle``.

What must stay out of it: sockets, servers, name resolution, OS-thread
pools, TLS, timeout scopes, signals other than Ctrl-C, introspection
reports.  Those are layers above (``_loop`` is the façade that assembles
them) and reach the kernel only through the service surface below.  The
kernel imports nothing above ``_threads``, ``_timers``, ``_idle``,
``_wakeup``, ``_driver``, ``_forking`` and ``_signals``.  So that the class
holding the dispatcher stays small, each colder responsibility is a base
class of its own, in its own module; the MRO is one chain, and at run time
they are one object (the hot path finds every table and counter on it):

- ``_registry.FdRegistry``: registering fds with the driver, moving them
  between loops, the closing protocol, describing a wait;
- ``_lifecycle.Lifecycle``: ``close()``, releasing an unclosed kernel, the
  reset in a forked child, the close and fork hooks;
- ``_control.ThreadControl``: join, kill, the deadlock breaker;
- ``_scheduler.Scheduler``: thread states, the ready queue, the wait
  protocol, timers and callbacks;
- ``_idle.IdlePool``: greenlets of ended threads kept for reuse.

``Kernel`` → ``FdRegistry`` → ``Lifecycle`` → ``ThreadControl`` →
``Scheduler`` → ``IdlePool``.

Service surface (for the layers above; underscored only because ``Loop``
inherits it and users must not call it)
-------------------------------------------------------------------------
Blocking and waking, the one wait protocol:

- ``_block(thread, source, deadline=None, *, external=False)``: switch the
  running ``thread`` out until someone wakes it; ``source`` is what it waits
  on (its identity, and its description in ``dump()``: a string is used as
  is).  Returns the value given to ``_wake``, or ``TIMED_OUT`` when the
  deadline passed; raises the exception given to ``_wake``/``_interrupt``.
  ``external=True`` says the wake-up comes from another OS thread (it keeps
  ``start()`` running while nothing else is pending).  The caller re-checks
  its own condition and cleans up in ``finally``: every way out of a wait
  (wake, deadline, kill, timeout scope) passes through there.
- ``_wake(thread, value=None, exc=None, source=None)``: end the wait of a
  blocked thread at the next dispatch (only if it waits on ``source``, when
  given); False when it was not waiting.
- ``_wake_threadsafe(thread, source)``: the same from any OS thread;
  ``_wake_now(thread, source)`` from a loop callback (switches at once).
- ``_interrupt(thread, error, priority=)``: raise ``error`` where a thread is
  suspended (kill, timeout scopes, deadlock).
- ``_current_or_raise(what)``, ``_refuse_in_dispatcher(g, what)``: the
  checks a blocking call makes first.
- ``run_until(done, deadline, step, timed_out=, stuck=)``: the one way to
  wait from outside any loop thread (join, primitives, blocking socket
  calls): call ``step`` until ``done()``, ``TimeoutError`` at the deadline,
  the caller's ``stuck()`` error when no step can make progress;
  ``step_loops(timeout, first)`` is the ``step`` that runs the loop(s) of
  the calling OS thread.

File descriptors (the hot path of ``AsyncSocket``):

- ``_wait_fd(thread, sock, fd, writing, deadline)`` returns the driver's
  event mask; ``_wait_fds(...)`` for cooperative ``select``/``poll``.
- ``_closing(sock, fd, closing=True)``: "this fd is closing (or
  detached)": its waiters fail with ``OSError(EBADF)``, events already
  fetched for it are dropped.  From another OS thread,
  ``_release_threadsafe(fn)`` hands the close to the loop's OS thread;
  unlike ``call_soon_threadsafe`` it still runs if the loop closes (or a
  forked child resets it) first.  ``_wake_reader(sock, fd)`` after
  ``shutdown``; ``_has_waiter(fd)``.
- Counters read (and, for ``_budget``, decremented) inline by the socket
  layer, all on this one object: ``_turn`` (polls so far), ``_budget`` (then
  ``_yield_for_fairness()`` at zero), ``_HANGUP``, ``_closed``.

Hooks other layers register: ``_on_close(fn)`` (run by ``close()`` before
the driver is released), ``_on_fork(fn)`` (run in a forked child after the
kernel reset itself), ``_on_idle(fn)`` (``start()`` found nothing pending:
return True if you made progress possible).  Introspection:
``_describe_wait(thread)``, ``_has_pending()``, ``_has_runnable_besides(t)``,
``_polling``, ``_dispatching``, ``_owner``.  The driver seam for a host
event loop: ``_poller.fileno()``, ``step(0)`` and ``_next_timeout(None)``
(see ``_driver``).

How a thread waits and wakes
----------------------------
A thread that waits on an fd records itself in ``_readers[fd]`` or
``_writers[fd]`` (at most one per direction: a second waiter gets
``BusyResourceError``), is set WAITING and switches out to whoever resumed
it last (the Lua model: ``newthread``/``resume`` callers, or the
dispatcher).  The dispatcher pops the waiter when the driver reports the fd
and switches straight into it; there is no intermediate callback or queue on
this path.  Everything that ends a wait other than readiness (timeout,
close, kill) goes through the waiting thread's own ``finally`` block, so the
tables never keep a thread that is not waiting.  The kernel holds no
reference to idle sockets: a socket nobody waits on is garbage collected
exactly like a plain one.

Ordering within one ``step()``: poll, I/O wake-ups, cross-thread calls,
expired timers, then the threads and callbacks that were ready when the step
began (anything made ready while running waits for the next step, so a
``sleep(0)`` loop cannot starve I/O or timers).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from greenlet import getcurrent, greenlet

from . import _signals
from ._driver import Driver, make_driver
from ._errors import BusyResourceError, closed_error, require_callable
from ._lifecycle import Hook
from ._registry import CLOSED, FdRegistry
from ._scheduler import (
    FAIRNESS_BUDGET,
    TIMED_OUT,
    _live_loops,
    is_dispatching,
    loops_of_this_os_thread,
    open_loops,
    run_until,
    step_loops,
)
from ._threads import (
    RUNNING,
    WAITING,
    Thread,
)
from ._timers import TimerHandle
from ._wakeup import Wakeup

if TYPE_CHECKING:
    from ._asocket import AsyncSocket

__all__ = [
    "FAIRNESS_BUDGET",
    "MAX_POLL_TIMEOUT",
    "TIMED_OUT",
    "Kernel",
    "is_dispatching",
    "loops_of_this_os_thread",
    "open_loops",
    "run_until",
    "step_loops",
]

logger = logging.getLogger("socketloop")

P = ParamSpec("P")
R = TypeVar("R")

#: Longest single driver wait.  Timers further away than this simply cause a
#: harmless extra wake-up; the cap keeps timeouts far from integer overflow
#: in the kernel's millisecond arithmetic.
MAX_POLL_TIMEOUT = 24 * 3600.0


class Kernel(FdRegistry):
    """The scheduler and dispatcher behind ``Loop``; see the module charter.

    Bound to the OS thread that first runs or creates threads in it; using it
    from another OS thread raises ``RuntimeError`` except through
    ``call_soon_threadsafe`` and ``stop``.  ``poller`` names the driver:
    ``"epoll"`` (default on Linux) or ``"poll"``.
    """

    def __init__(self, *, poller: str | None = None) -> None:
        super().__init__()
        self._poller_name = poller
        self._poller: Driver = make_driver(poller, self)
        self._edge: bool = self._poller.edge_triggered
        self._READ: int = self._poller.READ
        self._WRITE: int = self._poller.WRITE
        #: Event bits saying the peer is gone or the socket failed: after such
        #: a wake-up a short read does not mean "drained" (see AsyncSocket.recv).
        self._HANGUP: int = self._poller.HANGUP
        self._readers: dict[int, Thread[Any]] = {}
        self._writers: dict[int, Thread[Any]] = {}
        self._threadsafe: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]] = (
            collections.deque()
        )
        #: Incremented once per poll; sockets use it to know whether readiness
        #: could have been reported (and dropped) since they last drained.
        self._turn = 0
        self._closed_fds: set[int] = set()
        self._polling = False
        self._running = False
        self._stopping = False
        self._ki_pending = False
        self._wakeup = Wakeup()
        self._poller.register_wakeup(self._wakeup.fd)
        self._close_hooks: list[Hook] = []
        self._fork_hooks: list[Hook] = []
        self._idle_hooks: list[Callable[[], bool]] = [self._break_deadlock]
        _live_loops.add(self)  # type: ignore[arg-type]  # a Loop (the façade) at run time

    @property
    def running(self) -> bool:
        """True while ``start()`` is dispatching."""
        return self._running

    def __repr__(self) -> str:
        kind = "symmetric " if self.symmetric else ""
        state = "closed" if self._closed else ("running" if self._running else "idle")
        return (
            f"<{kind}{type(self).__name__} {state} threads={len(self._threads)} "
            f"waiting_io={len(self._readers) + len(self._writers)} timers={len(self._timers)}>"
        )

    def _wake_threadsafe(self, thread: Thread[Any], source: object) -> None:
        """``_wake(thread, source=source)`` from any OS thread, as soon as the loop polls."""
        self.call_soon_threadsafe(self._wake_now, thread, source)

    def _wake_now(self, thread: Thread[Any], source: object) -> None:
        """From a loop callback: end ``thread``'s wait on ``source`` at once (it runs now)."""
        if thread._state == WAITING and thread._waiting_on is source:
            self._switch_from_dispatcher(thread, None)

    # --------------------------------------------------------------- I/O waits

    def _wait_fd(
        self,
        thread: Thread[Any],
        sock: AsyncSocket,
        fd: int,
        writing: bool,
        deadline: float | None,
    ) -> int:
        """Suspend ``thread`` until ``fd`` is ready in one direction.

        Returns the poller's event mask when readiness woke the thread (0
        for any other wake-up, which the caller treats as "retry").  Raises
        ``TimeoutError`` at ``deadline``, ``OSError(EBADF)`` when the socket
        is closed meanwhile, ``BusyResourceError`` when another thread
        already waits in that direction.
        """
        table = self._writers if writing else self._readers
        other = table.get(fd)
        if other is not None:
            self._resolve_conflict(table, fd, other, sock, writing)
        if sock._poller is not self._poller:
            self._register(sock, fd)
        table[fd] = thread
        thread._state = WAITING
        thread._waiting_on = sock
        if deadline is None and self._edge:
            # The common case, kept short: no timer, no interest to update,
            # and a readiness wake-up (an int) means the dispatcher has
            # already taken this thread out of the table.
            try:
                value = thread._resumer.switch(None)  # _switch_out, inlined
            except BaseException:
                if table.get(fd) is thread:
                    del table[fd]
                thread._waiting_on = None
                raise
            thread._waiting_on = None
            if type(value) is int:
                return value
            if table.get(fd) is thread:
                del table[fd]
        else:
            handle: TimerHandle | None = None
            try:
                if not self._edge:
                    self._poller.set_interest(fd, fd in self._readers, fd in self._writers)
                if deadline is not None:
                    handle = self._timers.add(deadline, self._wait_expired, (thread,))
                value = thread._resumer.switch(None)
            finally:
                if table.get(fd) is thread:
                    del table[fd]
                thread._waiting_on = None
                if handle is not None:
                    handle.cancel()
                if not self._edge and sock._poller is self._poller:
                    self._set_interest_quietly(fd)
            if type(value) is int:
                return value
        if value is TIMED_OUT:
            raise TimeoutError("timed out")
        if value is CLOSED:
            raise closed_error()
        return 0

    def _wait_fds(
        self,
        thread: Thread[Any],
        reads: list[int],
        writes: list[int],
        deadline: float | None,
        what: object,
    ) -> bool:
        """Suspend ``thread`` until any of several fds may be ready; False at the deadline.

        The wait behind cooperative ``select``/``poll``: the caller checks
        readiness itself before and after (readiness here is a hint, not a
        promise).  Raises ``BusyResourceError`` when another thread already
        waits on one of the fds in the same direction.
        """
        readers = self._readers
        writers = self._writers
        for table, fds, verb in ((readers, reads, "read"), (writers, writes, "write")):
            for fd in fds:
                other = table.get(fd)
                if other is not None and other is not thread:
                    raise BusyResourceError(
                        f"another thread ({other.name}) already waits to {verb} fd {fd}"
                    )
        for fd in {*reads, *writes}:
            self._poller.register(fd)
        handle: TimerHandle | None = None
        try:
            for fd in reads:
                readers[fd] = thread
            for fd in writes:
                writers[fd] = thread
            if not self._edge:
                for fd in {*reads, *writes}:
                    self._poller.set_interest(fd, fd in readers, fd in writers)
            thread._state = WAITING
            thread._waiting_on = what
            if deadline is not None:
                handle = self._timers.add(deadline, self._wait_expired, (thread,))
            value = self._switch_out(thread)
        finally:
            for fd in reads:
                if readers.get(fd) is thread:
                    del readers[fd]
            for fd in writes:
                if writers.get(fd) is thread:
                    del writers[fd]
            thread._waiting_on = None
            if handle is not None:
                handle.cancel()
            if not self._edge:
                for fd in {*reads, *writes}:
                    self._set_interest_quietly(fd)
        return value is not TIMED_OUT

    # ---------------------------------------------------------------- running

    def _has_pending(self) -> bool:
        return bool(
            self._ready
            or self._readers
            or self._writers
            or len(self._timers)
            or self._callbacks
            or self._threadsafe
            or self._external_waits
        )

    def step(self, timeout: float | None = None) -> bool:
        """Wait at most ``timeout`` seconds for I/O or timers and dispatch what is ready.

        Returns True after dispatching, or False at once when nothing is
        pending (no thread waits on I/O or a timer, nothing is scheduled).
        ``KeyboardInterrupt`` and ``SystemExit`` raised in a thread propagate;
        the loop stays usable.
        """
        self._claim()
        if self._host is not None:  # the check inline: step() is called in loops
            self._refuse_if_hosted("step()")
        g = getcurrent()
        if isinstance(g, Thread) and g._loop is self:
            raise RuntimeError("step()/start() cannot run inside a thread of the same loop")
        if self._dispatching:
            raise RuntimeError("step()/start() cannot run inside a loop callback")
        return self._step(timeout)

    def _next_timeout(self, timeout: float | None) -> float | None:
        """How long the next poll may wait, at most ``timeout`` (None: no limit).

        0 when something is ready to run; the delay to the next timer;
        ``timeout`` itself when nothing is due sooner (None then means "until
        I/O").  A host event loop driving the kernel arms its timer with
        this (see ``_driver``).  ``_step`` makes the same computation inline.
        """
        if self._ready or self._callbacks or self._threadsafe or self._stopping:
            return 0.0
        poll_timeout = timeout if timeout is None else max(0.0, timeout)
        if self._timers._heap:
            next_deadline = self._timers.next_deadline()
            if next_deadline is not None:
                until = max(0.0, next_deadline - time.monotonic())
                if poll_timeout is None or until < poll_timeout:
                    poll_timeout = until
        if poll_timeout is not None and poll_timeout > MAX_POLL_TIMEOUT:
            poll_timeout = MAX_POLL_TIMEOUT
        return poll_timeout

    def _step(self, timeout: float | None) -> bool:
        # Checked inline first: with threads waiting on I/O (the usual case)
        # the full _has_pending() is not needed.
        if not (self._readers or self._ready or self._has_pending()):
            return False
        # _next_timeout(), written out: this runs once per poll.
        if self._ready or self._callbacks or self._threadsafe or self._stopping:
            poll_timeout: float | None = 0.0
        else:
            poll_timeout = timeout if timeout is None else max(0.0, timeout)
            if self._timers._heap:
                next_deadline = self._timers.next_deadline()
                if next_deadline is not None:
                    until = max(0.0, next_deadline - time.monotonic())
                    if poll_timeout is None or until < poll_timeout:
                        poll_timeout = until
            if poll_timeout is not None and poll_timeout > MAX_POLL_TIMEOUT:
                poll_timeout = MAX_POLL_TIMEOUT
        me = getcurrent()
        self._dispatcher = me
        self._dispatching = True
        try:
            self._polling = True
            try:
                events = self._poller.poll(poll_timeout)
            finally:
                self._polling = False
            self._turn += 1
            if events:
                if not self._edge:
                    self._drain_wakeup_if_reported(events)
                self._dispatch_io(events, me)
            if self._wakeup.pending:
                self._run_threadsafe()
            if self._timers._heap:
                self._run_timers()
            if self._ready:
                self._run_ready(me)
            if self._callbacks:
                self._run_callbacks()
        finally:
            self._dispatching = False
            self._dispatcher = None
            if self._closed_fds:
                self._closed_fds.clear()
        return True

    def _dispatch_io(self, events: list[tuple[int, int]], me: greenlet) -> None:
        readers = self._readers
        writers = self._writers
        read_mask = self._READ
        write_mask = self._WRITE
        closed = self._closed_fds
        try:
            for fd, ev in events:
                if closed and fd in closed:
                    continue
                if ev & read_mask:
                    thread = readers.pop(fd, None)
                    if thread is not None and thread._state == WAITING:
                        thread._resumer = me
                        thread._state = RUNNING
                        self._budget = FAIRNESS_BUDGET
                        thread.switch(ev)
                        if thread._state == RUNNING:
                            self._foreign_switch(thread)
                        if closed and fd in closed:
                            continue
                if ev & write_mask and writers:  # (most servers have no writer waiting)
                    thread = writers.pop(fd, None)
                    if thread is not None and thread._state == WAITING:
                        thread._resumer = me
                        thread._state = RUNNING
                        self._budget = FAIRNESS_BUDGET
                        thread.switch(ev)
                        if thread._state == RUNNING:
                            self._foreign_switch(thread)
        except BaseException:
            # KeyboardInterrupt/SystemExit out of a thread: the rest of this
            # batch would be lost (edge-triggered readiness is reported once),
            # so make every waiter that is still registered retry next time.
            for fd, ev in events:
                if ev & read_mask:
                    self._requeue_waiter(readers, fd)
                if ev & write_mask:
                    self._requeue_waiter(writers, fd)
            raise

    def _requeue_waiter(self, table: dict[int, Thread[Any]], fd: int) -> None:
        thread = table.get(fd)
        if thread is not None and thread._state == WAITING:
            del table[fd]
            self._schedule(thread)

    def _drain_wakeup_if_reported(self, events: list[tuple[int, int]]) -> None:
        # Level-triggered backends report the wake-up fd until it is read.  A
        # write that landed after the flag came down leaves it readable with
        # the flag down, and poll() would spin.  Raising the flag makes this
        # step empty it through clear(), which is followed by a run of the
        # whole queue (the Wakeup rule), so no call queued meanwhile is missed.
        fd = self._wakeup.fd
        for event_fd, _ in events:
            if event_fd == fd:
                self._wakeup.pending = True
                return

    def _run_threadsafe(self) -> None:
        self._wakeup.clear()
        calls = self._threadsafe
        for _ in range(len(calls)):
            fn, args = calls.popleft()
            self._call_user(fn, args)

    def start(self, timeout: float | None = None) -> None:
        """Dispatch until ``stop()`` or until nothing is pending.

        With ``timeout``, return after at most that many seconds.  Ctrl-C
        raises ``KeyboardInterrupt`` out of ``start()`` (whether the loop is
        polling or a thread is running); the loop can be started again.
        """
        self._claim()
        self._refuse_if_hosted("start()")
        if self._running:
            raise RuntimeError("this loop is already running")
        g = getcurrent()
        if isinstance(g, Thread) and g._loop is self:
            raise RuntimeError("step()/start() cannot run inside a thread of the same loop")
        if self._dispatching:
            raise RuntimeError("step()/start() cannot run inside a loop callback")
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        self._running = True
        self._stopping = False
        previous_handler = _signals.install_sigint(self._on_sigint)
        # Ctrl-C (and on_signal handlers) landing just before the poll's
        # system call must end that poll, not wait for the next event.
        self._wakeup.hold_signal_fd()
        try:
            while not self._stopping:
                if deadline is None:
                    if not self._step(None) and not self._run_idle_hooks():
                        break
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    if not self._step(remaining) and not self._run_idle_hooks():
                        break
                if self._ki_pending:
                    self._ki_pending = False
                    raise KeyboardInterrupt
        finally:
            self._running = False
            self._stopping = False
            _signals.restore_sigint(previous_handler)
            self._wakeup.release_signal_fd()
            if self._ki_pending:
                self._ki_pending = False

    def _run_idle_hooks(self) -> bool:
        """Nothing is pending: ask the idle hooks; True if one made progress possible."""
        return any(hook() for hook in self._idle_hooks)

    def stop(self) -> None:
        """Make a running ``start()`` return promptly.

        Safe to call from a loop thread, a callback, a signal handler or
        another OS thread.  A no-op when the loop is not running.
        """
        if not self._running:
            return
        self._stopping = True
        if self._polling or threading.get_ident() != self._owner:
            self._wakeup.set(threading.get_ident() == self._owner)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        """SIGINT handler while ``start()`` runs: Ctrl-C at a point where it is safe."""
        if self._polling or self._in_callback or not self._dispatching:
            raise KeyboardInterrupt
        if isinstance(getcurrent(), Thread):
            raise KeyboardInterrupt
        # In the middle of the dispatcher's own bookkeeping: raise at the end of the step.
        self._ki_pending = True

    def call_soon_threadsafe(self, fn: Callable[..., object], /, *args: Any) -> None:
        """Schedule ``fn(*args)`` from any OS thread (or a signal handler).

        Calls run in FIFO order in the loop's OS thread; none is lost however
        many arrive.  After ``close()`` this is a no-op.  ``TypeError`` at
        the call if ``fn`` is not callable.
        """
        if not callable(fn):  # inline: a call costs more than the check
            require_callable(fn, "the callback")
        if self._closed:
            return
        self._threadsafe.append((fn, args))
        self._wakeup.set(threading.get_ident() == self._owner)

    # ------------------------------------------------------------- hooks

    def _on_idle(self, hook: Callable[[], bool]) -> None:
        """Call ``hook()`` when ``start()`` finds nothing pending; True keeps it running."""
        self._idle_hooks.insert(len(self._idle_hooks) - 1, hook)  # before the deadlock breaker

    # ------------------------------------------------- host driver entry points
    #
    # What the host driver (``_hostdriver``: the kernel run by an asyncio or
    # uvloop event loop, see ``_driver``) uses beyond ``_poller.fileno()``,
    # ``_next_timeout`` and the wait protocol (``_block``/``_wake``).  Nothing
    # else in the kernel knows about hosting except the hosted variants of
    # ``_claim``/``_schedule`` (``_claim_hosted``/``_schedule_hosted``, put
    # in place by ``_host_attach``), ``host_guard`` and ``_refuse_if_hosted``.

    def _refuse_if_hosted(self, what: str) -> None:
        if self._host is not None:
            raise RuntimeError(
                f"{what} on a loop hosted by an asyncio loop: the host drives it "
                "(leave `async with socketloop.aio.hosted()` first)"
            )

    def _host_attach(self, driver: Any, kick: Callable[[], None]) -> None:
        """Hand the loop to ``driver``; ``kick()`` asks it for a step soon.

        Raises ``RuntimeError`` when already hosted or running, or when
        called from a loop thread or callback.
        """
        self._claim()
        if self._host is not None:
            raise RuntimeError(f"{self!r} is already hosted by an asyncio loop")
        if self._running or self._dispatching or isinstance(getcurrent(), Thread):
            raise RuntimeError("a running loop cannot be hosted; start() drives it already")
        self._host = driver
        self._host_kick = kick
        # The kicking variants shadow the class's methods (see _scheduler).
        attributes = vars(self)
        attributes["_claim"] = self._claim_hosted
        attributes["_schedule"] = self._schedule_hosted

    def _host_detach(self) -> None:
        attributes = vars(self)
        attributes.pop("_claim", None)
        attributes.pop("_schedule", None)
        self._host = None
        self._host_kick = None

    def _host_observe_interest(self, observer: Callable[[int, int], object] | None) -> None:
        """Without an fd to hand the host (the poll driver): report every
        change of per-fd interest as ``observer(fd, poll_mask)``."""
        self._poller.observe(observer)  # type: ignore[attr-defined]

    def _host_set_max_events(self, count: int) -> None:
        """Cap the readiness events one step takes (-1: the driver's default)."""
        if hasattr(self._poller, "max_events"):
            self._poller.max_events = count

    def _host_step(self) -> bool:
        """One non-blocking step, run by the host; True if work is left ready.

        Unlike ``step(0)`` it always polls: the host watches the epoll fd
        level-triggered, so readiness nobody waits for must be taken out of
        the epoll set, or the host would report the fd again at once.
        """
        if not (self._readers or self._ready or self._has_pending()):
            self._poller.poll(0.0)
            self._turn += 1  # readiness may have been dropped: sockets must retry
            return False
        self._step(0.0)
        return bool(self._ready or self._callbacks or self._threadsafe)
