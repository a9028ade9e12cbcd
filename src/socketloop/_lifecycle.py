"""Closing a kernel, releasing one never closed, and resetting it in a forked child.

Charter
-------
``Lifecycle`` is a base class of ``_kernel.Kernel`` (through
``_registry.FdRegistry``; it subclasses ``_control.ThreadControl``): the
cold ends of a kernel's life, kept out of the class that holds the
dispatcher.  ``close()`` kills the remaining threads
(their ``finally`` blocks run), runs the close hooks and releases the driver
and the wake-up fd; ``__del__`` releases an unclosed kernel (with a
``ResourceWarning`` unless it was made implicitly); in a forked child every
live kernel drops the parent's threads and gets a fresh driver and wake-up fd,
then runs its fork hooks.  ``_on_close``/``_on_fork`` register those hooks.

What it must not do: sit on the hot path (nothing here runs while a loop
dispatches), know sockets, or import anything above the kernel.  The tables
it clears belong to ``Kernel``, which creates them; they are declared below
only so the type checker knows them.
"""

from __future__ import annotations

import collections
import logging
import threading
import warnings
from collections.abc import Callable
from typing import Any

from greenlet import getcurrent

from . import _forking
from ._control import ThreadControl
from ._driver import Driver, make_driver
from ._errors import ThreadExit
from ._scheduler import _live_loops
from ._threads import DEAD, Thread
from ._wakeup import Wakeup

__all__ = ["Hook", "Lifecycle"]

logger = logging.getLogger("socketloop")

#: A close, fork or idle hook (see ``Kernel``'s service surface).
Hook = Callable[[], object]


def _reset_all_after_fork() -> None:
    for loop in list(_live_loops):
        loop._reset_after_fork()


_forking.at_fork_in_child(_reset_all_after_fork)


class Lifecycle(ThreadControl):
    """Close, release and fork reset; the base of ``Kernel`` (see the module charter)."""

    #: Default loops are made implicitly by get_loop(); not closing them is
    #: not the user's mistake, so they are released without a warning.
    _implicit = False

    # Created by ``Kernel.__init__``.
    _poller_name: str | None
    _poller: Driver
    _readers: dict[int, Thread[Any]]
    _writers: dict[int, Thread[Any]]
    _threadsafe: collections.deque[tuple[Callable[..., object], tuple[Any, ...]]]
    _closed_fds: set[int]
    _running: bool
    _wakeup: Wakeup
    _close_hooks: list[Hook]
    _fork_hooks: list[Hook]

    # Provided by the kernel.
    def _step(self, timeout: float | None) -> bool:
        raise NotImplementedError

    def _refuse_if_hosted(self, what: str) -> None:
        raise NotImplementedError

    def call_soon_threadsafe(self, fn: Callable[..., object], /, *args: Any) -> None:
        raise NotImplementedError

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        if not self._implicit:
            warnings.warn(f"unclosed loop {self!r}", ResourceWarning, source=self, stacklevel=1)
        self._closed = True
        try:
            self._wakeup.close()
            self._poller.close()
            for hook in self._close_hooks:
                hook()
        except Exception:
            pass

    @property
    def closed(self) -> bool:
        """True once ``close()`` has run."""
        return self._closed

    def _on_close(self, hook: Hook) -> None:
        """Run ``hook()`` in ``close()``, after the threads ended, before the driver is released."""
        self._close_hooks.append(hook)

    def _on_fork(self, hook: Hook) -> None:
        """Run ``hook()`` in a forked child, after the kernel reset itself."""
        self._fork_hooks.append(hook)

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
        self._refuse_if_hosted("close()")
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
        self._retire_idle()
        self._closed = True
        _live_loops.discard(self)  # type: ignore[arg-type]
        for hook in self._close_hooks:
            hook()
        self._timers.clear()
        self._ready.clear()
        self._callbacks.clear()
        self._run_calls_due_at_close()
        self._threadsafe.clear()
        self._readers.clear()
        self._writers.clear()
        self._wakeup.close()
        self._poller.close()

    def _release_threadsafe(self, fn: Callable[..., object], /, *args: Any) -> None:
        """``call_soon_threadsafe(fn, *args)`` for releasing a resource (an fd).

        Such a call still pending when the loop closes, or when a forked
        child resets it, runs then instead of being dropped: what it
        releases must not outlive the loop that was to release it.
        """
        self.call_soon_threadsafe(self._run_release, fn, args)

    def _run_release(self, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        fn(*args)

    def _run_calls_due_at_close(self) -> None:
        release = self._run_release
        for fn, args in list(self._threadsafe):
            if fn == release:  # bound methods compare by instance and function
                self._call_user(fn, args)

    def _reset_after_fork(self) -> None:
        """In a forked child: fresh driver and wake-up fd; the parent's threads
        are abandoned (never resumed, their ``finally`` blocks never run)."""
        current = getcurrent()
        keep = current if isinstance(current, Thread) and current._loop is self else None
        _forking.abandon([t for t in self._threads if t is not keep])
        _forking.abandon(self._idle)
        self._idle = []
        self._threads = {keep} if keep is not None else set()
        self._ready.clear()
        self._callbacks.clear()
        self._run_calls_due_at_close()
        self._threadsafe.clear()
        self._readers.clear()
        self._writers.clear()
        self._timers.clear()
        self._closed_fds.clear()
        self._external_waits = 0
        self._poller.abandon()
        self._poller = make_driver(self._poller_name, self)
        signal_holds = self._wakeup.abandon()
        self._wakeup = Wakeup()
        self._poller.register_wakeup(self._wakeup.fd)
        if signal_holds:  # a start() or on_signal handler of the parent's carries on here
            self._wakeup.hold_signal_fd(signal_holds)
        for hook in self._fork_hooks:
            hook()
