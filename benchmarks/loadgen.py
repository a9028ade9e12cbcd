"""A small echo load generator in pure Python (stdlib only), for when no C one is at hand.

It speaks the command line and the one-line JSON result of the C load
generator that ``run.py --echoload PATH`` takes, so ``run.py`` can use
either.  Being Python, it is much slower than any C client: against the
faster servers it is the bottleneck (its ``client_cpu_pct`` says so), and
the suite marks such rows.

Modes (``-m``):

``pingpong``  each connection keeps ``-P`` messages of ``-s`` bytes in flight
              (default 1: send, wait for the whole echo, send again); with
              ``-r RATE`` each connection sends at most RATE messages a second
              instead, on a fixed schedule (an offered load, the same for
              every server however fast it answers).
``stream``    each connection writes ``-s``-byte chunks as fast as the socket
              takes them, within a window of ``-P`` chunks (0: TCP flow control
              only), and reads the echo back; requests = chunks echoed.
``connect``   churn: connect, send one message, read its echo, close, repeat,
              ``-c`` such loops at once; requests = cycles.
``idle``      open ``-c`` connections (256 at a time), echo one message on each,
              print ``{"event":"ready",...}`` on stderr, hold them ``-d`` seconds.

Every byte that comes back is compared with what was sent: the bytes sent
on a connection are a slice of a fixed pseudo-random pattern that starts at
an offset of that connection's own, so lost, duplicated, reordered or
crossed-over bytes all show up as ``mismatches``.

``-j N`` splits the connections over N processes (fork); their results are
added up.  Exit status: 0 ok, 1 mismatches, 2 never connected, 3 usage.
"""

from __future__ import annotations

import argparse
import collections
import errno
import heapq
import json
import os
import random
import resource
import select
import socket
import sys
import time
from typing import Any

PATTERN_PERIOD = 99991  # prime: chunk sizes never line up with the period
READ_SIZE = 256 * 1024
IDLE_INFLIGHT = 256  # idle mode: connection set-ups in progress at once
MAX_LATENCY_SAMPLES = 50_000  # per process, for the percentiles

MODES = ("pingpong", "stream", "connect", "idle")
CONNECTING, ACTIVE, IDLE, DEAD = range(4)
EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
EPOLLERR_HUP = select.EPOLLERR | select.EPOLLHUP
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux value


