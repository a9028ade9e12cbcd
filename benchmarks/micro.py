"""Micro-benchmarks of socketloop's primitives, on both loops, beside their floors.

Each benchmark times a batch of N operations with ``time.perf_counter`` (N
calibrated so that one batch takes about 0.1 s), with the garbage collector
off, and repeats the batch; the table gives the minimum (the least disturbed
run: the best estimate of the cost) and the median (what to expect) in
nanoseconds per operation.

- newthread+finish: ``loop.newthread(f)`` where ``f`` returns at once.
- suspend/resume: one ``loop.resume(t)`` into a thread that ``suspend()``-s again.
- sleep(0) ping-pong: two threads in ``sleep(0)`` loops; one round = each ran once.
- timer schedule/cancel: ``loop.call_later(60, f).cancel()``.
- recv (ready socket): ``recv(64)`` from a loop thread on a socketpair with data
  waiting; beside it, the plain non-blocking ``socket.recv(64)`` (the system call).
- greenlet switch round trip: ``g.switch()`` into a greenlet that switches back
  (the floor under every thread switch above).
- Hosted on asyncio and on uvloop (``socketloop.aio``): ``await asyncio.sleep(0)``
  in a bare coroutine (the host's own floor), ``await_(asyncio.sleep(0))`` from a
  socketloop thread (task created, run, thread woken), and ``await thread`` of a
  thread that returns at once (spawn, step, result back to the coroutine).

usage: python benchmarks/micro.py [--quick] [--repeat N] [--out DIR]
Writes DIR/micro.md and DIR/micro.json (default benchmarks/results/).

Two revisions side by side::

    python benchmarks/micro.py --baseline-python PY [--rounds 5] [--quick]

runs the loop benchmarks (not the hosted ones, which older revisions lack)
in alternating child processes, this interpreter's socketloop and ``PY``'s
(for instance a venv made by ``run.py --baseline-rev REV`` under
``.bench-baselines/``), and prints per row the median over rounds of each
side's minimum and the median of the per-round ratios.  Nothing is written.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from greenlet import GreenletExit, getcurrent, greenlet
from run import cpu_model, source_revision  # benchmarks/run.py, beside this script

import socketloop

HERE = Path(__file__).resolve().parent
CHUNK = 64  # bytes per recv
REFILL = 1000  # recvs per refill of the socketpair (64,000 bytes)


def noop() -> None:
    return None


# Each bench_* takes n and returns the seconds that n operations took.


def bench_greenlet_switch(n: int) -> float:
    main = getcurrent()

    def bounce() -> None:
        while True:
            main.switch()

    g = greenlet(bounce)
    g.switch()
    switch = g.switch
    t0 = time.perf_counter()
    for _ in range(n):
        switch()
    elapsed = time.perf_counter() - t0
    g.throw(GreenletExit)  # ends it quietly
    return elapsed


def bench_socket_recv(n: int) -> float:
    a, b = socket.socketpair()
    a.setblocking(False)
    total = 0.0
    try:
        done = 0
        while done < n:
            k = min(REFILL, n - done)
            b.sendall(b"x" * (CHUNK * k))
            recv = a.recv
            t0 = time.perf_counter()
            for _ in range(k):
                recv(CHUNK)
            total += time.perf_counter() - t0
            done += k
    finally:
        a.close()
        b.close()
    return total


def make_benches(make_loop: Callable[[], socketloop.Loop]) -> dict[str, Callable[[int], float]]:
    def newthread(n: int) -> float:
        loop = make_loop()
        spawn = loop.newthread
        t0 = time.perf_counter()
        for _ in range(n):
            spawn(noop)
        elapsed = time.perf_counter() - t0
        loop.close()
        return elapsed

    def suspend_resume(n: int) -> float:
        loop = make_loop()
        suspend = loop.suspend

        def worker() -> None:
            for _ in range(n):
                suspend()

        t = loop.newthread(worker)
        resume = loop.resume
        t0 = time.perf_counter()
        for _ in range(n):
            resume(t)
        elapsed = time.perf_counter() - t0
        loop.close()
        return elapsed

    def sleep0(n: int) -> float:
        loop = make_loop()
        sleep = loop.sleep

        def worker() -> None:
            for _ in range(n):
                sleep(0)

        loop.spawn(worker)
        loop.spawn(worker)
        t0 = time.perf_counter()
        loop.start()
        elapsed = time.perf_counter() - t0
        loop.close()
        return elapsed

    def timer(n: int) -> float:
        loop = make_loop()
        call_later = loop.call_later
        t0 = time.perf_counter()
        for _ in range(n):
            call_later(60.0, noop).cancel()
        elapsed = time.perf_counter() - t0
        loop.close()
        return elapsed

    def recv(n: int) -> float:
        loop = make_loop()
        a, b = socket.socketpair()
        sock = loop.wrap(a)
        result: list[float] = []

        def reader() -> None:
            total = 0.0
            done = 0
            while done < n:
                k = min(REFILL, n - done)
                b.sendall(b"x" * (CHUNK * k))
                r = sock.recv
                t0 = time.perf_counter()
                for _ in range(k):
                    r(CHUNK)
                total += time.perf_counter() - t0
                done += k
            result.append(total)

        loop.spawn(reader)
        loop.start()
        sock.close()
        b.close()
        loop.close()
        return result[0]

    return {
        "newthread+finish": newthread,
        "suspend/resume round trip": suspend_resume,
        "sleep(0) ping-pong round": sleep0,
        "timer schedule/cancel": timer,
        "recv(64) on a ready socket": recv,
    }


def hosts() -> dict[str, Callable[[Any], Any]]:
    """The event loops to host socketloop on: asyncio always, uvloop if installed."""
    import asyncio

    found: dict[str, Callable[[Any], Any]] = {"asyncio": asyncio.run}
    try:
        import uvloop
    except ImportError:
        pass
    else:
        found["uvloop"] = uvloop.run
    return found


def make_hosted_benches(run: Callable[[Any], Any]) -> dict[str, Callable[[int], float]]:
    import asyncio

    import socketloop.aio

    def bare_sleep0(n: int) -> float:
        async def main() -> float:
            sleep = asyncio.sleep
            t0 = time.perf_counter()
            for _ in range(n):
                await sleep(0)
            return time.perf_counter() - t0

        return float(run(main()))

    def await_sleep0(n: int) -> float:
        def worker() -> float:
            await_ = socketloop.aio.await_
            sleep = asyncio.sleep
            t0 = time.perf_counter()
            for _ in range(n):
                await_(sleep(0))
            return time.perf_counter() - t0

        async def main() -> float:
            async with socketloop.aio.hosted(socketloop.Loop()) as loop:
                elapsed = await loop.spawn(worker)
            loop.close()
            return elapsed

        return float(run(main()))

    def await_thread(n: int) -> float:
        async def main() -> float:
            async with socketloop.aio.hosted(socketloop.Loop()) as loop:
                spawn = loop.spawn
                t0 = time.perf_counter()
                for _ in range(n):
                    await spawn(noop)
                elapsed = time.perf_counter() - t0
            loop.close()
            return elapsed

        return float(run(main()))

    return {
        "await asyncio.sleep(0), bare coroutine": bare_sleep0,
        "await_(asyncio.sleep(0)) from a thread": await_sleep0,
        "await thread (returns at once)": await_thread,
    }


def measure(fn: Callable[[int], float], repeat: int, target: float) -> dict[str, Any]:
    """Calibrate n to ``target`` seconds per batch, then time ``repeat`` batches."""
    n = 100
    while True:
        elapsed = fn(n)
        if elapsed >= target / 4 or n >= 10_000_000:
            break
        n *= 4
    n = max(100, int(n * target / max(elapsed, 1e-9)))
    per_op = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            per_op.append(fn(n) / n * 1e9)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {"n": n, "min_ns": min(per_op), "median_ns": statistics.median(per_op), "runs": per_op}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 short repetitions")
    p.add_argument("--repeat", type=int, default=None, help="repetitions (default 9)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--core-only", action="store_true", help="leave out the hosted rows")
    p.add_argument(
        "--baseline-python", help="compare with this interpreter's socketloop (see above)"
    )
    p.add_argument(
        "--rounds", type=int, default=5, help="alternating rounds with --baseline-python"
    )
    args = p.parse_args(argv)
    if args.baseline_python:
        return compare(args)
    repeat = args.repeat or (3 if args.quick else 9)
    target = 0.02 if args.quick else 0.1

    rows: list[dict[str, Any]] = []
    floors = {
        "greenlet switch round trip": bench_greenlet_switch,
        "socket.recv(64), plain non-blocking": bench_socket_recv,
    }
    for name, fn in floors.items():
        rows.append({"bench": name, "loop": "floor", **measure(fn, repeat, target)})
        print(f"{name:38} {'floor':16} {rows[-1]['min_ns']:9.0f} ns", flush=True)
    loops: dict[str, Callable[[], socketloop.Loop]] = {
        "socketloop": socketloop.Loop,
        "socketloop.coro": socketloop.CoroLoop,
    }
    for name in make_benches(socketloop.Loop):
        for loop_name, make_loop in loops.items():
            fn = make_benches(make_loop)[name]
            rows.append({"bench": name, "loop": loop_name, **measure(fn, repeat, target)})
            print(f"{name:38} {loop_name:16} {rows[-1]['min_ns']:9.0f} ns", flush=True)

    for host_name, run in ({} if args.core_only else hosts()).items():
        for name, fn in make_hosted_benches(run).items():
            rows.append({"bench": name, "loop": host_name, **measure(fn, repeat, target)})
            print(f"{name:38} {host_name:16} {rows[-1]['min_ns']:9.0f} ns", flush=True)

    switch_ns = rows[0]["min_ns"]
    lines = [
        "# socketloop micro-benchmarks",
        "",
        f"CPython {platform.python_version()}, socketloop {socketloop.__version__}, "
        f"{repeat} repetitions of a calibrated batch each, GC off; "
        f"command: `python benchmarks/micro.py{' --quick' if args.quick else ''}`",
        "",
        "| operation | loop | min ns/op | median ns/op | min in greenlet switches |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['bench']} | {r['loop']} | {r['min_ns']:,.0f} | {r['median_ns']:,.0f} | "
            f"{r['min_ns'] / switch_ns:.1f} |"
        )
    lines.append("")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "micro.md").write_text("\n".join(lines))
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "revision": source_revision(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "socketloop": socketloop.__version__,
        "repeat": repeat,
        "quick": args.quick,
    }
    (out / "micro.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))
    return 0


def compare(args: argparse.Namespace) -> int:
    """Alternate child runs of both interpreters; print medians and per-round ratios."""
    sides = {"this tree": sys.executable, "baseline": args.baseline_python}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    results: dict[str, list[dict[tuple[str, str], float]]] = {side: [] for side in sides}
    extra = ["--quick"] if args.quick else []
    if args.repeat:
        extra += ["--repeat", str(args.repeat)]
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            # Alternate which side goes first, so drift favours neither.
            order = list(sides.items()) if rnd % 2 == 0 else list(sides.items())[::-1]
            for side, python in order:
                out = os.path.join(tmp, f"{side}-{rnd}")
                subprocess.run(
                    [python, __file__, "--core-only", "--out", out, *extra],
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                with open(os.path.join(out, "micro.json")) as f:
                    rows = json.load(f)["rows"]
                results[side].append({(r["bench"], r["loop"]): r["min_ns"] for r in rows})
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    keys = [k for k in results["this tree"][0] if k in results["baseline"][0]]
    print(f"this tree: {sys.executable}; baseline: {args.baseline_python}; {args.rounds} rounds")
    print()
    print("| operation | loop | this tree ns/op | baseline ns/op | ratio (median of rounds) |")
    print("|---|---|---:|---:|---:|")
    for key in keys:
        mine = [r[key] for r in results["this tree"]]
        theirs = [r[key] for r in results["baseline"]]
        ratios = [a / b for a, b in zip(mine, theirs, strict=True)]
        print(
            f"| {key[0]} | {key[1]} | {statistics.median(mine):,.0f} | "
            f"{statistics.median(theirs):,.0f} | {statistics.median(ratios):.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
