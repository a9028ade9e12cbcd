"""Soak test: an echo server, a relay in front of it, and 1,000 misbehaving clients.

Run as ``python soak/soak.py --seconds N [--connections 1000] [--seed S]
[--loop default|coro] [--poller default|epoll|poll]``.  Everything runs in
one process, on one loop, in one OS thread: the echo server, the relay (a
proxy that forwards each client connection to the echo server over its own
upstream connection, one loop thread per direction) and the clients (half connect to the echo server
directly, half through the relay).  One process because a Python process uses
at most one core whatever it does: the whole soak then costs at most one of
the machine's two cores (clients in a second process would take the other
one), and the fd and thread accounting covers clients and servers alike.

Each client runs sessions back to back, one connection each.  A session sends
messages of random sizes (1 byte to 64 KiB, log-uniform), each framed with a
header carrying the client, a sequence number, the length and a CRC-32 of the
payload, and checks every echo byte for byte against what it sent and against
the checksum.  Some sessions are ping-pong (one message at a time), the others
full duplex (a writer thread and a reader thread on the same socket).  The
faults, chosen at random from a seeded generator: *reset* (SO_LINGER 0, then
close; sometimes in the middle of a message), *half-close* (``shutdown(SHUT_WR)``
with echoes still in flight, then read them to the end of stream) and *stall*
(the reader stops for a while as the writer keeps writing, so every buffer on
the path fills and the servers block in ``sendall``).  A client reconnects
after every session.  The data moves through several socket calls, half the
connections each: the clients read with ``recv`` or ``recv_into``, the echo
server echoes with ``recv`` + ``sendall`` or ``recv_into`` + ``sendall`` of a
memoryview, the relay forwards with ``sendall`` or a loop of partial ``send``.

Every choice (session plans, sizes, payloads, faults) comes from generators
seeded by ``--seed`` and the client's number, so each client makes the same
choices on every run; how the 1,000 clients interleave is up to the kernel.

Accounting: a message is *lost* when it was fully sent on a connection that
ended gracefully (half-close or close) and its echo never came back;
*corrupted* when an echo differs from what was sent.  Messages in flight on a
connection the client reset itself are reported but never count as lost.
The exit status is 0 only when nothing was lost or corrupted, the servers
survived (no handler error, no unexpected client error, no library warning,
nothing stalled), the faults were really exercised (at least one stall
filled the path up to a blocked server ``sendall``, at least one client
reset with messages in flight), the fds, loop threads and OS threads after
the run equal those before, and RSS grew by at most ``RSS_GROWTH_LIMIT_KIB``
(48 MiB) between the warm-up sample and the end.  Stalls are caught twice: a
loop thread fails any session idle for 10 s, and an OS thread fails the run
when the loop makes no progress for 10 s (or does not drain after the run),
printing every stack if the loop is frozen.
"""

from __future__ import annotations

import argparse
import collections
import errno
import faulthandler
import logging
import math
import os
import random
import socket
import struct
import sys
import threading
import time
import traceback
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import socketloop
import socketloop.coro
from socketloop import AsyncSocket, Event, Loop, Server, Thread

HOST = "127.0.0.1"

#: Message payloads: 1 byte to 64 KiB, log-uniform (most small, some large).
MAX_PAYLOAD = 64 * 1024
#: Payloads are slices of one seeded random pool, so the expected bytes of
#: every message are known without keeping a copy of each.
POOL_SIZE = 1 << 20
#: magic, client number, sequence number, payload length, CRC-32 of the payload.
HEADER = struct.Struct("!2sIIII")
MAGIC = b"SK"
RECV_SIZE = 256 * 1024
#: Clients that read with ``recv_into`` use a buffer of this size (their own:
#: a buffer shared by threads could be overwritten between the read and the
#: copy), echo connections that do one of ECHO_RECV_INTO_SIZE.
RECV_INTO_SIZE = 32 * 1024
ECHO_RECV_INTO_SIZE = 64 * 1024
LINGER_ZERO = struct.pack("ii", 1, 0)

#: Messages per session: 1 to this many (a stalled writer sends more, see below).
MAX_MESSAGES = 24
#: Share of sessions that are full duplex (the rest are ping-pong).
DUPLEX_SHARE = 0.6
#: Share of duplex sessions whose reader stalls, and how long a stall lasts.
STALL_SHARE = 0.04
STALL_SECONDS = (1.0, 3.0)
#: A stalled session's writer keeps writing large messages (half the maximum
#: and up) until the stall ends or it has queued this much.  On loopback a
#: server's send buffer grows to ``tcp_wmem`` max (4 MiB) and its receive
#: buffer takes a few MiB more: about 5 to 8 MiB fill the path to the echo
#: server, twice that through the relay.
STALL_WRITE_LIMIT = 24 * 1024 * 1024
#: How sessions end: weights for close (all echoes back, then FIN), half-close
#: (FIN with echoes in flight), reset (RST with echoes in flight) and reset in
#: the middle of a message.
ENDINGS = ("close", "half_close", "reset", "reset_mid")
ENDING_WEIGHTS = (45, 25, 20, 10)
#: Pauses between a session's messages: none for most sessions, up to this for some.
THINK_CHOICES = (0.0, 0.0, 0.0, 0.005, 0.02)

