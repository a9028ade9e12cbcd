"""psycopg 3's synchronous connections in loop threads: ``enable()``.

Charter: replace the two functions psycopg's synchronous ``Connection``
waits through (``psycopg.waiting.wait`` and ``psycopg.waiting.wait_conn``,
the extension point its own test suite selects with ``PSYCOPG_WAIT_FUNC``)
with functions that wait on the connection's socket cooperatively when
called in a loop thread, and call psycopg's own functions otherwise.  This
module must not change anything else in psycopg nor patch the standard
library.

psycopg's generators do all protocol work without blocking and only ask to
be told when the socket is readable or writable; the replacements answer
that through socketloop's cooperative ``select``.  psycopg's default wait,
``wait_c``, is C code around ``poll()`` that would block the whole loop,
and ``patch()`` does not reach it, hence this module.

Interruptions: when a thread waiting here is interrupted (a ``timeout()``
scope expires, ``Thread.kill``), the query is left running at the server
with its result unread, so the connection could only ever return the wrong
answers.  The wait therefore shuts the connection's socket down before the
exception goes on: ``conn.closed`` becomes true and the next call raises
``psycopg.OperationalError``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from time import monotonic
from typing import Any

import psycopg.errors
from greenlet import getcurrent
from psycopg import waiting

from .. import _originals, _select
from .._threads import Thread

__all__ = ["disable", "enable", "wait", "wait_conn"]

#: psycopg's own functions, restored by ``disable()``.
_saved: dict[str, Callable[..., Any]] = {}


def _in_loop_thread() -> bool:
    return isinstance(getcurrent(), Thread)


def _ready(fileno: int, wanted: int, interval: float, deadline: float | None) -> int:
    """Suspend until ``fileno`` is ready as ``wanted`` (a ``Wait``); the ``Ready`` bits.

    Waits at most ``interval`` seconds (when positive) and never past
    ``deadline``; 0 (``READY_NONE``) when neither came first.  Then the fd
    is checked to be still open, as psycopg's own functions do: a connection
    closed by another thread meanwhile raises ``psycopg.OperationalError``
    instead of waiting forever on a descriptor the poller has forgotten.
    """
    reads = [fileno] if wanted & waiting.WAIT_R else []
    writes = [fileno] if wanted & waiting.WAIT_W else []
    timeout = interval if interval > 0 else None
    if deadline is not None:
        remaining = max(0.0, deadline - monotonic())
        timeout = remaining if timeout is None else min(timeout, remaining)
    try:
        readable, writable, _ = _select.select(reads, writes, [], timeout)
        if not (readable or writable):
            os.fstat(fileno)
            return waiting.READY_NONE
    except OSError as exc:  # EBADF: the poller or fstat found the fd closed
        raise psycopg.OperationalError("connection socket closed") from exc
    return (waiting.READY_R if readable else 0) | (waiting.READY_W if writable else 0)


def _shut_down(fileno: int) -> None:
    """Shut the socket behind ``fileno`` down without closing the fd (libpq owns it)."""
    try:
        # The real class: under patch() socket.socket would wrap it for the loop.
        sock = _originals.socket_class(fileno=fileno)
    except OSError:
        return  # already closed: nothing left to break
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more: the connection is broken already
    finally:
        sock.detach()


def wait(gen: Any, fileno: int, interval: float = 0.0, timeout: float | None = None) -> Any:
    """``psycopg.waiting.wait``: run ``gen`` to completion, waiting on ``fileno``.

    In a loop thread, waiting suspends only that thread, waking every
    ``interval`` seconds to check that the connection was not closed under
    it; elsewhere psycopg's own function runs.  Returns the generator's
    result; raises ``psycopg.errors._WaitTimeout`` after ``timeout`` seconds
    (the private error psycopg's own functions raise and its callers
    expect), ``psycopg.OperationalError`` when the socket was closed, and
    whatever the generator raises.  Not thread-safe per connection, like
    psycopg's: one thread waits on a connection at a time.
    """
    if not _in_loop_thread():
        return _saved["wait"](gen, fileno, interval, timeout)
    deadline = None if timeout is None else monotonic() + timeout
    try:
        wanted = next(gen)
        while True:
            try:
                ready = _ready(fileno, wanted, interval, deadline)
            except BaseException as exc:
                if not isinstance(exc, Exception):  # interrupted: see the charter
                    _shut_down(fileno)
                raise
            wanted = gen.send(ready)
            if deadline is not None and monotonic() >= deadline:
                raise psycopg.errors._WaitTimeout("wait timeout expired")
    except StopIteration as stop:
        return stop.value


def wait_conn(gen: Any, interval: float = 0.0, timeout: float | None = None) -> Any:
    """``psycopg.waiting.wait_conn``: like ``wait`` for a generator that names its fd.

    Used while connecting, when the socket may change between attempts.
    """
    if not _in_loop_thread():
        return _saved["wait_conn"](gen, interval, timeout)
    deadline = None if timeout is None else monotonic() + timeout
    try:
        fileno, wanted = next(gen)
        while True:
            try:
                ready = _ready(fileno, wanted, interval, deadline)
            except BaseException as exc:
                if not isinstance(exc, Exception):  # interrupted: see the charter
                    _shut_down(fileno)
                raise
            fileno, wanted = gen.send(ready)
            if deadline is not None and monotonic() >= deadline:
                raise psycopg.errors._WaitTimeout("wait timeout expired")
    except StopIteration as stop:
        return stop.value


def enable() -> None:
    """Make psycopg's synchronous connections cooperative in loop threads.

    Process-wide and idempotent; takes effect for connections already open
    too (psycopg looks the functions up on every wait).  Outside loop
    threads psycopg behaves exactly as before.
    """
    for name, replacement in (("wait", wait), ("wait_conn", wait_conn)):
        current = getattr(waiting, name)
        if current is not replacement:
            _saved.setdefault(name, current)
            setattr(waiting, name, replacement)


def disable() -> None:
    """Put psycopg's own wait functions back."""
    for name, original in _saved.items():
        setattr(waiting, name, original)
    _saved.clear()
