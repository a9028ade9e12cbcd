"""Cooperative ``select.select``, ``select.poll`` and a selector, for patching.

Charter: the standard readiness functions, except that a call from a loop
thread with a non-zero timeout suspends only that thread.  Readiness is
always decided by the real system call with a zero timeout, before and after
waiting, so results are exactly what the standard functions would return.
Outside loop threads (or with a zero timeout) the real functions run.
"""

from __future__ import annotations

import math
import select as _select
import selectors
import time
from collections.abc import Iterable
from typing import Any

from greenlet import getcurrent

from . import _originals
from ._threads import Thread

__all__ = ["CooperativeSelector", "poll", "select"]

_original_select = _originals.select
_original_poll = _originals.poll
_READ_MASK = _select.POLLIN | _select.POLLPRI
_WRITE_MASK = _select.POLLOUT


def _fileno(obj: Any) -> int:
    return obj if isinstance(obj, int) else int(obj.fileno())


def _calling_thread() -> Thread[Any] | None:
    current = getcurrent()
    return current if isinstance(current, Thread) else None


def select(
    rlist: Iterable[Any], wlist: Iterable[Any], xlist: Iterable[Any], timeout: float | None = None
) -> tuple[list[Any], list[Any], list[Any]]:
    """``select.select``; in a loop thread, waiting suspends only that thread."""
    rlist, wlist, xlist = list(rlist), list(wlist), list(xlist)
    thread = _calling_thread()
    if thread is None or timeout == 0:
        return _original_select(rlist, wlist, xlist, timeout)
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be non-negative")
    deadline = None if timeout is None else time.monotonic() + timeout
    reads = sorted({_fileno(o) for o in rlist} | {_fileno(o) for o in xlist})
    writes = sorted({_fileno(o) for o in wlist})
    while True:
        ready = _original_select(rlist, wlist, xlist, 0)
        if any(ready):
            return ready
        if not thread._loop._wait_fds(thread, reads, writes, deadline, "select()"):
            return [], [], []


class poll:
    """``select.poll``; in a loop thread, ``poll(timeout)`` suspends only that thread."""

    def __init__(self) -> None:
        self._poll = _original_poll()
        self._masks: dict[int, int] = {}

    def register(
        self, fd: Any, eventmask: int = _select.POLLIN | _select.POLLPRI | _select.POLLOUT
    ) -> None:
        number = _fileno(fd)
        self._poll.register(number, eventmask)
        self._masks[number] = eventmask

    def modify(self, fd: Any, eventmask: int) -> None:
        number = _fileno(fd)
        self._poll.modify(number, eventmask)
        self._masks[number] = eventmask

    def unregister(self, fd: Any) -> None:
        number = _fileno(fd)
        self._poll.unregister(number)
        del self._masks[number]

    def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
        thread = _calling_thread()
        if thread is None or timeout == 0:
            return self._poll.poll(timeout)
        deadline = None
        if timeout is not None and timeout >= 0:
            deadline = time.monotonic() + math.ceil(timeout) / 1000
        reads = [fd for fd, mask in self._masks.items() if mask & _READ_MASK]
        writes = [fd for fd, mask in self._masks.items() if mask & _WRITE_MASK]
        while True:
            ready = self._poll.poll(0)
            if ready:
                return ready
            if not thread._loop._wait_fds(thread, reads, writes, deadline, "poll()"):
                return []


class CooperativeSelector(selectors.PollSelector):
    """``selectors.PollSelector`` over the cooperative ``poll``."""

    _selector_cls = poll
