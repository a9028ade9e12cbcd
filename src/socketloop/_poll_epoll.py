"""The epoll backend (Linux): edge-triggered, one registration per socket.

Charter: turn "is fd N ready?" into kernel calls and nothing else.  It keeps no
waiter state; the kernel owns that (``_driver`` declares the interface).

Why edge-triggered and registered once
--------------------------------------
A socket is added to epoll the first time a thread waits on it, for both
directions, with ``EPOLLET``, and stays registered until it is closed.  Waiting
again later costs no system call at all.  The alternatives each pay per wait:
level-triggered interest must be added and removed around every wait (or the
loop spins on a socket nobody is waiting for), and ``EPOLLONESHOT`` must be
re-armed with ``epoll_ctl`` before every wait.

Edge-triggered delivery is safe here because of the loop's discipline: a
thread always tries the system call first and only registers as a waiter
after the call said EAGAIN, and it does so before the loop polls again.  Any
readiness that arrives after that EAGAIN produces a new edge, which the next
``epoll_wait`` reports.  A readiness edge that arrives while nobody waits is
dropped, which is fine for the same reason: whoever reads next tries first.

Spurious wake-ups (an edge reported for an fd number that now belongs to a
different socket, say after the old one was closed behind the loop's back
while a ``dup`` kept its file description alive) are harmless: the woken
thread retries its system call, gets EAGAIN and waits again.  An fd closed
behind the loop's back without a dup disappears from epoll by itself, so the
loop can never spin on it (the hazard ``EPOLLONESHOT`` guards against in
level-triggered designs).
"""

from __future__ import annotations

import errno
import select
from typing import Any

__all__ = ["EpollPoller"]

_ALL = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET


class EpollPoller:
    """Edge-triggered epoll; ``poll`` returns ``(fd, events)`` pairs."""

    edge_triggered = True
    #: Events that wake a reader: data, peer shutdown, hang-up, error.
    READ = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
    #: Events that wake a writer: buffer space, hang-up, error.
    WRITE = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR

    #: Events meaning end of stream, hang-up or error.
    HANGUP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR

    __slots__ = ("_epoll", "max_events", "owner")

    def __init__(self, owner: object = None) -> None:
        self._epoll = select.epoll()
        #: The loop this poller serves (sockets find their loop through it).
        self.owner: Any = owner
        #: Most events one ``poll`` returns (-1: the default).  A host event
        #: loop lowers it so one step cannot take unbounded time; events left
        #: over stay in the epoll ready list for the next poll.
        self.max_events = -1

    def fileno(self) -> int:
        return self._epoll.fileno()

    def register(self, fd: int) -> None:
        """Watch ``fd`` for both directions until ``unregister`` or its close.

        Raises ``OSError(EBADF)`` for an fd that is not open and ``OSError(EPERM)``
        for files epoll cannot watch (regular files).
        """
        try:
            self._epoll.register(fd, _ALL)
        except FileExistsError:
            pass  # a second wrapper of the same socket; the registration is shared

    def register_exclusive(self, fd: int) -> None:
        """Watch a listening socket shared with other processes, with ``EPOLLEXCLUSIVE``.

        A new connection then wakes one of the epoll instances blocked on it
        (and every instance that is not blocked just queues the event) instead
        of all: no thundering herd when N worker processes accept from one
        socket.  The flag allows only ``EPOLLIN``/``EPOLLET`` next to it, and
        cannot be added to an existing registration, so an existing one is
        replaced.  Edge-triggered like every other registration, so the loop's
        try-first discipline holds.
        """
        events = select.EPOLLIN | select.EPOLLET | select.EPOLLEXCLUSIVE
        try:
            self._epoll.register(fd, events)
        except FileExistsError:
            self._epoll.unregister(fd)
            self._epoll.register(fd, events)

    def register_wakeup(self, fd: int) -> None:
        """Watch the loop's own wake-up fd (readable only: it is always writable)."""
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLET)

    def unregister(self, fd: int) -> None:
        try:
            self._epoll.unregister(fd)
        except OSError as exc:
            # Already gone: closed behind our back (the kernel dropped it) or never added.
            if exc.errno not in (errno.ENOENT, errno.EBADF):
                raise

    def set_interest(self, fd: int, read: bool, write: bool) -> None:
        """No-op: edge-triggered registrations cover both directions."""

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        return self._epoll.poll(-1 if timeout is None else timeout, self.max_events)

    def close(self) -> None:
        self._epoll.close()

    def abandon(self) -> None:
        """Drop the epoll fd without touching its registrations (after fork).

        The child shares the epoll instance with the parent: any epoll_ctl
        here would change the parent's registrations.
        """
        self._epoll.close()
