"""Worker processes: ``run_server`` serves one handler on every core.

Charter: own the process model.  A supervisor process opens the listening
sockets, forks worker processes that each run their own loop and server over
an inherited listener, and keeps them alive: replaces the dead (with back-off
when they die at start), kills the blocked (no heartbeat from inside their
loop), restarts them one at a time on SIGHUP, grows and shrinks on
SIGTTIN/SIGTTOU, recycles them after ``max_requests`` connections, and stops
them gracefully on SIGTERM/SIGINT.  The supervisor runs no loop, no loop
thread and no OS-thread pool, and refuses to fork while any exists.  This
module must not reach into the loop's scheduling, and workers must never
return into the caller's code after the fork (they end with ``os._exit``).

How the port is held (measured on Linux 6.x, see docs/workers.md)
-----------------------------------------------------------------
* A bound, non-listening ``SO_REUSEPORT`` socket holds nothing: another
  process, even of another user, binds the port with ``SO_REUSEPORT`` (or
  with plain ``SO_REUSEADDR`` and listens) while it exists; it receives no
  connections (``accept`` fails with ``EINVAL``; with only it bound, connects
  are refused).  Only *listening* members form the reuseport group, and only
  a group restricts joiners to the same user.  So it cannot make a second
  instance fail.
* A bind *without* ``SO_REUSEPORT`` fails with ``EADDRINUSE`` whenever any
  socket listens on the port, reuseport group or not.  So the supervisor
  first binds such a socket (``SO_REUSEADDR``, not listening; it does not
  stop its own ``SO_REUSEPORT`` listeners from binding): that is where a
  second instance fails fast.
* Closing a ``SO_REUSEPORT`` listener resets the connections queued in its
  accept queue (unless ``net.ipv4.tcp_migrate_req`` is set, off by default);
  in the measurement about half of 200 queued connections over two listeners
  were reset.  With the file kept open by another descriptor nothing is
  lost.  So the supervisor opens every worker's listener itself (one per
  worker *slot*) and keeps it for the whole run: a worker that exits, is
  killed or is restarted leaves its queue to its successor, and while
  ``run_server`` runs the port always has listeners, so the probe above
  fails for anyone else.
"""

from __future__ import annotations

import logging
import mmap
import os
import random
import signal
import socket as _socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

from greenlet import getcurrent

from . import _originals
from ._kernel import open_loops
from ._server import DEFAULT_BACKLOG, STOP_UNWIND_TIMEOUT, bind_socket
from ._threads import Thread

if TYPE_CHECKING:
    from ._asocket import AsyncSocket
    from ._loop import Loop
    from ._server import Server

__all__ = ["WorkerFunctions", "check_can_fork"]

logger = logging.getLogger("socketloop.workers")

L = TypeVar("L", bound="Loop")
Handler = Callable[["AsyncSocket"], object]

#: Seconds a worker's loop may go without a heartbeat before it is killed
#: (gunicorn's default worker timeout): long enough for a slow but healthy
#: handler to stay clear of it, short enough that a wedged worker does not
#: hold its share of connections for minutes.
DEFAULT_TIMEOUT = 30.0

#: Seconds in-flight connections get to finish on a graceful stop.
DEFAULT_GRACE = 30.0

#: After its grace period a stopping worker still gets this long (closing the
#: leftover connections, their unwinding, process exit) before SIGKILL.
KILL_MARGIN = STOP_UNWIND_TIMEOUT + 2.0

#: A worker that dies sooner than this after it started serving (or before)
#: "dies at start": its slot is refilled after a back-off that doubles from
#: BACKOFF_MIN up to BACKOFF_MAX, so a crash loop costs little CPU and log.
MIN_UPTIME = 1.0
BACKOFF_MIN = 0.1
BACKOFF_MAX = 10.0

#: Exit status of a worker that could not start serving (bad server options,
#: say).  If no worker of the run ever served, the supervisor stops and
#: raises instead of retrying for ever.
BOOT_ERROR = 3

#: Longest the supervisor sleeps between checks, whatever ``timeout`` is.
MAX_TICK = 0.5

#: Upper bound for ``workers`` (and SIGTTIN): the heartbeat records are one
#: fixed shared mapping, two per slot (a worker and its successor overlap).
MAX_WORKERS = 512

