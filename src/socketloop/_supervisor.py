"""The supervisor of ``run_server``: the process that forks, watches and replaces workers.

Charter: the calling process while ``run_server`` runs with ``workers >= 2``.
It opens the listening sockets, forks worker processes (``_workerproc``)
over an inherited listener, and keeps them alive: replaces the dead (with
back-off when they die at start), kills the blocked (no heartbeat from inside
their loop), restarts them one at a time on SIGHUP, grows and shrinks on
SIGTTIN/SIGTTOU, recycles them after ``max_requests`` connections, and stops
them gracefully on SIGTERM/SIGINT.  The supervisor runs no loop, no loop
thread and no OS-thread pool (``run_server`` refuses to fork while any
exists); it must not reach into the loop's scheduling, and a forked child
must never return into the caller's code (it ends with ``os._exit``).

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
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NoReturn

from . import _originals
from ._server import STOP_UNWIND_TIMEOUT, bind_socket
from ._workerproc import (
    _RECORD,
    BOOT_ERROR,
    DRAIN_REASONS,
    DRAINING,
    MAX_WORKERS,
    SERVING,
    STARTING,
    _Config,
    _format,
    _WorkerProcess,
)

logger = logging.getLogger("socketloop.workers")

#: After its grace period a stopping worker still gets this long (closing the
#: leftover connections, their unwinding, process exit) before SIGKILL.
KILL_MARGIN = STOP_UNWIND_TIMEOUT + 2.0

#: A worker that dies sooner than this after it started serving (or before)
#: "dies at start": its slot is refilled after a back-off that doubles from
#: BACKOFF_MIN up to BACKOFF_MAX, so a crash loop costs little CPU and log.
MIN_UPTIME = 1.0
BACKOFF_MIN = 0.1
BACKOFF_MAX = 10.0

#: Longest the supervisor sleeps between checks, whatever ``timeout`` is.
MAX_TICK = 0.5

#: The signals the supervisor handles.
HANDLED_SIGNALS = {
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
}


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


# ------------------------------------------------------------ one process


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
