"""socketloop inside asyncio and uvloop: threads and tasks in one OS thread.

Charter: the public face of hosting.  ``hosted()`` attaches a loop to the
running asyncio loop for the duration of an ``async with`` block (the driving
itself is ``_hostdriver``'s), ``await thread`` lets asyncio code wait for a
socketloop thread, and ``await_()`` lets a socketloop thread wait for asyncio
code.  This module must not schedule anything itself: a thread waits through
the loop's entry points and is woken by the loop's dispatcher, a task is a
plain asyncio task.

::

    async def main():
        async with socketloop.aio.hosted():
            thread = socketloop.spawn(fetch, "/")    # blocking code, in a thread
            body = await thread                      # ... awaited from asyncio

    def fetch(path):                                 # in a socketloop thread
        conn = http.client.HTTPConnection("127.0.0.1", 8000)
        conn.sock = socketloop.connect("127.0.0.1", 8000)
        ...
        value = socketloop.aio.await_(redis_client.get("k"))   # async code, from a thread

    asyncio.run(main())                              # or uvloop.run(main())
"""

from __future__ import annotations

import asyncio
import inspect
import os
import types
from collections.abc import Awaitable, Generator
from typing import Any, TypeVar

from greenlet import getcurrent

from . import _threads
from ._hostdriver import MAX_EVENTS_PER_STEP, HostDriver, driver_of
from ._loop import Loop, get_loop
from ._server import open_servers
from ._threads import Thread

__all__ = ["MAX_EVENTS_PER_STEP", "Hosted", "await_", "hosted"]

T = TypeVar("T")


class Hosted:
    """``async with socketloop.aio.hosted(loop):`` (see ``hosted``)."""

    def __init__(self, loop: Loop | None) -> None:
        self._loop = loop
        self._driver: HostDriver | None = None

    async def __aenter__(self) -> Loop:
        loop = self._loop if self._loop is not None else get_loop()
        driver = HostDriver(loop, asyncio.get_running_loop())
        driver.attach()
        self._driver = driver
        return loop

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        driver = self._driver
        assert driver is not None, "__aexit__ without __aenter__"
        self._driver = None
        try:
            if driver.pid != os.getpid():
                raise RuntimeError(
                    "hosted() left in a forked child: the loop was detached at the fork "
                    "(the asyncio loop inherited from the parent cannot drive it)"
                )
            if exc is None:
                try:
                    await driver.wait_idle()
                except BaseException:
                    await _unwind(driver)
                    raise
            else:
                await _unwind(driver)
        finally:
            driver.detach()


def hosted(loop: Loop | None = None) -> Hosted:
    """Attach ``loop`` (default: ``socketloop.get_loop()``) to the running asyncio loop.

    ``async with socketloop.aio.hosted() as loop:``: inside the block the
    asyncio loop drives ``loop`` (no ``start()``); every socketloop function
    works as under ``start()``.  Leaving the block normally waits until the
    loop's threads have ended (an open server keeps it waiting until closed),
    like ``asyncio.TaskGroup``.  An exception or cancellation closes the
    loop's servers, kills its threads (``ThreadExit``: their ``finally``
    blocks run), waits for them to unwind, then propagates.

    Raises ``RuntimeError`` outside a running asyncio loop, when this asyncio
    loop already hosts a loop, when ``loop`` is already hosted or running, or
    when it belongs to another OS thread.  While hosted, ``loop.start()``,
    ``step()`` and ``close()`` raise ``RuntimeError``, and blocking socketloop
    calls made from asyncio code (not from a loop thread) raise
    ``RuntimeError`` naming ``spawn`` + ``await thread`` and ``await_``.
    """
    return Hosted(loop)


async def _unwind(driver: HostDriver) -> None:
    """Close the servers, kill the threads and wait until they have ended.

    A cancellation arriving meanwhile does not cut the wait short (threads
    left half-unwound would hold sockets and locks): the threads are killed
    again and waited for, and the cancellation propagates afterwards.
    """
    loop = driver.loop
    cancelled: BaseException | None = None
    while True:
        for server in open_servers(loop):
            server.close()
        for thread in loop.threads():
            thread.kill(block=False)
        try:
            await driver.wait_idle()
        except asyncio.CancelledError as exc:
            cancelled = exc
            continue
        break
    if cancelled is not None:
        raise cancelled