BALANCE_MODES = ("reuseport", "shared")

#: The signals the supervisor handles.
HANDLED_SIGNALS = {
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
}

# Worker states, written by the worker into its record.
STARTING, SERVING, DRAINING = 0, 1, 2

#: Why a worker drains on its own, written into its record.
DRAIN_REASONS = ("", "max_requests", "signal", "supervisor gone")

#: One record per live worker in a shared anonymous mapping: pid, heartbeat
#: counter, state, accepted connections, handler errors, drain reason.  The supervisor only
#: watches the counter *change* (by its own clock), so a torn read can delay
#: a kill by one check but never cause one.
_RECORD = struct.Struct("<6q")


def check_can_fork() -> None:
    """Raise ``RuntimeError`` unless forking worker processes is safe here.

    Refused: a loop that is running or has threads (they would be copied
    into every worker and never run there), a socketloop OS-thread pool
    (``run_in_thread``, the resolver) or watchdog thread, a running asyncio
    loop or its executor threads (a fork copies their locks in whatever state
    they are in).  Other OS threads are logged as a warning.
    """
    problems: list[str] = []
    for loop in open_loops():
        if loop.running:
            problems.append(f"{loop!r} is running")
        threads = loop.threads()
        if threads:
            names = ", ".join(repr(t.name) for t in threads[:3])
            problems.append(f"{loop!r} has {len(threads)} thread(s) ({names})")
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and asyncio.events._get_running_loop() is not None:
        problems.append("an asyncio event loop is running")
    others = []
    for thread in threading.enumerate():
        if thread is threading.current_thread() or not thread.is_alive():
            continue
        if thread.name.startswith(("socketloop-", "asyncio_")):
            problems.append(f"OS thread {thread.name!r} is alive")
        else:
            others.append(thread.name)
    if problems:
        raise RuntimeError(
            "run_server() cannot fork worker processes: "
            + "; ".join(problems)
            + ".  Call it before any loop thread, run_in_thread() pool, resolver lookup or "
            "asyncio loop exists (each worker makes its own), or close them first."
        )
    if others:
        logger.warning(
            "forking worker processes while other OS threads exist (%s): "
            "only the calling thread is copied",
            ", ".join(others),
        )


class WorkerFunctions(Generic[L]):
    """``run_server`` bound to a module's default-loop function (like ``LoopFunctions``)."""

    def __init__(self, get_loop: Callable[[], L]) -> None:
        self.get_loop = get_loop

    def run_server(
        self,
        host: str | None,
        port: int,
        handler: Handler,
        *,
        workers: int = 1,
        balance: str = "reuseport",
        timeout: float = DEFAULT_TIMEOUT,
        grace: float = DEFAULT_GRACE,
        max_requests: int = 0,
        max_requests_jitter: int = 0,
        **server_options: Any,
    ) -> dict[str, Any]:
        """Serve ``handler`` on ``host``:``port`` in ``workers`` processes; block until stopped.

        ``handler`` and ``server_options`` are what ``newserver`` takes; each
        worker runs its own default loop with one server (``backlog`` and
        ``family`` apply to the listeners the supervisor binds, ``reuse_port``
        is implied by the balance mode).  ``workers=1``
        serves in the calling process (no fork, no supervision; SIGTERM and
        SIGINT stop it gracefully, ``max_requests`` is refused).  With more,
        the calling process becomes the supervisor:

        * ``balance="reuseport"`` (default): every worker accepts from its
          own ``SO_REUSEPORT`` listener and the kernel spreads connections by
          hash; ``"shared"``: one listener, inherited by all, registered with
          ``EPOLLEXCLUSIVE`` so a connection wakes one idle worker, which
          accepts one connection per turn of its loop.
        * a worker that dies is replaced (after a back-off if it keeps dying
          at start); one whose loop sends no heartbeat for ``timeout``
          seconds (a handler blocking the loop) is killed and replaced;
          after ``max_requests`` connections (plus a random
          0..``max_requests_jitter``) a worker stops accepting, its
          successor starts, and it finishes its connections.
        * SIGTERM/SIGINT: graceful stop (stop accepting, give in-flight
          connections ``grace`` seconds, then close them and end their
          threads with ``ThreadExit``); a second one kills the workers.
          SIGHUP: rolling restart, one worker at a time, each successor
          serving before its predecessor stops.  SIGTTIN/SIGTTOU: one worker
          more/less.

        Returns a summary (also logged): connections accepted per worker,
        replacements, kills, recycles.  Raises ``OSError(EADDRINUSE)`` at once
        if anything listens on the port already (a second instance), and
        ``RuntimeError`` if forking is unsafe (see ``check_can_fork``), if
        called from a loop thread or outside the main OS thread, or if no
        worker could ever start serving.  ``ValueError`` for bad arguments.
        """
        config = _Config(
            host=host,
            port=port,
            handler=handler,
            workers=workers,
            balance=balance,
            timeout=timeout,
            grace=grace,
            max_requests=max_requests,
            max_requests_jitter=max_requests_jitter,
            options=dict(server_options),
            get_loop=self.get_loop,
        )
        config.validate()
        if isinstance(getcurrent(), Thread):
            raise RuntimeError("run_server() blocks until stopped: call it outside loop threads")
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("run_server() handles signals: call it from the main OS thread")
        if workers == 1:
            return _serve_in_process(config)
        check_can_fork()
        return _Supervisor(config).run()


