"""Fd registrations: which socket's fd the driver watches for which loop, and closing.

Charter
-------
``FdRegistry`` is the base class of ``_kernel.Kernel`` and a subclass of
``_lifecycle.Lifecycle``.  The kernel's fd waiter tables (``_readers``,
``_writers``) and its driver belong to ``Kernel``, which fills and empties
the tables on the hot path (``_wait_fd`` and the dispatcher); this class
holds what happens around them less often: registering a socket's fd with
the driver on its first wait (moving it from another loop's driver),
exclusive registration for listeners shared between processes, two waiters
in one direction, "this fd is closing" (``_closing``), the wake-up after
``shutdown``, and describing a wait for ``dump()``.

What it must not do: switch into threads (a waiter it fails is scheduled
through ``_schedule`` and wakes at the next dispatch), keep a reference to a
socket nobody waits on, or import anything above the kernel (sockets are
known only through ``TYPE_CHECKING``).
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import TYPE_CHECKING, Any

from ._errors import BusyResourceError
from ._lifecycle import Lifecycle
from ._scheduler import _Sentinel
from ._threads import WAITING, Thread
from ._timers import TimerHandle

if TYPE_CHECKING:
    from ._asocket import AsyncSocket

__all__ = ["CLOSED", "FdRegistry"]

#: What a waiter on an fd is woken with when the fd is closed under it.
CLOSED: Any = _Sentinel("CLOSED")


class FdRegistry(Lifecycle):
    """Registering fds with the driver and the closing protocol; see the module charter."""

    # Created by ``Kernel.__init__``.
    _edge: bool

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
            self._schedule(other, CLOSED)
        if other_sock is not None and getattr(other_sock, "_poller", None) is self._poller:
            other_sock._poller = None

    def _register(self, sock: AsyncSocket, fd: int) -> None:
        previous = sock._poller
        if previous is not None:
            # Registered with another loop's poller: move it here (refused while
            # a thread of that loop waits on it).  A poller of this loop from
            # before a fork needs nothing: it is gone.
            other: FdRegistry = previous.owner
            if other is not self and not other._closed:
                other._unregister_socket(sock, fd)
        self._poller.register(fd)
        sock._poller = self._poller

    def _register_exclusive(self, sock: AsyncSocket) -> None:
        """Register a listener's fd for exclusive wake-ups before its first wait.

        With the epoll driver, one process of several sharing the listener
        is woken per connection (``EPOLLEXCLUSIVE``, which cannot be added
        to an existing registration: hence before the lazy one).  Other
        drivers, a closed socket or one registered already: nothing.
        """
        register = getattr(self._poller, "register_exclusive", None)
        fd = sock.fileno()
        if register is None or fd < 0 or sock._poller is self._poller:
            return
        register(fd)
        sock._poller = self._poller

    @staticmethod
    def _drop_registration(sock: AsyncSocket) -> None:
        """Remove ``sock``'s registration now instead of at the fd's last close.

        For an fd other processes keep open (an inherited listener): epoll
        keeps a registration while the file is open anywhere.
        """
        poller = sock._poller
        fd = sock.fileno()
        if poller is not None and fd >= 0:
            try:
                poller.unregister(fd)
            except OSError:
                pass

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

    def _closing(self, sock: AsyncSocket, fd: int, closing: bool = True) -> None:
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
                self._schedule(waiter, CLOSED)
        writers = self._writers
        waiter = writers.get(fd)
        if waiter is not None and waiter._waiting_on is sock:
            del writers[fd]
            if waiter._state == WAITING:
                self._schedule(waiter, CLOSED)
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

    def _has_waiter(self, fd: int) -> bool:
        """Whether a thread of this loop waits on ``fd`` (either direction)."""
        return fd in self._readers or fd in self._writers

    def _describe_wait(self, thread: Thread[Any]) -> str:
        """What a WAITING ``thread`` waits on, in words (for repr and ``dump()``)."""
        target = thread._waiting_on
        if isinstance(target, TimerHandle):
            return f"sleep (due in {target.deadline - time.monotonic():.3f}s)"
        if isinstance(target, Thread):
            return f"join of {target.name!r}"
        if isinstance(target, concurrent.futures.Future):
            return "a call in an OS thread"
        if isinstance(target, str):
            return target
        fileno = getattr(target, "fileno", None)
        if callable(fileno):
            for fd, waiter in self._readers.items():
                if waiter is thread:
                    return f"fd {fd} (read)"
            for fd, waiter in self._writers.items():
                if waiter is thread:
                    return f"fd {fd} (write)"
        return repr(target)
