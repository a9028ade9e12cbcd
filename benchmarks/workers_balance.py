"""How ``run_server`` spreads connections over its workers, per balance mode.

For each balance mode and client concurrency, starts ``run_server`` with
``--workers`` workers on 127.0.0.1 (in a child process), then a client
process that opens ``--connections`` short connections (``-c`` at a time,
each: connect, read the worker's pid, close) and counts them per worker pid.
Prints one line per run and, with ``--json``, the raw counts.

    python benchmarks/workers_balance.py [--workers 2] [--connections 4000]
        [--concurrency 1,32] [--modes reuseport,shared] [--work-us 0] [--json]

Mode ``shared-herd`` is ``shared`` without ``EPOLLEXCLUSIVE``, for
comparison (every idle worker wakes for every connection).

``--work-us`` makes each handler burn that much CPU before answering (a busy
worker is skipped by an exclusive wake-up; an idle one is not).  The client
shares the machine's cores with the workers, so these are distributions,
not throughput figures.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import socketloop
from socketloop import AsyncSocket


def serve(workers: int, balance: str, work_us: int) -> None:
    import logging
    import resource

    if balance == "shared-herd":
        # For comparison only: the shared listener without EPOLLEXCLUSIVE.
        from socketloop._server import Server

        Server._register_exclusive = lambda self: None  # type: ignore[method-assign]
        balance = "shared"

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

    def handler(conn: AsyncSocket) -> None:
        if work_us:
            until = time.perf_counter() + work_us / 1e6
            while time.perf_counter() < until:
                pass
        conn.sendall(str(os.getpid()).encode())

    socketloop.run_server("127.0.0.1", 0, handler, workers=workers, balance=balance)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, reaped
    cpu = {"cpu_s": usage.ru_utime + usage.ru_stime, "switches": usage.ru_nvcsw}
    print("workers-cpu " + json.dumps(cpu), file=sys.stderr, flush=True)


def client(port: int, connections: int, concurrency: int) -> dict[str, Any]:
    counts: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    left = [connections]

    def one_client() -> None:
        while left[0] > 0:
            left[0] -= 1
            try:
                sock = socketloop.connect("127.0.0.1", port, timeout=10)
                with sock:
                    data = b""
                    while chunk := sock.recv(64):
                        data += chunk
                counts[data.decode()] += 1
            except OSError as exc:
                errors[type(exc).__name__] += 1

    began = time.perf_counter()
    for _ in range(concurrency):
        socketloop.newthread(one_client)
    socketloop.start()
    seconds = time.perf_counter() - began
    return {"counts": dict(counts), "errors": dict(errors), "seconds": seconds}


def run_one(workers: int, balance: str, connections: int, concurrency: int, work_us: int) -> Any:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(workers), balance, str(work_us)],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert server.stderr is not None
        port = 0
        serving = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not port or serving < workers):
            line = server.stderr.readline()
            if not line:
                raise RuntimeError("the server ended before serving")
            match = re.search(r"supervisor \d+: serving 127\.0\.0\.1:(\d+)", line)
            if match:
                port = int(match.group(1))
            if re.search(r"worker \d+ \(slot \d+\) serving", line):
                serving += 1
        out = subprocess.run(
            [sys.executable, __file__, "--client", str(port), str(connections), str(concurrency)],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        ).stdout
        result: dict[str, Any] = json.loads(out)
    finally:
        os.kill(server.pid, signal.SIGTERM)
        try:
            _, err = server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            _, err = server.communicate()
    match = re.search(r"workers-cpu (.*)", err or "")
    if match:
        result.update(json.loads(match.group(1)))
    result.update(balance=balance, concurrency=concurrency, workers=workers, work_us=work_us)
    return result


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        serve(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        return
    if sys.argv[1:2] == ["--client"]:
        print(json.dumps(client(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=4000)
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--modes", default="reuseport,shared")
    parser.add_argument("--work-us", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for balance in args.modes.split(","):
        for concurrency in map(int, args.concurrency.split(",")):
            result = run_one(args.workers, balance, args.connections, concurrency, args.work_us)
            shares = sorted(result["counts"].values(), reverse=True)
            total = sum(shares) or 1
            print(
                f"{balance:9} workers={args.workers} c={concurrency:<3} work={args.work_us}us "
                f"per worker {shares} ({', '.join(f'{100 * n / total:.0f}%' for n in shares)}) "
                f"errors {result['errors'] or 0} "
                f"{total / result['seconds']:.0f} conn/s, workers' CPU "
                f"{1e6 * result.get('cpu_s', 0) / total:.0f} us/conn, "
                f"{result.get('switches', 0) / total:.2f} voluntary switches/conn"
            )
            if args.json:
                print(json.dumps(result))


if __name__ == "__main__":
    main()