@dataclass
class _Config:
    host: str | None
    port: int
    handler: Handler
    workers: int
    balance: str
    timeout: float
    grace: float
    max_requests: int
    max_requests_jitter: int
    options: dict[str, Any]
    get_loop: Callable[[], Loop]
    backlog: int = DEFAULT_BACKLOG
    family: int = 0

    def validate(self) -> None:
        if not callable(self.handler):
            raise TypeError("handler must be callable")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int):
            raise TypeError("workers must be an int")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers must be between 1 and {MAX_WORKERS}")
        if self.balance not in BALANCE_MODES:
            raise ValueError(f"balance must be one of {BALANCE_MODES}, not {self.balance!r}")
        if not self.timeout > 0:
            raise ValueError("timeout must be positive")
        if not self.grace >= 0:
            raise ValueError("grace must not be negative")
        if self.max_requests < 0 or self.max_requests_jitter < 0:
            raise ValueError("max_requests and max_requests_jitter must not be negative")
        if self.max_requests and self.workers == 1:
            raise ValueError("max_requests recycles worker processes: it needs workers >= 2")
        if "exclusive" in self.options:
            raise ValueError("exclusive is chosen by run_server (see balance)")
        if self.workers > 1:
            # How the listeners are bound is the supervisor's business: these
            # are newserver's binding options, not the Server's.
            self.options.pop("reuse_port", None)  # implied by balance
            self.backlog = self.options.pop("backlog", None) or DEFAULT_BACKLOG
            self.family = self.options.pop("family", 0)


def _format(address: Any) -> str:
    if isinstance(address, tuple) and ":" in str(address[0]):
        return f"[{address[0]}]:{address[1]}"
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


# ------------------------------------------------------------ one process


def _serve_in_process(config: _Config) -> dict[str, Any]:
    """``workers=1``: the server runs in the calling process, on its default loop."""
    loop = config.get_loop()
    server: Server | None = None
    pid = os.getpid()
    started = time.monotonic()
    stopping: list[str] = []

    def drain(signum: int) -> None:
        if stopping or server is None:
            return
        stopping.append(signal.Signals(signum).name)
        logger.info(
            "process %d: %s: stopping gracefully (%d connections, grace %.1f s)",
            pid,
            stopping[0],
            len(server.connections()),
            config.grace,
        )
        server.stop(config.grace)
        loop.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.on_signal(signum, drain)
    try:
        server = loop.newserver(config.host, config.port, config.handler, **config.options)
    except BaseException:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.on_signal(signum, None)
        raise
    logger.info("process %d: serving %s (workers=1, in process)", pid, _format(server.address))
    try:
        loop.start()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.on_signal(signum, None)
        server.close()
    stats = server.statistics()
    summary = {
        "pid": pid,
        "address": server.address,
        "workers": [{"pid": pid, "slot": 0, "accepted": stats["accepted"], "exit": "returned"}],
        "accepted": stats["accepted"],
        "server": stats,
        "loop": loop.statistics(),
        "seconds": round(time.monotonic() - started, 3),
    }
    logger.info("process %d: stopped; %s", pid, stats)
    return summary


