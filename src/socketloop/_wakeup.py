"""The wake-up fd: how other OS threads and signal handlers interrupt a polling loop.

Charter: one flag and one fd (an eventfd, or a socket pair where there is
none) that the kernel's driver watches for reading.  ``set()`` may be called
from any OS thread or a signal handler; everything else from the loop's own
OS thread.  It knows nothing about what the wake-up is for (the kernel runs
the queued cross-thread calls); it must not call back into the loop, block,
or lose a wake-up.

A host event loop driving the kernel (see docs/design.md) is woken the same
way: the fd sits in the kernel's epoll set, so a write makes the epoll fd
itself readable.
"""

from __future__ import annotations

import os
import socket as _socket

from . import _originals

__all__ = ["Wakeup"]


class Wakeup:
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
