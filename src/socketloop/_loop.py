"""The scheduler: the one place that switches into loop threads.

Charter
-------
A ``Loop`` owns a poller, a timer heap, a ready queue and the table of threads
waiting on file descriptors.  ``step()`` polls once and switches into every
thread whose wait is over; nothing else in the package decides when a thread
runs.  The loop knows sockets only as file descriptors plus an identity used
to tell a stale registration from a live one; the socket logic (try the
system call first, timeouts, close protocol) lives in ``_asocket``.

How a thread waits and wakes
----------------------------
A thread that must wait records itself in ``_readers[fd]`` or ``_writers[fd]``
(at most one per direction: a second waiter gets ``BusyResourceError``),
sets its state to WAITING and switches to whoever resumed it last (the Lua
model: ``newthread``/``resume`` callers, or the dispatcher).  The dispatcher
pops the waiter when the poller reports the fd and switches straight into it;
there is no intermediate callback or queue on this path.  Everything that
ends a wait other than readiness (timeout, close, kill) goes through the
waiting thread's own ``finally`` block, so the tables never keep a thread that
is not waiting.

The loop holds no reference to idle sockets: a socket that nobody waits on can
be garbage collected exactly like a plain one.

Ordering within one ``step()``: poll, I/O wake-ups, cross-thread calls,
expired timers, then the threads and callbacks that were ready when the step
began (anything made ready while running waits for the next step, so a
``sleep(0)`` loop cannot starve I/O or timers).
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import math
import os
import signal
import socket as _socket
import ssl
import sys
import threading
import time
import types
import warnings
import weakref
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

from greenlet import GreenletExit, getcurrent, gettrace, greenlet

from . import _originals
from ._errors import BusyResourceError, DeadlockError, ThreadExit, closed_error, require_callable
from ._pool import DEFAULT_WORKERS, RESOLVER_WORKERS, ThreadPool, system_getaddrinfo
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
    from ._asocket import AsyncSocket
    from ._server import Server
    from ._timeouts import Timeout
    from ._tls import AsyncTLSSocket

#: A resolver: ``getaddrinfo``'s signature.  It is called in the calling loop
#: thread and may suspend it (e.g. a DNS client built on socketloop sockets).
Resolver = Callable[[Any, Any, int, int, int, int], list[tuple[Any, ...]]]

__all__ = ["Loop", "get_loop"]

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

#: Longest single poller wait.  Timers further away than this simply cause a
#: harmless extra wake-up; the cap keeps timeouts far from integer overflow
#: in the kernel's millisecond arithmetic.
MAX_POLL_TIMEOUT = 24 * 3600.0

#: Ended threads whose greenlets a loop keeps for reuse.  Creating a greenlet
#: and running Python code in it costs a fresh interpreter stack chunk (an
#: mmap, a page fault and a munmap when it ends); switching into a parked one
#: costs about as much as one switch.  Parked greenlets cost ~6 KiB each.
IDLE_THREADS_KEPT = 64

# Reusing an ended thread's greenlet is safe only when nothing outside the
# loop can still reach the ended thread: see Loop._take_parked.  The check
# counts references, which is exact on CPython with the GIL.
_CAN_REUSE: bool = (
    sys.implementation.name == "cpython" and getattr(sys, "_is_gil_enabled", lambda: True)()
)

# Wake-up values handed to a waiting thread (anything but None is a failure).
_TIMEOUT = object()
_CLOSED = object()


_parked_refs: int | None = None
_greenlet_dead: Any = greenlet.dead.__get__
#: Handlers whose name can be read without running user code.
_PLAIN_CALLABLES = (
    types.FunctionType,
    types.MethodType,
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
)


def _nothing() -> None:
    pass


def _pop_counting_refs(parked: list[Thread[Any]]) -> tuple[Thread[Any], int]:
    # The count is taken here, in the same frame shape every time: the
    # caller compares it with the one measured on a probe the same way.
    thread = parked.pop()
    return thread, sys.getrefcount(thread)


def is_dispatching(g: greenlet) -> bool:
    """Whether ``g`` is the dispatcher of a loop that is dispatching right now.

    A blocking call made there (from a loop callback) is refused instead of
    freezing every thread.  Only slow paths ask, so this scans the loops.
    """
    return any(loop._dispatching and loop._dispatcher is g for loop in loops_of_this_os_thread())


def _is_numeric_host(host: str) -> bool:
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, host.partition("%")[0])
        except (OSError, ValueError):
            continue
        return True
    return False


def _make_poller(name: str | None, owner: Loop) -> Any:
    if name is None:
        name = "epoll" if hasattr(__import__("select"), "epoll") else "poll"
    if name == "epoll":
        from ._poll_epoll import EpollPoller

        return EpollPoller(owner)
    if name == "poll":
        from ._poll_poll import PollPoller

        return PollPoller(owner)
    raise ValueError(f"unknown poller {name!r} (expected 'epoll' or 'poll')")


class _Wakeup:
    """A flag other OS threads and signal handlers raise to interrupt ``poll``.

    The fd is written only when the flag goes from clear to set, so a burst of
    cross-thread calls costs one write, and a full pipe never loses a wake-up:
    if the write would block, the reader already has something to read.
    """

    __slots__ = ("_eventfd", "_lock", "_rsock", "_wsock", "closed", "fd", "pending")

    def __init__(self) -> None:
        self.pending = False
        self.closed = False
        self._lock = _originals.allocate_lock()
        self._rsock: _socket.socket | None = None
        self._wsock: _socket.socket | None = None
        if hasattr(os, "eventfd"):
            self._eventfd = True
            self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - non-Linux
            self._eventfd = False
            self._rsock, self._wsock = _originals.socketpair()
            self._rsock.setblocking(False)
            self._wsock.setblocking(False)
            self.fd = self._rsock.fileno()

    def set(self, same_os_thread: bool) -> None:
        if self.pending:
            return
        self.pending = True
        if same_os_thread:
            # Signal handlers run between bytecodes of this OS thread, so they
            # cannot interleave with close(); no lock (and no deadlock) needed.
            self._write()
        else:
            with self._lock:
                self._write()

    def _write(self) -> None:
        if self.closed:
            return
        try:
            if self._eventfd:
                os.eventfd_write(self.fd, 1)
            else:  # pragma: no cover - non-Linux
                assert self._wsock is not None
                self._wsock.send(b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # already readable: the flag semantics make this a success

    def clear(self) -> None:
        self.pending = False
        try:
            if self._eventfd:
                os.eventfd_read(self.fd)
            else:  # pragma: no cover - non-Linux
                assert self._rsock is not None
                while self._rsock.recv(4096):
                    pass
        except (BlockingIOError, InterruptedError):
            pass

    def abandon(self) -> None:
        """After fork: drop the fd (shared with the parent) without writing to it."""
        self.closed = True
        self.pending = False
        try:
            if self._eventfd:
                os.close(self.fd)
            else:  # pragma: no cover - non-Linux
                assert self._rsock is not None
                assert self._wsock is not None
                self._rsock.close()
                self._wsock.close()
        except OSError:
            pass

    def close(self) -> None:
        with self._lock:
            self.closed = True
            if self._eventfd:
                os.close(self.fd)
            else:  # pragma: no cover - non-Linux
                assert self._rsock is not None
                assert self._wsock is not None
                self._rsock.close()
                self._wsock.close()


class Loop:
    """An event loop whose threads are asymmetric coroutines (resume/suspend).

    Each OS thread has a default loop (``socketloop.get_loop()``) that the
    module-level functions use; create more with ``Loop()``.  A loop is bound
    to the OS thread that first runs or creates threads in it; using it from
    another OS thread raises ``RuntimeError`` except through
    ``call_soon_threadsafe`` and ``stop``.

    ``poller`` selects the readiness backend: ``"epoll"`` (default on Linux)
    or ``"poll"`` (portable, level-triggered).
    """

    #: True for the symmetric-coroutine loop (``socketloop.coro``).
    symmetric = False

    def __init__(self, *, poller: str | None = None) -> None:
        self._poller_name = poller
        self._poller = _make_poller(poller, self)
        self._edge: bool = self._poller.edge_triggered
        self._READ: int = self._poller.READ
        self._WRITE: int = self._poller.WRITE
        #: Event bits saying the peer is gone or the socket failed: after such
        #: a wake-up a short read does not mean "drained" (see AsyncSocket.recv).
        self._HANGUP: int = self._poller.HANGUP
        self._readers: dict[int, Thread[Any]] = {}
        self._writers: dict[int, Thread[Any]] = {}
        self._ready: collections.deque[Thread[Any]] = collections.deque()
        self._callbacks: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._threadsafe: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._timers = TimerHeap()
        self._threads: set[Thread[Any]] = set()
        #: Ended threads parked for reuse (see _keep_parked).
        self._parked: list[Thread[Any]] = []
        self._weakself = weakref.ref(self)
        self._measuring = False
        #: Waits on things outside the loop (OS-thread pools) that will come
        #: back through call_soon_threadsafe: they keep start() running.
        self._external_waits = 0
        #: Incremented once per poll; sockets use it to know whether readiness
        #: could have been reported (and dropped) since they last drained.
        self._turn = 0
        self._budget = FAIRNESS_BUDGET
        self._closed_fds: set[int] = set()
        self._dispatching = False
        self._dispatcher: greenlet | None = None
        self._polling = False
        self._in_callback = False
        self._running = False
        self._stopping = False
        self._ki_pending = False
        self._closed = False
        self._owner: int | None = None
        self._root: greenlet | None = None
        self._wakeup = _Wakeup()
        self._poller.register_wakeup(self._wakeup.fd)
        self._pool = ThreadPool(self, DEFAULT_WORKERS, "socketloop-worker")
        self._resolver_pool = ThreadPool(self, RESOLVER_WORKERS, "socketloop-resolver")
        self._resolver: Resolver | None = None
        self._signal_handlers: dict[int, Any] = {}
        self._watchdog: Any = None
        _live_loops.add(self)

    # ----------------------------------------------------------- housekeeping

    #: Default loops are made implicitly by get_loop(); not closing them is
    #: not the user's mistake, so they are released without a warning.
    _implicit = False

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        if not self._implicit:
            warnings.warn(f"unclosed loop {self!r}", ResourceWarning, source=self, stacklevel=1)
        self._closed = True
        try:
            self._wakeup.close()
            self._poller.close()
            self._pool.shutdown()
            self._resolver_pool.shutdown()
        except Exception:
            pass

    def _check(self) -> greenlet:
        """Refuse use of a closed loop or from a foreign OS thread; return the root greenlet."""
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

    @property
    def closed(self) -> bool:
        """True once ``close()`` has run."""
        return self._closed

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

    # -------------------------------------------------------------- threads

    def newthread(self, handler: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Thread[R]:
        """Create a thread running ``handler(*args, **kwargs)`` and run it at once.

        The new thread runs until it first suspends (an async socket call
        that would block, ``suspend()``, ``sleep()``) or ends; then
        ``newthread`` returns it.  An exception in the handler does not
        propagate here: it is logged and kept for ``join()``.  A ``handler``
        that is not callable raises ``TypeError`` here.
        """
        require_callable(handler, "the thread's handler")
        root = self._check()
        thread: Thread[R] = (
            self._take_parked(handler, args, kwargs, root)
            if self._parked
            else Thread(self, handler, args, kwargs, root)
        )
        self._threads.add(thread)
        self._resume_into(thread, None)
        return thread

    def spawn(self, handler: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Thread[R]:
        """Create a thread that starts at the next dispatch; return it at once.

        A ``handler`` that is not callable raises ``TypeError`` here.
        """
        require_callable(handler, "the thread's handler")
        root = self._check()
        thread: Thread[R] = (
            self._take_parked(handler, args, kwargs, root)
            if self._parked
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
        return self._park(thread)

    def resume(self, thread: Thread[Any], arg: Any = None) -> Any:
        """Resume a thread suspended by ``suspend()``; ``suspend()`` returns ``arg``.

        The thread runs until it suspends again (or waits, or ends); then
        ``resume`` returns.  Raises ``RuntimeError`` for a thread that is dead,
        running, resuming another thread, waiting in an async call (the loop
        resumes it when that completes) or already scheduled.
        """
        self._check()
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
            self._park(g)
            return
        handle = self._timers.add(
            time.monotonic() + min(seconds, MAX_DELAY), self._timer_wake, (g,)
        )
        g._state = WAITING
        g._waiting_on = handle
        try:
            self._park(g)
        finally:
            handle.cancel()
            g._waiting_on = None

    def _current_or_raise(self, what: str) -> Thread[Any]:
        g = getcurrent()
        if isinstance(g, Thread) and g._loop is self:
            return g
        raise RuntimeError(f"{what} must be called from a thread of this loop")

    def _refuse_in_dispatcher(self, g: greenlet, what: str) -> None:
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

    # The primitives the two thread models differ in (see _coro for the
    # symmetric ones).  A thread hands control back to its ``_resumer``:
    # whoever resumed it last in the asymmetric model.

    def _park(self, thread: Thread[Any]) -> Any:
        """Switch away from ``thread`` (whose state the caller has set)."""
        return thread._resumer.switch(None)

    def _park_target(self, thread: Thread[Any]) -> greenlet:
        """Where control goes when ``thread`` ends."""
        return thread._resumer

    def _resume_into(self, thread: Thread[Any], arg: Any) -> Any:
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
        """Timer callback: end a wait (sleep or timeout) if it is still in progress."""
        if thread._state == WAITING:
            self._switch_from_dispatcher(thread, value)

    def _wait_expired(self, thread: Thread[Any]) -> None:
        if thread._state == WAITING:
            self._switch_from_dispatcher(thread, _TIMEOUT)

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
                if joiner._state == WAITING and joiner._waiting_on is thread:
                    self._schedule(joiner)
        if getcurrent() is thread:
            # Ending hands control to the park target (the last resumer, or
            # the symmetric loop thread), which greenlet reaches via parent.
            target = self._park_target(thread)
            if not target.dead:
                thread.parent = target

    # ------------------------------------------------- reuse of ended threads

    def _keep_parked(self, thread: Thread[Any]) -> bool:
        """Called by an ended ``thread`` as its last act: keep its greenlet for reuse?

        True when the thread's greenlet is to wait, parked, for
        ``_take_parked`` to give it a new thread to run; False lets it end.
        """
        parked = self._parked
        if (
            not _CAN_REUSE
            or self._closed
            or len(parked) >= IDLE_THREADS_KEPT
            or getcurrent() is not thread
            # Control goes to the OS thread's root greenlet (the usual
            # dispatcher), which lives as long as the OS thread does.
            or (thread.parent is not self._root and not self._measuring)
            or not self._strippable(thread)
        ):
            return False
        thread.gr_context = None  # drop the context variables the handler set
        self._strip_parked(thread)
        parked.append(thread)
        return True

    @staticmethod
    def _strippable(thread: Thread[Any]) -> bool:
        """Can ``thread`` be parked without keeping alive anything a handle could reach?

        A parked greenlet cannot be garbage-collected (greenlet cannot see
        what its suspended frames refer to), so it must refer to nothing
        that could lead back to its loop: no result, no exception, no
        attributes, and a name that needs no handler object.
        """
        if thread._result is not None or thread._exc is not None or thread.__dict__:
            return False
        name = thread._name
        if type(name) is not tuple or isinstance(name[0], str):
            return True  # already a string, or a server's (label, address)
        return type(name[1]) in _PLAIN_CALLABLES

    def _strip_parked(self, thread: Thread[Any]) -> None:
        """Drop what a parked thread refers to that a handle cannot observe."""
        name = thread._name
        if type(name) is tuple and not isinstance(name[0], str):
            thread._name = f"Thread-{name[0]} ({name[1].__qualname__})"  # not the handler
        thread._kill_exc = None
        thread._pending_kill = None
        thread._waiting_on = None
        thread._wake_value = None
        thread._wake_exc = None
        thread._resumer = self._root if self._root is not None else thread._resumer
        # The loop stays reachable through a weak reference only (see Thread.loop).
        thread._home = self._weakself
        thread._loop = None  # type: ignore[assignment]

    def _take_parked(
        self,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        root: greenlet,
    ) -> Thread[R]:
        """A parked greenlet set up as a new thread, or a brand-new thread.

        An ended thread is reused only when nothing but its own parked frame
        refers to it: then no handle to it exists anywhere, and the reuse
        cannot be told from a new thread.  One that is still referenced (a
        handle kept for ``join()``, a weak reference, a greenlet parent) is
        ended for real instead.
        """
        global _parked_refs
        if _parked_refs is None:
            if sys.gettrace() or sys.getprofile() or gettrace():
                # A tracer may hold references (frame locals, switch
                # arguments): measure later.
                return Thread(self, fn, args, kwargs, root)
            _parked_refs = self._measure_parked_refs(root)
        parked = self._parked
        while parked:
            thread, refs = _pop_counting_refs(parked)
            if (
                refs == _parked_refs
                and not weakref.getweakrefcount(thread)
                and not _greenlet_dead(thread)
            ):
                thread._loop = self
                thread.parent = root  # as for a new thread: no parent cycle can form
                thread._reset(fn, args, kwargs, root)
                return thread
            self._retire(thread)
        return Thread(self, fn, args, kwargs, root)

    def _measure_parked_refs(self, root: greenlet) -> int:
        """The reference count of a parked greenlet that nothing else refers to.

        Measured once on a probe that runs the same code as every thread,
        since it depends on the interpreter and greenlet versions.  The probe
        is started from a helper greenlet (where it parks, whoever calls)
        and parks in a list of its own.
        """
        saved = self._parked
        self._parked = []
        self._measuring = True
        try:

            def start_probe() -> None:
                self._resume_into(Thread(self, _nothing, (), {}, root), None)

            greenlet(start_probe).switch()
            if len(self._parked) != 1:
                return -1  # not parked (reuse is impossible here): never reuse
            thread, refs = _pop_counting_refs(self._parked)
            self._retire(thread)
            return refs
        finally:
            self._parked = saved
            self._measuring = False

    def _repark(self, thread: Thread[Any]) -> None:
        """A reused greenlet whose new thread was killed before it started: park it again."""
        if self._closed or len(self._parked) >= IDLE_THREADS_KEPT or not self._strippable(thread):
            self._retire(thread)
        else:
            self._strip_parked(thread)
            self._parked.append(thread)

    def _retire(self, thread: Thread[Any]) -> None:
        """End a parked greenlet for good (its thread has long ended)."""
        if _greenlet_dead(thread):
            return
        try:
            thread.parent = getcurrent()
        except ValueError:  # pragma: no cover - a cycle: let garbage collection end it
            return
        thread.throw(GreenletExit)

    def _retire_parked(self) -> None:
        parked = self._parked
        while parked:
            self._retire(parked.pop())

    def _yield_for_fairness(self) -> None:
        """A thread used up its budget of non-blocking operations: let others run."""
        self._budget = FAIRNESS_BUDGET
        g = getcurrent()
        if isinstance(g, Thread) and g._loop is self and g._state == RUNNING:
            self._schedule(g)
            self._park(g)

    # ------------------------------------------------------------ join, kill

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
            g._state = WAITING
            g._waiting_on = thread
            handle = (
                None if deadline is None else self._timers.add(deadline, self._wait_expired, (g,))
            )
            try:
                value = self._park(g)
            finally:
                g._waiting_on = None
                if handle is not None:
                    handle.cancel()
                if thread._joiners is not None and g in thread._joiners:
                    thread._joiners.remove(g)
            if value is _TIMEOUT:
                raise TimeoutError(f"timed out joining {thread!r}")
            return
        self._refuse_in_dispatcher(g, "join()")
        while thread._state != DEAD:
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"timed out joining {thread!r}")
            if not self.step(remaining):
                raise RuntimeError(
                    f"{thread!r} can never finish: nothing in the loop is waiting on I/O "
                    "or timers that could wake it"
                )

    def _kill(
        self,
        thread: Thread[Any],
        exc: type[BaseException] | BaseException,
        *,
        block: bool,
        timeout: float | None,
    ) -> None:
        self._check()
        if not isinstance(exc, BaseException) and not (
            isinstance(exc, type) and issubclass(exc, BaseException)
        ):
            # Checked before anything changes: throwing a non-exception into
            # the thread would fail in the dispatcher and leave it stranded.
            raise TypeError(f"kill() expects an exception class or instance, not {exc!r}")
        if thread._state == DEAD:
            return
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
            if thread.gr_frame is not None:  # a reused greenlet, parked in _thread_main
                self._repark(thread)
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
                value = thread._resumer.switch(None)  # _park, inlined
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
        if value is _TIMEOUT:
            raise TimeoutError("timed out")
        if value is _CLOSED:
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
            value = self._park(thread)
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
        return value is not _TIMEOUT

    def _set_interest_quietly(self, fd: int) -> None:
        try:
            self._poller.set_interest(fd, fd in self._readers, fd in self._writers)
        except OSError:
            pass  # fd already closed: the registration is gone anyway

    def _resolve_conflict(
        self,
        table: dict[int, Thread[Any]],
        fd: int,
        other: Thread[Any],
        sock: AsyncSocket,
        writing: bool,
    ) -> None:
        if other._state != WAITING:
            # Interrupted (killed, timed out) but not yet unwound: it is
            # leaving this slot, and its own clean-up will find it taken.
            del table[fd]
            return
        other_sock: Any = other._waiting_on
        if other_sock is sock or getattr(other_sock, "socket", None) is sock.socket:
            direction = "writing to" if writing else "reading from"
            raise BusyResourceError(
                f"another thread ({other.name}) is already {direction} {sock!r}"
            )
        # The fd number belongs to a new socket now: the old one was closed
        # behind the loop's back.  Its waiter can never be woken by readiness
        # again, so fail it the way a close() would have.
        del table[fd]
        if other._state == WAITING:
            self._schedule(other, _CLOSED)
        if other_sock is not None and getattr(other_sock, "_poller", None) is self._poller:
            other_sock._poller = None

    def _register(self, sock: AsyncSocket, fd: int) -> None:
        previous = sock._poller
        if previous is not None:
            # Registered with another loop's poller: move it here (refused while
            # a thread of that loop waits on it).  A poller of this loop from
            # before a fork needs nothing: it is gone.
            other: Loop = previous.owner
            if other is not self and not other._closed:
                other._unregister_socket(sock, fd)
        self._poller.register(fd)
        sock._poller = self._poller

    def _unregister_socket(self, sock: AsyncSocket, fd: int) -> None:
        if self._readers.get(fd) is not None or self._writers.get(fd) is not None:
            waiter = self._readers.get(fd) or self._writers.get(fd)
            if waiter is not None and waiter._waiting_on is sock:
                raise BusyResourceError(
                    f"{sock!r} is in use by a thread of another loop ({waiter.name})"
                )
        try:
            self._poller.unregister(fd)
        except OSError:
            pass
        sock._poller = None

    def _forget_socket(self, sock: AsyncSocket, fd: int, closing: bool = True) -> None:
        """``sock`` is being closed (or detached): fail its waiters, drop its registration.

        Waiters get ``OSError(EBADF)`` at the next dispatch; events for ``fd``
        already fetched in the current dispatch are discarded, so a new
        socket that reuses the number never sees them.  When the fd is about
        to be closed, epoll needs no ``EPOLL_CTL_DEL``: closing the last
        descriptor of the file removes the registration in the kernel (one
        system call less per connection).  If a ``dup`` keeps the file open,
        the registration lives on until that closes too; its events can then
        reach a new socket with the same fd number only as a spurious wake-up,
        which every wait tolerates (the thread retries its call).
        """
        readers = self._readers
        waiter = readers.get(fd)
        if waiter is not None and waiter._waiting_on is sock:
            del readers[fd]
            if waiter._state == WAITING:
                self._schedule(waiter, _CLOSED)
        writers = self._writers
        waiter = writers.get(fd)
        if waiter is not None and waiter._waiting_on is sock:
            del writers[fd]
            if waiter._state == WAITING:
                self._schedule(waiter, _CLOSED)
        if sock._poller is self._poller:
            sock._poller = None
            if not (closing and self._edge):
                try:
                    self._poller.unregister(fd)
                except OSError:
                    pass
        if self._dispatching:
            self._closed_fds.add(fd)

    def _wake_reader(self, sock: AsyncSocket, fd: int) -> None:
        """Make the thread reading ``sock`` retry its call (after shutdown(SHUT_RD))."""
        waiter = self._readers.get(fd)
        if waiter is not None and waiter._waiting_on is sock and waiter._state == WAITING:
            del self._readers[fd]
            self._schedule(waiter)

    def _describe_wait(self, thread: Thread[Any]) -> str:
        target = thread._waiting_on
        if isinstance(target, TimerHandle):
            return f"sleep (due in {target.deadline - time.monotonic():.3f}s)"
        if isinstance(target, Thread):
            return f"join of {target.name!r}"
        if isinstance(target, concurrent.futures.Future):
            return "a call in an OS thread"
        fileno = getattr(target, "fileno", None)
        if callable(fileno):
            for fd, waiter in self._readers.items():
                if waiter is thread:
                    return f"fd {fd} (read)"
            for fd, waiter in self._writers.items():
                if waiter is thread:
                    return f"fd {fd} (write)"
        return repr(target)

    # ------------------------------------------------------ sockets, servers

    def wrap(self, sock: _socket.socket) -> AsyncSocket:
        """Wrap a ``socket.socket`` into an async socket with the same API.

        The original stays reachable as ``asock.socket`` (now non-blocking
        underneath; use the wrapper).  Any family and type works: TCP, UDP,
        Unix, IPv6.  The socket's timeout (``gettimeout()``) carries over.
        A socket that is already an ``AsyncSocket`` (under ``patch()``,
        ``socket.socket()`` makes those) is returned as it is.
        """
        from ._asocket import AsyncSocket

        if self._closed:
            raise RuntimeError("this loop is closed")
        if isinstance(sock, AsyncSocket):
            return sock
        return AsyncSocket(sock, self)

    @overload
    def connect(
        self,
        address: str,
        port: int | str,
        local_address: str | None = ...,
        local_port: int | None = ...,
        *,
        timeout: float | None = ...,
        tls: Literal[False] | None = ...,
        server_hostname: str | None = ...,
        happy_eyeballs_delay: float | None = ...,
    ) -> AsyncSocket: ...

    @overload
    def connect(
        self,
        address: str,
        port: int | str,
        local_address: str | None = ...,
        local_port: int | None = ...,
        *,
        timeout: float | None = ...,
        tls: Literal[True] | ssl.SSLContext,
        server_hostname: str | None = ...,
        happy_eyeballs_delay: float | None = ...,
    ) -> AsyncTLSSocket: ...

    def connect(
        self,
        address: str,
        port: int | str,
        local_address: str | None = None,
        local_port: int | None = None,
        *,
        timeout: float | None = None,
        tls: bool | ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        happy_eyeballs_delay: float | None = 0.25,
    ) -> AsyncSocket:
        """Open a TCP connection to ``address``:``port`` and return it wrapped.

        ``address`` may be an IPv4 or IPv6 literal or a host name, resolved
        without blocking the loop.  When it resolves to several addresses
        (IPv6 and IPv4), the attempts race in the manner of RFC 8305: one
        starts every ``happy_eyeballs_delay`` seconds (or at once when the
        previous failed), the first to connect wins, the others are closed;
        ``None`` tries them one after another.  ``local_address`` /
        ``local_port`` bind the local end first.  ``timeout`` bounds the whole
        call (resolution and TLS handshake included); the returned socket has
        the default timeout (``socket.getdefaulttimeout()``).

        ``tls=True`` starts TLS with ``socketloop.ssl.create_default_context()``
        (certificate and host name verified); ``tls=context`` uses that
        ``ssl.SSLContext``; ``server_hostname`` defaults to ``address``.  The
        result is then an ``AsyncTLSSocket``.

        From a loop thread this suspends only that thread; elsewhere it
        blocks.  Raises ``ConnectionRefusedError`` & co. (naming the
        address), ``TimeoutError``, ``socket.gaierror``, ``ssl.SSLError``.
        """
        from ._connect import open_connection

        return open_connection(
            self,
            address,
            port,
            local_address,
            local_port,
            timeout=timeout,
            tls=tls,
            server_hostname=server_hostname,
            happy_eyeballs_delay=happy_eyeballs_delay,
        )

    @overload
    def connect_unix(
        self,
        path: str | bytes,
        *,
        timeout: float | None = ...,
        tls: Literal[False] | None = ...,
        server_hostname: str | None = ...,
    ) -> AsyncSocket: ...

    @overload
    def connect_unix(
        self,
        path: str | bytes,
        *,
        timeout: float | None = ...,
        tls: Literal[True] | ssl.SSLContext,
        server_hostname: str | None = ...,
    ) -> AsyncTLSSocket: ...

    def connect_unix(
        self,
        path: str | bytes,
        *,
        timeout: float | None = None,
        tls: bool | ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> AsyncSocket:
        """Open a Unix-domain stream connection to ``path`` (like ``connect``)."""
        from ._connect import open_unix_connection

        return open_unix_connection(
            self, path, timeout=timeout, tls=tls, server_hostname=server_hostname
        )

    def newserver(
        self,
        host: str | None,
        port: int,
        handler: Callable[[AsyncSocket], object],
        **options: Any,
    ) -> Server:
        """Listen on ``host``:``port`` and run ``handler(asock)`` on a new thread per connection.

        See ``socketloop.Server`` for the options (``backlog``,
        ``reuse_port``, ``tls``, ``max_connections``, ...).  ``port=0`` picks a
        free port (``server.port``); ``host`` None or ``""`` listens on every
        interface, IPv6 and IPv4.  The connection is closed when the handler
        returns or raises; handler exceptions are logged with the peer
        address and never stop the server.
        """
        from ._server import Server

        return Server.listen(self, host, port, handler, **options)

    def newserver_unix(
        self,
        path: str | bytes,
        handler: Callable[[AsyncSocket], object],
        **options: Any,
    ) -> Server:
        """Listen on the Unix-domain socket ``path`` (created; removed on close)."""
        from ._server import Server

        return Server.listen_unix(self, path, handler, **options)

    def serve(
        self,
        sock: AsyncSocket | _socket.socket,
        handler: Callable[[AsyncSocket], object],
        **options: Any,
    ) -> Server:
        """Serve connections accepted from an already listening socket of any family."""
        from ._server import Server

        return Server(self, sock, handler, **options)

    def getaddrinfo(
        self,
        host: str | bytes | None,
        port: str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[tuple[Any, ...]]:
        """``socket.getaddrinfo`` that never blocks the loop.

        From a loop thread, names are resolved by the resolver (by default
        the system resolver in a small dedicated OS-thread pool) while only
        the calling thread waits; numeric addresses never reach it.  Outside
        loop threads it simply blocks.  ``socket.gaierror`` names the host.
        """
        try:
            if self._needs_resolver(host) and self.current() is not None:
                resolver = self._resolver or self._resolve_in_pool
                return resolver(host, port, family, type, proto, flags)
            return _originals.getaddrinfo(host, port, family, type, proto, flags)
        except _socket.gaierror as exc:
            raise _socket.gaierror(exc.errno, f"{exc.strerror} (resolving {host!r})") from None

    @staticmethod
    def _needs_resolver(host: str | bytes | None) -> bool:
        if host is None:
            return False
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        return not _is_numeric_host(host)

    def _resolve_in_pool(
        self, host: Any, port: Any, family: int, type: int, proto: int, flags: int
    ) -> list[tuple[Any, ...]]:
        return self._resolver_pool.run(system_getaddrinfo, host, port, family, type, proto, flags)

    def set_resolver(self, resolver: Resolver | None) -> None:
        """Replace how names are resolved (None restores the default).

        ``resolver(host, port, family, type, proto, flags)`` must return what
        ``socket.getaddrinfo`` returns.  It runs in the calling loop thread and
        may suspend it, so a resolver written with socketloop sockets works.
        ``TypeError`` if it is neither callable nor None.
        """
        if resolver is not None:
            require_callable(resolver, "the resolver")
        self._resolver = resolver

    # ------------------------------------------------ OS threads and signals

    def run_in_thread(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a blocking call in a bounded OS-thread pool; suspend only the caller.

        Returns the call's result or re-raises its exception in the calling
        loop thread.  Outside loop threads the call runs directly.  Killing the
        waiting thread abandons the result (an OS thread cannot be
        interrupted; the call runs to completion in the pool).
        """
        return self._pool.run(fn, *args, **kwargs)

    def _external_done(self, thread: Thread[Any], token: object) -> None:
        """Dispatcher callback: the outside work ``thread`` waits for is finished."""
        if thread._state == WAITING and thread._waiting_on is token:
            self._switch_from_dispatcher(thread, None)

    def resume_threadsafe(self, thread: Thread[Any], arg: Any = None) -> None:
        """Resume a suspended loop thread from any OS thread (asynchronously).

        The resume happens in the loop's OS thread at its next step, as if
        ``resume(thread, arg)`` were called from a loop callback; if the thread
        is not suspended by then, the error is logged.  ``TypeError`` at the
        call if ``thread`` is not a ``Thread``.
        """
        if not isinstance(thread, Thread):
            raise TypeError(f"resume_threadsafe() expects a Thread, got {type(thread).__name__}")
        self.call_soon_threadsafe(self._resume_soon, thread, arg)

    def _resume_soon(self, thread: Thread[Any], arg: Any) -> None:
        self._check_resumable(thread, "resume")
        self._resume_into(thread, arg)

    def on_signal(self, signum: int, handler: Callable[[int], object] | None) -> None:
        """Run ``handler(signum)`` in a new loop thread each time the signal arrives.

        ``None`` removes the handler and restores the one that was there
        before.  Only from the main OS thread (a limit of Python's signals).
        The signal wakes a polling loop at once.
        """
        self._check()
        if handler is None:
            self._restore_signal(signum)
            return
        require_callable(handler, "the signal handler")

        def on_signal(number: int, frame: FrameType | None) -> None:
            self.call_soon_threadsafe(self._spawn_signal_handler, handler, number)

        previous = signal.signal(signum, on_signal)
        self._signal_handlers.setdefault(signum, previous)

    def _spawn_signal_handler(self, handler: Callable[[int], object], signum: int) -> None:
        thread = self.spawn(handler, signum)
        thread.name = f"signal {signal.Signals(signum).name} handler"

    # ------------------------------------------------------- timeout scopes

    def timeout(self, seconds: float | None) -> Timeout:
        """``with loop.timeout(s):`` raises ``TimeoutError`` if the block takes longer.

        Applies to whatever the current thread waits on inside (sockets,
        sleeps, primitives, joins).  Nested scopes work: the inner scope that
        expires is the one reported.  ``None`` means no limit.  Only in loop
        threads.
        """
        from ._timeouts import Timeout

        return Timeout(self, seconds, silent=False)

    def move_on_after(self, seconds: float | None) -> Timeout:
        """Like ``timeout`` but leaves the block silently; check ``.expired`` after."""
        from ._timeouts import Timeout

        return Timeout(self, seconds, silent=True)

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
        self._check()
        g = getcurrent()
        if isinstance(g, Thread) and g._loop is self:
            raise RuntimeError("step()/start() cannot run inside a thread of the same loop")
        if self._dispatching:
            raise RuntimeError("step()/start() cannot run inside a loop callback")
        return self._step(timeout)

    def _step(self, timeout: float | None) -> bool:
        # Checked inline first: with threads waiting on I/O (the usual case)
        # the full _has_pending() is not needed.
        if not (self._readers or self._ready or self._has_pending()):
            return False
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

    def _requeue_waiter(self, table: dict[int, Thread[Any]], fd: int) -> None:
        thread = table.get(fd)
        if thread is not None and thread._state == WAITING:
            del table[fd]
            self._schedule(thread)

    def _drain_wakeup_if_reported(self, events: list[tuple[int, int]]) -> None:
        # Level-triggered backends report the wake-up fd until it is read.  A
        # write that landed after the flag was cleared leaves it readable with
        # the flag down; read it whenever it shows up, or poll() would spin.
        fd = self._wakeup.fd
        for event_fd, _ in events:
            if event_fd == fd:
                if not self._wakeup.pending:
                    self._wakeup.clear()
                return

    def _run_threadsafe(self) -> None:
        self._wakeup.clear()
        calls = self._threadsafe
        for _ in range(len(calls)):
            fn, args = calls.popleft()
            self._call_user(fn, args)

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

    def start(self, timeout: float | None = None) -> None:
        """Dispatch until ``stop()`` or until nothing is pending.

        With ``timeout``, return after at most that many seconds.  Ctrl-C
        raises ``KeyboardInterrupt`` out of ``start()`` (whether the loop is
        polling or a thread is running); the loop can be started again.
        """
        self._check()
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
        previous_handler = self._install_sigint()
        try:
            while not self._stopping:
                if deadline is None:
                    if not self._step(None) and not self._break_deadlock():
                        break
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    if not self._step(remaining) and not self._break_deadlock():
                        break
                if self._ki_pending:
                    self._ki_pending = False
                    raise KeyboardInterrupt
        finally:
            self._running = False
            self._stopping = False
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            if self._ki_pending:
                self._ki_pending = False

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

    def _install_sigint(self) -> Any:
        """Defer Ctrl-C that lands in the dispatcher's bookkeeping to a safe point."""
        if threading.current_thread() is not threading.main_thread():
            return None
        try:
            if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
                return None
            return signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # pragma: no cover - not the main interpreter
            return None

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self._polling or self._in_callback or not self._dispatching:
            raise KeyboardInterrupt
        if isinstance(getcurrent(), Thread):
            raise KeyboardInterrupt
        # In the middle of the dispatcher's own bookkeeping: raise at the end of the step.
        self._ki_pending = True

    # -------------------------------------------------------------- callbacks

    def call_soon(self, fn: Callable[..., object], /, *args: Any) -> None:
        """Call ``fn(*args)`` from the dispatcher at the next step (FIFO).

        Callbacks must not block: a socket call made from one raises
        ``RuntimeError``.  Errors are logged.  ``TypeError`` here if ``fn`` is
        not callable.
        """
        self._check()
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
        self._check()
        require_callable(fn, "the callback")
        if math.isnan(when):
            raise ValueError("when is NaN")
        return self._timers.add(when, fn, args)

    def call_soon_threadsafe(self, fn: Callable[..., object], /, *args: Any) -> None:
        """Schedule ``fn(*args)`` from any OS thread (or a signal handler).

        Calls run in FIFO order in the loop's OS thread; none is lost however
        many arrive.  After ``close()`` this is a no-op.  ``TypeError`` at
        the call if ``fn`` is not callable.
        """
        require_callable(fn, "the callback")
        if self._closed:
            return
        self._threadsafe.append((fn, args))
        self._wakeup.set(threading.get_ident() == self._owner)

    # ------------------------------------------------------------- closing

    def close(self) -> None:
        """Kill the remaining threads (their ``finally`` blocks run) and release the poller.

        Idempotent.  Afterwards every method but ``close`` raises
        ``RuntimeError``.  Refused while ``start()`` is running.
        """
        if self._closed:
            return
        if self._owner is not None and self._owner != threading.get_ident():
            raise RuntimeError("a loop can only be closed from the OS thread that runs it")
        if self._running or self._dispatching:
            raise RuntimeError("cannot close a running loop; stop() it first")
        g = getcurrent()
        if isinstance(g, Thread) and g._loop is self:
            raise RuntimeError("a loop cannot be closed from one of its own threads")
        for _ in range(3):
            alive = [t for t in self._threads if t._state != DEAD]
            if not alive:
                break
            for thread in alive:
                try:
                    self._kill(thread, ThreadExit, block=False, timeout=None)
                except RuntimeError:
                    pass
            while self._ready:
                self._step(0)
        leftover = [t for t in self._threads if t._state != DEAD]
        if leftover:
            logger.warning("loop closed with threads that would not exit: %r", leftover)
        self._retire_parked()
        self._closed = True
        _live_loops.discard(self)
        for signum in list(self._signal_handlers):
            self._restore_signal(signum)
        if self._watchdog is not None:
            self._watchdog.stop()
        self._pool.shutdown()
        self._resolver_pool.shutdown()
        self._timers.clear()
        self._ready.clear()
        self._callbacks.clear()
        for fn, args in list(self._threadsafe):
            if getattr(fn, "runs_at_loop_close", False):  # a socket closed from another OS thread
                self._call_user(fn, args)
        self._threadsafe.clear()
        self._readers.clear()
        self._writers.clear()
        self._wakeup.close()
        self._poller.close()

    def _restore_signal(self, signum: int) -> None:
        previous = self._signal_handlers.pop(signum, None)
        if previous is not None:
            try:
                signal.signal(signum, previous)
            except ValueError:  # pragma: no cover - not from the main OS thread
                pass

    def statistics(self) -> dict[str, Any]:
        """Counts for monitoring and leak checks: threads by state, waits, timers."""
        by_state: dict[str, int] = dict.fromkeys(STATE_NAMES, 0)
        for thread in self._threads:
            by_state[STATE_NAMES[thread._state]] += 1
        return {
            "threads": len(self._threads),
            "threads_by_state": by_state,
            "waiting_readers": len(self._readers),
            "waiting_writers": len(self._writers),
            "timers": len(self._timers),
            "ready": len(self._ready),
            "callbacks": len(self._callbacks) + len(self._threadsafe),
            "external_waits": self._external_waits,
            "pool_active": self._pool.active,
            "resolver_active": self._resolver_pool.active,
        }

    def threads(self) -> list[Thread[Any]]:
        """The threads of this loop that have not ended yet."""
        return list(self._threads)

    def dump(self) -> str:
        """A report of every thread: name, state, what it waits on, and its stack."""
        from ._introspect import dump

        return dump(self)

    def watchdog(self, threshold: float | None = 0.1, interval: float | None = None) -> None:
        """Log (rate-limited) when code keeps this loop from polling for ``threshold`` s.

        A monitoring OS thread checks whether the loop has polled recently
        while it is dispatching; if not, it logs a warning with the blocking
        thread's name and stack (one report per blocking episode).
        ``None`` stops it.  ``ValueError`` for a threshold or interval that
        is not positive.
        """
        from ._introspect import Watchdog

        if threshold is not None:
            self._check()
            if not threshold > 0 or (interval is not None and not interval > 0):
                raise ValueError("watchdog threshold and interval must be positive")
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if threshold is not None:
            self._watchdog = Watchdog(self, threshold, interval)

    def _reset_after_fork(self) -> None:
        """In a forked child: fresh poller, wake-up and pools; the parent's threads
        are abandoned (never resumed, their ``finally`` blocks never run)."""
        current = getcurrent()
        keep = current if isinstance(current, Thread) and current._loop is self else None
        _abandoned.extend(t for t in self._threads if t is not keep)
        _abandoned.extend(self._parked)
        self._parked = []
        self._threads = {keep} if keep is not None else set()
        self._ready.clear()
        self._callbacks.clear()
        for fn, args in list(self._threadsafe):
            if getattr(fn, "runs_at_loop_close", False):  # a socket closed from another OS thread
                self._call_user(fn, args)
        self._threadsafe.clear()
        self._readers.clear()
        self._writers.clear()
        self._timers.clear()
        self._closed_fds.clear()
        self._external_waits = 0
        self._poller.abandon()
        self._poller = _make_poller(self._poller_name, self)
        self._wakeup.abandon()
        self._wakeup = _Wakeup()
        self._poller.register_wakeup(self._wakeup.fd)
        self._pool.forget()
        self._resolver_pool.forget()
        self._watchdog = None