# ------------------------------------------------------------- await thread


def _await_thread(thread: Thread[T]) -> Generator[Any, None, T]:
    """``Thread.__await__``: the thread's result, or its exception re-raised."""
    if thread.dead:
        return thread.join()  # ended: join() neither blocks nor runs the loop
    loop = thread.loop
    driver = driver_of(loop)
    host = asyncio._get_running_loop()
    if driver is None or host is not driver.host:
        raise RuntimeError(
            f"cannot await {thread!r}: its loop is not hosted by the running asyncio loop "
            "(use `async with socketloop.aio.hosted():`)"
        )
    future: asyncio.Future[T] = host.create_future()
    loop.spawn(_watch, thread, future)
    try:
        return (yield from future)
    except asyncio.CancelledError:
        if thread.dead:
            raise
        # As awaiting a task cancels it: kill the thread, wait for it to
        # end, then let the cancellation go on.
        thread.kill(block=False)
        while not thread.dead:
            done: asyncio.Future[T] = host.create_future()
            loop.spawn(_watch, thread, done)
            try:
                yield from done
            except asyncio.CancelledError:
                thread.kill(block=False)
            except BaseException:
                pass  # its own exception: it has ended
        raise


def _watch(thread: Thread[T], future: asyncio.Future[T]) -> None:
    """In a loop thread: settle ``future`` with ``thread``'s outcome once it ends."""
    while True:
        try:
            result = thread.join()
        except BaseException as exc:
            if not thread.dead:
                # This watcher was killed (hosted() unwinding kills every
                # thread), not the watched one: the awaiting side still needs
                # the outcome, and the watched thread is being killed too.
                continue
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)
        return


_threads.await_hook = _await_thread


# ------------------------------------------------------------------ await_


def await_(awaitable: Awaitable[T]) -> T:
    """Run ``awaitable`` on the hosting asyncio loop; suspend only the calling thread.

    Only in a thread of a hosted loop.  A coroutine runs as a real asyncio
    Task (``current_task()``, ``asyncio.timeout`` and context variables work;
    the task starts with a copy of the thread's context); a future or other
    awaitable is wrapped with ``asyncio.ensure_future``.  Returns its result
    or raises its exception.  Killing the thread, or a socketloop timeout
    scope (``with socketloop.timeout(s):``) expiring, cancels the task and
    waits for it to finish before the kill/timeout propagates; a task
    cancelled by someone else raises ``asyncio.CancelledError`` here.
    Raises ``RuntimeError`` elsewhere (in asyncio code, just ``await``).
    """
    g = getcurrent()
    loop = g.loop if isinstance(g, Thread) else None
    driver = driver_of(loop) if loop is not None else None
    if driver is None or loop is None:
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # never awaited: no "was never awaited" warning
        where = (
            "in asyncio code, use `await` directly"
            if not isinstance(g, Thread)
            else "this thread's loop is not hosted: use `async with socketloop.aio.hosted():`"
        )
        raise RuntimeError(f"await_() works only in a socketloop thread of a hosted loop; {where}")
    host = driver.host
    task: asyncio.Future[T]
    if inspect.iscoroutine(awaitable):
        task = host.create_task(awaitable)
    else:
        task = asyncio.ensure_future(awaitable, loop=host)
    if not task.done():
        thread: Thread[Any] = g  # type: ignore[assignment]
        task.add_done_callback(lambda done: loop._wake(thread, source=done))
        try:
            loop._block(thread, task)
        except BaseException:
            # Killed, a timeout scope expired, or interrupted: the task must
            # not outlive the wait it belongs to.
            task.cancel()
            while not task.done():
                try:
                    loop._block(thread, task)
                except BaseException:
                    pass  # interrupted again: still wait; the first reason propagates
            raise
    return task.result()
