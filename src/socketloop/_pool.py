"""OS-thread pools: run a blocking call elsewhere, suspend only the caller.

Charter: hand a call to a bounded pool of OS threads and park the calling
loop thread until the result comes back through the loop's thread-safe
wake-up.  The loop counts such waits as pending, so ``start()`` keeps running
for them.  Each loop has two pools: one for user work (``run_in_thread``)
and a small one for name resolution, so a burst of slow user calls can never
hold up ``connect()``'s DNS lookups.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from greenlet import getcurrent

from . import _originals
from ._threads import Thread

if TYPE_CHECKING:
    from ._loop import Loop

__all__ = ["DEFAULT_WORKERS", "RESOLVER_WORKERS", "ThreadPool"]

P = ParamSpec("P")
R = TypeVar("R")

#: Worker threads for ``run_in_thread``: the calls are expected to block on
#: I/O rather than burn CPU, so a few more than the cores (the reasoning of
#: concurrent.futures), capped so a flood of calls queues instead of
#: spawning hundreds of OS threads.
DEFAULT_WORKERS = min(32, (os.cpu_count() or 1) + 4)

#: Worker threads for name resolution: lookups are slow but light; four in
#: flight cover happy-eyeballs connects (two families) to two hosts at once.
RESOLVER_WORKERS = 4


class ThreadPool:
    """A lazily started ``ThreadPoolExecutor`` bound to one loop."""

    def __init__(self, loop: Loop, max_workers: int, name: str) -> None:
        self._loop = loop
        self.max_workers = max_workers
        self._name = name
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.active = 0  # calls submitted and not yet returned to their thread

    def _get_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        executor = self._executor
        if executor is None:
            executor = self._executor = concurrent.futures.ThreadPoolExecutor(
                self.max_workers, thread_name_prefix=self._name
            )
        return executor

    def run(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn`` in the pool, suspending only the calling loop thread.

        Outside the loop's threads the call simply runs in the caller.  The
        result is returned, or the exception re-raised, in the caller.
        """
        loop = self._loop
        current = getcurrent()
        if not (isinstance(current, Thread) and current._loop is loop):
            loop._refuse_in_dispatcher(current, "run_in_thread()")
            return fn(*args, **kwargs)
        if loop._closed:
            raise RuntimeError("this loop is closed")
        future = self._get_executor().submit(fn, *args, **kwargs)
        self.active += 1
        # The wake-up is posted only while the caller still waits for it: a
        # call that is already done when the callback is added, or a caller
        # killed meanwhile, must leave nothing in the loop's queue.
        lock = _originals.allocate_lock()
        waiting = True
        arrived = False

        def arrive() -> None:  # runs in the loop's OS thread
            nonlocal arrived
            arrived = True
            loop._wake_now(current, future)

        def done(_: concurrent.futures.Future[R]) -> None:
            nonlocal arrived
            with lock:
                if not waiting:
                    return
                if getcurrent() is current:  # called at once by add_done_callback
                    arrived = True
                else:  # in a worker
                    loop.call_soon_threadsafe(arrive)

        future.add_done_callback(done)
        try:
            while not arrived:
                loop._block(current, future, external=True)
        finally:
            with lock:
                waiting = False
            self.active -= 1
            future.cancel()  # only succeeds if it never started
        return future.result()

    def shutdown(self) -> None:
        executor = self._executor
        self._executor = None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def forget(self) -> None:
        """After fork: the workers do not exist in the child; start afresh when needed."""
        self._executor = None
        self.active = 0


def system_getaddrinfo(
    host: Any, port: Any, family: int, type: int, proto: int, flags: int
) -> list[tuple[Any, ...]]:
    """The blocking system resolver (what the default resolver runs in its pool)."""
    return _originals.getaddrinfo(host, port, family, type, proto, flags)
