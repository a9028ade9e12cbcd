"""The socketloop API on a loop whose threads are symmetric coroutines.

``from socketloop import coro as loop`` gives the same functions as
``socketloop`` (acting on the calling OS thread's default *symmetric* loop)
plus ``transfer(thread, arg)``, which passes control directly from one thread
to another.  See ``socketloop.CoroLoop`` for the model.

It offers the same public names as ``socketloop`` (the classes, exceptions,
primitives and ``patch``, which work with either kind of loop), so code can
switch with its import line alone; ``Loop`` here is ``CoroLoop``.  Only
``coro`` itself is not repeated, and only this module has ``transfer``.
"""

import threading as _threading
from typing import Any as _Any

from ._api import LoopFunctions as _LoopFunctions
from ._api import copy_docs as _copy_docs
from ._asocket import AsyncSocket
from ._coro import CoroLoop
from ._errors import BusyResourceError, DeadlockError, SendallTimeoutError, ThreadExit
from ._patch import patch, patched, unpatch
from ._server import Server
from ._sync import (
    BoundedSemaphore,
    Condition,
    Event,
    LifoQueue,
    Lock,
    PriorityQueue,
    Queue,
    RLock,
    Semaphore,
)
from ._threads import Thread
from ._timeouts import Timeout
from ._timers import TimerHandle
from ._tls import AsyncTLSSocket
from ._version import __version__
from ._workers import WorkerFunctions as _WorkerFunctions

__all__ = [
    "AsyncSocket",
    "AsyncTLSSocket",
    "BoundedSemaphore",
    "BusyResourceError",
    "Condition",
    "CoroLoop",
    "DeadlockError",
    "Event",
    "LifoQueue",
    "Lock",
    "Loop",
    "PriorityQueue",
    "Queue",
    "RLock",
    "Semaphore",
    "SendallTimeoutError",
    "Server",
    "Thread",
    "ThreadExit",
    "Timeout",
    "TimerHandle",
    "__version__",
    "call_later",
    "call_soon",
    "call_soon_threadsafe",
    "close",
    "connect",
    "connect_unix",
    "current",
    "dump",
    "get_loop",
    "getaddrinfo",
    "move_on_after",
    "newserver",
    "newserver_unix",
    "newthread",
    "on_signal",
    "patch",
    "patched",
    "resume",
    "resume_threadsafe",
    "run_in_thread",
    "run_server",
    "serve",
    "set_resolver",
    "sleep",
    "spawn",
    "start",
    "statistics",
    "step",
    "stop",
    "suspend",
    "timeout",
    "transfer",
    "unpatch",
    "watchdog",
    "wrap",
]

Loop = CoroLoop

_defaults = _threading.local()


def get_loop() -> CoroLoop:
    """The calling OS thread's default symmetric loop, created on first use.

    A default loop that has been closed is replaced by a fresh one.
    """
    loop: CoroLoop | None = getattr(_defaults, "loop", None)
    if loop is None or loop.closed:
        loop = _defaults.loop = CoroLoop()
        loop._implicit = True
    return loop


def _existing_loop() -> CoroLoop | None:
    """The calling OS thread's default symmetric loop if it has an open one; never creates it."""
    loop: CoroLoop | None = getattr(_defaults, "loop", None)
    return None if loop is None or loop.closed else loop


def transfer(thread: Thread[_Any], arg: _Any = None) -> _Any:
    """Pass control directly to ``thread``; see ``CoroLoop.transfer``."""
    return get_loop().transfer(thread, arg)


transfer.__doc__ = CoroLoop.transfer.__doc__

_functions: _LoopFunctions[CoroLoop] = _LoopFunctions(get_loop, _existing_loop, "socketloop.coro")
_copy_docs(_functions, CoroLoop)

call_later = _functions.call_later
call_soon = _functions.call_soon
call_soon_threadsafe = _functions.call_soon_threadsafe
close = _functions.close
connect = _functions.connect
connect_unix = _functions.connect_unix
current = _functions.current
dump = _functions.dump
getaddrinfo = _functions.getaddrinfo
move_on_after = _functions.move_on_after
newserver = _functions.newserver
newserver_unix = _functions.newserver_unix
serve = _functions.serve
newthread = _functions.newthread
on_signal = _functions.on_signal
resume = _functions.resume
resume_threadsafe = _functions.resume_threadsafe
run_in_thread = _functions.run_in_thread
set_resolver = _functions.set_resolver
sleep = _functions.sleep
spawn = _functions.spawn
start = _functions.start
statistics = _functions.statistics
step = _functions.step
stop = _functions.stop
suspend = _functions.suspend
timeout = _functions.timeout
watchdog = _functions.watchdog
wrap = _functions.wrap

_worker_functions: _WorkerFunctions[CoroLoop] = _WorkerFunctions(get_loop)
run_server = _worker_functions.run_server