CONNECT_TIMEOUT = 10.0
#: A server ``sendall`` that takes longer than this counts as blocked by a full buffer.
BLOCKED_SEND = 0.05
#: No progress for this long (the whole soak, or one session) is a stall: exit 1.
STALL_LIMIT = 10.0
#: Shutdown budgets: clients end their sessions (given up when they make no
#: progress for CLIENT_STOP_STALL, or at CLIENT_STOP_TIMEOUT), then the
#: servers get ``grace``.
CLIENT_STOP_STALL = 5.0
CLIENT_STOP_TIMEOUT = 30.0
SERVER_GRACE = 5.0
#: After the run thread ends, the loop must drain (``start()`` return) within this.
DRAIN_LIMIT = 10.0
#: Beyond ``--seconds``, the whole process may take this long before it is aborted.
HARD_MARGIN = 60.0
PROGRESS_INTERVAL = 10.0
#: Library log records at WARNING or above are counted (each one fails the soak)
#: and only the first few are printed.
LOG_SHOWN = 10
#: RSS is sampled once the run is this far in (or half-way through a shorter
#: run): by then every client has run sessions of every kind and the
#: allocator's pools and the loop's parked threads have about reached their
#: size (at 1,000 clients RSS climbs for 20 to 30 s, then stays flat).
WARM_UP = 20.0
#: Most the RSS may grow between the warm-up sample and the end of the run.
#: A steady state grows by a few MiB (allocator fragmentation with 64 KiB
#: messages); a leak of one small object per message (tens of thousands of
#: messages a minute) or of one socket's buffers per session goes past it.
RSS_GROWTH_LIMIT_KIB = 48 * 1024

#: Lines of detail printed per kind of failure (corruption, loss, stall, ...).
DETAILS_PER_KIND = 8


# ------------------------------------------------------------------ accounting


class Stats:
    """Every counter the soak reports; also the progress mark the watchdogs read."""

    def __init__(self) -> None:
        self.progress = 0
        self.phase = "starting"
        self.connections = collections.Counter[str]()
        self.connect_errors = 0
        self.relay_upstreams = 0
        self.messages_sent = 0
        self.messages_echoed = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.endings = collections.Counter[str]()
        self.faults = collections.Counter[str]()
        self.stalls_filled = 0
        self.in_flight_at_reset = 0
        self.corrupted = 0
        self.lost = 0
        self.errors = collections.Counter[str]()
        self.echo_bytes = 0
        self.echo_blocked_sends = 0
        self.echo_peer_errors = collections.Counter[str]()
        self.relay_bytes = 0
        self.relay_blocked_sends = 0
        self.relay_aborts = collections.Counter[str]()
        self.relay_connect_errors = 0
        #: Which socket calls carried the data (each path is exercised).
        self.paths = collections.Counter[str]()
        self.failures: list[str] = []
        self.details: dict[str, list[str]] = {}
        self.run_done_at: float | None = None
        #: RSS after the warm-up (KiB), sampled by the watchdog; None until then.
        self.rss_warm_kib: int | None = None

    def tick(self) -> None:
        self.progress += 1

    def fail(self, message: str) -> None:
        if message not in self.failures:
            self.failures.append(message)

    def detail(self, kind: str, message: str, limit: int = DETAILS_PER_KIND) -> None:
        """A line explaining a failure; a few per kind, so a systematic bug cannot flood."""
        lines = self.details.setdefault(kind, [])
        if len(lines) < limit:
            lines.append(message)

    def error(self, where: str, exc: BaseException, context: str) -> None:
        """An unexpected error seen by a client: the servers did not survive something."""
        self.errors[f"{where}: {error_name(exc)}"] += 1
        self.detail("unexpected error", f"{context}: {where}: {exc!r}")


def error_name(exc: BaseException) -> str:
    """``ConnectionResetError``, or ``OSError(ENOTCONN)`` where the class says little."""
    name = type(exc).__name__
    code = getattr(exc, "errno", None)
    if type(exc) is OSError and isinstance(code, int):
        return f"{name}({errno.errorcode.get(code, code)})"
    return name


class LogCounter(logging.Handler):
    """Counts the library's warnings and errors; prints the first few."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.count <= LOG_SHOWN:
            sys.stderr.write(f"socketloop log: {self.format(record)}\n")


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class Snapshot:
    fds: int
    threads: int
    threads_by_state: dict[str, int]
    rss_kib: int
    os_threads: tuple[str, ...]

    @classmethod
    def take(cls, loop: Loop) -> Snapshot:
        stats = loop.statistics()
        by_state = {k: v for k, v in stats["threads_by_state"].items() if v}
        os_threads = tuple(sorted(t.name for t in threading.enumerate()))
        return cls(fd_count(), int(stats["threads"]), by_state, rss_kib(), os_threads)


# ------------------------------------------------------------------- messages


class Payloads:
    """The seeded random pool that every payload is a slice of."""

    def __init__(self, seed: int) -> None:
        self.pool = random.Random(f"pool:{seed}").randbytes(POOL_SIZE + MAX_PAYLOAD)
        self.view = memoryview(self.pool)


class Message:
    """One framed message: its header, and where its payload lies in the pool."""

    __slots__ = ("crc", "header", "length", "offset", "seq")

    def __init__(
        self, payloads: Payloads, client: int, seq: int, rng: random.Random, bulk: bool = False
    ) -> None:
        if bulk:
            self.length = rng.randint(MAX_PAYLOAD // 2, MAX_PAYLOAD)
        else:
            self.length = min(MAX_PAYLOAD, int(2 ** rng.uniform(0, math.log2(MAX_PAYLOAD + 1))))
        self.offset = rng.randrange(POOL_SIZE)
        self.seq = seq
        self.crc = zlib.crc32(payloads.view[self.offset : self.offset + self.length])
        self.header = HEADER.pack(MAGIC, client, seq, self.length, self.crc)

    @property
    def size(self) -> int:
        return HEADER.size + self.length

    def frame(self, payloads: Payloads) -> bytes:
        return self.header + payloads.pool[self.offset : self.offset + self.length]


class Corrupted(Exception):
    """An echo differed from the message sent: the stream cannot be trusted after it."""


# -------------------------------------------------------------------- servers


class EchoServer:
    """Sends back every byte it receives until the client's end of stream."""

    def __init__(self, loop: Loop, stats: Stats) -> None:
        self.stats = stats
        #: peer port -> when the handler's sendall to it began (while it is in sendall).
        self.sending: dict[int, float] = {}
        self.served = 0
        self.server: Server = loop.newserver(HOST, 0, self.handle)

    @property
    def port(self) -> int:
        return self.server.port

    def handle(self, conn: AsyncSocket) -> None:
        """Every other connection reads with ``recv_into`` and sends a memoryview."""
        stats = self.stats
        sending = self.sending
        port = peer_port(conn)
        self.served += 1
        into = self.served % 2 == 0
        stats.paths["echo recv_into+sendall(memoryview)" if into else "echo recv+sendall"] += 1
        scratch = bytearray(ECHO_RECV_INTO_SIZE if into else 0)
        data: bytes | memoryview
        try:
            while True:
                if into:
                    data = memoryview(scratch)[: conn.recv_into(scratch)]
                else:
                    data = conn.recv(RECV_SIZE)
                if not data:
                    return
                started = sending[port] = time.monotonic()
                conn.sendall(data)
                del sending[port]
                if time.monotonic() - started > BLOCKED_SEND:
                    stats.echo_blocked_sends += 1
                stats.echo_bytes += len(data)
        except (ConnectionResetError, BrokenPipeError) as exc:
            # A client (or the relay, passing a client's reset on) reset the
            # connection: routine.  Anything else escapes to the server, which
            # counts it as a handler error and the soak fails.
            stats.echo_peer_errors[error_name(exc)] += 1
        finally:
            sending.pop(port, None)


