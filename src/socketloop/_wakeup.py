"""The wake-up fd: how other OS threads and signal handlers interrupt a polling loop.

Charter: one flag and one pipe whose read end the kernel's driver watches.
``set()`` may be called from any OS thread or a signal handler; everything
else from the loop's own OS thread.  While held (``hold_signal_fd``), the
write end is also the process's ``signal.set_wakeup_fd``, so a signal that
lands just before the poll's system call still ends it.  It knows nothing
about what the wake-up is for (the kernel runs the queued cross-thread
calls); it must not call back into the loop, block, or lose a wake-up.

Why a pipe and not an eventfd
-----------------------------
Python's C-level signal handler writes one byte to the wake-up fd, and an
eventfd refuses anything but eight.  Without that byte a signal whose
Python-level handler runs *after* the last bytecode before ``epoll_wait``
but before the call itself is noticed only when some other event ends the
poll, which for an idle server is never.  A pipe costs the same one system
call per wake-up (see ``set``) and takes the byte.

A host event loop driving the kernel (see docs/design.md) is woken the same
way: the fd sits in the kernel's epoll set, so a write makes the epoll fd
itself readable.
"""

from __future__ import annotations

import os
import signal
import threading

from . import _originals

__all__ = ["Wakeup"]


class Wakeup:
    """A flag other OS threads and signal handlers raise to interrupt ``poll``.

    The pipe is written only when the flag goes from clear to set, so a burst
    of cross-thread calls costs one write, and a full pipe never loses a
    wake-up: if the write would block, the reader already has something to
    read.  The consumer (``clear``) empties the pipe *before* lowering the
    flag and then runs the whole queue: a setter that saw the flag up skipped
    its write, but its call was queued before the flag came down, so it runs.
    """

    __slots__ = ("_lock", "_signal_holds", "_signal_owned", "closed", "fd", "pending", "write_fd")

    def __init__(self) -> None:
        self.pending = False
        self.closed = False
        self._lock = _originals.allocate_lock()
        #: How many holders want the write end as the process's signal wake-up fd.
        self._signal_holds = 0
        #: Whether ``signal.set_wakeup_fd`` currently names our write end.
        self._signal_owned = False
        if hasattr(os, "pipe2"):
            self.fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        else:  # pragma: no cover - non-Linux
            self.fd, self.write_fd = os.pipe()
            os.set_blocking(self.fd, False)
            os.set_blocking(self.write_fd, False)

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
            os.write(self.write_fd, b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # already readable: the flag semantics make this a success

    def clear(self) -> None:
        """Empty the pipe, then lower the flag; the caller runs the queue after this."""
        try:
            while len(os.read(self.fd, 256)) == 256:
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self.pending = False

    # -------------------------------------------------- the signal wake-up fd

    def hold_signal_fd(self, count: int = 1) -> None:
        """Make the write end the process's signal wake-up fd while held.

        Takes it only from the main OS thread (Python's rule) and only if no
        one else has one set (asyncio, another loop): theirs is left in
        place, and then a signal landing just before the poll is seen at the
        next event.  Each hold is undone by one ``release_signal_fd``.
        """
        self._signal_holds += count
        if self._signal_owned or self.closed or not _in_main_thread():
            return
        try:
            previous = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        except ValueError:  # pragma: no cover - a subinterpreter
            return
        if previous == -1:
            self._signal_owned = True
        else:
            signal.set_wakeup_fd(previous)  # someone else's: theirs stays

    def release_signal_fd(self) -> None:
        """Undo one ``hold_signal_fd``; the last one gives the fd back (-1)."""
        if self._signal_holds > 0:
            self._signal_holds -= 1
        if self._signal_holds == 0:
            self._give_back_signal_fd()

    def _give_back_signal_fd(self) -> None:
        if not self._signal_owned or not _in_main_thread():
            return
        self._signal_owned = False
        current = signal.set_wakeup_fd(-1)
        if current != self.write_fd:
            signal.set_wakeup_fd(current)  # replaced since by someone else: theirs stays

    def _close_pipe(self) -> None:
        self._give_back_signal_fd()
        self._signal_holds = 0
        self.closed = True
        self.pending = False
        if self._signal_owned:
            # Closed outside the main OS thread while the process's signal
            # wake-up fd names this pipe: closing it would let a signal write
            # into whatever file reuses the number.  Both ends stay open (a
            # pipe nobody reads, written at most once per signal).
            _kept_open.append((self.fd, self.write_fd))
            return
        for fd in (self.fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def abandon(self) -> int:
        """After fork: drop the pipe (shared with the parent) without writing to it.

        Returns the number of signal-fd holds, for the replacement to take.
        """
        holds = self._signal_holds
        self._close_pipe()
        return holds

    def close(self) -> None:
        with self._lock:
            self._close_pipe()


#: Pipes that could not be closed (see ``Wakeup._close_pipe``).
_kept_open: list[tuple[int, int]] = []


def _in_main_thread() -> bool:
    # set_wakeup_fd is for the main OS thread of the main interpreter only.
    return threading.current_thread() is threading.main_thread()