# ------------------------------------------------------------- the worker


class _WorkerProcess:
    """What runs in a forked worker: one loop, one server, a heartbeat timer."""

    def __init__(
        self,
        config: _Config,
        listener: _socket.socket,
        slot: int,
        records: mmap.mmap,
        record: int,
        notify_fd: int,
        limit: int,
    ) -> None:
        self.config = config
        self.listener = listener
        self.slot = slot
        self.records = records
        self.offset = record * _RECORD.size
        self.notify_fd = notify_fd
        self.limit = limit
        self.pid = os.getpid()
        self.parent = os.getppid()
        self.beats = 0
        self.state = STARTING
        self.count = 0
        self.reason = ""
        self.reason_code = 0
        self.server: Server | None = None
        self.loop: Loop | None = None
        #: Stop signals that arrived before the loop's handlers were installed.
        self.early_signals: list[int] = []

    def publish(self, state: int | None = None) -> None:
        if state is not None and state != self.state:
            self.state = state
            notify = True
        else:
            notify = False
        self.beats += 1
        stats = self.server.statistics() if self.server is not None else {}
        _RECORD.pack_into(
            self.records,
            self.offset,
            self.pid,
            self.beats,
            self.state,
            stats.get("accepted", 0),
            stats.get("handler_errors", 0),
            self.reason_code,
        )
        if notify:
            try:
                os.write(self.notify_fd, b"\0")
            except OSError:
                pass  # pipe full: the supervisor's next check sees the record anyway

    def run(self) -> int:
        config = self.config
        self.publish()
        loop = self.loop = config.get_loop()
        options = dict(config.options)
        if config.balance == "shared":
            options["exclusive"] = True
            # One connection per turn of the loop: a worker woken for a
            # connection does not drain the queue its idle peers are also
            # woken for; it retries after its other threads had their turn.
            options.setdefault("max_accept", 1)
        handler = config.handler if not self.limit else self.counting(config.handler)
        # Before the server exists: its accept thread runs at once and may
        # start handlers for connections already queued.
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.on_signal(signum, lambda n: self.drain(signal.Signals(n).name, 2))
        try:
            self.server = loop.serve(self.listener, handler, **options)
        except Exception:
            logger.exception("worker %d (slot %d) could not start serving", self.pid, self.slot)
            return BOOT_ERROR
        for early in self.early_signals:
            loop.spawn(self.drain, signal.Signals(early).name, 2)
        interval = min(1.0, config.timeout / 4)

        def beat() -> None:
            self.publish()
            if os.getppid() != self.parent and self.state == SERVING:
                # The supervisor was killed: nobody would ever stop us.
                loop.spawn(self.drain, "supervisor gone", 3)
            loop.call_later(interval, beat)

        loop.call_later(interval, beat)
        self.publish(SERVING)
        logger.info(
            "worker %d (slot %d) serving %s", self.pid, self.slot, _format(self.server.address)
        )
        loop.start()
        server_stats = self.server.statistics()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.on_signal(signum, None)
        loop_stats = loop.statistics()
        loop.close()  # what outlived the grace period ends with ThreadExit
        self.publish()
        logger.info(
            "worker %d (slot %d) exiting (%s): server %s; loop threads %d, timers %d",
            self.pid,
            self.slot,
            self.reason or "stopped",
            server_stats,
            loop_stats["threads"],
            loop_stats["timers"],
        )
        return 0

    def counting(self, handler: Handler) -> Handler:
        def counted(conn: AsyncSocket) -> object:
            self.count += 1
            if self.count == self.limit and self.loop is not None:
                # Closed now, not when the drain thread runs: the accept
                # thread could take a burst of connections before that.
                if self.server is not None:
                    self.server.close()
                self.loop.spawn(self.drain, f"max_requests ({self.limit})", 1)
            return handler(conn)

        return counted

    def drain(self, reason: str, code: int) -> None:
        """Stop accepting, give in-flight connections the grace period, end the loop."""
        if self.state == DRAINING or self.server is None or self.loop is None:
            return
        self.reason = reason
        self.reason_code = code
        self.publish(DRAINING)
        logger.info(
            "worker %d (slot %d) %s: stopping (%d connections in flight, grace %.1f s)",
            self.pid,
            self.slot,
            reason,
            len(self.server.connections()),
            self.config.grace,
        )
        self.server.stop(self.config.grace)
        self.loop.stop()


