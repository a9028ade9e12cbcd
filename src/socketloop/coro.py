"""The socketloop API on a loop whose threads are symmetric coroutines.

``from socketloop import coro as loop`` gives the same functions as
``socketloop`` (acting on the calling OS thread's default *symmetric* loop)
plus ``transfer(thread, arg)``, which passes control directly from one thread
to another.  See ``socketloop.CoroLoop`` for the model.
"""

from __future__ import annotations

import threading
from typing import Any

from ._api import LoopFunctions, copy_docs
from ._coro import CoroLoop
from ._threads import Thread

__all__ = [
    "Loop",
    "call_later",
    "call_soon",
    "connect",
    "current",
    "get_loop",
    "getaddrinfo",
    "newserver",
    "newthread",
    "resume",
    "sleep",
    "spawn",
    "start",
    "step",
    "stop",
    "suspend",
    "transfer",
    "wrap",
]

Loop = CoroLoop

_defaults = threading.local()


def get_loop() -> CoroLoop:
    """The calling OS thread's default symmetric loop, created on first use.

    A default loop that has been closed is replaced by a fresh one.
    """
    loop: CoroLoop | None = getattr(_defaults, "loop", None)
    if loop is None or loop.closed:
        loop = _defaults.loop = CoroLoop()
    return loop


def transfer(thread: Thread[Any], arg: Any = None) -> Any:
    """Pass control directly to ``thread``; see ``CoroLoop.transfer``."""
    return get_loop().transfer(thread, arg)


transfer.__doc__ = CoroLoop.transfer.__doc__

_functions: LoopFunctions[CoroLoop] = LoopFunctions(get_loop)
copy_docs(_functions, CoroLoop)

wrap = _functions.wrap
connect = _functions.connect
newthread = _functions.newthread
spawn = _functions.spawn
current = _functions.current
suspend = _functions.suspend
resume = _functions.resume
newserver = _functions.newserver
start = _functions.start
stop = _functions.stop
step = _functions.step
sleep = _functions.sleep
getaddrinfo = _functions.getaddrinfo
call_soon = _functions.call_soon
call_later = _functions.call_later
