"""Introspection: ``loop.dump()`` and the blocking watchdog.

Charter: observe a loop without changing it.  Nothing here runs on the hot
path; the watchdog reads two counters from another OS thread.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from types import FrameType
from typing import TYPE_CHECKING, Any

from greenlet import getcurrent

from ._threads import STATE_NAMES, WAITING, Thread

if TYPE_CHECKING:
    from ._loop import Loop

__all__ = ["Watchdog", "dump"]

logger = logging.getLogger("socketloop")

#: Once a blocking episode has been reported, report the same ongoing
#: episode again at most this often, so a stuck loop cannot flood the log.
WATCHDOG_REPEAT = 10.0


def _stack_of(thread: Thread[Any]) -> list[str]:
    frame: FrameType | None
    if thread is getcurrent():
        frame = sys._getframe(2)
    else:
        frame = thread.gr_frame
    if frame is None:
        return []
    return traceback.format_stack(frame)


def dump(loop: Loop) -> str:
    lines = [repr(loop)]
    for thread in sorted(loop.threads(), key=lambda t: t.name):
        state = STATE_NAMES[thread._state]
        what = f" on {loop._describe_wait(thread)}" if thread._state == WAITING else ""
        lines.append(f"{thread.name}: {state}{what}")
        lines.extend(
            "    " + line.rstrip("\n").replace("\n", "\n    ") for line in _stack_of(thread)
        )
    return "\n".join(lines)


def _thread_in_stack(frame: FrameType | None) -> str:
    """The loop thread whose stack ``frame`` is in (found through its handler's caller)."""
    while frame is not None:
        candidate = frame.f_locals.get("self") if frame.f_code.co_name == "_run_handler" else None
        if isinstance(candidate, Thread):
            return candidate.name
        frame = frame.f_back
    return "the dispatcher (a callback)"


class Watchdog:
    """An OS thread that reports when a loop stops polling while it dispatches."""

    def __init__(self, loop: Loop, threshold: float, interval: float | None) -> None:
        self._loop = loop
        self.threshold = threshold
        self._interval = interval if interval is not None else max(threshold / 4, 0.005)
        self._stopped = threading.Event()
        self.reports = 0
        self._thread = threading.Thread(target=self._watch, name="socketloop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=1)

    def _watch(self) -> None:
        loop = self._loop
        last_turn = loop._turn
        since = time.monotonic()
        reported_at = 0.0
        while not self._stopped.wait(self._interval):
            now = time.monotonic()
            turn = loop._turn
            if turn != last_turn or loop._polling or not loop._dispatching:
                last_turn = turn
                since = now
                reported_at = 0.0
                continue
            blocked = now - since
            if blocked < self.threshold:
                continue
            if reported_at and now - reported_at < WATCHDOG_REPEAT:
                continue
            reported_at = now
            self.reports += 1
            owner = loop._owner
            frame = sys._current_frames().get(owner) if owner is not None else None
            stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
            logger.warning(
                "loop blocked for %.3f s by %s; stack:\n%s",
                blocked,
                _thread_in_stack(frame),
                stack,
            )