# ------------------------------------------------------------ supervision


@dataclass(eq=False)
class _Slot:
    index: int
    listener: _socket.socket
    current: _Worker | None = None
    #: The predecessor to stop once ``current`` serves (rolling restart).
    retire: _Worker | None = None
    failures: int = 0
    respawn_at: float | None = None


@dataclass(eq=False)
class _Worker:
    slot: _Slot
    pid: int
    record: int
    started: float
    beats: int = 0
    last_change: float = 0.0
    state: int = STARTING
    accepted: int = 0
    handler_errors: int = 0
    serving_since: float | None = None
    stop_sent: float | None = None
    reason: str = ""
    killed: str = ""
    history: dict[str, Any] = field(default_factory=dict)


class _Supervisor:
    """The calling process while ``run_server`` runs with ``workers >= 2``."""

    def __init__(self, config: _Config) -> None:
        self.config = config
        self.pid = os.getpid()
        self.slots: list[_Slot] = []
        self.live: list[_Worker] = []
        self.ended: list[dict[str, Any]] = []
        self.records = mmap.mmap(-1, _RECORD.size * 2 * MAX_WORKERS)
        self.free_records = list(range(2 * MAX_WORKERS - 1, -1, -1))
        self.notify_r, self.notify_w = os.pipe()
        self.signal_r, self.signal_w = os.pipe()
        for fd in (self.notify_r, self.notify_w, self.signal_r, self.signal_w):
            os.set_blocking(fd, False)
        self.signals: deque[int] = deque()
        self.hold: _socket.socket | None = None
        self.shared: _socket.socket | None = None
        self.address: Any = None
        self.stopping = False
        self.fatal = ""
        self.ever_served = False
        self.restart_queue: deque[_Slot] = deque()
        self.counts = dict.fromkeys(
            ("started", "died", "killed_no_heartbeat", "recycled", "restarted", "added", "removed"),
            0,
        )
        self.tick = min(MAX_TICK, config.timeout / 4)

    # ----------------------------------------------------------- sockets

    def open_sockets(self) -> None:
        config = self.config
        if config.balance == "shared":
            # The one listener, held here for the run: a second instance's
            # bind fails on it.
            self.shared = bind_socket(
                config.host, config.port, family=config.family, backlog=config.backlog
            )
            self.address = self.shared.getsockname()
            return
        # The probe-and-hold bind: no SO_REUSEPORT, not listening (see the
        # charter for why this, and not a reuseport socket, is what fails).
        self.hold = bind_socket(config.host, config.port, family=config.family, backlog=None)
        self.address = self.hold.getsockname()

    def open_listener(self) -> _socket.socket:
        if self.shared is not None:
            return self.shared
        # The address the probe resolved to, so every listener binds the same.
        host = self.address[0] if self.config.host else None
        return bind_socket(
            host,
            self.address[1],
            family=self.hold.family if self.hold is not None else 0,
            reuse_port=True,
            backlog=self.config.backlog,
        )

    def close_sockets(self) -> None:
        for slot in self.slots:
            slot.listener.close()
        for sock in (self.hold, self.shared):
            if sock is not None:
                sock.close()

    # ----------------------------------------------------------- workers

    def spawn(self, slot: _Slot) -> _Worker:
        config = self.config
        limit = 0
        if config.max_requests:
            # Drawn here: after the fork every child would draw the same.
            limit = config.max_requests + random.randint(0, config.max_requests_jitter)
        record = self.free_records.pop()
        _RECORD.pack_into(self.records, record * _RECORD.size, 0, 0, STARTING, 0, 0, 0)
        # Blocked across the fork: until the child has its own handlers, a
        # signal sent to it would run the supervisor's handler (a copy of
        # our state: lost).  Blocked, it waits for the child's handlers.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self.become_worker(slot, record, limit, previous)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        now = time.monotonic()
        worker = _Worker(slot=slot, pid=pid, record=record, started=now, last_change=now)
        self.live.append(worker)
        slot.current = worker
        slot.respawn_at = None
        self.counts["started"] += 1
        logger.info("supervisor %d: started worker %d (slot %d)", self.pid, pid, slot.index)
        return worker

    def become_worker(
        self, slot: _Slot, record: int, limit: int, mask: set[int | signal.Signals]
    ) -> NoReturn:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
                signal.signal(signum, signal.SIG_IGN)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            early: list[int] = []
            for signum in (signal.SIGTERM, signal.SIGINT):
                # Kept until the loop's handler replaces it: the default
                # action would kill a worker whose server has already
                # accepted (and started serving) connections.
                signal.signal(signum, lambda n, _frame: early.append(n))
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            for fd in (self.notify_r, self.signal_r, self.signal_w):
                os.close(fd)
            # Every other listener must close here: a copy kept open in this
            # process would keep a retired listener in the reuseport group.
            for other in self.slots:
                if other.listener is not slot.listener:
                    other.listener.close()
            if self.hold is not None:
                self.hold.close()
            worker = _WorkerProcess(
                self.config, slot.listener, slot.index, self.records, record, self.notify_w, limit
            )
            worker.early_signals = early
            code = worker.run()
        except BaseException:
            logger.exception("worker %d (slot %d) failed", os.getpid(), slot.index)
        finally:
            try:
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def terminate(self, worker: _Worker, reason: str) -> None:
        """Ask ``worker`` to stop gracefully (once)."""
        if worker.stop_sent is not None:
            return
        worker.stop_sent = time.monotonic()
        worker.reason = worker.reason or reason
        self.kill(worker, signal.SIGTERM)

    def kill(self, worker: _Worker, signum: int) -> None:
        try:
            os.kill(worker.pid, signum)
        except ProcessLookupError:
            pass  # already gone; reaped below

    def add_slot(self) -> None:
        slot = _Slot(index=len(self.slots), listener=self.open_listener())
        self.slots.append(slot)
        self.spawn(slot)

    def remove_slot(self) -> None:
        if len(self.slots) <= 1:
            logger.warning("supervisor %d: SIGTTOU ignored: one worker is the minimum", self.pid)
            return
        slot = self.slots.pop()
        if slot in self.restart_queue:
            self.restart_queue.remove(slot)
        for worker in (slot.current, slot.retire):
            if worker is not None:
                self.terminate(worker, "removed (SIGTTOU)")
        if slot.listener is not self.shared:
            # Its worker closes its copy when it stops accepting; once both
            # are closed the listener leaves the reuseport group.
            slot.listener.close()
        self.counts["removed"] += 1

    # ------------------------------------------------------------ checks

    def read_records(self, now: float) -> None:
        for worker in self.live:
            _pid, beats, state, accepted, errors, code = _RECORD.unpack_from(
                self.records, worker.record * _RECORD.size
            )
            worker.accepted = accepted
            worker.handler_errors = errors
            if beats != worker.beats:
                worker.beats = beats
                worker.last_change = now
            if state != worker.state:
                worker.state = state
                if state == SERVING:
                    worker.serving_since = now
                    self.ever_served = True
                elif state == DRAINING:
                    self.on_draining(worker, DRAIN_REASONS[code] if code < 4 else "?")

    def on_draining(self, worker: _Worker, reason: str) -> None:
        """A worker stops accepting by itself (max_requests, a signal sent to it
        directly): start its successor at once, while it finishes its connections."""
        if worker.stop_sent is not None:
            return  # we asked for it
        worker.stop_sent = time.monotonic()
        worker.reason = reason
        slot = worker.slot
        if slot.current is worker and not self.stopping and slot in self.slots:
            if reason == "max_requests":
                self.counts["recycled"] += 1
                what = "reached max_requests"
            else:
                what = f"is stopping ({reason})"
            logger.info(
                "supervisor %d: worker %d (slot %d) %s; starting its successor",
                self.pid,
                worker.pid,
                slot.index,
                what,
            )
            self.spawn(slot)

    def check(self, now: float) -> None:
        timeout = self.config.timeout
        for worker in self.live:
            if worker.killed:
                continue
            if now - worker.last_change > timeout:
                worker.killed = f"no heartbeat for {now - worker.last_change:.1f} s"
                self.counts["killed_no_heartbeat"] += 1
                logger.error(
                    "supervisor %d: worker %d (slot %d) is blocked (%s): killing it",
                    self.pid,
                    worker.pid,
                    worker.slot.index,
                    worker.killed,
                )
                self.kill(worker, signal.SIGKILL)
            elif (
                worker.stop_sent is not None
                and now - worker.stop_sent > self.config.grace + KILL_MARGIN
            ):
                worker.killed = f"still running {now - worker.stop_sent:.1f} s after SIGTERM"
                logger.error(
                    "supervisor %d: worker %d (slot %d) %s: killing it",
                    self.pid,
                    worker.pid,
                    worker.slot.index,
                    worker.killed,
                )
                self.kill(worker, signal.SIGKILL)
        if self.stopping:
            return
        for slot in self.slots:
            current = slot.current
            if slot.retire is not None and current is not None and current.state == SERVING:
                self.terminate(slot.retire, "restart (SIGHUP)")
                slot.retire = None
            if current is None and slot.respawn_at is not None and now >= slot.respawn_at:
                self.spawn(slot)
        self.advance_restart()

    def advance_restart(self) -> None:
        """Rolling restart: the next slot, once no successor is still starting."""
        if any(slot.retire is not None for slot in self.slots):
            return
        while self.restart_queue:
            slot = self.restart_queue.popleft()
            old = slot.current
            if old is None or old.stop_sent is not None:
                continue  # being replaced already: its successor is new
            slot.retire = old
            self.counts["restarted"] += 1
            self.spawn(slot)
            return

    def reap(self, now: float) -> None:
        for worker in list(self.live):
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else (a SIGCHLD handler of the app)
                pid, status = worker.pid, 0
            if pid == 0:
                continue
            self.live.remove(worker)
            self.read_final(worker)
            self.free_records.append(worker.record)
            outcome = worker.killed or _describe_status(status)
            self.ended.append(
                {
                    "pid": worker.pid,
                    "slot": worker.slot.index,
                    "accepted": worker.accepted,
                    "handler_errors": worker.handler_errors,
                    "exit": outcome,
                    "reason": worker.reason,
                    "seconds": round(now - worker.started, 3),
                }
            )
            slot = worker.slot
            if slot.retire is worker:
                slot.retire = None
            unexpected = slot.current is worker and not self.stopping and slot in self.slots
            if slot.current is worker:
                slot.current = None
            if unexpected:
                self.replace(worker, status, outcome, now)
            else:
                logger.info(
                    "supervisor %d: worker %d (slot %d) ended (%s, %s, %d connections)",
                    self.pid,
                    worker.pid,
                    slot.index,
                    worker.reason or "stopped",
                    outcome,
                    worker.accepted,
                )

    def read_final(self, worker: _Worker) -> None:
        _pid, _beats, _state, accepted, errors, _code = _RECORD.unpack_from(
            self.records, worker.record * _RECORD.size
        )
        worker.accepted = accepted
        worker.handler_errors = errors

    def replace(self, worker: _Worker, status: int, outcome: str, now: float) -> None:
        slot = worker.slot
        if (
            worker.serving_since is None
            and not self.ever_served
            and os.WIFEXITED(status)
            and os.WEXITSTATUS(status) == BOOT_ERROR
        ):
            self.fatal = f"worker {worker.pid} could not start serving (see the log)"
            logger.error("supervisor %d: %s; stopping", self.pid, self.fatal)
            self.begin_stop()
            return
        self.counts["died"] += 1
        at_start = worker.serving_since is None or now - worker.serving_since < MIN_UPTIME
        slot.failures = slot.failures + 1 if at_start else 0
        delay = (
            0.0 if not slot.failures else min(BACKOFF_MAX, BACKOFF_MIN * 2 ** (slot.failures - 1))
        )
        slot.respawn_at = now + delay
        logger.warning(
            "supervisor %d: worker %d (slot %d) %s; replacing it%s",
            self.pid,
            worker.pid,
            slot.index,
            outcome,
            f" in {delay:.1f} s (died at start {slot.failures} time(s) in a row)" if delay else "",
        )

    # ----------------------------------------------------------- signals

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)

    def install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        for signum in HANDLED_SIGNALS:
            previous[signum] = signal.signal(signum, self.on_signal)
        previous[-1] = signal.set_wakeup_fd(self.signal_w, warn_on_full_buffer=False)
        return previous

    @staticmethod
    def restore_signals(previous: dict[int, Any]) -> None:
        signal.set_wakeup_fd(previous.pop(-1))
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.popleft()
            name = signal.Signals(signum).name
            if signum in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    logger.info("supervisor %d: %s: stopping gracefully", self.pid, name)
                    self.begin_stop()
                else:
                    logger.warning("supervisor %d: second %s: killing the workers", self.pid, name)
                    for worker in self.live:
                        worker.killed = worker.killed or f"killed on a second {name}"
                        self.kill(worker, signal.SIGKILL)
            elif self.stopping:
                continue
            elif signum == signal.SIGHUP:
                logger.info("supervisor %d: SIGHUP: rolling restart", self.pid)
                self.restart_queue = deque(self.slots)
            elif signum == signal.SIGTTIN:
                if len(self.slots) >= MAX_WORKERS:
                    logger.warning(
                        "supervisor %d: SIGTTIN ignored: %d workers", self.pid, MAX_WORKERS
                    )
                    continue
                logger.info("supervisor %d: SIGTTIN: one worker more", self.pid)
                self.counts["added"] += 1
                self.add_slot()
            elif signum == signal.SIGTTOU:
                logger.info("supervisor %d: SIGTTOU: one worker less", self.pid)
                self.remove_slot()

    def begin_stop(self) -> None:
        self.stopping = True
        self.restart_queue.clear()
        for worker in self.live:
            self.terminate(worker, "stop")
        # Closed at once (each worker closes its copy as it stops accepting),
        # so new connects are refused instead of queueing for nobody.
        self.close_sockets()

    # -------------------------------------------------------------- main

    def wait(self, now: float) -> None:
        timeout = self.tick
        for slot in self.slots:
            if slot.current is None and slot.respawn_at is not None:
                timeout = min(timeout, max(0.0, slot.respawn_at - now))
        if self.signals:
            timeout = 0.0
        try:
            _originals.select([self.signal_r, self.notify_r], [], [], timeout)
        except InterruptedError:  # pragma: no cover - retried by Python (PEP 475)
            pass
        for fd in (self.signal_r, self.notify_r):
            try:
                while os.read(fd, 512):
                    pass
            except BlockingIOError:
                pass

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        previous: dict[int, Any] | None = None
        try:
            self.open_sockets()
            previous = self.install_signals()
            for _ in range(self.config.workers):
                self.add_slot()
            logger.info(
                "supervisor %d: serving %s with %d workers (balance=%s)",
                self.pid,
                _format(self.address),
                len(self.slots),
                self.config.balance,
            )
            while self.live or not self.stopping:
                now = time.monotonic()
                self.wait(now)
                self.handle_signals()
                now = time.monotonic()
                self.reap(now)
                self.read_records(now)
                self.check(now)
        finally:
            for worker in self.live:  # only after an error of the supervisor itself
                self.kill(worker, signal.SIGKILL)
                os.waitpid(worker.pid, 0)
            if previous is not None:
                self.restore_signals(previous)
            self.close_sockets()
            for fd in (self.notify_r, self.notify_w, self.signal_r, self.signal_w):
                os.close(fd)
            self.records.close()
        summary = self.summary(time.monotonic() - started)
        if self.fatal:
            raise RuntimeError(f"run_server: {self.fatal}")
        return summary

    def summary(self, seconds: float) -> dict[str, Any]:
        accepted = sum(entry["accepted"] for entry in self.ended)
        summary: dict[str, Any] = {
            "pid": self.pid,
            "address": self.address,
            "balance": self.config.balance,
            "seconds": round(seconds, 3),
            "accepted": accepted,
            **self.counts,
            "workers": self.ended,
        }
        per_worker = ", ".join(f"{entry['pid']}: {entry['accepted']}" for entry in self.ended)
        logger.info(
            "supervisor %d: stopped after %.1f s: %d connections; workers started %d, "
            "died %d, killed blocked %d, recycled %d, restarted %d, added %d, removed %d; "
            "connections per worker {%s}",
            self.pid,
            seconds,
            accepted,
            self.counts["started"],
            self.counts["died"],
            self.counts["killed_no_heartbeat"],
            self.counts["recycled"],
            self.counts["restarted"],
            self.counts["added"],
            self.counts["removed"],
            per_worker,
        )
        return summary