def make_pattern(size: int) -> bytes:
    """The pattern, extended so that any slice of up to ``size`` bytes is contiguous."""
    period = random.Random(20240607).randbytes(PATTERN_PERIOD)
    need = PATTERN_PERIOD + max(size, READ_SIZE)
    return (period * (need // PATTERN_PERIOD + 1))[:need]


class Conn:
    __slots__ = (
        "base",
        "due",
        "fd",
        "ident",
        "mask",
        "rx",
        "sent_at",
        "sock",
        "started",
        "state",
        "tx",
    )

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.sock: socket.socket | None = None
        self.fd = -1
        self.mask = 0  # the epoll events asked for
        self.state = DEAD
        self.base = 0  # where in the pattern this connection's bytes start
        self.tx = 0  # bytes sent
        self.rx = 0  # bytes received (and checked)
        self.started = 0.0  # connect/idle: when this attempt began
        self.due = 0.0  # paced pingpong: when the next message is sent
        self.sent_at: collections.deque[float] = collections.deque()


class Engine:
    """One process's share of the connections, driven by one epoll loop."""

    def __init__(self, opts: argparse.Namespace, idents: list[int]) -> None:
        self.o = opts
        self.mode = opts.mode
        self.size = opts.size
        self.pattern = make_pattern(opts.size)
        self.ep = select.epoll()
        self.conns = [Conn(i) for i in idents]
        self.by_fd: dict[int, Conn] = {}
        self.cycles = 0  # connect mode: attempts so far, to vary the pattern offset
        self.measuring = False
        self.requests = self.nbytes = 0
        self.errors = self.connect_failures = self.mismatches = 0
        self.connected_ever = self.alive = self.pending = self.idle = self.opened = 0
        self.latencies: list[float] = []
        self.lat_seen = 0
        self.rng = random.Random(7)
        self.window = opts.pipeline * opts.size  # stream: 0 = unlimited
        #: Paced pingpong: seconds between two sends on a connection, and
        #: the connections waiting for their turn as (due, ident, conn).
        self.interval = 1.0 / opts.rate if opts.rate else 0.0
        self.waiting: list[tuple[float, int, Conn]] = []
        self.family = socket.AF_INET
        self.address: Any = None

    # ------------------------------------------------------------ connections

    def open(self, c: Conn) -> None:
        o = self.o
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if o.src_addrs:
            # Pick the port at connect time, per destination (Linux): without
            # this, bind() alone would run out of ephemeral ports in churn.
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((f"127.0.0.{2 + (c.ident + self.cycles) % o.src_addrs}", 0))
        self.cycles += 1
        c.sock, c.fd, c.state = sock, sock.fileno(), CONNECTING
        c.tx = c.rx = 0
        c.base = (c.ident * 7919 + self.cycles * 104729) % PATTERN_PERIOD
        c.sent_at.clear()
        c.started = time.monotonic()
        self.pending += 1
        err = sock.connect_ex(self.address)
        if err not in (0, errno.EINPROGRESS):
            self.pending -= 1
            self.connect_failures += 1
            self.close(c)
            return
        self.by_fd[c.fd] = c
        c.mask = EPOLLOUT
        self.ep.register(c.fd, EPOLLOUT)

    def close(self, c: Conn) -> None:
        if c.sock is not None:
            self.by_fd.pop(c.fd, None)
            c.sock.close()  # also leaves the epoll set
        c.sock, c.fd, c.state = None, -1, DEAD

    def fail(self, c: Conn) -> None:
        """The connection broke while in use."""
        if c.state in (ACTIVE, IDLE):
            self.alive -= 1
            if c.state == IDLE:
                self.idle -= 1
            if self.mode != "connect" or c.rx or c.tx:
                self.errors += 1
        self.close(c)

    def connected(self, c: Conn) -> None:
        assert c.sock is not None
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.pending -= 1
        if err:
            self.connect_failures += 1
            self.close(c)
            return
        c.state = ACTIVE
        c.due = time.monotonic()  # paced: the first message goes now
        self.alive += 1
        self.connected_ever += 1

    # --------------------------------------------------------------- traffic

    def set_mask(self, c: Conn, mask: int) -> None:
        if c.mask != mask:
            c.mask = mask
            self.ep.modify(c.fd, mask)

    def want(self, c: Conn) -> int:
        """How many bytes may be sent now."""
        mode = self.mode
        if mode == "pingpong":
            return c.rx + self.o.pipeline * self.size - c.tx
        if mode == "stream":
            if self.window == 0:
                return READ_SIZE
            return min(READ_SIZE, c.rx + self.window - c.tx)
        return self.size - c.tx  # connect, idle: one message

    def write(self, c: Conn) -> None:
        n = self.want(c)
        if n <= 0:
            self.set_mask(c, EPOLLIN)
            return
        size = self.size
        start = (c.base + c.tx) % PATTERN_PERIOD
        assert c.sock is not None
        try:
            sent = c.sock.send(self.pattern[start : start + n])
        except BlockingIOError:
            sent = 0
        except OSError:
            self.fail(c)
            return
        if self.mode == "pingpong":
            started_before = -(-c.tx // size)
            started_after = -(-(c.tx + sent) // size)
            if started_after > started_before:
                now = time.monotonic()
                c.sent_at.extend([now] * (started_after - started_before))
        c.tx += sent
        # Level-triggered: ask for EPOLLOUT only while there is more to send.
        self.set_mask(c, EPOLLIN | EPOLLOUT if sent < n or self.want(c) > 0 else EPOLLIN)

    def read(self, c: Conn) -> None:
        assert c.sock is not None
        try:
            data = c.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self.fail(c)
            return
        if not data:
            self.fail(c)
            return
        n = len(data)
        start = (c.base + c.rx) % PATTERN_PERIOD
        if c.tx - c.rx < n or data != self.pattern[start : start + n]:
            self.mismatches += 1
            self.fail(c)
            return
        size = self.size
        done_before = c.rx // size
        c.rx += n
        done = c.rx // size - done_before
        mode = self.mode
        if mode == "pingpong":
            now = time.monotonic()
            for _ in range(done):
                sent = c.sent_at.popleft()
                if self.measuring:
                    self.requests += 1
                    self.sample(now - sent)
            if self.interval and c.rx == c.tx:
                # The next send waits for its slot; a late answer does not
                # earn a burst afterwards (no catching up).
                c.due = max(now, c.due + self.interval)
                if c.due > now:
                    self.set_mask(c, EPOLLIN)
                    heapq.heappush(self.waiting, (c.due, c.ident, c))
                    return
            self.write(c)
        elif mode == "stream":
            if self.measuring:
                self.nbytes += n
            if self.window:
                self.write(c)
        elif c.rx == size:  # connect, idle: the one echo is back
            if mode == "connect":
                if self.measuring:
                    self.requests += 1
                    self.nbytes += n
                    self.sample(time.monotonic() - c.started)
                self.alive -= 1
                self.close(c)
                self.open(c)
            else:
                c.state = IDLE
                self.idle += 1
                self.set_mask(c, 0)

    def sample(self, seconds: float) -> None:
        """Keep a uniform sample of the latencies (reservoir sampling)."""
        self.lat_seen += 1
        if len(self.latencies) < MAX_LATENCY_SAMPLES:
            self.latencies.append(seconds)
        else:
            k = self.rng.randrange(self.lat_seen)
            if k < MAX_LATENCY_SAMPLES:
                self.latencies[k] = seconds

    def on_event(self, c: Conn, ev: int) -> None:
        if c.state == CONNECTING:
            if not ev & (EPOLLOUT | EPOLLERR_HUP):
                return
            self.connected(c)
            if c.state != ACTIVE:
                return
            self.write(c)
            return
        if ev & (EPOLLIN | EPOLLERR_HUP):
            self.read(c)
            if c.state != ACTIVE:
                return
        if ev & EPOLLOUT:
            self.write(c)

    # ------------------------------------------------------------------- run

    def run(self, report_ready: Any) -> dict[str, Any]:
        o = self.o
        info = socket.getaddrinfo(o.host, o.port, 0, socket.SOCK_STREAM)[0]
        self.family, self.address = info[0], info[4]
        mode = self.mode
        conns = self.conns
        if mode != "idle":
            for c in conns:
                self.open(c)
                self.opened += 1
        t0 = time.monotonic()
        phase = "connect"
        t_phase = t_measure = t_end = t0
        cpu0 = cpu1 = 0.0
        warm = 0.0 if mode == "idle" else o.warmup
        poll = self.ep.poll
        by_fd = self.by_fd
        on_event = self.on_event
        while True:
            now = time.monotonic()
            if mode == "idle":
                while (
                    self.opened < len(conns)
                    and self.pending + (self.alive - self.idle) < IDLE_INFLIGHT
                ):
                    self.open(conns[self.opened])
                    self.opened += 1
            elif mode == "connect" and self.alive + self.pending < len(conns):
                for c in conns:
                    if c.state == DEAD:
                        self.open(c)
            if phase == "connect":
                if mode == "connect":
                    done = True
                elif mode == "idle":
                    done = (
                        self.opened == len(conns) and self.pending == 0 and self.alive == self.idle
                    )
                else:
                    done = self.pending == 0
                if done or now - t0 >= o.connect_timeout:
                    if self.connected_ever == 0 and mode != "connect":
                        break
                    phase, t_phase = "warmup", now
                    if mode == "idle":
                        report_ready(self.alive)
            if phase == "warmup" and now - t_phase >= warm:
                phase, t_measure, cpu0 = "measure", now, cpu_seconds()
                self.measuring = True
                self.requests = self.nbytes = 0
                self.latencies, self.lat_seen = [], 0
            if phase == "measure" and now - t_measure >= o.duration:
                t_end, cpu1 = now, cpu_seconds()
                break
            if mode in ("pingpong", "stream") and phase != "connect" and self.alive == 0:
                t_end, cpu1 = now, cpu_seconds()
                break
            if mode == "idle" and phase != "connect":
                time.sleep(max(0.0, min(0.1, t_measure + o.duration - now)))
                continue
            timeout = 0.05
            waiting = self.waiting
            while waiting and waiting[0][0] <= now:
                _, _, c = heapq.heappop(waiting)
                if c.state == ACTIVE:
                    self.write(c)
            if waiting:
                timeout = min(timeout, max(0.0, waiting[0][0] - now))
            for fd, ev in poll(timeout):
                c = by_fd.get(fd)
                if c is not None:
                    on_event(c, ev)
        seconds = t_end - t_measure if phase == "measure" else 0.0
        requests = self.nbytes // self.size if mode == "stream" else self.requests
        return {
            "seconds": seconds,
            "requests": requests,
            "bytes": self.nbytes if mode in ("stream", "connect") else requests * self.size,
            "latencies": self.latencies,
            "errors": self.errors,
            "connect_failures": self.connect_failures,
            "mismatches": self.mismatches,
            "connected_ever": self.connected_ever,
            "alive": self.alive,
            "cpu_seconds": cpu1 - cpu0,
        }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index] * 1e6


def summary(opts: argparse.Namespace, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up the processes' results into the C load generator's JSON fields."""
    seconds = max((p["seconds"] for p in parts), default=0.0)
    requests = sum(p["requests"] for p in parts)
    rate = sum(p["requests"] / p["seconds"] for p in parts if p["seconds"] > 0)
    mbytes = sum(p["bytes"] / p["seconds"] for p in parts if p["seconds"] > 0) / 1e6
    cpu = sum(p["cpu_seconds"] / p["seconds"] for p in parts if p["seconds"] > 0) * 100
    latencies = sorted(x for p in parts for x in p["latencies"])
    latency = (
        {
            "p50": round(percentile(latencies, 0.50), 1),
            "p90": round(percentile(latencies, 0.90), 1),
            "p99": round(percentile(latencies, 0.99), 1),
            "max": round(latencies[-1] * 1e6, 1),
        }
        if latencies
        else None
    )
    return {
        "mode": opts.mode,
        "connections": opts.conns,
        "size": opts.size,
        "pipeline": opts.pipeline,
        "src_addrs": opts.src_addrs,
        "seconds": round(seconds, 3),
        "requests": requests,
        "req_per_s": round(rate, 1),
        "mbytes_per_s": round(mbytes, 3),
        "latency_us": latency,
        "errors": sum(p["errors"] for p in parts),
        "connect_failures": sum(p["connect_failures"] for p in parts),
        "mismatches": sum(p["mismatches"] for p in parts),
        "connected_ever": sum(p["connected_ever"] for p in parts),
        "alive": sum(p["alive"] for p in parts),
        "client_cpu_pct": round(cpu, 1),
        "processes": len(parts),
        "generator": "loadgen.py",
    }


def print_ready(connections: int) -> None:
    print(json.dumps({"event": "ready", "connections": connections}), file=sys.stderr, flush=True)


def run_forked(opts: argparse.Namespace) -> list[dict[str, Any]]:
    """Run ``opts.procs`` engines in child processes; collect their results."""
    procs = min(opts.procs, opts.conns)
    children: list[tuple[int, Any]] = []
    for k in range(procs):
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(rfd)
            out = os.fdopen(wfd, "w")

            def ready(n: int, out: Any = out) -> None:
                out.write(json.dumps({"ready": n}) + "\n")
                out.flush()

            code = 0
            try:
                result = Engine(opts, list(range(k, opts.conns, procs))).run(ready)
                out.write(json.dumps({"result": result}) + "\n")
                out.flush()
            except BaseException:
                code = 3
            os._exit(code)
        os.close(wfd)
        children.append((pid, os.fdopen(rfd)))
    results: list[dict[str, Any]] = []
    ready_total = 0
    ready_count = 0
    for _, stream in children:
        for line in stream:
            message = json.loads(line)
            if "ready" in message:
                ready_total += message["ready"]
                ready_count += 1
                if ready_count == len(children):
                    print_ready(ready_total)
                continue
            results.append(message["result"])
            break
    for pid, stream in children:
        stream.close()
        os.waitpid(pid, 0)
    if opts.mode == "idle" and ready_count < len(children):
        print_ready(ready_total)
    return results


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="loadgen.py",
        add_help=False,
        description="Echo load generator (pure Python); prints one JSON line.",
    )
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("-h", dest="host", default="127.0.0.1", help="server address")
    p.add_argument("-p", dest="port", type=int, required=True, help="server port")
    p.add_argument("-c", dest="conns", type=int, default=1, help="concurrent connections")
    p.add_argument("-s", dest="size", type=int, default=64, help="message/chunk size in bytes")
    p.add_argument("-d", dest="duration", type=float, default=5.0, help="measured seconds")
    p.add_argument("-w", dest="warmup", type=float, default=1.0, help="warm-up seconds")
    p.add_argument("-P", dest="pipeline", type=int, default=None, help="messages in flight")
    p.add_argument("-m", dest="mode", choices=MODES, default="pingpong")
    p.add_argument(
        "-r", dest="rate", type=float, default=0.0, help="pingpong: messages/s per connection"
    )
    p.add_argument("-T", dest="connect_timeout", type=float, default=10.0)
    p.add_argument("-S", dest="src_addrs", type=int, default=0, help="source addresses")
    p.add_argument("-j", dest="procs", type=int, default=1, help="processes")
    try:
        opts = p.parse_args(argv)
    except SystemExit as exc:
        sys.exit(0 if exc.code == 0 else 3)
    if opts.pipeline is None:
        opts.pipeline = 0 if opts.mode == "stream" else 1
    bad = (
        opts.conns < 1
        or not 1 <= opts.size <= 64 << 20
        or opts.duration <= 0
        or opts.warmup < 0
        or opts.procs < 1
        or not 0 <= opts.src_addrs <= 250
        or (opts.mode == "pingpong" and opts.pipeline < 1)
        or opts.rate < 0
        or (opts.rate > 0 and (opts.mode != "pingpong" or opts.pipeline != 1))
    )
    if bad:
        p.print_usage(sys.stderr)
        sys.exit(3)
    if opts.src_addrs and not opts.host.startswith("127."):
        print("loadgen.py: -S needs an IPv4 loopback (127.x) target", file=sys.stderr)
        sys.exit(3)
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # one descriptor per connection
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if opts.procs > 1 and opts.conns > 1:
        parts = run_forked(opts)
    else:
        parts = [Engine(opts, list(range(opts.conns))).run(print_ready)]
    result = summary(opts, parts)
    print(json.dumps(result, separators=(",", ":")), flush=True)
    if result["mismatches"]:
        return 1
    return 2 if result["connected_ever"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
