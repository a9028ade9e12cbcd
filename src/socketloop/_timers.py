"""Timers: a binary heap of deadlines with lazy cancellation.

Charter: store callbacks by deadline and hand back the expired ones in
deadline order (FIFO for equal deadlines).  It never calls user code itself and
knows nothing about threads or sockets; the loop decides what an expiry means.

Cancelling only marks a handle; the heap entry is dropped when it reaches the
top, or all at once when cancelled entries outnumber live ones (the same
hygiene asyncio applies), so a program that arms and cancels many timeouts
keeps a heap proportional to its live timers.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_DELAY", "TimerHandle", "TimerHeap"]

#: Delays are clamped to one year.  Anything longer is "never" for a network
#: program, and clamping keeps deadline arithmetic and the poller's timeout
#: far away from float precision loss and integer overflow in the kernel.
MAX_DELAY = 365 * 24 * 3600.0

#: Rebuild the heap once cancelled entries are more than half of it, but not
#: for tiny heaps, where popping them lazily is cheaper than rebuilding.
_COMPACT_MIN_CANCELLED = 64


class TimerHandle:
    """A scheduled call; ``cancel()`` it to prevent the call.

    Handles are created by ``Loop.call_later``/``call_at`` and by the loop for
    timeouts.  They are not thread-safe: cancel them from the loop's OS thread.
    """

    __slots__ = ("_args", "_callback", "_heap", "cancelled", "deadline")

    def __init__(
        self,
        heap: TimerHeap,
        deadline: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
    ) -> None:
        self._heap: TimerHeap | None = heap
        self.deadline = deadline
        self._callback: Callable[..., object] | None = callback
        self._args: tuple[Any, ...] = args
        self.cancelled = False

    def cancel(self) -> None:
        """Prevent the call; harmless if it already ran or was cancelled."""
        heap = self._heap
        if heap is None:
            return
        self._heap = None
        self.cancelled = True
        self._callback = None
        self._args = ()
        heap._on_cancel()

    def __repr__(self) -> str:
        name = getattr(self._callback, "__qualname__", None) or repr(self._callback)
        state = "cancelled" if self.cancelled else ("done" if self._heap is None else "pending")
        return f"<TimerHandle {state} at {self.deadline:.6f} {name}>"


class TimerHeap:
    """The heap behind a loop's timers."""

    __slots__ = ("_cancelled", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = 0
        self._cancelled = 0

    def __len__(self) -> int:
        """Number of live (not cancelled, not yet fired) timers."""
        return len(self._heap) - self._cancelled

    def add(
        self, deadline: float, callback: Callable[..., object], args: tuple[Any, ...] = ()
    ) -> TimerHandle:
        handle = TimerHandle(self, deadline, callback, args)
        seq = self._seq
        self._seq = seq + 1
        heapq.heappush(self._heap, (deadline, seq, handle))
        return handle

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or None when no timer is live."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1
        return heap[0][0] if heap else None

    def snapshot(self) -> int:
        """A marker separating timers that exist now from those added later."""
        return self._seq

    def pop_due(self, now: float, before: int) -> TimerHandle | None:
        """Remove and return the earliest live timer due at ``now``, or None.

        Only timers created before the ``snapshot()`` marker ``before`` are
        returned, so a callback that re-arms itself with a zero delay runs
        once per loop step rather than forever.
        """
        heap = self._heap
        while heap:
            deadline, seq, handle = heap[0]
            if deadline > now:
                return None
            if handle.cancelled:
                heapq.heappop(heap)
                self._cancelled -= 1
                continue
            if seq >= before:
                # Created during this round (only call_at with a past time
                # can be due at once): it waits for the next round, and so
                # does anything queued behind it.
                return None
            heapq.heappop(heap)
            handle._heap = None
            return handle
        return None

    def clear(self) -> list[TimerHandle]:
        """Drop every timer; return the live ones (used when a loop closes)."""
        live = [entry[2] for entry in self._heap if not entry[2].cancelled]
        for handle in live:
            handle._heap = None
        self._heap = []
        self._cancelled = 0
        return live

    def _on_cancel(self) -> None:
        self._cancelled += 1
        cancelled = self._cancelled
        if cancelled > _COMPACT_MIN_CANCELLED and cancelled * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0
