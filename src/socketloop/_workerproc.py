"""The worker-process side of ``run_server``: one process serving one handler.

Charter: what runs in a process that serves: a forked worker
(``_WorkerProcess``: its own default loop, one server over the listener the
supervisor opened, a heartbeat written into its shared record, draining on a
stop signal, after ``max_requests`` or when the supervisor is gone) and the
``workers=1`` case (``_serve_in_process``, no fork).  It also holds what both
sides share: the run's configuration (``_Config``), the layout of the
heartbeat record, the worker states and the defaults.  It must not fork,
supervise or know other workers, must not reach into the loop's
scheduling, and a worker must never return into the caller's code (the
supervisor ends it with ``os._exit``).
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import socket as _socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._server import DEFAULT_BACKLOG

if TYPE_CHECKING:
    from ._asocket import AsyncSocket
    from ._loop import Loop
    from ._server import Server

logger = logging.getLogger("socketloop.workers")

Handler = Callable[["AsyncSocket"], object]

#: Seconds a worker's loop may go without a heartbeat before it is killed
#: (gunicorn's default worker timeout): long enough for a slow but healthy
#: handler to stay clear of it, short enough that a wedged worker does not
#: hold its share of connections for minutes.
DEFAULT_TIMEOUT = 30.0

#: Seconds in-flight connections get to finish on a graceful stop.
DEFAULT_GRACE = 30.0

#: Exit status of a worker that could not start serving (bad server options,
#: say).  If no worker of the run ever served, the supervisor stops and
#: raises instead of retrying for ever.
BOOT_ERROR = 3

#: Upper bound for ``workers`` (and SIGTTIN): the heartbeat records are one
#: fixed shared mapping, two per slot (a worker and its successor overlap).
MAX_WORKERS = 512

BALANCE_MODES = ("reuseport", "shared")

# Worker states, written by the worker into its record.
STARTING, SERVING, DRAINING = 0, 1, 2

#: Why a worker drains on its own, written into its record.
DRAIN_REASONS = ("", "max_requests", "signal", "supervisor gone")

#: One record per live worker in a shared anonymous mapping: pid, heartbeat
#: counter, state, accepted connections, handler errors, drain reason.  The supervisor only
#: watches the counter *change* (by its own clock), so a torn read can delay
#: a kill by one check but never cause one.
_RECORD = struct.Struct("<6q")


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
