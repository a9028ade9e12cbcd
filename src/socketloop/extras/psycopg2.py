"""psycopg2 in loop threads, through its wait-callback hook: ``enable()``.

Charter: install a psycopg2 wait callback
(``psycopg2.extensions.set_wait_callback``) that waits on the connection's
socket cooperatively when called in a loop thread and with a plain blocking
``select`` otherwise.  With the callback installed, psycopg2 runs every
connection in its "green" mode: libpq never blocks, and psycopg2 calls the
callback whenever it has to wait.  This module must not wait in any other
way, keep any state of its own beyond the installed callback, or import
psycopg2 before it is itself imported.

Interruptions: when a thread waiting in the callback is interrupted (a
``timeout()`` scope expires, ``Thread.kill``), the exception leaves the
callback and psycopg2 closes the connection, because its protocol state is
unknown at that point: ``conn.closed`` is then non-zero and the next call on
it raises ``psycopg2.InterfaceError``.  The query may keep running at the
server until it notices the closed connection.
"""

from __future__ import annotations

from typing import Any

import psycopg2  # type: ignore[import-untyped]
import psycopg2.extensions  # type: ignore[import-untyped]

from .. import _select

__all__ = ["disable", "enable", "wait"]


def wait(conn: Any) -> None:
    """Drive ``conn`` (a psycopg2 connection) until its current operation completes.

    The wait callback itself; ``enable()`` installs it.  Inside a loop thread
    each wait on the socket suspends only that thread; elsewhere it blocks in
    ``select``.  Raises what ``conn.poll()`` raises (``psycopg2.OperationalError``
    for a lost connection, the query's own error) and
    ``psycopg2.OperationalError`` for a poll state psycopg2 does not document.
    """
    extensions = psycopg2.extensions
    while True:
        state = conn.poll()
        if state == extensions.POLL_OK:
            return
        fd = conn.fileno()
        if state == extensions.POLL_READ:
            _select.select([fd], [], [])
        elif state == extensions.POLL_WRITE:
            _select.select([], [fd], [])
        else:
            raise psycopg2.OperationalError(f"unexpected state from poll(): {state!r}")


def enable() -> None:
    """Make psycopg2 wait through ``wait`` from now on, for every connection.

    Process-wide (psycopg2 has one callback), idempotent, and harmless for
    connections used outside loop threads (they block as before).  Affects
    connections created afterwards; psycopg2 does not allow changing the mode
    of an open connection.
    """
    psycopg2.extensions.set_wait_callback(wait)


def disable() -> None:
    """Remove the callback: connections created afterwards block as usual."""
    psycopg2.extensions.set_wait_callback(None)
