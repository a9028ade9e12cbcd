"""The portable ``poll(2)`` backend: level-triggered, interest only while waiting.

Charter: the fallback where epoll is missing (and a second implementation the
test suite runs against, so the loop's logic does not secretly depend on
edge-triggered delivery).  Interest is registered while a thread waits and
removed when it stops, because level-triggered readiness for an fd nobody
waits on would wake the loop forever.

Cost per ``poll()`` grows with the number of fds being waited on, unlike epoll;
that is the price of portability and the reason epoll is preferred.
"""

from __future__ import annotations

import math
import select
from collections.abc import Callable
from typing import Any

from . import _originals

__all__ = ["PollPoller"]


class PollPoller:
    """Level-triggered ``select.poll``; ``poll`` returns ``(fd, events)`` pairs."""

    edge_triggered = False
    READ = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR | select.POLLNVAL
    WRITE = select.POLLOUT | select.POLLHUP | select.POLLERR | select.POLLNVAL

    #: Events meaning end of stream, hang-up or error.
    HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL

    __slots__ = ("_masks", "_observer", "_poll", "owner")

    def __init__(self, owner: object = None) -> None:
        self._poll = _originals.poll()
        self._masks: dict[int, int] = {}
        #: The loop this poller serves (sockets find their loop through it).
        self.owner: Any = owner
        self._observer: Callable[[int, int], object] | None = None

    def observe(self, observer: Callable[[int, int], object] | None) -> None:
        """Report every interest change as ``observer(fd, mask)`` (None: stop).

        The current interests are reported at once.  A host event loop uses
        this to watch each waited fd itself (there is no single fd to hand
        it, unlike epoll).
        """
        self._observer = observer
        if observer is not None:
            for fd, mask in list(self._masks.items()):
                observer(fd, mask)

    def fileno(self) -> int:
        return -1

    def register(self, fd: int) -> None:
        """Check that ``fd`` is open (interest itself is set per wait)."""
        probe = _originals.poll()
        probe.register(fd, select.POLLIN)
        for _, events in probe.poll(0):
            if events & select.POLLNVAL:
                raise OSError(9, "Bad file descriptor")

    def register_wakeup(self, fd: int) -> None:
        self.set_interest(fd, True, False)

    def unregister(self, fd: int) -> None:
        if self._masks.pop(fd, None) is not None:
            self._poll.unregister(fd)
            if self._observer is not None:
                self._observer(fd, 0)

    def set_interest(self, fd: int, read: bool, write: bool) -> None:
        mask = (select.POLLIN if read else 0) | (select.POLLOUT if write else 0)
        old = self._masks.get(fd, 0)
        if mask == old:
            return
        if mask:
            self._masks[fd] = mask
            self._poll.register(fd, mask)
        else:
            del self._masks[fd]
            self._poll.unregister(fd)
        if self._observer is not None:
            self._observer(fd, mask)

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        if timeout is None:
            return self._poll.poll()
        return self._poll.poll(math.ceil(timeout * 1000))

    def close(self) -> None:
        for fd in list(self._masks):
            self._poll.unregister(fd)
            if self._observer is not None:
                self._observer(fd, 0)
        self._masks.clear()

    def abandon(self) -> None:
        """Forget everything (after fork); poll objects hold no kernel state."""
        self._masks.clear()
