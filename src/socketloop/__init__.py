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

from . import (
    _originals,  # noqa: F401  (first: captures the stdlib before any patch)
    coro,
)
from ._api import LoopFunctions as _LoopFunctions
from ._api import copy_docs as _copy_docs
from ._asocket import AsyncSocket
from ._coro import CoroLoop
from ._errors import BusyResourceError, DeadlockError, SendallTimeoutError, ThreadExit
from ._loop import Loop, get_loop
from ._loop import existing_loop as _existing_loop
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

#: Submodules loaded on first attribute access (PEP 562), so that
#: ``import socketloop`` stays cheap and ``socketloop.ssl.create_default_context()``
#: works without a separate ``import socketloop.ssl``.  Every public submodule
#: belongs here (tests/test_package.py checks).
_LAZY_SUBMODULES = frozenset({"aio", "extras", "gunicorn", "socket", "ssl", "testing", "wsgi"})


def __getattr__(name: str) -> object:
    if name in _LAZY_SUBMODULES:
        import importlib

        # import_module binds the submodule as an attribute of the package,
        # so __getattr__ runs once per submodule.
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_SUBMODULES)


_functions: _LoopFunctions[Loop] = _LoopFunctions(get_loop, _existing_loop, "socketloop")
_copy_docs(_functions, Loop)

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

_worker_functions: _WorkerFunctions[Loop] = _WorkerFunctions(get_loop)
run_server = _worker_functions.run_server

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
    "coro",
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
    "unpatch",
    "watchdog",
    "wrap",
]

# The public classes live in private modules; they report the package as
# their module, so that tracebacks, reprs and help() name what users import
# (socketloop.BusyResourceError, not socketloop._errors.BusyResourceError).
for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type) and _value.__module__.startswith("socketloop._"):
        _value.__module__ = __name__
del _name, _value
