"""Run every benchmark server against every workload; write the tables and the chart.

Usage (from the repository root; ``make bench`` does this in its own venv)::

    python benchmarks/run.py [--echoload PATH] [--echoserv PATH] [--rounds N]
                             [--duration S] [--servers a,b] [--workloads x,y]
                             [--quick] [--out DIR] [--baseline-rev REV]

Methodology (see benchmarks/README.md): each server runs in a fresh process
pinned to CPU 0, the load generator is pinned to CPU 1; every run is primed
with a short connect churn; rounds are interleaved (all servers of all
workloads, then again) and each figure is the median over the rounds; the
server's CPU time per request comes from /proc/PID/stat over the load
generator's measured window; a row whose load generator used more than 90 %
of its CPU is flagged as invalid (the load generator, not the server, set
the rate).

``--baseline-rev REV`` compares two revisions side by side in one interleaved
run: REV's socketloop is installed into a virtualenv of its own (under
``.bench-baselines/``) and every socketloop server runs a second time there,
as ``socketloop@REV`` (``socketloop-coro@REV``), next to its twin in each
round.

Standard library only, plus matplotlib for the chart (skipped without it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import io
import itertools
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVERS_DIR = HERE / "servers"
BASELINES_DIR = ROOT / ".bench-baselines"
sys.path.insert(0, str(HERE))

import report  # noqa: E402  (benchmarks/report.py, next to this file)

HOST = "127.0.0.1"
SATURATED_PCT = 90.0  # load generator CPU above this: the row is invalid
SERVER_BUSY_PCT = 80.0  # server CPU below this: the rate is not the server's capacity
RETRY_PAUSE = 1.0  # seconds to wait before a run that other programs disturbed is redone
SERVER_CPU, LOADGEN_CPU = 0, 1
IDLE_CONNECTIONS = 10_000
IDLE_HOLD = 2.5  # seconds the idle connections are held open
PRIME_BATCHES, PRIME_CONCURRENCY = 10, 50  # the connect churn before measuring
PORT_FIRST, PORT_LAST = 12000, 31999  # below Linux's ephemeral range
HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


# --------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class Server:
    id: str
    label: str
    file: str | None  # under servers/; None for the external C server
    needs: tuple[str, ...] = ()  # modules that must be importable
    python: str | None = None  # the interpreter to run it with (default: this one)


ECHO_SERVERS = [
    Server("c-echoserv", "C epoll reference (echoserv)", None),
    Server("epoll", "pure-Python epoll callbacks (ceiling)", "echo_epoll.py"),
    Server("socketloop", "socketloop", "echo_socketloop.py", ("socketloop",)),
    Server("socketloop-coro", "socketloop.coro", "echo_socketloop_coro.py", ("socketloop",)),
    Server(
        "socketloop-on-asyncio",
        "socketloop hosted on asyncio",
        "echo_socketloop_hosted_asyncio.py",
        ("socketloop",),
    ),
    Server(
        "socketloop-on-uvloop",
        "socketloop hosted on uvloop",
        "echo_socketloop_hosted_uvloop.py",
        ("socketloop", "uvloop"),
    ),
    Server("uvloop-protocol", "uvloop protocol", "echo_uvloop_protocol.py", ("uvloop",)),
    Server("uvloop-streams", "uvloop streams", "echo_uvloop_streams.py", ("uvloop",)),
    Server("asyncio-protocol", "asyncio protocol", "echo_asyncio_protocol.py"),
    Server("asyncio-streams", "asyncio streams", "echo_asyncio_streams.py"),
    Server("gevent", "gevent StreamServer", "echo_gevent.py", ("gevent",)),
    Server("trio", "trio", "echo_trio.py", ("trio",)),
    Server("threads", "thread per connection", "echo_threads.py"),
]

HTTP_SERVERS = [
    Server("socketloop", "socketloop", "http_socketloop.py", ("socketloop",)),
    Server("socketloop-coro", "socketloop.coro", "http_socketloop_coro.py", ("socketloop",)),
    Server("uvloop-protocol", "uvloop protocol", "http_uvloop_protocol.py", ("uvloop",)),
    Server("uvloop-streams", "uvloop streams", "http_uvloop_streams.py", ("uvloop",)),
    Server("asyncio-protocol", "asyncio protocol", "http_asyncio_protocol.py"),
    Server("asyncio-streams", "asyncio streams", "http_asyncio_streams.py"),
    Server("gevent", "gevent raw loop", "http_gevent.py", ("gevent",)),
    Server("trio", "trio", "http_trio.py", ("trio",)),
    Server("threads", "thread per connection", "http_threads.py"),
]


@dataclass(frozen=True)
class Workload:
    id: str
    title: str
    mode: str  # pingpong, stream, connect, idle, http
    conns: int
    size: int = 64
    unit: str = "req/s"
    extra: tuple[str, ...] = ()


WORKLOADS = [
    Workload("pp64-10", "ping-pong 64 B, 10 connections", "pingpong", 10),
    Workload("pp64-100", "ping-pong 64 B, 100 connections", "pingpong", 100),
    Workload("pp64-1000", "ping-pong 64 B, 1,000 connections", "pingpong", 1000),
    Workload("pp4k-100", "ping-pong 4 KiB, 100 connections", "pingpong", 100, 4096),
    Workload("stream64k-10", "stream 64 KiB chunks, 10 connections", "stream", 10, 65536, "MB/s"),
    Workload(
        "connect-50",
        "connect churn (connect, one echo, close), 50 concurrent",
        "connect",
        50,
        unit="conn/s",
        extra=("-S", "16"),
    ),
    Workload(
        "idle-10k", "memory per idle connection, 10,000", "idle", IDLE_CONNECTIONS, unit="KiB"
    ),
    Workload("http-100", "HTTP/1.1 keep-alive hello (wrk), 100 connections", "http", 100),
]


# ----------------------------------------------------------------------- /proc helpers


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process (all its threads), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_busy_ticks() -> int | None:
    """Clock ticks all CPUs spent in user, nice and system mode since boot."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    return int(fields[1]) + int(fields[2]) + int(fields[3])