def peer_port(sock: AsyncSocket) -> int:
    try:
        return int(sock.getpeername()[1])
    except OSError:  # the peer reset before the handler ran
        return 0


class RelayedPair:
    """A client connection and its upstream connection; a fault on either aborts both."""

    def __init__(self, client: AsyncSocket, upstream: AsyncSocket) -> None:
        self.client = client
        self.upstream = upstream
        self.aborted = False

    def abort(self) -> None:
        """Reset both connections (the relay passes a reset on); idempotent."""
        if self.aborted:
            return
        self.aborted = True
        for sock in (self.client, self.upstream):
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
            except OSError:
                pass  # already closed or reset
            sock.close()


class Relay:
    """A proxy: each client connection gets its own upstream connection to the echo server.

    One loop thread per direction (the handler's thread pumps upstream to
    client, a second thread client to upstream).  An end of stream is passed
    on as ``shutdown(SHUT_WR)``; a reset or any other socket error aborts both
    connections.
    """

    def __init__(self, loop: Loop, stats: Stats, upstream_port: int) -> None:
        self.loop = loop
        self.stats = stats
        self.upstream_port = upstream_port
        #: client port -> upstream local port, to find a stuck connection's other half.
        self.routes: dict[int, int] = {}
        #: client port -> when a sendall to that client began (while it is in sendall).
        self.sending: dict[int, float] = {}
        self.relayed = 0
        self.server: Server = loop.newserver(HOST, 0, self.handle)

    @property
    def port(self) -> int:
        return self.server.port

    def handle(self, client: AsyncSocket) -> None:
        """Every other pair forwards with a loop of partial ``send`` calls, not ``sendall``."""
        client_port = peer_port(client)
        try:
            upstream = self.loop.connect(HOST, self.upstream_port, timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            self.stats.relay_connect_errors += 1
            self.stats.detail("relay", f"connecting upstream failed: {exc!r}")
            return
        self.stats.relay_upstreams += 1
        self.routes[client_port] = upstream.getsockname()[1]
        pair = RelayedPair(client, upstream)
        self.relayed += 1
        partial = self.relayed % 2 == 0
        self.stats.paths["relay send loop" if partial else "relay sendall"] += 1
        try:
            up = self.loop.newthread(self.pump, pair, client, upstream, 0, partial)
            up.name = f"relay up from :{client_port}"
            try:
                self.pump(pair, upstream, client, client_port, partial)
            finally:
                if up.is_alive() and not pair.aborted:  # only after an unexpected exception
                    pair.abort()
                up.join()
        finally:
            upstream.close()
            self.routes.pop(client_port, None)

    def pump(
        self,
        pair: RelayedPair,
        src: AsyncSocket,
        dst: AsyncSocket,
        to_client: int,
        partial: bool,
    ) -> None:
        """Forward ``src`` to ``dst`` (``to_client``: the client's port when dst is the client)."""
        stats = self.stats
        sending = self.sending
        try:
            while True:
                data = src.recv(RECV_SIZE)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                started = time.monotonic()
                if to_client:
                    sending[to_client] = started
                if partial:
                    view = memoryview(data)
                    while view:
                        view = view[dst.send(view) :]
                else:
                    dst.sendall(data)
                if to_client:
                    del sending[to_client]
                if time.monotonic() - started > BLOCKED_SEND:
                    stats.relay_blocked_sends += 1
                stats.relay_bytes += len(data)
        except OSError as exc:
            if not pair.aborted:
                stats.relay_aborts[error_name(exc)] += 1
            pair.abort()
        finally:
            if to_client:
                sending.pop(to_client, None)


# -------------------------------------------------------------------- clients


@dataclass(frozen=True)
class Plan:
    """What one session will do, drawn from the client's seeded generator."""

    duplex: bool
    messages: int
    ending: str
    #: Duplex only: echoes the reader takes before it stalls (None: no stall).
    stall_after: int | None
    stall_seconds: float
    #: With a stall and a reset ending: the reader resets when its stall ends,
    #: while the servers are blocked sending to it.
    reset_after_stall: bool
    think: float
    #: Read with ``recv_into`` (into the client's buffer) instead of ``recv``.
    recv_into: bool


class Session:
    """One connection of a client: its plan, the messages awaiting their echo, the verdict."""

    def __init__(self, client: Client, sock: AsyncSocket, plan: Plan) -> None:
        self.client = client
        self.soak = client.soak
        self.loop = client.loop
        self.stats = client.stats
        self.payloads = client.payloads
        self.rng = client.rng
        self.sock = sock
        self.plan = plan
        self.pending: collections.deque[Message] = collections.deque()
        self.buffer = bytearray()
        self.echoed = 0
        self.drained = Event()  # set whenever no echo is outstanding
        self.shut = False  # we sent our end of stream
        self.resetting = False
        self.broken = False
        self.eof = False
        self.in_send = False
        self.partial_sent = False
        self.stall_started = False
        self.stall_done = False
        self.last_activity = time.monotonic()
        self.writer: Thread[None] | None = None
        self.state = "starting"

    def describe(self) -> str:
        plan = self.plan
        kind = "duplex" if plan.duplex else "ping-pong"
        stall = f", stall after {plan.stall_after}" if plan.stall_after is not None else ""
        return (
            f"client {self.client.index} ({self.client.route}, {kind}, {plan.messages} msgs, "
            f"ending {plan.ending}{stall}; state {self.state}; {len(self.pending)} pending, "
            f"{self.echoed} echoed, {len(self.buffer)} bytes buffered)"
        )

    def touch(self) -> None:
        self.last_activity = time.monotonic()
        self.stats.progress += 1

    # ---------------------------------------------------------------- running

    def run(self) -> None:
        try:
            if self.plan.duplex:
                self.run_duplex()
            else:
                self.run_pingpong()
        except Corrupted:
            self.broken = True
        except OSError as exc:
            if not (self.resetting or self.broken):
                self.unexpected("session", exc)
        finally:
            self.broken = True  # from here on nothing more is expected
            self.drained.set()
            self.sock.close()  # wakes the writer (EBADF) if it is still blocked
            if self.writer is not None:
                self.writer.join()
        self.stats.endings[self.plan.ending] += 1

    def run_pingpong(self) -> None:
        plan = self.plan
        self.state = "ping-pong"
        for _ in range(plan.messages):
            if self.soak.stopping:
                break
            self.send_message()
            while self.pending:
                if not self.receive():
                    return
            if plan.think:
                self.loop.sleep(self.rng.uniform(0, plan.think))
        if plan.ending == "close":
            self.shut_write()
        elif plan.ending == "half_close":
            self.send_message()
            self.shut_write()
            self.stats.faults["half_close"] += 1
        elif plan.ending == "reset":
            if self.rng.random() < 0.5:
                self.send_message()
            self.reset()
            return
        else:
            self.send_partial()
            self.reset()
            return
        self.state = "reading to end of stream"
        while self.receive():
            pass

    def run_duplex(self) -> None:
        writer = self.loop.newthread(self.write_all)
        writer.name = f"client {self.client.index} writer"
        self.writer = writer
        self.state = "duplex reading"
        plan = self.plan
        stall_pending = plan.stall_after is not None
        while True:
            if stall_pending and self.echoed >= (plan.stall_after or 0):
                stall_pending = False
                self.stall()
                if self.resetting:
                    return
            if not self.receive():
                return

    def write_all(self) -> None:
        """The duplex writer: send the messages, then end the session as planned."""
        plan = self.plan
        stalling_writes = 0
        try:
            sent = 0
            while not (self.broken or self.resetting or self.soak.stopping):
                if sent >= plan.messages and (plan.stall_after is None or self.stall_done):
                    break
                if self.stall_started and not self.stall_done:
                    if stalling_writes >= STALL_WRITE_LIMIT:
                        break
                    stalling_writes += self.send_message(bulk=True)
                else:
                    self.send_message()
                sent += 1
                if plan.think:
                    self.loop.sleep(self.rng.uniform(0, plan.think))
            if self.broken or self.resetting:
                return
            if plan.reset_after_stall:
                if not self.stall_started:  # stopping before the stall began
                    self.reset()
                return  # the reader resets when its stall ends
            if plan.ending == "close":
                while self.pending and not self.broken:
                    self.drained.clear()
                    self.drained.wait()
                if not self.broken:
                    self.shut_write()
            elif plan.ending == "half_close":
                self.shut_write()
                self.stats.faults["half_close"] += 1
            elif plan.ending == "reset":
                self.reset()
            else:
                self.send_partial()
                self.reset()
        except OSError as exc:
            if not (self.resetting or self.broken):
                self.unexpected("send", exc)
                self.broken = True
                self.sock.close()  # wake the reader

    def stall(self) -> None:
        """Stop reading for a while; the writer keeps writing until every buffer is full."""
        plan = self.plan
        self.stall_started = True
        self.state = "stalled"
        self.stats.faults["stall"] += 1
        self.soak.stop_event.wait(plan.stall_seconds)
        if self.server_blocked():
            self.stats.stalls_filled += 1
        self.stall_done = True
        self.touch()
        self.state = "duplex reading"
        if plan.reset_after_stall:
            self.reset()

    def server_blocked(self) -> bool:
        """Whether the server sending to this client has been stuck in sendall for a while."""
        try:
            port = int(self.sock.getsockname()[1])
        except OSError:
            return False
        server = self.soak.relay if self.client.route == "relay" else self.soak.echo
        since = None if server is None else server.sending.get(port)
        return since is not None and time.monotonic() - since > BLOCKED_SEND

    # ------------------------------------------------------------ primitives

    def send_message(self, bulk: bool = False) -> int:
        message = self.client.next_message(bulk)
        self.pending.append(message)
        self.drained.clear()
        self.in_send = True
        self.sock.sendall(message.frame(self.payloads))
        self.in_send = False
        self.stats.messages_sent += 1
        self.stats.bytes_sent += message.size
        self.touch()
        return message.size

    def send_partial(self) -> None:
        """Send the first part of a message only (the session is reset right after)."""
        message = self.client.next_message()
        self.pending.append(message)
        self.partial_sent = True
        cut = self.rng.randrange(1, message.size)
        self.in_send = True
        self.sock.sendall(message.frame(self.payloads)[:cut])
        self.in_send = False
        self.stats.bytes_sent += cut

    def shut_write(self) -> None:
        self.shut = True
        self.state = "half-closed"
        self.sock.shutdown(socket.SHUT_WR)

    def reset(self) -> None:
        """SO_LINGER 0 and close: the peer gets a reset, and whatever is in flight is dropped."""
        if self.resetting:
            return
        self.resetting = True
        self.state = "reset"
        kind = "reset_mid_message" if (self.in_send or self.partial_sent) else "reset"
        self.stats.faults[kind] += 1
        self.stats.in_flight_at_reset += len(self.pending)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
        finally:
            self.sock.close()

    def receive(self) -> bool:
        """Read once and verify every complete echo; False at the end of stream."""
        data: bytes | memoryview
        if self.plan.recv_into:
            scratch = self.client.scratch()
            data = memoryview(scratch)[: self.sock.recv_into(scratch)]
        else:
            data = self.sock.recv(RECV_SIZE)
        self.touch()
        if not data:
            self.at_eof()
            return False
        self.stats.bytes_received += len(data)
        buffer = self.buffer
        buffer += data
        pending = self.pending
        while pending:
            message = pending[0]
            size = message.size
            if len(buffer) < size:
                break
            if not self.verify(buffer, message):
                self.stats.corrupted += 1
                raise Corrupted
            del buffer[:size]
            pending.popleft()
            self.echoed += 1
            self.stats.messages_echoed += 1
        if not pending:
            if buffer:
                self.stats.corrupted += 1
                extra = f"{self.describe()}: {len(buffer)} bytes nobody sent"
                self.stats.detail("corrupted", extra)
                raise Corrupted
            self.drained.set()
        return True

    def verify(self, buffer: bytearray, message: Message) -> bool:
        """Byte for byte against what was sent, and the payload against its CRC-32."""
        size = message.size
        expected = self.payloads.view[message.offset : message.offset + message.length]
        with memoryview(buffer) as view:
            header = view[: HEADER.size]
            payload = view[HEADER.size : size]
            try:
                same = header == message.header and payload == expected
                checksum_ok = zlib.crc32(payload) == HEADER.unpack(header)[4]
                if same and checksum_ok:
                    return True
                got = bytes(view[:size])
            finally:
                header.release()
                payload.release()
        wanted = message.frame(self.payloads)
        first = next((i for i, (a, b) in enumerate(zip(got, wanted, strict=True)) if a != b), size)
        self.stats.detail(
            "corrupted",
            f"{self.describe()}: echo of message {message.seq} ({message.length} bytes) "
            f"differs from byte {first} (checksum {'ok' if checksum_ok else 'wrong'}); "
            f"got {got[first : first + 16].hex()} wanted {wanted[first : first + 16].hex()}",
        )
        return False

    def at_eof(self) -> None:
        self.eof = True
        if self.resetting:
            return
        if not self.shut:
            self.unexpected("recv", EOFError("end of stream before the client's half-close"))
        if self.pending:
            # Fully sent (the writer half-closes only after its last sendall)
            # on a connection that ended gracefully, and never echoed.
            self.stats.lost += len(self.pending)
            self.stats.detail(
                "lost", f"{self.describe()}: end of stream with {len(self.pending)} echoes missing"
            )

    def unexpected(self, where: str, exc: BaseException) -> None:
        self.stats.error(where, exc, self.describe())
        if self.pending and not self.eof:
            # The connection died under a session that did not reset it: its
            # fully sent messages will never be echoed.
            complete = len(self.pending) - (1 if self.partial_sent or self.in_send else 0)
            self.stats.lost += max(0, complete)


class Client:
    """Runs sessions back to back, each on a new connection, until the soak stops."""

    def __init__(self, soak: Soak, index: int, port: int, route: str) -> None:
        self.soak = soak
        self.loop = soak.loop
        self.stats = soak.stats
        self.payloads = soak.payloads
        self.index = index
        self.port = port
        self.route = route
        self.rng = random.Random(f"client:{soak.seed}:{index}")
        self.seq = 0
        self.session: Session | None = None
        self._scratch: bytearray | None = None

    def scratch(self) -> bytearray:
        """This client's ``recv_into`` buffer (made on first use)."""
        if self._scratch is None:
            self._scratch = bytearray(RECV_INTO_SIZE)
        return self._scratch

    def next_message(self, bulk: bool = False) -> Message:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return Message(self.payloads, self.index, self.seq, self.rng, bulk)

    def plan(self) -> Plan:
        rng = self.rng
        duplex = rng.random() < DUPLEX_SHARE
        messages = rng.randint(1, MAX_MESSAGES)
        ending = rng.choices(ENDINGS, weights=ENDING_WEIGHTS)[0]
        stall = duplex and rng.random() < STALL_SHARE
        return Plan(
            duplex=duplex,
            messages=messages,
            ending=ending,
            stall_after=rng.randrange(messages) if stall else None,
            stall_seconds=rng.uniform(*STALL_SECONDS),
            reset_after_stall=stall and ending in ("reset", "reset_mid") and rng.random() < 0.5,
            think=0.0 if stall else rng.choice(THINK_CHOICES),
            recv_into=rng.random() < 0.5,
        )

    def run(self) -> None:
        stats = self.stats
        while not self.soak.stopping:
            plan = self.plan()
            try:
                sock = self.loop.connect(HOST, self.port, timeout=CONNECT_TIMEOUT)
            except OSError as exc:
                stats.connect_errors += 1
                stats.error("connect", exc, f"client {self.index} ({self.route})")
                self.soak.stop_event.wait(0.1)
                continue
            stats.connections[self.route] += 1
            stats.paths["client recv_into" if plan.recv_into else "client recv"] += 1
            stats.tick()
            self.session = Session(self, sock, plan)
            try:
                self.session.run()
            finally:
                self.session = None
                sock.close()
            stats.tick()


# ----------------------------------------------------------------------- soak


class Soak:
    """Starts the servers and the clients, runs them, stops everything in order."""

    def __init__(self, loop: Loop, stats: Stats, args: argparse.Namespace) -> None:
        self.loop = loop
        self.stats = stats
        self.seconds: float = args.seconds
        self.count: int = args.connections
        self.seed: int = args.seed
        self.payloads = Payloads(self.seed)
        self.stopping = False
        self.stop_event = Event()
        self.done = Event()
        self.clients: list[Client] = []
        self.echo: EchoServer | None = None
        self.relay: Relay | None = None
        self.started = time.monotonic()
        self.run_seconds = 0.0
        self.stuck_reported = 0
        self.server_stats: dict[str, dict[str, int]] = {}

    def run(self) -> None:
        stats = self.stats
        loop = self.loop
        self.echo = EchoServer(loop, stats)
        self.relay = Relay(loop, stats, self.echo.port)
        for index in range(self.count):
            if index % 2:
                client = Client(self, index, self.relay.port, "relay")
            else:
                client = Client(self, index, self.echo.port, "direct")
            self.clients.append(client)
        stats.phase = "running"
        self.started = time.monotonic()
        threads = [loop.spawn(client.run) for client in self.clients]
        for client, thread in zip(self.clients, threads, strict=True):
            thread.name = f"client {client.index} ({client.route})"
        monitor = loop.spawn(self.monitor)
        monitor.name = "soak monitor"
        self.stop_event.wait(self.seconds)
        self.run_seconds = time.monotonic() - self.started
        self.stop_clients(threads)
        self.stop_servers()
        self.done.set()
        monitor.join()
        stats.phase = "draining"
        stats.run_done_at = time.monotonic()

    def stop_clients(self, threads: list[Thread[None]]) -> None:
        stats = self.stats
        stats.phase = "stopping clients"
        stats.tick()
        self.stopping = True
        self.stop_event.set()
        # Wait while the sessions make progress; give up when they stop making
        # any (before the watchdog's global stall limit) or at the hard limit.
        started = changed = time.monotonic()
        mark = stats.progress
        while any(thread.is_alive() for thread in threads):
            self.loop.sleep(0.1)
            now = time.monotonic()
            if stats.progress != mark:
                mark, changed = stats.progress, now
            if now - changed > CLIENT_STOP_STALL or now - started > CLIENT_STOP_TIMEOUT:
                break
        stuck = [thread for thread in threads if thread.is_alive()]
        for thread in threads:
            if not thread.is_alive():
                try:
                    thread.join()
                except Exception as exc:
                    stats.fail(f"a client thread crashed: {exc!r}")
        if stuck:
            stats.fail(f"{len(stuck)} clients did not end their session after the stop")
            for client in self.clients:
                if client.session is not None:
                    stats.detail("did not stop", client.session.describe())
            for thread in stuck:
                thread.kill()

    def stop_servers(self) -> None:
        """Stop the relay, then the echo server, within one grace period shared by both."""
        stats = self.stats
        stats.phase = "stopping servers"
        stats.tick()
        deadline = time.monotonic() + SERVER_GRACE
        for name, server in (("relay", self.relay), ("echo", self.echo)):
            assert server is not None
            active = server.server.statistics()["active"]
            if active:
                stats.detail(
                    "servers", f"{name}: {active} handlers still running when all clients ended"
                )
            server.server.stop(grace=max(0.1, deadline - time.monotonic()))
            stats.tick()
        # Handlers whose connections stop() closed end at their next socket
        # call, and the accept threads at the loop's next step: let them run.
        settle = time.monotonic() + 1.0
        servers = {"relay": self.relay, "echo": self.echo}
        while time.monotonic() < settle:
            self.loop.sleep(0.05)
            if not any(s.server.statistics()["active"] for s in servers.values() if s):
                break
        for name, server in servers.items():
            assert server is not None
            self.server_stats[name] = server.server.statistics()

    def monitor(self) -> None:
        """Progress lines, and the per-session stall check (a lost wake-up stalls one session)."""
        next_line = time.monotonic() + PROGRESS_INTERVAL
        flagged: set[int] = set()
        while not self.done.wait(1.0):
            now = time.monotonic()
            for client in self.clients:
                session = client.session
                if session is None or client.index in flagged:
                    continue
                idle = now - session.last_activity
                if idle > STALL_LIMIT:
                    flagged.add(client.index)
                    self.report_stuck(session, idle)
            if now >= next_line and not self.stopping:
                next_line += PROGRESS_INTERVAL
                self.progress_line(now)

    def report_stuck(self, session: Session, idle: float) -> None:
        stats = self.stats
        stats.fail(f"stall: a session made no progress for {STALL_LIMIT:.0f} s")
        stats.detail("stall", f"no progress for {idle:.1f} s: {session.describe()}", 30)
        self.stop_event.set()  # end the run early: it failed
        self.stuck_reported += 1
        if self.stuck_reported <= 3:
            # The session's own threads, then the server-side threads of its connection.
            for line in describe_threads(self.stalled_threads(session)):
                stats.detail("stall", line, 30)

    def stalled_threads(self, session: Session) -> list[Thread[Any]]:
        wanted: list[Thread[Any]] = []
        current = [t for t in self.loop.threads() if t.name.startswith("client ")]
        names = {f"client {session.client.index} ({session.client.route})"}
        names.add(f"client {session.client.index} writer")
        ports: set[int] = set()
        try:
            port = session.sock.getsockname()[1]
            ports.add(port)
            if self.relay is not None and port in self.relay.routes:
                ports.add(self.relay.routes[port])
        except OSError:
            pass
        for thread in current:
            if thread.name in names:
                wanted.append(thread)
        for thread in self.loop.threads():
            for port in ports:
                if thread.name in (f"connection from {HOST}:{port}", f"relay up from :{port}"):
                    wanted.append(thread)
        return wanted

    def progress_line(self, now: float) -> None:
        stats = self.stats
        faults = sum(stats.faults.values())
        print(
            f"[{now - self.started:6.1f}s] connections {sum(stats.connections.values())}"
            f"  messages {stats.messages_echoed}"
            f"  MiB {(stats.bytes_sent + stats.bytes_received) / 2**20:.0f}"
            f"  faults {faults}  rss {rss_kib() // 1024} MiB",
            flush=True,
        )


def describe_threads(threads: Iterable[Thread[Any]]) -> list[str]:
    lines = []
    for thread in threads:
        lines.append(f"  thread {thread!r}")
        frame = thread.gr_frame
        if frame is not None:
            for entry in traceback.format_stack(frame)[-4:]:
                lines.extend("    " + part for part in entry.rstrip().splitlines())
    return lines


# ------------------------------------------------------------------- watchdog


class Watchdog:
    """An OS thread that ends the run if the loop stops making progress or never drains.

    It first asks the loop to stop (so the report is printed); if the loop does
    not respond, it prints every OS thread's stack and exits the process.
    """

    def __init__(self, loop: Loop, stats: Stats, seconds: float) -> None:
        self.loop = loop
        self.stats = stats
        self.warm_at = time.monotonic() + min(WARM_UP, seconds / 2)
        self.deadline = time.monotonic() + seconds + HARD_MARGIN
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self.run, name="soak watchdog", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.finished.set()
        self.thread.join()

    def run(self) -> None:
        stats = self.stats
        last = stats.progress
        changed = time.monotonic()
        while not self.finished.wait(0.5):
            now = time.monotonic()
            if stats.rss_warm_kib is None and now >= self.warm_at:
                stats.rss_warm_kib = rss_kib()
            if stats.progress != last:
                last = stats.progress
                changed = now
            reason = None
            if now - changed > STALL_LIMIT:
                reason = f"stall: no progress for {STALL_LIMIT:.0f} s (phase: {stats.phase})"
            elif stats.run_done_at is not None and now - stats.run_done_at > DRAIN_LIMIT:
                reason = f"the loop did not drain within {DRAIN_LIMIT:.0f} s after the run"
            elif now > self.deadline:
                reason = f"the soak overran its time by {HARD_MARGIN:.0f} s"
            if reason is None:
                continue
            stats.fail(reason)
            self.loop.call_soon_threadsafe(self.loop.stop)
            if self.finished.wait(5.0):
                return
            sys.stdout.write(f"FAIL: {reason}; the loop does not respond. Stacks:\n")
            sys.stdout.flush()
            faulthandler.dump_traceback(all_threads=True)
            os._exit(1)


# --------------------------------------------------------------------- report


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def counts(counter: collections.Counter[str], keys: Iterable[str] = ()) -> str:
    items = {key: counter.get(key, 0) for key in keys}
    items.update(counter)
    return ", ".join(f"{key} {value}" for key, value in items.items()) or "none"


def report(
    args: argparse.Namespace,
    soak: Soak,
    before: Snapshot,
    after: Snapshot,
    elapsed: float,
    cpu: float,
    log_count: int,
) -> list[str]:
    """Print the results; return the list of failures (empty: pass)."""
    stats = soak.stats
    run_seconds = soak.run_seconds or elapsed
    direct = stats.connections["direct"]
    relayed = stats.connections["relay"]
    lines = [
        "",
        f"== soak: loop {args.loop}, seed {args.seed}, {args.connections} concurrent clients "
        f"({(args.connections + 1) // 2} direct, {args.connections // 2} through the relay) ==",
        f"duration            {elapsed:.1f} s ({run_seconds:.1f} s running, "
        f"{elapsed - run_seconds:.1f} s stopping and draining); "
        f"cpu {cpu:.1f} s ({100 * cpu / max(elapsed, 1e-9):.0f} % of one core)",
        f"connections opened  {direct + relayed} by clients ({direct} direct, {relayed} "
        f"through the relay) + {stats.relay_upstreams} relay upstream; "
        f"connect errors {stats.connect_errors}, relay upstream connect errors "
        f"{stats.relay_connect_errors}",
        f"sessions ended      {counts(stats.endings, ENDINGS)}",
        f"messages            {stats.messages_sent} sent, {stats.messages_echoed} echoed and "
        f"verified (length, CRC-32, byte for byte)",
        f"bytes               client to server {stats.bytes_sent:,}, server to client "
        f"{stats.bytes_received:,}; echoed by the echo server {stats.echo_bytes:,}, "
        f"forwarded by the relay (both directions) {stats.relay_bytes:,}",
        f"faults injected     "
        f"{counts(stats.faults, ('reset', 'reset_mid_message', 'half_close', 'stall'))}",
        f"  stalls            {stats.stalls_filled} of {stats.faults['stall']} ended with the "
        f"server blocked in sendall to the stalled client; server sends that blocked > "
        f"{BLOCKED_SEND * 1000:.0f} ms: echo {stats.echo_blocked_sends}, relay "
        f"{stats.relay_blocked_sends}",
        f"  in flight at reset {stats.in_flight_at_reset} messages (not counted as lost: the "
        f"client reset those connections itself)",
        f"  seen by servers   echo: {counts(stats.echo_peer_errors)}; relay aborts: "
        f"{counts(stats.relay_aborts)}",
        f"socket calls used  {counts(stats.paths)}",
        f"corrupted messages  {stats.corrupted}",
        f"lost messages       {stats.lost}",
        f"unexpected errors   {counts(stats.errors)}",
    ]
    for name, values in soak.server_stats.items():
        lines.append(f"server {name:<13}{', '.join(f'{k} {v}' for k, v in values.items())}")
    lines += [
        f"library log         {log_count} warnings or errors",
        f"open fds            before {before.fds}, after {after.fds}",
        f"loop threads        before {before.threads}, after {after.threads} "
        f"{after.threads_by_state or ''}",
        f"OS threads          before {len(before.os_threads)}, after {len(after.os_threads)}",
        f"RSS                 start {mib(before.rss_kib)}, after warm-up "
        f"{mib(stats.rss_warm_kib or 0)}, end {mib(after.rss_kib)} "
        f"(peak {mib(rss_kib('VmHWM'))}); growth after warm-up allowed up to "
        f"{mib(RSS_GROWTH_LIMIT_KIB)}",
    ]
    print("\n".join(lines))

    failures = list(stats.failures)
    if stats.corrupted:
        failures.append(f"{stats.corrupted} corrupted messages")
    if stats.lost:
        failures.append(f"{stats.lost} lost messages")
    if stats.errors:
        failures.append(f"{sum(stats.errors.values())} unexpected client errors")
    if stats.relay_connect_errors:
        failures.append(f"the relay failed to connect upstream {stats.relay_connect_errors} times")
    for name, values in soak.server_stats.items():
        if values.get("handler_errors"):
            failures.append(f"{values['handler_errors']} handler errors in the {name} server")
        if values.get("active"):
            failures.append(f"{values['active']} {name} handlers still active after stop")
    if log_count:
        failures.append(f"the library logged {log_count} warnings or errors")
    if after.fds != before.fds:
        failures.append(f"open fds: {before.fds} before, {after.fds} after")
    if after.threads != before.threads:
        failures.append(f"loop threads: {before.threads} before, {after.threads} after")
    if stats.messages_echoed == 0:
        failures.append("no message was echoed at all")
    if after.os_threads != before.os_threads:
        failures.append(f"OS threads: {before.os_threads} before, {after.os_threads} after")
    if stats.rss_warm_kib is None:
        failures.append("the run ended before RSS was sampled after the warm-up")
    elif after.rss_kib - stats.rss_warm_kib > RSS_GROWTH_LIMIT_KIB:
        failures.append(
            f"RSS grew by {mib(after.rss_kib - stats.rss_warm_kib)} after the warm-up "
            f"(limit {mib(RSS_GROWTH_LIMIT_KIB)})"
        )
    # The faults must have been exercised, or the run proves less than it says.
    if stats.stalls_filled == 0:
        failures.append(
            f"no stall filled the path ({stats.faults['stall']} stalls injected): "
            "back-pressure through sendall was not exercised"
        )
    if stats.in_flight_at_reset == 0:
        failures.append("no client reset its connection with messages in flight")
    for kind, details in stats.details.items():
        print(f"details ({kind}):")
        for line in details:
            print(f"  {line}")
    return failures


# ----------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, required=True, help="how long the clients run")
    parser.add_argument("--connections", type=int, default=1000, help="concurrent clients")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice")
    parser.add_argument("--loop", choices=("default", "coro"), default="default")
    parser.add_argument(
        "--poller",
        choices=("default", "epoll", "poll"),
        default="default",
        help="the loop's poll backend (default: the best available, epoll on Linux)",
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.connections < 2:
        parser.error("--seconds must be positive and --connections at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_counter = LogCounter()
    log_counter.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    library_logger = logging.getLogger("socketloop")
    library_logger.addHandler(log_counter)
    library_logger.setLevel(logging.WARNING)
    library_logger.propagate = False

    if args.poller == "default":
        loop: Loop = socketloop.get_loop() if args.loop == "default" else socketloop.coro.get_loop()
    else:
        loop = (Loop if args.loop == "default" else socketloop.CoroLoop)(poller=args.poller)
    stats = Stats()
    print(
        f"soak: {args.connections} clients for {args.seconds:g} s, loop {args.loop}, "
        f"poller {args.poller}, seed {args.seed}",
        flush=True,
    )
    before = Snapshot.take(loop)
    soak = Soak(loop, stats, args)
    watchdog = Watchdog(loop, stats, args.seconds)
    started = time.monotonic()
    cpu_started = sum(os.times()[:2])
    watchdog.start()
    runner = loop.newthread(soak.run)
    runner.name = "soak run"
    try:
        loop.start()
    finally:
        watchdog.stop()
    elapsed = time.monotonic() - started
    cpu = sum(os.times()[:2]) - cpu_started
    if runner.is_alive() and not stats.failures:
        stats.fail("the loop returned before the run ended")
    after = Snapshot.take(loop)
    failures = report(args, soak, before, after, elapsed, cpu, log_counter.count)
    if after.threads:
        print("threads left in the loop:")
        left = loop.threads()
        for line in describe_threads(left[:10]):
            print(line)
        if len(left) > 10:
            print(f"  ... and {len(left) - 10} more")
    if failures:
        print("FAIL:\n" + "\n".join(f"  - {failure}" for failure in failures), flush=True)
        # Threads may be left suspended; exit without running their cleanup.
        os._exit(1)
    loop.close()
    print("PASS", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
