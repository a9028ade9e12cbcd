"""The I/O driver seam: the one interface through which the kernel learns readiness.

Charter
-------
The kernel never calls ``epoll`` or ``poll`` itself: it holds one *driver*
and uses only what ``Driver`` below declares.  A driver is stateless about
waiters (the kernel owns the waiter tables); it turns "watch fd N" and "what
is ready?" into system calls and nothing else.  Two drivers exist, one per
file: ``_poll_epoll`` (edge-triggered, the default on Linux) and
``_poll_poll`` (level-triggered, portable, and the test suite's oracle that
the kernel does not secretly depend on edge-triggered delivery).

This module must not import the kernel or anything above it.

How a host event loop plugs in (the next driver)
------------------------------------------------
Running the kernel inside asyncio or uvloop needs no third poller: the host
watches the *epoll driver's own fd* (``fileno()``, readable whenever any fd
in the set is ready, the wake-up fd included) with ``add_reader``, and on
each callback runs one non-blocking step (``Kernel._host_step``: ``step(0)``
that always polls, since the host watches the fd level-triggered; ``step()``
itself is refused while hosted).  After each step it asks the kernel how
long it may sleep (``Kernel._next_timeout(None)``: 0 when work is ready,
None when nothing is pending, else the delay to the next timer) and arms
one ``call_later`` for it.  Cross-thread calls need nothing extra:
``call_soon_threadsafe`` writes the wake-up fd, which is in the epoll set,
so the host's reader fires.  That adapter (``_hostdriver``) lives above the
kernel and touches only this interface, ``_next_timeout``, the wait protocol
and the kernel's "host driver entry points".
"""

from __future__ import annotations

import select
from typing import Any, Protocol

__all__ = ["Driver", "make_driver"]


class Driver(Protocol):
    """What the kernel needs from a readiness backend."""

    #: True when readiness is reported once per edge (epoll ``EPOLLET``): the
    #: kernel then never updates interest around a wait.
    edge_triggered: bool
    #: Event bits that wake a reader, a writer; bits meaning hang-up or error.
    READ: int
    WRITE: int
    HANGUP: int
    #: The kernel this driver serves (sockets find their loop through it).
    owner: Any

    def fileno(self) -> int:
        """An fd readable whenever ``poll(0)`` would report something, or -1."""

    def register(self, fd: int) -> None:
        """Start watching ``fd``; ``OSError`` for an fd that cannot be watched."""

    def register_wakeup(self, fd: int) -> None:
        """Watch the kernel's wake-up fd for reading, for good."""

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd``; harmless when it is not watched."""

    def set_interest(self, fd: int, read: bool, write: bool) -> None:
        """Level-triggered drivers: which directions someone waits for now."""

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        """Wait up to ``timeout`` seconds (None: forever); return ``(fd, events)`` pairs."""

    def close(self) -> None:
        """Release the driver's resources."""

    def abandon(self) -> None:
        """After fork: drop the resources without changing anything the parent shares."""


def make_driver(name: str | None, owner: object) -> Driver:
    """The driver called ``name`` (``"epoll"``, ``"poll"``; None picks the best here).

    Raises ``ValueError`` for an unknown name.
    """
    if name is None:
        name = "epoll" if hasattr(select, "epoll") else "poll"
    if name == "epoll":
        from ._poll_epoll import EpollPoller

        return EpollPoller(owner)
    if name == "poll":
        from ._poll_poll import PollPoller

        return PollPoller(owner)
    raise ValueError(f"unknown poller {name!r} (expected 'epoll' or 'poll')")
