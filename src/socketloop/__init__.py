"""socketloop: TCP networking with stackful coroutines.

Wrap a ``socket.socket`` and keep its API; inside a loop thread, a call that
would block suspends only that thread.  Unmodified blocking code
(``http.client``, ``smtplib``, ``socketserver`` handlers) runs concurrently::

    import socketloop as loop

    def fetch(path):
        conn = http.client.HTTPConnection("127.0.0.1", 8000)
        conn.sock = loop.connect("127.0.0.1", 8000)
        conn.request("GET", path)
        return conn.getresponse().read()

    threads = [loop.newthread(fetch, f"/{i}") for i in range(10)]
    loop.start()

The module-level functions act on the calling OS thread's default loop
(``get_loop()``), whose threads are asymmetric coroutines (resume/suspend,
like Lua's).  ``socketloop.coro`` offers the same functions on a loop whose
threads are symmetric coroutines, plus ``transfer``.
"""

from __future__ import annotations

from . import coro
from ._api import LoopFunctions, copy_docs
from ._asocket import AsyncSocket
from ._coro import CoroLoop
from ._errors import BusyResourceError, SendallTimeoutError, ThreadExit
from ._loop import Loop, get_loop
from ._server import Server
from ._threads import Thread
from ._timers import TimerHandle

__version__ = "0.1.0"

_functions: LoopFunctions[Loop] = LoopFunctions(get_loop)
copy_docs(_functions, Loop)

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

__all__ = [
    "AsyncSocket",
    "BusyResourceError",
    "CoroLoop",
    "Loop",
    "SendallTimeoutError",
    "Server",
    "Thread",
    "ThreadExit",
    "TimerHandle",
    "__version__",
    "call_later",
    "call_soon",
    "connect",
    "coro",
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
    "wrap",
]
