"""Fork handling: what a forked child does with the loops it inherited.

Charter: one ``os.register_at_fork`` hook per process, which runs the
callbacks the kernel registered (each open loop replaces its driver, wake-up
fd and pools, and abandons its threads), and a place where abandoned objects
are kept alive.  Abandoned threads must never run again in the child: if
garbage collection freed them, their ``finally`` blocks would run and could
close or write to sockets the parent still uses.  This module must not
import the kernel or anything above it; it never touches a loop itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

__all__ = ["abandon", "at_fork_in_child"]

_callbacks: list[Callable[[], None]] = []

#: Objects a forked child inherited and must neither use nor free.
_abandoned: list[object] = []


def at_fork_in_child(callback: Callable[[], None]) -> None:
    """Run ``callback()`` in every child forked from now on (in registration order)."""
    _callbacks.append(callback)


def abandon(objects: Iterable[object]) -> None:
    """Keep ``objects`` alive for the life of this process, never to be used."""
    _abandoned.extend(objects)


def _after_fork_in_child() -> None:
    for callback in _callbacks:
        callback()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