_defaults = threading.local()

#: Every loop not yet closed, for the fork hook.
_live_loops: weakref.WeakSet[Loop] = weakref.WeakSet()

#: Threads a forked child inherited from its parent.  They are kept alive so
#: that garbage collection never runs their ``finally`` blocks in the child
#: (which could close or write to sockets the parent still uses).
_abandoned: list[Thread[Any]] = []


def loops_of_this_os_thread() -> list[Loop]:
    """The open loops bound to (or not yet bound to any) calling OS thread."""
    ident = threading.get_ident()
    return [loop for loop in list(_live_loops) if loop._owner in (None, ident) and not loop._closed]


def _after_fork_in_child() -> None:
    for loop in list(_live_loops):
        loop._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def existing_loop() -> Loop | None:
    """The calling OS thread's default loop if it has an open one; never creates it."""
    loop: Loop | None = getattr(_defaults, "loop", None)
    return None if loop is None or loop._closed else loop


def get_loop() -> Loop:
    """The calling OS thread's default (asymmetric) loop, created on first use.

    A default loop that has been closed is replaced by a fresh one.
    """
    loop: Loop | None = getattr(_defaults, "loop", None)
    if loop is None or loop._closed:
        loop = _defaults.loop = Loop()
        loop._implicit = True
    return loop
