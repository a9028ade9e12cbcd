"""Signals: user handlers run as loop threads, and Ctrl-C at a safe point.

Charter
-------
Python runs signal handlers between bytecodes of the main OS thread, which
may be in the middle of the dispatcher's bookkeeping.  Nothing here runs
user code from the signal handler itself: a user handler set with
``Loop.on_signal`` is queued with ``call_soon_threadsafe`` (which also wakes
a polling loop) and runs in a new loop thread; ``SIGINT`` that lands in the
dispatcher's bookkeeping is deferred by the kernel to the end of the step
(``Kernel._on_sigint``), this module only installs and restores it.

It must not import the kernel or anything above it: the loop is passed in.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

__all__ = ["SignalHandlers", "install_sigint", "restore_sigint"]

SigintHandler = Callable[[int, FrameType | None], None]


def install_sigint(handler: SigintHandler) -> Any:
    """Install ``handler`` for SIGINT if Python's default one is in place; return the old one.

    Returns None (and installs nothing) outside the main OS thread or when the
    program has its own SIGINT handler.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return None
        return signal.signal(signal.SIGINT, handler)
    except ValueError:  # pragma: no cover - not the main interpreter
        return None


def restore_sigint(previous: Any) -> None:
    """Undo ``install_sigint`` (``previous`` is what it returned)."""
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


class _Spawner(Protocol):
    def call_soon_threadsafe(self, fn: Callable[..., object], /, *args: Any) -> None: ...

    def spawn(self, handler: Callable[..., Any], /, *args: Any) -> Any: ...


class SignalHandlers:
    """The ``on_signal`` handlers of one loop, and the handlers they replaced."""

    __slots__ = ("_previous",)

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    def set(self, loop: _Spawner, signum: int, handler: Callable[[int], object]) -> bool:
        """Run ``handler(signum)`` in a new thread of ``loop`` each time the signal arrives.

        Returns True when ``signum`` had no handler of ours before (the
        caller then holds the signal wake-up fd for it).  Raises
        ``ValueError`` outside the main OS thread (Python's rule).
        """

        def on_signal(number: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(_spawn_handler, loop, handler, number)

        previous = signal.signal(signum, on_signal)
        if signum in self._previous:
            return False
        self._previous[signum] = previous
        return True

    def restore(self, signum: int) -> bool:
        """Put back the handler that was there before the first ``set`` for ``signum``.

        Returns True if there was one of ours to take away.
        """
        if signum not in self._previous:
            return False
        previous = self._previous.pop(signum)
        if previous is not None:  # None: not installed from Python, nothing to put back
            try:
                signal.signal(signum, previous)
            except ValueError:  # pragma: no cover - not from the main OS thread
                pass
        return True

    def restore_all(self) -> None:
        for signum in list(self._previous):
            self.restore(signum)


def _spawn_handler(loop: _Spawner, handler: Callable[[int], object], signum: int) -> None:
    thread = loop.spawn(handler, signum)
    thread.name = f"signal {signal.Signals(signum).name} handler"
