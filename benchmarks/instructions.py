"""Instructions per operation under callgrind: a comparison that load cannot move.

Wall-clock and CPU-time figures on a shared machine move by 10-30 % between
runs; callgrind counts the instructions the interpreter executes, which is
the same for the same binary, inputs and environment whatever else the
machine does.  This script runs fixed in-process workloads under
``valgrind --tool=callgrind`` at two sizes, N and 2N, and reports
(instructions(2N) - instructions(N)) / N: the cost of one operation with
start-up and imports cancelled out.

Workloads (each on the default loop and on ``socketloop.coro``):

- ``pingpong``: two loop threads exchange 64 B over a socketpair; one op is
  one round trip (two sends, two recvs, two waits, two wake-ups).
- ``churn``: a server and a client thread on 127.0.0.1; one op is connect,
  one 64 B echo, close (accept, a new handler thread, its end).
- ``spawn``: ``newthread(f)`` where ``f`` returns at once, then a step.
- ``resume``: ``resume(t)`` of a thread that ``suspend()``s again at once;
  one op is one resume/suspend round trip.
- ``sleep0``: one thread calling ``sleep(0)``: one op is one yield to the
  dispatcher and back.

usage::

    python benchmarks/instructions.py [--python PY ...] [--n N]

Each ``--python`` is an interpreter whose ``import socketloop`` is the
revision to measure (e.g. this checkout's venv and a baseline venv made by
``run.py --baseline-rev REV`` under ``.bench-baselines/``); the default is
the running interpreter.  Needs valgrind (Debian's ``valgrind``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

WORKLOAD = r"""
import socket, sys
import socketloop, socketloop.coro

def pingpong(mod, n):
    loop = mod.get_loop()
    a, b = socket.socketpair()
    a, b = loop.wrap(a), loop.wrap(b)
    msg = b"x" * 64

    def ping():
        for _ in range(n):
            a.sendall(msg)
            a.recv(64)

    def pong():
        for _ in range(n):
            b.sendall(b.recv(64))

    loop.newthread(pong)
    loop.newthread(ping)
    loop.start()
    a.close(); b.close()

def churn(mod, n):
    loop = mod.get_loop()
    def handler(conn):
        data = conn.recv(64)
        conn.sendall(data)
        conn.close()
    srv = loop.newserver("127.0.0.1", 0, handler)
    port = srv.getsockname()[1] if hasattr(srv, "getsockname") else srv.port
    def client():
        for _ in range(n):
            c = loop.connect("127.0.0.1", port)
            c.sendall(b"y" * 64)
            c.recv(64)
            c.close()
        srv.close()
    loop.newthread(client)
    loop.start()

def spawn(mod, n):
    loop = mod.get_loop()
    def f():
        pass
    for _ in range(n):
        loop.newthread(f)
        loop.step(0)

def resume(mod, n):
    loop = mod.get_loop()
    def f():
        while True:
            loop.suspend()
    t = loop.newthread(f)
    for _ in range(n):
        loop.resume(t)
    t.kill(block=False)
    loop.step(0)

def sleep0(mod, n):
    loop = mod.get_loop()
    def f():
        for _ in range(n):
            loop.sleep(0)
    loop.newthread(f)
    loop.start()

kind, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
mod = socketloop if kind == "default" else socketloop.coro
globals()[name](mod, 200)  # warm caches
globals()[name](mod, n)
"""

COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def count(python: str, kind: str, name: str, n: int, script: str) -> int:
    """Instructions of one run of ``name`` with ``n`` operations."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONHASHSEED"] = "0"
    proc = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            python,
            script,
            kind,
            name,
            str(n),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    found = COLLECTED.findall(proc.stderr)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"{python} {kind} {name} {n} failed:\n{proc.stderr[-2000:]}")
    return int(found[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", help="interpreter to measure (repeatable)")
    parser.add_argument("--n", type=int, default=2000, help="operations in the smaller run")
    parser.add_argument("--workloads", default="pingpong,churn,spawn,resume,sleep0")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    pythons = args.python or [sys.executable]
    names = args.workloads.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "workload.py")
        with open(script, "w") as f:
            f.write(WORKLOAD)
        rows: list[tuple[str, str, list[float]]] = []
        for name in names:
            for kind in ("default", "coro"):
                per_op = []
                for python in pythons:
                    small = count(python, kind, name, args.n, script)
                    large = count(python, kind, name, 2 * args.n, script)
                    per_op.append((large - small) / args.n)
                rows.append((name, kind, per_op))
    ratio_column = " | ratio |" if len(pythons) > 1 else ""
    print("| workload | loop | " + " | ".join(pythons) + ratio_column)
    print("|---|---|" + "---:|" * (len(pythons) + (1 if len(pythons) > 1 else 0)))
    for name, kind, per_op in rows:
        cells = " | ".join(f"{v:,.0f}" for v in per_op)
        ratio = f" | {per_op[0] / per_op[1]:.3f} |" if len(per_op) > 1 else " |"
        print(f"| {name} | {kind} | {cells}{ratio}")


if __name__ == "__main__":
    main()
