"""The host driver: a socketloop loop run by an asyncio (or uvloop) event loop.

Charter
-------
Make a running asyncio loop (the *host*) drive a socketloop loop instead of
``start()``: tell the host when a step is due, run it, and get out of the way.
The loop keeps everything it has natively (its own edge-triggered epoll set,
registered once per socket; the ready queue; the timer heap; the wake-up
pipe).  This module reaches into the loop only through the "host driver
entry points" of the kernel (``_kernel.Kernel``) plus its documented seam
(``_poller.fileno()``, ``_next_timeout``, ``_block``/``_wake``), and must not
grow scheduling logic of its own:
what runs when inside a step is the loop's business.  It knows nothing about
``await_`` or ``await thread`` either (``socketloop.aio``, above it).

How the host drives the loop
----------------------------
- **One fd.**  The host watches the loop's epoll fd with ``add_reader``.
  epoll fds are pollable: readable while their ready list is non-empty.  When
  the host reports it, the driver runs one non-blocking step
  (``_host_step``), which polls the inner epoll set with a timeout of 0,
  taking at most ``MAX_EVENTS_PER_STEP`` events.  Events beyond the cap stay
  in the ready list, the fd stays readable and the host reports it again
  after its own callbacks have run: neither side can starve the other.
- **Ready work.**  A step runs only what was ready when it began (the loop's
  rule).  If a step leaves threads or callbacks ready, the driver schedules
  one more step with ``call_soon``, so the host's handles run in between.
- **Work added from asyncio code** (``spawn`` in a coroutine, ``Event.set()``
  in a callback, ``kill(block=False)``...) kicks the driver through the
  kernel's hosted ``_claim``/``_schedule`` variants (``kick``): one ``call_soon``
  step, deduplicated.
- **One host timer** (``call_later``) for the earliest socketloop deadline,
  re-armed after each step only when the earliest deadline moved earlier (an
  early wake-up runs an empty step and re-arms: harmless and rare).
- **Other OS threads** keep using ``call_soon_threadsafe``: it writes the
  loop's wake-up pipe, which sits in the inner epoll set, so the epoll fd becomes
  readable and the host wakes up exactly as for I/O.
- **The poll backend** has no fd to hand over: the driver watches each fd a
  thread waits on with ``add_reader``/``add_writer`` (the poller reports its
  interest changes), and a report schedules a step.

What it costs: the host's epoll watches the inner epoll fd level-triggered,
so every wake-up costs the host's ``epoll_wait`` plus the inner one (two
system calls where ``start()`` makes one), and a step that left nothing ready
costs no extra host iteration.  Threads that block on I/O do not touch the
host at all (no ``add_reader`` per wait, unlike a per-fd bridge).

Signals: nothing here installs a SIGINT handler or touches
``signal.set_wakeup_fd`` (both belong to the host); ``on_signal`` of a hosted
loop goes through the host's ``add_signal_handler``.

Fork: a child forked while a loop is hosted gets the loop back detached (see
``_after_fork_in_child``); the inherited asyncio loop shares the parent's
epoll instance, so it cannot drive anything safely in the child.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import time
from collections.abc import Callable

from greenlet import greenlet

from . import _scheduler
from ._loop import Loop
from ._threads import Thread

__all__ = ["MAX_EVENTS_PER_STEP", "HostDriver", "driver_of"]

logger = logging.getLogger("socketloop.aio")

#: Readiness events one hosted step takes at most.  A step over 256 ready
#: connections takes well under a millisecond per few dozen echo requests,
#: so the host's own callbacks wait at most a few milliseconds behind a
#: flood; epoll keeps the rest (and rotates fairly) for the next step.
MAX_EVENTS_PER_STEP = 256

#: The driver of each hosting asyncio loop, by ``id()`` of the host (uvloop's
#: loops cannot be weakly referenced); entries live exactly while hosted.
_drivers: dict[int, HostDriver] = {}


def driver_of(loop: Loop) -> HostDriver | None:
    """The driver hosting ``loop``, or None."""
    driver = loop._host
    return driver if isinstance(driver, HostDriver) else None


def _hint(what: str | None) -> str:
    call = what or "a blocking socketloop call (socket operation or primitive wait)"
    extra = ""
    if what is not None and ("join" in what or "kill" in what):
        extra = " Use `await thread` instead of join(), and kill(block=False) to kill."
    return (
        f"{call} from asyncio code would freeze the asyncio loop that hosts socketloop: "
        "run blocking code in a socketloop thread (`thread = socketloop.spawn(fn)`, then "
        "`await thread`), and from such a thread call async code with "
        f"`socketloop.aio.await_(...)`.{extra}"
    )


def _guard(g: greenlet, what: str | None) -> None:
    """``_scheduler.host_guard`` while anything is hosted (see there)."""
    if isinstance(g, Thread):
        return
    host = asyncio._get_running_loop()
    if host is not None and id(host) in _drivers and _drivers[id(host)].host is host:
        raise RuntimeError(_hint(what))


class HostDriver:
    """Drives one socketloop loop from one running asyncio loop (see the charter).

    Not thread-safe: every method runs in the host's OS thread (the one the
    loop belongs to).
    """

    def __init__(self, loop: Loop, host: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.host = host
        self.pid = os.getpid()
        self._fd = -1
        self._soon: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._readers: set[int] = set()
        self._writers: set[int] = set()
        self._signals: set[int] = set()
        self._idle: list[asyncio.Future[None]] = []
        self.attached = False

    # -------------------------------------------------------------- attach

    def attach(self) -> None:
        """Start driving the loop.  Raises ``RuntimeError`` when the host already
        hosts a loop, or the loop is hosted, running or used from a thread."""
        other = _drivers.get(id(self.host))
        if other is not None and other.host is self.host:
            if other.loop is self.loop:
                raise RuntimeError(f"{self.loop!r} is already hosted by this asyncio loop")
            raise RuntimeError(
                "this asyncio loop already hosts a socketloop loop (one per asyncio loop)"
            )
        loop = self.loop
        loop._host_attach(self, self.kick)
        try:
            self._fd = loop._poller.fileno()
            if self._fd >= 0:
                loop._host_set_max_events(MAX_EVENTS_PER_STEP)
                self.host.add_reader(self._fd, self._on_readable)
            else:
                loop._host_observe_interest(self._on_interest)
        except BaseException:
            loop._host_detach()
            raise
        _drivers[id(self.host)] = self
        _scheduler.host_guard = _guard
        self.attached = True
        self.kick()  # work may be pending from before

    def detach(self) -> None:
        """Stop driving the loop; what is still pending stays in it.  Idempotent."""
        if not self.attached:
            return
        self.attached = False
        if _drivers.get(id(self.host)) is self:
            del _drivers[id(self.host)]
        if not _drivers:
            _scheduler.host_guard = None
        loop = self.loop
        loop._host_detach()
        for handle in (self._soon, self._timer):
            if handle is not None:
                handle.cancel()
        self._soon = self._timer = None
        if os.getpid() != self.pid:
            return  # forked: the host's registrations belong to the parent
        if self._fd >= 0:
            loop._host_set_max_events(-1)
            self.host.remove_reader(self._fd)
        else:
            loop._host_observe_interest(None)
            for fd in self._readers:
                self.host.remove_reader(fd)
            for fd in self._writers:
                self.host.remove_writer(fd)
            self._readers.clear()
            self._writers.clear()
        for signum in self._signals:
            self.host.remove_signal_handler(signum)
        self._signals.clear()
        for future in self._idle:
            if not future.done():
                future.cancel()

    # --------------------------------------------------------------- steps

    def kick(self) -> None:
        """Ask for one step soon (deduplicated)."""
        if self._soon is None and self.attached:
            self._soon = self.host.call_soon(self._on_soon)

    def _on_soon(self) -> None:
        self._soon = None
        self._run_step()

    def _on_readable(self) -> None:
        self._run_step()

    def _on_timer(self) -> None:
        self._timer = None
        self._run_step()

    def _run_step(self) -> None:
        if not self.attached:
            return
        loop = self.loop
        more = False
        try:
            more = loop._host_step()
        finally:
            # Also after KeyboardInterrupt/SystemExit out of a thread (which
            # propagate to the host, as they would out of start()): the loop
            # stays driven if the host carries on.
            if self.attached:
                if more:
                    self.kick()  # the next step re-arms the timer
                else:
                    self._arm_timer()
                if self._idle and not loop.threads():
                    self._wake_idle()

    def _arm_timer(self) -> None:
        delay = self.loop._next_timeout(None)  # (0 here: a timer is due already)
        when = None if delay is None else time.monotonic() + delay
        timer = self._timer
        if when is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        if timer is not None:
            if self._timer_when <= when:
                return  # an earlier wake-up is due anyway
            timer.cancel()
        self._timer_when = when
        self._timer = self.host.call_later(max(0.0, when - time.monotonic()), self._on_timer)

    # ---------------------------------------------- per-fd fallback (poll)

    def _on_interest(self, fd: int, mask: int) -> None:
        host = self.host
        if mask & select.POLLIN:
            if fd not in self._readers:
                self._readers.add(fd)
                host.add_reader(fd, self.kick)
        elif fd in self._readers:
            self._readers.discard(fd)
            host.remove_reader(fd)
        if mask & select.POLLOUT:
            if fd not in self._writers:
                self._writers.add(fd)
                host.add_writer(fd, self.kick)
        elif fd in self._writers:
            self._writers.discard(fd)
            host.remove_writer(fd)

    # ------------------------------------------------------------ idleness

    def wait_idle(self) -> asyncio.Future[None]:
        """A future done once the loop has no thread left (checked after each step)."""
        future: asyncio.Future[None] = self.host.create_future()
        self._idle.append(future)
        if not self.loop.threads():
            self._wake_idle()
        return future

    def _wake_idle(self) -> None:
        idle, self._idle = self._idle, []
        for future in idle:
            if not future.done():
                future.set_result(None)

    # ------------------------------------------------------------- signals

    def on_signal(self, signum: int, handler: Callable[[int], object] | None) -> None:
        """``loop.on_signal`` while hosted: through ``add_signal_handler``.

        Each delivery spawns ``handler(signum)`` in a new loop thread.  The
        handlers are removed when hosting ends.  Raises what the host raises
        (``RuntimeError``/``ValueError`` outside the main OS thread).
        """
        if handler is None:
            if signum in self._signals:
                self._signals.discard(signum)
                self.host.remove_signal_handler(signum)
            return
        self.host.add_signal_handler(signum, self._deliver_signal, handler, signum)
        self._signals.add(signum)

    def _deliver_signal(self, handler: Callable[[int], object], signum: int) -> None:
        thread = self.loop.spawn(handler, signum)
        thread.name = f"signal {signal.Signals(signum).name} handler"


def _after_fork_in_child() -> None:
    # The child's copies of the hosting asyncio loops share the parent's
    # epoll instances: touching their registrations would change the
    # parent's.  Detach every loop without a word to its host.
    drivers = list(_drivers.values())
    _drivers.clear()
    _scheduler.host_guard = None
    for driver in drivers:
        driver.attached = False
        driver.loop._host_detach()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
