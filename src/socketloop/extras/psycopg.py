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

import socket
from collections.abc import Callable
from time import monotonic
from typing import Any

import psycopg.errors
from greenlet import getcurrent
from psycopg import waiting

from .. import _select
from .._threads import Thread

__all__ = ["disable", "enable", "wait", "wait_conn"]

#: psycopg's own functions, restored by ``disable()``.
_originals: dict[str, Callable[..., Any]] = {}


def _in_loop_thread() -> bool:
    return isinstance(getcurrent(), Thread)


def _ready(fileno: int, wanted: int, deadline: float | None) -> int:
    """Suspend until ``fileno`` is ready as ``wanted`` (a ``Wait``); the ``Ready`` bits.

    0 (``READY_NONE``) when the deadline passed first.
    """
    reads = [fileno] if wanted & waiting.WAIT_R else []
    writes = [fileno] if wanted & waiting.WAIT_W else []
    timeout = None if deadline is None else max(0.0, deadline - monotonic())
    readable, writable, _ = _select.select(reads, writes, [], timeout)
    return (waiting.READY_R if readable else 0) | (waiting.READY_W if writable else 0)


def _shut_down(fileno: int) -> None:
    """Shut the socket behind ``fileno`` down without closing the fd (libpq owns it)."""
    try:
        sock = socket.socket(fileno=fileno)
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

    In a loop thread, waiting suspends only that thread (``interval`` is not
    needed there: nothing has to be polled for); elsewhere psycopg's own
    function runs.  Returns the generator's result; raises
    ``psycopg.errors._WaitTimeout`` after ``timeout`` seconds, as psycopg's
    does, and whatever the generator raises.
    """
    if not _in_loop_thread():
        return _originals["wait"](gen, fileno, interval, timeout)
    deadline = None if timeout is None else monotonic() + timeout
    try:
        wanted = next(gen)
        while True:
            try:
                ready = _ready(fileno, wanted, deadline)
            except BaseException:
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
        return _originals["wait_conn"](gen, interval, timeout)
    deadline = None if timeout is None else monotonic() + timeout
    try:
        fileno, wanted = next(gen)
        while True:
            try:
                ready = _ready(fileno, wanted, deadline)
            except BaseException:
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
            _originals.setdefault(name, current)
            setattr(waiting, name, replacement)


def disable() -> None:
    """Put psycopg's own wait functions back."""
    for name, original in _originals.items():
        setattr(waiting, name, original)
    _originals.clear()