SERVER, MACHINE, OWN = 1, 2, 3  # what a sample holds after its time


class CpuSampler:
    """Samples CPU time every 20 ms, to read it back at any instant.

    Each sample: the time, the server's CPU ticks, the whole machine's busy
    ticks and this script's own.  The machine's minus the server's, the load
    generator's and this script's is the CPU that *other* programs used
    during the window: a run that shared the machine with them is retried.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.own = os.getpid()
        self.samples: list[tuple[float, int, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        server, machine, own = cpu_ticks(self.pid), machine_busy_ticks(), cpu_ticks(self.own)
        if server is not None and machine is not None and own is not None:
            self.samples.append((time.monotonic(), server, machine, own))

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(0.02):
                self._sample()
                return

    def at(self, t: float, what: int = SERVER) -> float | None:
        """Ticks of ``what`` at monotonic time ``t`` (linear between samples)."""
        s = self.samples
        if len(s) < 2 or t < s[0][0] - 0.05 or t > s[-1][0] + 0.05:
            return None
        for a, b in itertools.pairwise(s):
            if t <= b[0]:
                if b[0] == a[0]:
                    return float(b[what])
                return a[what] + (b[what] - a[what]) * max(0.0, t - a[0]) / (b[0] - a[0])
        return float(s[-1][what])

    def seconds_between(self, t0: float, t1: float, what: int = SERVER) -> float | None:
        a, b = self.at(t0, what), self.at(t1, what)
        if a is None or b is None:
            return None
        return (b - a) / os.sysconf("SC_CLK_TCK")

    def others_pct(self, t0: float, t1: float, loadgen_cpu: float | None) -> float | None:
        """CPU used by other programs over [t0, t1], in % of one CPU."""
        machine = self.seconds_between(t0, t1, MACHINE)
        server = self.seconds_between(t0, t1, SERVER)
        own = self.seconds_between(t0, t1, OWN)
        if machine is None or server is None or own is None or loadgen_cpu is None:
            return None
        return max(0.0, 100 * (machine - server - own - loadgen_cpu) / (t1 - t0))


def others_now(interval: float) -> float | None:
    """CPU that programs other than this script use, over ``interval`` s, in % of one CPU."""
    own = os.getpid()
    busy0, own0 = machine_busy_ticks(), cpu_ticks(own)
    t0 = time.monotonic()
    time.sleep(interval)
    busy1, own1 = machine_busy_ticks(), cpu_ticks(own)
    elapsed = time.monotonic() - t0
    if busy0 is None or busy1 is None or own0 is None or own1 is None:
        return None
    return 100 * (busy1 - busy0 - (own1 - own0)) / os.sysconf("SC_CLK_TCK") / elapsed


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------ the machine


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def shown_path(path: str | Path) -> str:
    """A path as the report shows it: relative inside the repository, else the bare name.

    Reports are committed, so they never show where tools live on the
    machine that ran them.
    """
    path = Path(path).resolve()
    rel = os.path.relpath(path, ROOT)
    return path.name if rel.startswith("..") else rel


def raise_nofile(need: int) -> int:
    """Raise RLIMIT_NOFILE (inherited by the servers and load generators) to ``need``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need and os.geteuid() == 0:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            soft, hard = need, need
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft if soft != resource.RLIM_INFINITY else need


def ensure_wrk(install: bool) -> tuple[str | None, str]:
    """wrk's path, or None and the reason the HTTP rows cannot be measured."""
    path = shutil.which("wrk")
    if path:
        return path, ""
    if not install:
        return None, "wrk is not installed (and --no-install was given)"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "wrk is not installed and cannot be installed here (needs root and apt-get)"
    print("installing wrk with apt-get ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")

    def apt(*args: str) -> bool:
        quiet = subprocess.DEVNULL
        return subprocess.call(["apt-get", *args], stdout=quiet, stderr=quiet, env=env) == 0

    if not apt("install", "-y", "-q", "wrk"):
        apt("update", "-q")
        apt("install", "-y", "-q", "wrk")
    path = shutil.which("wrk")
    if path:
        return path, ""
    return None, "wrk is not installed and `apt-get install wrk` failed"


def source_revision() -> str:
    """The git commit of the socketloop being measured (the one this Python imports)."""
    spec = importlib.util.find_spec("socketloop")
    if spec is None or not spec.origin:
        return "unknown (socketloop not importable)"
    where = str(Path(spec.origin).resolve().parent)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", where, *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.CalledProcessError):
        version = version_of("socketloop")
        return f"{version} (installed, not a git checkout)"
    return f"{head} + uncommitted changes" if dirty else head


# ---------------------------------------------------------------- baseline revision


