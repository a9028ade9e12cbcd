"""Exceptions of socketloop that have no standard counterpart.

Everything else socketloop raises is a standard exception a Python user already
catches: ``TimeoutError``, ``ConnectionResetError``, ``BrokenPipeError``,
``OSError(EBADF)``, ``socket.gaierror``, ``RuntimeError``.  The classes here
subclass the nearest standard one, so code written for plain sockets keeps
working.
"""

from __future__ import annotations

import errno
import os

__all__ = ["BusyResourceError", "DeadlockError", "SendallTimeoutError", "ThreadExit"]


class BusyResourceError(RuntimeError):
    """A second thread tried to wait on a socket direction that is already taken.

    Raised at once (never queued) when a thread calls a reading operation on a
    socket another thread is already blocked reading, or a writing operation
    while another thread is writing (two ``sendall`` calls never interleave).
    One reader plus one writer on the same socket is allowed.
    """


class DeadlockError(RuntimeError):
    """Raised in threads that wait for each other (or for a suspended thread)
    when nothing left in the loop could ever wake them.

    ``start()`` delivers it instead of returning with the threads stuck; the
    message names the threads and what each waits on.
    """


class SendallTimeoutError(TimeoutError):
    """``sendall`` ran out of time; ``bytes_sent`` says how much went out first."""

    def __init__(self, bytes_sent: int) -> None:
        super().__init__("timed out")
        self.bytes_sent = bytes_sent

    def __str__(self) -> str:
        return f"timed out after sending {self.bytes_sent} bytes"


class ThreadExit(BaseException):
    """Raised inside a thread to end it (the default exception of ``Thread.kill``).

    It derives from ``BaseException`` so that ``except Exception`` blocks in
    user code do not swallow it; ``finally`` blocks run as usual.  A thread
    that ends with it is not logged as an error.
    """


def require_callable(value: object, what: str) -> None:
    """Raise ``TypeError`` at the call for an argument that must be callable.

    Used where the value is only called later (in a new thread, a callback,
    a signal handler), where the error would otherwise be logged far from
    the mistake.
    """
    if not callable(value):
        raise TypeError(f"{what} must be callable, not {type(value).__name__}")


def closed_error(what: str = "socket") -> OSError:
    """The ``OSError(EBADF)`` raised for operations on a closed socket."""
    return OSError(errno.EBADF, f"{os.strerror(errno.EBADF)} ({what} is closed)")
