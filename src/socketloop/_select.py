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
    """The fd of ``obj`` with the standard library's checks and errors."""
    if isinstance(obj, int):
        fd = obj
    else:
        method = getattr(obj, "fileno", None)
        if method is None:
            raise TypeError("argument must be an int, or have a fileno() method.")
        fd = method()
        if not isinstance(fd, int):
            raise TypeError("fileno() returned a non-integer")
    if fd < 0:
        raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
    return fd


def _pairs(objects: Iterable[Any]) -> list[tuple[Any, int]]:
    """``(object, fd)`` for each object, asking each ``fileno()`` once.

    Like the C ``select``: a list or tuple is walked by index while its
    length allows (a ``fileno()`` that shrinks its own list ends the walk).
    """
    sequence = objects if isinstance(objects, (list, tuple)) else list(objects)
    pairs = []
    index = 0
    while index < len(sequence):
        obj = sequence[index]
        pairs.append((obj, _fileno(obj)))
        index += 1
    return pairs


def _check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)):
        try:
            timeout = float(timeout)
        except (TypeError, ValueError):
            raise TypeError("timeout must be a float or None") from None
    if math.isnan(timeout):
        raise ValueError("Invalid value NaN (not a number)")
    if timeout < 0:
        raise ValueError("timeout must be non-negative")
    return float(timeout)


def _calling_thread() -> Thread[Any] | None:
    current = getcurrent()
    return current if isinstance(current, Thread) else None


def select(
    rlist: Iterable[Any], wlist: Iterable[Any], xlist: Iterable[Any], timeout: float | None = None
) -> tuple[list[Any], list[Any], list[Any]]:
    """``select.select``; in a loop thread, waiting suspends only that thread.

    Arguments are checked, and each object's ``fileno()`` asked once, as the
    standard function does; the readiness answer is the real ``select``'s.
    """
    thread = _calling_thread()
    if thread is None or timeout == 0:
        return _original_select(rlist, wlist, xlist, timeout)
    reads, writes, errors = _pairs(rlist), _pairs(wlist), _pairs(xlist)
    seconds = _check_timeout(timeout)
    deadline = None if seconds is None else time.monotonic() + seconds
    read_fds = [fd for _, fd in reads]
    write_fds = [fd for _, fd in writes]
    error_fds = [fd for _, fd in errors]
    wait_reads = sorted(set(read_fds) | set(error_fds))
    wait_writes = sorted(set(write_fds))
    while True:
        ready = _original_select(read_fds, write_fds, error_fds, 0)
        if any(ready):
            readable, writable, exceptional = (set(fds) for fds in ready)
            return (
                [obj for obj, fd in reads if fd in readable],
                [obj for obj, fd in writes if fd in writable],
                [obj for obj, fd in errors if fd in exceptional],
            )
        if not thread._loop._wait_fds(thread, wait_reads, wait_writes, deadline, "select()"):
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