def prepare_baseline(rev: str) -> tuple[str, str]:
    """Install socketloop as of git revision ``rev`` into a virtualenv of its own.

    Returns the venv's interpreter and the full commit id.  The package is
    pure Python: its ``src/socketloop`` is unpacked from ``git archive`` into
    the venv's site-packages, and the venv sees this environment's
    site-packages after its own (a ``.pth`` line) for greenlet and the rest,
    so nothing is downloaded and the two revisions run on identical
    dependencies.  A venv made before for the same commit is reused.
    """
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    venv = BASELINES_DIR / sha[:12]
    python = venv / "bin" / "python"
    done = venv / "installed"
    if not done.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", sha, "src/socketloop"],
            capture_output=True,
            check=True,
        ).stdout
        target = Path(purelib)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            for member in tar.getmembers():
                member.name = member.name.removeprefix("src/")
                if not member.name.startswith("socketloop"):
                    continue
                if hasattr(tarfile, "data_filter"):  # 3.12, and 3.8-3.11 security releases
                    tar.extract(member, target, filter="data")
                else:  # pragma: no cover - our own archive: trusted
                    tar.extract(member, target)
        ours = dict.fromkeys([sysconfig.get_paths()["purelib"], *sys.path[1:]])
        lines = [p for p in ours if p and Path(p).is_dir() and "site-packages" in p]
        (target / "_socketloop_bench_deps.pth").write_text("\n".join(lines) + "\n")
        done.write_text(sha + "\n")
    where = subprocess.run(
        [str(python), "-c", "import socketloop; print(socketloop.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        env=baseline_env(),
    ).stdout.strip()
    if not where.startswith(str(venv)):
        raise RuntimeError(f"the baseline venv imports socketloop from {where}, not {venv}")
    return str(python), sha


def baseline_env() -> dict[str, str]:
    """The environment of a baseline server: no PYTHONPATH pointing at this checkout."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def with_baselines(servers: list[Server], baselines: dict[str, str]) -> list[Server]:
    """``servers`` with a twin of each socketloop server per baseline, right after it."""
    out = []
    for server in servers:
        out.append(server)
        if server.id.startswith("socketloop"):
            for rev, python in baselines.items():
                out.append(
                    dataclasses.replace(
                        server,
                        id=f"{server.id}@{rev}",
                        label=f"{server.label} @ {rev}",
                        needs=(),
                        python=python,
                    )
                )
    return out


def wrk_version(path: str) -> str:
    out = subprocess.run([path, "-v"], capture_output=True, text=True, check=False)
    text = (out.stdout + out.stderr).strip().splitlines()
    match = re.search(r"wrk\s+(\S+)", text[0]) if text else None
    return match.group(1) if match else "unknown"


# ---------------------------------------------------------------------------- runner


@dataclass
class Options:
    echoload: str | None
    echoserv: str | None
    rounds: int
    duration: float
    warmup: float
    idle_conns: int
    servers: list[str] | None
    workloads: list[str]
    out: Path
    install: bool
    quick: bool
    loadgen_procs: int
    retries: int
    max_others: float
    quiet_wait: float
    wait_budget: float
    baseline_revs: list[str] = field(default_factory=list)


@dataclass
class Runner:
    opts: Options
    pin: bool
    wrk: str | None
    log: Any
    next_port: int = PORT_FIRST
    runs: list[dict[str, Any]] = field(default_factory=list)
    waited: float = 0.0  # seconds spent waiting for other programs to finish

    # ---------------------------------------------------------------- helpers

    def pinned(self, cpu: int, argv: list[str]) -> list[str]:
        if not self.pin:
            return argv
        taskset = shutil.which("taskset")
        return [taskset, "-c", str(cpu), *argv] if taskset else argv

    def pin_after_start(self, proc: subprocess.Popen[Any], cpu: int) -> None:
        """Without taskset: pin the child right after it started."""
        if self.pin and not shutil.which("taskset"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(proc.pid, {cpu})

    def free_port(self) -> int:
        for _ in range(PORT_LAST - PORT_FIRST):
            port = self.next_port
            self.next_port = port + 1 if port < PORT_LAST else PORT_FIRST
            with socket.socket() as s:
                try:
                    s.bind((HOST, port))
                except OSError:
                    continue
            return port
        raise RuntimeError("no free port")

    def loadgen_argv(self) -> list[str]:
        if self.opts.echoload:
            return [self.opts.echoload]
        return [sys.executable, str(HERE / "loadgen.py"), "-j", str(self.opts.loadgen_procs)]

    def start_server(self, server: Server, port: int, kind: str) -> subprocess.Popen[bytes]:
        if server.file is None:
            assert self.opts.echoserv
            argv = [self.opts.echoserv, str(port)]
        else:
            python = server.python or sys.executable
            argv = [python, str(SERVERS_DIR / server.file), str(port)]
        self.log.write(f"\n=== {kind} {server.id} port {port} {time.strftime('%H:%M:%S')}\n")
        self.log.flush()
        proc = subprocess.Popen(
            self.pinned(SERVER_CPU, argv),
            stdout=self.log,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
            env=baseline_env() if server.python else None,
        )
        self.pin_after_start(proc, SERVER_CPU)
        return proc

    @staticmethod
    def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with status {proc.returncode} at start")
            with socket.socket() as s, contextlib.suppress(OSError):
                s.connect((HOST, port))
                return
            time.sleep(0.05)
        raise RuntimeError("server did not listen within 20 s")

    @staticmethod
    def prime(port: int, http: bool) -> None:
        """A short connect churn, so that no server is measured in its first-use state."""
        payload = HTTP_REQUEST if http else bytes(range(64))
        for _ in range(PRIME_BATCHES):
            socks = []
            try:
                for _ in range(PRIME_CONCURRENCY):
                    s = socket.create_connection((HOST, port), timeout=10)
                    socks.append(s)
                    s.sendall(payload)
                for s in socks:
                    got = b""
                    while (b"Hello" not in got) if http else (len(got) < len(payload)):
                        chunk = s.recv(65536)
                        if not chunk:
                            raise RuntimeError("server closed a priming connection")
                        got += chunk
            finally:
                for s in socks:
                    s.close()
        time.sleep(0.2)  # let the closes be processed

    @staticmethod
    def stop_server(proc: subprocess.Popen[bytes]) -> str | None:
        """Stop the server; return a problem description if it had died on its own."""
        problem = None
        if proc.poll() is not None:
            problem = f"server died during the run (status {proc.returncode})"
        else:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return problem

    def run_process(self, argv: list[str], timeout: float) -> tuple[subprocess.Popen[str], Any]:
        proc = subprocess.Popen(
            self.pinned(LOADGEN_CPU, argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.pin_after_start(proc, LOADGEN_CPU)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        return proc, timer

    # ------------------------------------------------------------------- runs

    def wait_quiet(self) -> None:
        """Wait (up to --quiet-wait seconds) until other programs leave the CPUs alone."""
        start = time.monotonic()
        told = False
        limit = min(self.opts.quiet_wait, self.opts.wait_budget - self.waited)
        while time.monotonic() - start < limit:
            others = others_now(0.5)
            if others is None or others <= self.opts.max_others:
                break
            if not told:
                print(
                    f"      other programs use {others:.0f} % of a CPU: waiting up to "
                    f"{self.opts.quiet_wait:g} s for a quiet machine",
                    flush=True,
                )
                told = True
        self.waited += time.monotonic() - start

    def run(self, server: Server, workload: Workload, rnd: int) -> dict[str, Any]:
        """One run; again (up to --retries times) while other programs loaded the machine."""
        discarded: list[float] = []
        while True:
            self.wait_quiet()
            record = self.run_one(server, workload, rnd)
            others = record.get("others_pct")
            busy = others is not None and others > self.opts.max_others
            if not busy or "error" in record or len(discarded) >= self.opts.retries:
                break
            if self.waited >= self.opts.wait_budget:
                break  # the machine stays busy: measure through, the rows get flagged
            discarded.append(round(others, 1))
            print(
                f"      other programs used {others:.0f} % of a CPU during "
                f"{workload.id}/{server.id}: run again in {RETRY_PAUSE:g} s",
                flush=True,
            )
            time.sleep(RETRY_PAUSE)
            self.waited += RETRY_PAUSE + (record.get("seconds") or 0.0)
        if discarded:
            record["discarded_others_pct"] = discarded
        return record

    def run_one(self, server: Server, workload: Workload, rnd: int) -> dict[str, Any]:
        record: dict[str, Any] = {"workload": workload.id, "server": server.id, "round": rnd}
        port = self.free_port()
        http = workload.mode == "http"
        proc = self.start_server(server, port, workload.id)
        try:
            self.wait_listening(proc, port)
            self.prime(port, http)
            if workload.mode == "idle":
                record.update(self.measure_idle(proc, port, workload))
            elif http:
                record.update(self.measure_http(proc, port, workload))
            else:
                record.update(self.measure_echo(proc, port, workload))
        except Exception as exc:
            record["error"] = str(exc) or type(exc).__name__
        finally:
            problem = self.stop_server(proc)
            if problem and "error" not in record:
                record["error"] = problem
        return record

    def echo_args(self, workload: Workload, port: int) -> list[str]:
        o = self.opts
        return [
            *self.loadgen_argv(),
            "-p",
            str(port),
            "-m",
            workload.mode,
            "-c",
            str(workload.conns),
            "-s",
            str(workload.size),
            "-d",
            str(o.duration),
            "-w",
            str(o.warmup),
            "-T",
            "30",
            *workload.extra,
        ]

    def measure_echo(
        self, proc: subprocess.Popen[bytes], port: int, workload: Workload
    ) -> dict[str, Any]:
        timeout = self.opts.duration + self.opts.warmup + 60
        with CpuSampler(proc.pid) as sampler:
            lg, timer = self.run_process(self.echo_args(workload, port), timeout)
            assert lg.stdout is not None
            line = lg.stdout.readline()
            t_end = time.monotonic()
            _, err = lg.communicate()
            timer.cancel()
            time.sleep(0.03)  # one more sample after the window
        if not line.strip():
            raise RuntimeError(f"load generator failed (status {lg.returncode}): {err.strip()}")
        data = json.loads(line)
        result = self.from_loadgen(data, lg.returncode)
        seconds = data.get("seconds") or 0.0
        cpu = sampler.seconds_between(t_end - seconds, t_end) if seconds else None
        if seconds and result["loadgen_cpu_pct"] is not None:
            loadgen_cpu = result["loadgen_cpu_pct"] / 100 * seconds
            result["others_pct"] = sampler.others_pct(t_end - seconds, t_end, loadgen_cpu)
        requests = data.get("requests") or 0
        if cpu is not None and requests:
            result["server_cpu_us"] = cpu / requests * 1e6
            result["server_cpu_pct"] = 100 * cpu / seconds
        if workload.mode == "stream":
            result["value"] = data.get("mbytes_per_s", 0.0)
        else:
            result["value"] = data.get("req_per_s", 0.0)
        return result

    @staticmethod
    def from_loadgen(data: dict[str, Any], status: int | None) -> dict[str, Any]:
        latency = data.get("latency_us") or {}
        result = {
            "requests": data.get("requests"),
            "seconds": data.get("seconds"),
            "req_per_s": data.get("req_per_s"),
            "mbytes_per_s": data.get("mbytes_per_s"),
            "p50_us": latency.get("p50"),
            "p99_us": latency.get("p99"),
            "loadgen_cpu_pct": data.get("client_cpu_pct"),
            "errors": data.get("errors", 0),
            "mismatches": data.get("mismatches", 0),
            "connect_failures": data.get("connect_failures", 0),
        }
        if status not in (0, None):
            result["error"] = f"load generator exit status {status}"
        if data.get("mismatches"):
            result["error"] = f"{data['mismatches']} connections echoed wrong bytes"
        return result

    def measure_idle(
        self, proc: subprocess.Popen[bytes], port: int, workload: Workload
    ) -> dict[str, Any]:
        before = rss_kib(proc.pid)
        argv = [
            *self.loadgen_argv(),
            "-p",
            str(port),
            "-m",
            "idle",
            "-c",
            str(self.opts.idle_conns),
            "-d",
            str(IDLE_HOLD),
            "-T",
            "60",
        ]
        lg, timer = self.run_process(argv, 120)
        assert lg.stderr is not None
        ready = None
        for line in lg.stderr:
            if line.startswith("{") and '"ready"' in line:
                ready = json.loads(line)
                break
        after = None
        if ready is not None:
            time.sleep(0.5)  # let the last accepts and handler starts settle
            after = rss_kib(proc.pid)
        out, err = lg.communicate()
        timer.cancel()
        if ready is None or before is None or after is None:
            raise RuntimeError(f"idle connections never became ready: {err.strip()[:200]}")
        conns = int(ready.get("connections", 0))
        if conns <= 0:
            raise RuntimeError("no idle connection was established")
        result: dict[str, Any] = {
            "value": (after - before) / conns,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "connections": conns,
        }
        if out.strip():
            data = json.loads(out.strip().splitlines()[-1])
            result["errors"] = data.get("errors", 0)
            result["mismatches"] = data.get("mismatches", 0)
            if data.get("mismatches"):
                result["error"] = "idle connections echoed wrong bytes"
        if conns < self.opts.idle_conns:
            result["note"] = f"only {conns} of {self.opts.idle_conns} connections"
        return result

    def wrk_argv(self, port: int, workload: Workload, seconds: float) -> list[str]:
        assert self.wrk
        return [
            self.wrk,
            "-t1",
            f"-c{workload.conns}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            f"http://{HOST}:{port}/",
        ]

    def measure_http(
        self, proc: subprocess.Popen[bytes], port: int, workload: Workload
    ) -> dict[str, Any]:
        o = self.opts
        if o.warmup > 0:
            warm, timer = self.run_process(self.wrk_argv(port, workload, o.warmup), 60)
            warm.communicate()
            timer.cancel()
        cpu_before = children_cpu()
        with CpuSampler(proc.pid) as sampler:
            t0 = time.monotonic()
            lg, timer = self.run_process(self.wrk_argv(port, workload, o.duration), 60 + o.duration)
            out, err = lg.communicate()
            t1 = time.monotonic()
            timer.cancel()
            time.sleep(0.03)
        wrk_cpu = children_cpu() - cpu_before
        parsed = parse_wrk(out)
        if lg.returncode != 0 or parsed.get("requests") is None:
            raise RuntimeError(f"wrk failed (status {lg.returncode}): {(err or out).strip()[:300]}")
        result: dict[str, Any] = {
            "requests": parsed["requests"],
            "seconds": parsed["seconds"],
            "value": parsed["req_per_s"],
            "req_per_s": parsed["req_per_s"],
            "p50_us": parsed.get("p50_us"),
            "p99_us": parsed.get("p99_us"),
            "loadgen_cpu_pct": 100 * wrk_cpu / (t1 - t0),
            "errors": parsed.get("socket_errors", 0) + parsed.get("non_2xx", 0),
        }
        cpu = sampler.seconds_between(t0, t1)
        result["others_pct"] = sampler.others_pct(t0, t1, wrk_cpu)
        if cpu is not None and parsed["requests"]:
            result["server_cpu_us"] = cpu / parsed["requests"] * 1e6
            result["server_cpu_pct"] = 100 * cpu / (t1 - t0)
        if parsed.get("non_2xx"):
            result["error"] = f"{parsed['non_2xx']} responses were not 2xx/3xx"
        return result


_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def _duration_us(text: str) -> float | None:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else None


def parse_wrk(out: str) -> dict[str, Any]:
    """The figures of wrk's text report."""
    result: dict[str, Any] = {}
    match = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if match:
        result["requests"] = int(match.group(1))
        scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[match.group(3)]
        result["seconds"] = float(match.group(2)) * scale
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match:
        result["req_per_s"] = float(match.group(1))
    for name, q in (("p50_us", "50"), ("p99_us", "99")):
        match = re.search(rf"^\s+{q}%\s+(\S+)", out, re.MULTILINE)
        if match:
            result[name] = _duration_us(match.group(1))
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if match:
        result["socket_errors"] = sum(int(x) for x in match.groups())
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if match:
        result["non_2xx"] = int(match.group(1))
    return result


# --------------------------------------------------------------------------- summary


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(
    runs: list[dict[str, Any]], workloads: list[Workload], rounds: int, max_others: float
) -> dict[str, dict[str, dict[str, Any]]]:
    """Medians over rounds per workload and server, and ratios measured round by round."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for w in workloads:
        by_server: dict[str, list[dict[str, Any]]] = {}
        for r in runs:
            if r["workload"] == w.id:
                by_server.setdefault(r["server"], []).append(r)
        rows: dict[str, dict[str, Any]] = {}
        for sid, rs in by_server.items():
            good = [r for r in rs if "error" not in r and r.get("value") is not None]
            values = [r["value"] for r in good]
            row: dict[str, Any] = {
                "rounds": len(good),
                "value": median(values),
                "min": min(values) if values else None,
                "max": max(values) if values else None,
                "errors": [r["error"] for r in rs if "error" in r],
            }
            for key in (
                "server_cpu_us",
                "server_cpu_pct",
                "loadgen_cpu_pct",
                "others_pct",
                "p50_us",
                "p99_us",
            ):
                row[key] = median([r[key] for r in good if r.get(key) is not None])
            row["retried"] = sum(len(r.get("discarded_others_pct", ())) for r in rs)
            notes = sorted({r["note"] for r in good if r.get("note")})
            flags = []
            if row["loadgen_cpu_pct"] is not None and row["loadgen_cpu_pct"] >= SATURATED_PCT:
                flags.append("saturated")
            if row["server_cpu_pct"] is not None and row["server_cpu_pct"] < SERVER_BUSY_PCT:
                flags.append("server-not-busy")
            if row["others_pct"] is not None and row["others_pct"] > max_others:
                flags.append("shared-machine")
            if row["errors"]:
                flags.append("errors")
            if len(good) < rounds:
                flags.append("missing-rounds")
            row["flags"] = flags
            row["notes"] = notes
            rows[sid] = row
        # Ratios: per round (the runs of one round ran minutes apart at most,
        # so slow drifts of the machine cancel), then the median over rounds.
        for sid, row in rows.items():
            for ref, key in (
                ("gevent", "x_gevent"),
                ("c-echoserv", "x_c"),
                ("epoll", "x_ceiling"),
                ("socketloop", "x_socketloop"),
                ("asyncio-streams", "x_asyncio_streams"),
                ("uvloop-streams", "x_uvloop_streams"),
            ):
                row[key] = round_ratio(runs, w.id, sid, ref, "value")
            row["cpu_x_gevent"] = round_ratio(runs, w.id, sid, "gevent", "server_cpu_us")
            row["cpu_x_socketloop"] = round_ratio(runs, w.id, sid, "socketloop", "server_cpu_us")
        table[w.id] = rows
    return table


def round_ratio(runs: list[dict[str, Any]], wid: str, sid: str, ref: str, key: str) -> Any:
    if sid == ref:
        return 1.0 if any(r["workload"] == wid and r["server"] == sid for r in runs) else None
    mine = {
        r["round"]: r.get(key)
        for r in runs
        if r["workload"] == wid and r["server"] == sid and "error" not in r
    }
    theirs = {
        r["round"]: r.get(key)
        for r in runs
        if r["workload"] == wid and r["server"] == ref and "error" not in r
    }
    ratios = [
        mine[k] / theirs[k] for k in mine if k in theirs and mine[k] and theirs[k] is not None
    ]
    ratios = [x for x in ratios if not math.isnan(x)]
    return median(ratios)


def evaluate_targets(summary: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Issue 3's targets, checked for both loops."""
    checks: list[tuple[str, str, str, str, float, bool]] = [
        # workload, what, ratio key (or value), shown target, bound, higher is better
        ("pp64-100", "server CPU per request vs gevent", "cpu_x_gevent", "≤ 0.6x", 0.6, False),
        ("pp64-100", "server CPU per request (moonshot)", "server_cpu_us", "≤ 10 µs", 10.0, False),
        ("pp64-100", "req/s vs gevent", "x_gevent", "≥ 1.5x", 1.5, True),
        ("pp64-100", "req/s vs asyncio streams", "x_asyncio_streams", "≥ 1.3x", 1.3, True),
        ("pp64-100", "req/s vs uvloop streams", "x_uvloop_streams", "≥ 1.0x", 1.0, True),
        ("pp64-10", "req/s vs gevent", "x_gevent", "≥ 1.5x", 1.5, True),
        ("pp64-1000", "req/s vs gevent", "x_gevent", "≥ 1.5x", 1.5, True),
        ("pp4k-100", "req/s vs gevent", "x_gevent", "≥ 1.5x", 1.5, True),
        ("stream64k-10", "MB/s vs gevent", "x_gevent", "≥ 1.0x", 1.0, True),
        ("connect-50", "connections/s vs gevent", "x_gevent", "≥ 1.3x", 1.3, True),
        ("idle-10k", "KiB per idle connection", "value", "≤ 6 KiB", 6.0, False),
        ("http-100", "req/s vs gevent raw loop", "x_gevent", "≥ 1.5x", 1.5, True),
        ("http-100", "req/s vs asyncio streams", "x_asyncio_streams", "≥ 1.0x", 1.0, True),
    ]
    out: list[dict[str, Any]] = []
    for wid, what, key, shown, bound, higher in checks:
        rows = summary.get(wid, {})
        entry: dict[str, Any] = {"workload": wid, "what": what, "target": shown, "results": {}}
        for sid in ("socketloop", "socketloop-coro"):
            row = rows.get(sid)
            value = row.get(key) if row else None
            if value is None:
                entry["results"][sid] = {"value": None, "met": None}
                continue
            met = value >= bound if higher else value <= bound
            invalid = bool(row and "saturated" in row["flags"])
            entry["results"][sid] = {"value": value, "met": met, "invalid": invalid}
        out.append(entry)
    # coro within 10 % of the default loop, workload by workload.
    coro_entry: dict[str, Any] = {
        "workload": "*",
        "what": "socketloop.coro vs default loop",
        "target": "≥ 0.9x (≤ 1.1x for memory)",
        "per_workload": {},
    }
    for wid, rows in summary.items():
        row = rows.get("socketloop-coro")
        if not row or row.get("x_socketloop") is None:
            continue
        ratio = row["x_socketloop"]
        met = ratio <= 1.1 if wid == "idle-10k" else ratio >= 0.9
        coro_entry["per_workload"][wid] = {"value": ratio, "met": met}
    out.append(coro_entry)
    return out


def evaluate_hosted_targets(summary: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Issue 11's targets: socketloop hosted on asyncio/uvloop (pp64-100)."""
    checks = [
        # server, what, ratio key, shown target, bound, higher is better
        (
            "socketloop-on-uvloop",
            "hosted on uvloop: server CPU per request vs native",
            "cpu_x_socketloop",
            "≤ 1.10x",
            1.10,
            False,
        ),
        (
            "socketloop-on-asyncio",
            "hosted on asyncio: server CPU per request vs native",
            "cpu_x_socketloop",
            "≤ 1.25x",
            1.25,
            False,
        ),
        (
            "socketloop-on-asyncio",
            "hosted on asyncio: req/s vs asyncio streams",
            "x_asyncio_streams",
            "≥ 1.2x",
            1.2,
            True,
        ),
    ]
    rows = summary.get("pp64-100", {})
    out: list[dict[str, Any]] = []
    for sid, what, key, shown, bound, higher in checks:
        row = rows.get(sid)
        value = row.get(key) if row else None
        met = None if value is None else (value >= bound if higher else value <= bound)
        out.append({"server": sid, "what": what, "target": shown, "value": value, "met": met})
    return out


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--echoload", help="path of the C echo load generator (echoload)")
    p.add_argument("--echoserv", help="path of the C reference echo server (echoserv)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per run")
    p.add_argument("--servers", help="comma-separated server ids (default: all)")
    p.add_argument("--workloads", help="comma-separated workload ids (default: all)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 s, 1,000 idle")
    p.add_argument("--out", default=str(HERE / "results"), help="results directory")
    p.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    p.add_argument("--loadgen-procs", type=int, default=1, help="loadgen.py processes (-j)")
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="redo a run up to N times when other programs used the machine (default 2)",
    )
    p.add_argument(
        "--max-others",
        type=float,
        default=15.0,
        help="%% of a CPU other programs may use during a run before it is redone (15)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="before each run, wait up to S seconds while other programs use the CPUs (120)",
    )
    p.add_argument(
        "--wait-budget",
        type=float,
        default=900.0,
        help="stop waiting and retrying for other programs after S seconds in all (900)",
    )
    p.add_argument(
        "--render-only",
        action="store_true",
        help="only redo latest.md and latest.png from the --out directory's latest.json",
    )
    p.add_argument(
        "--baseline-rev",
        action="append",
        default=[],
        metavar="REV",
        help="also run every socketloop server as of git revision REV (its own venv),\n"
        "interleaved, as socketloop@REV; may be repeated",
    )
    p.add_argument("--list", action="store_true", help="list server and workload ids")
    a = p.parse_args(argv)
    if a.render_only:
        out = Path(a.out)
        data = json.loads((out / "latest.json").read_text())
        (out / "latest.md").write_text(report.render_markdown(data))
        print(report.render_chart(data, out / "latest.png"))
        sys.exit(0)
    if a.list:
        print("servers:", ", ".join(dict.fromkeys(s.id for s in ECHO_SERVERS + HTTP_SERVERS)))
        for w in WORKLOADS:
            print(f"workload {w.id}: {w.title}")
        sys.exit(0)
    known_w = [w.id for w in WORKLOADS]
    workloads = a.workloads.split(",") if a.workloads else known_w
    servers = a.servers.split(",") if a.servers else None
    known_s = {s.id for s in ECHO_SERVERS + HTTP_SERVERS}
    for name in workloads:
        if name not in known_w:
            p.error(f"unknown workload {name!r} (known: {', '.join(known_w)})")
    for name in servers or []:
        if name.partition("@")[0] not in known_s:
            p.error(f"unknown server {name!r} (known: {', '.join(sorted(known_s))})")
    for path, flag in ((a.echoload, "--echoload"), (a.echoserv, "--echoserv")):
        if path and not os.access(path, os.X_OK):
            p.error(f"{flag} {path}: not an executable file")
    rounds, duration, warmup, idle = a.rounds, a.duration, a.warmup, IDLE_CONNECTIONS
    if a.quick:
        rounds, duration, warmup, idle = 1, 1.0, 0.3, 1000
    if rounds < 1 or duration <= 0:
        p.error("--rounds must be at least 1 and --duration positive")
    return Options(
        echoload=str(Path(a.echoload).resolve()) if a.echoload else None,
        echoserv=str(Path(a.echoserv).resolve()) if a.echoserv else None,
        rounds=rounds,
        duration=duration,
        warmup=warmup,
        idle_conns=idle,
        servers=servers,
        workloads=workloads,
        out=Path(a.out),
        install=not a.no_install,
        quick=a.quick,
        loadgen_procs=a.loadgen_procs,
        retries=max(0, a.retries),
        max_others=a.max_others,
        quiet_wait=max(0.0, a.quiet_wait),
        wait_budget=max(0.0, a.wait_budget),
        baseline_revs=a.baseline_rev,
    )


def command_line(argv: list[str]) -> str:
    shown = []
    for arg in argv:
        text = shown_path(arg) if os.path.sep in arg and os.path.exists(arg) else arg
        shown.append(shlex.quote(text))
    return " ".join(["python", shown_path(__file__), *shown])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts = parse_args(argv)
    revision = source_revision()  # before the run: what was measured
    started = time.monotonic()
    started_at = datetime.datetime.now(datetime.timezone.utc)
    notes: list[str] = []
    skipped: dict[str, str] = {}

    ncpu = os.cpu_count() or 1
    pin = ncpu >= 2
    if pin:
        os.sched_setaffinity(0, {LOADGEN_CPU})  # keep this script off the server's CPU
    else:
        notes.append("only one CPU: server and load generator were not pinned apart")
    if not shutil.which("taskset") and pin:
        notes.append("taskset not found: pinned with sched_setaffinity instead")

    if not opts.echoload:
        notes.append(
            "load generator: benchmarks/loadgen.py (pure Python, no --echoload given); it is "
            "likely the bottleneck: compare servers only where its CPU is below 90 %"
        )
    nofile = raise_nofile(opts.idle_conns * 2 + 1000)
    if nofile < opts.idle_conns + 100:
        opts.idle_conns = max(100, nofile - 200)
        notes.append(f"RLIMIT_NOFILE is {nofile}: the idle workload used {opts.idle_conns}")

    baselines: dict[str, str] = {}
    for rev in opts.baseline_revs:
        python, sha = prepare_baseline(rev)
        baselines[rev] = python
        venv = shown_path(Path(python).parent.parent)
        notes.append(f"socketloop@{rev} is commit {sha[:12]}, installed in {venv}/")
    echo_servers = with_baselines(ECHO_SERVERS, baselines)
    http_servers = with_baselines(HTTP_SERVERS, baselines)
    wanted = set(opts.servers) if opts.servers else None
    if wanted is not None:  # a socketloop server asked for brings its baseline twins
        wanted |= {f"{sid}@{rev}" for sid in wanted for rev in baselines}
    workloads = [w for w in WORKLOADS if w.id in opts.workloads]
    if opts.idle_conns != IDLE_CONNECTIONS:  # --quick, or a low descriptor limit
        title = f"memory per idle connection, {opts.idle_conns:,}"
        workloads = [
            dataclasses.replace(w, conns=opts.idle_conns, title=title) if w.mode == "idle" else w
            for w in workloads
        ]
    wrk: str | None = None
    if any(w.mode == "http" for w in workloads):
        wrk, why = ensure_wrk(opts.install)
        if not wrk:
            skipped["http-100"] = f"HTTP rows not measured: {why}"
            notes.append(skipped["http-100"])
            workloads = [w for w in workloads if w.mode != "http"]

    def available(server: Server) -> bool:
        if wanted is not None and server.id not in wanted:
            return False
        if server.file is None:
            if not opts.echoserv:
                skipped[server.id] = "no --echoserv given"
                return False
            return True
        for module in server.needs:
            if importlib.util.find_spec(module) is None:
                skipped[server.id] = f"{module} is not installed in {shown_path(sys.executable)}"
                return False
        return True

    plan: dict[str, list[Server]] = {}
    for w in workloads:
        pool = http_servers if w.mode == "http" else echo_servers
        plan[w.id] = [s for s in pool if available(s)]
    for sid, why in skipped.items():
        if sid in {s.id for s in echo_servers + http_servers}:
            notes.append(f"{sid} not measured: {why}")

    opts.out.mkdir(parents=True, exist_ok=True)
    raw = opts.out / "raw"
    raw.mkdir(exist_ok=True)
    stamp = started_at.strftime("%Y%m%d-%H%M%S")
    total = sum(len(v) for v in plan.values()) * opts.rounds
    print(
        f"{total} runs: {len(workloads)} workloads, {opts.rounds} rounds, "
        f"{opts.duration:g} s each (+{opts.warmup:g} s warm-up); server logs in "
        f"{shown_path(raw / f'servers-{stamp}.log')}",
        flush=True,
    )
    with open(raw / f"servers-{stamp}.log", "w") as log:
        runner = Runner(opts, pin, wrk, log)
        done = 0
        for rnd in range(1, opts.rounds + 1):
            for w in workloads:
                for server in plan[w.id]:
                    done += 1
                    record = runner.run(server, w, rnd)
                    runner.runs.append(record)
                    print(progress_line(done, total, record, w), flush=True)

    summary = summarize(runner.runs, workloads, opts.rounds, opts.max_others)
    revision_end = source_revision()
    if revision_end != revision:
        notes.append(
            f"socketloop's source changed during the run ({revision} -> {revision_end}): "
            "servers started after the change ran the new code"
        )
    if runner.waited >= 1:
        notes.append(
            f"other programs were using the CPUs: {runner.waited / 60:.1f} min went to waiting "
            "for them and redoing disturbed runs"
        )
    retried = sum(len(r.get("discarded_others_pct", ())) for r in runner.runs)
    if retried:
        notes.append(
            f"{retried} run(s) were redone because other programs used more than "
            f"{opts.max_others:g} % of a CPU during them"
        )
    meta = {
        "date": started_at.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "cpu": cpu_model(),
            "cores": ncpu,
            "kernel": f"{platform.system()} {platform.release()}",
            "arch": platform.machine(),
        },
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "revision": revision,
        "baselines": {rev: shown_path(Path(p).parent.parent) for rev, p in baselines.items()},
        "versions": {
            name: version_of(name)
            for name in ("socketloop", "greenlet", "gevent", "uvloop", "trio", "matplotlib")
        },
        "loadgen": (
            f"echoload (C, {shown_path(opts.echoload)})"
            if opts.echoload
            else f"benchmarks/loadgen.py (Python, {opts.loadgen_procs} process)"
        ),
        "loadgen_is_python": not opts.echoload,
        "echoserv": shown_path(opts.echoserv) if opts.echoserv else None,
        "wrk": f"wrk {wrk_version(wrk)}" if wrk else None,
        "command": command_line(argv),
        "rounds": opts.rounds,
        "duration": opts.duration,
        "warmup": opts.warmup,
        "idle_connections": opts.idle_conns,
        "pinning": f"server on CPU {SERVER_CPU}, load generator on CPU {LOADGEN_CPU}"
        if pin
        else "none",
        "quick": opts.quick,
        "max_others_pct": opts.max_others,
        "wall_seconds": round(time.monotonic() - started),
        "notes": notes,
        "skipped": skipped,
    }
    data = {
        "meta": meta,
        "workloads": [w.__dict__ for w in workloads],
        "servers": {
            "echo": {s.id: s.label for s in echo_servers},
            "http": {s.id: s.label for s in http_servers},
        },
        "summary": summary,
        "targets": evaluate_targets(summary),
        "hosted_targets": evaluate_hosted_targets(summary),
        "runs": runner.runs,
    }
    text = json.dumps(data, indent=1, ensure_ascii=False)
    (opts.out / "latest.json").write_text(text + "\n")
    (raw / f"results-{stamp}.json").write_text(text + "\n")
    (opts.out / "latest.md").write_text(report.render_markdown(data))
    chart = report.render_chart(data, opts.out / "latest.png")
    print(f"\nwrote {shown_path(opts.out / 'latest.md')}, {shown_path(opts.out / 'latest.json')}")
    print(chart)
    print(f"wall time {meta['wall_seconds']} s")
    return 0


def progress_line(done: int, total: int, r: dict[str, Any], w: Workload) -> str:
    head = f"[{done}/{total}] r{r['round']} {w.id:13} {r['server']:17}"
    if "error" in r:
        return f"{head} ERROR {r['error']}"
    value = r.get("value") or 0.0
    parts = [f"{value:10.1f} {w.unit}"]
    if r.get("server_cpu_us") is not None:
        parts.append(f"cpu {r['server_cpu_us']:6.1f} µs/req")
    if r.get("loadgen_cpu_pct") is not None:
        parts.append(f"loadgen {r['loadgen_cpu_pct']:5.1f} %")
    if r.get("others_pct") is not None:
        parts.append(f"others {r['others_pct']:4.0f} %")
    return f"{head} " + "  ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
