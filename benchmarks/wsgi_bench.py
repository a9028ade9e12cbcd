"""WSGI servers side by side: socketloop.wsgi, gevent.pywsgi and gunicorn's workers.

Usage (from the repository root, in a virtualenv with the peers installed:
``make bench`` builds one with gevent and gunicorn)::

    python benchmarks/wsgi_bench.py [--duration S] [--rounds N] [--connections C]
                                    [--servers a,b] [--apps hello,backend]
                                    [--workers 1,2] [--out FILE.json]

Each server runs in a fresh process (gunicorn: the arbiter and its workers)
pinned to CPU 0 with ``taskset``; ``wrk -t1 -c100`` runs pinned to CPU 1 over
HTTP/1.1 keep-alive.  Apps: ``hello`` (a 14-byte answer) and ``backend`` (one
blocking 5 ms HTTP call per request to a backend on CPU 1, so concurrency
matters: socketloop servers call ``socketloop.patch()``, gevent ones
``gevent.monkey.patch_all()``, gthread uses OS threads).  The figures are
requests per second and the server's CPU milliseconds per 1,000 requests
(user + system time of the server's processes over wrk's run, from
/proc/PID/stat), and how that CPU time was split over the server's
processes (with 2 workers: the balance between them).  With ``--workers
2`` the server gets CPUs 0 and 1, which wrk shares: only CPU per request
can be compared then, not the rate.

``gevent.pywsgi`` runs twice: as shipped, and as ``gevent.pywsgi-nodelay``
with ``TCP_NODELAY`` set on each connection.  As shipped it writes the
header block and the body separately with Nagle's algorithm on, so every
keep-alive request after the first waits ~40 ms for the client's delayed
ACK; the nodelay row is the fair peer for CPU and rate comparisons.

Standard library only, plus ``report.py`` beside it (the servers are child
processes).  A server whose package is missing is skipped with a note.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import report  # benchmarks/report.py, beside this script (the README's renderer)

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SERVER_CPUS = {1: "0", 2: "0,1"}
LOADGEN_CPU = "1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: The apps, as a module the servers import (``benchapp:hello`` etc.).
APP_MODULE = textwrap.dedent(
    """
    import http.client, os

    BODY = b"Hello, world!\\n"
    BACKEND_PORT = int(os.environ.get("BENCH_BACKEND_PORT", "0"))

    def hello(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(BODY)))])
        return [BODY]

    def backend(environ, start_response):
        conn = http.client.HTTPConnection("127.0.0.1", BACKEND_PORT, timeout=30)
        conn.request("GET", "/")
        body = conn.getresponse().read()
        conn.close()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    """
)

#: Patching preludes per server family (what a deployment would do).
PATCH_SOCKETLOOP = "import socketloop; socketloop.patch()\n"
PATCH_GEVENT = "from gevent import monkey; monkey.patch_all()\n"

#: A 5 ms backend: socketloop.wsgi answering every request after a cooperative sleep.
BACKEND = textwrap.dedent(
    """
    import sys, socketloop, socketloop.wsgi
    def app(environ, start_response):
        socketloop.sleep(0.005)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "7")])
        return [b"backend"]
    socketloop.wsgi.serve(app, "127.0.0.1", int(sys.argv[1]), keepalive=60)
    """
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def server_argv(name: str, app: str, port: int, workers: int, directory: Path) -> list[str] | None:
    """The command line of server ``name`` serving ``benchapp:<app>``; None if unavailable."""
    py = sys.executable
    prelude_sl = PATCH_SOCKETLOOP if app == "backend" else ""
    prelude_gevent = PATCH_GEVENT if app == "backend" else ""
    if name == "socketloop.wsgi":
        if workers != 1 and not hasattr(__import__("socketloop"), "run_server"):
            return None
        code = (
            f"{prelude_sl}import socketloop.wsgi, benchapp\n"
            f"socketloop.wsgi.serve(benchapp.{app}, {HOST!r}, {port}, workers={workers})\n"
        )
        return [py, "-c", code]
    if name in ("gevent.pywsgi", "gevent.pywsgi-nodelay"):
        if workers != 1 or not has("gevent"):
            return None
        server_class = "WSGIServer"
        code = f"{PATCH_GEVENT}import benchapp\nfrom gevent.pywsgi import WSGIServer\n"
        if name.endswith("-nodelay"):
            # pywsgi as shipped leaves Nagle on and sends the header block
            # and the body in two writes, so on a keep-alive connection the
            # body waits for the client's delayed ACK (~40 ms a request).
            # This row is pywsgi at its best: TCP_NODELAY on every connection.
            server_class = "NoDelayServer"
            code += textwrap.dedent(
                """
                import socket
                class NoDelayServer(WSGIServer):
                    def handle(self, sock, address):
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        super().handle(sock, address)
                """
            )
        code += (
            f"{server_class}(({HOST!r}, {port}), benchapp.{app}, log=None, backlog=1024)"
            ".serve_forever()\n"
        )
        return [py, "-c", code]
    if not name.startswith("gunicorn-") or not has("gunicorn"):
        return None
    kind = name.removeprefix("gunicorn-")
    worker_class = {
        "socketloop": "socketloop.gunicorn.Worker",
        "gevent": "gevent",
        "gthread": "gthread",
    }[kind]
    if kind == "gevent" and not has("gevent"):
        return None
    module = "benchapp"
    if app == "backend" and kind == "socketloop":
        (directory / "benchapp_sl.py").write_text(prelude_sl + "from benchapp import *\n")
        module = "benchapp_sl"
    argv = [
        py,
        "-m",
        "gunicorn",
        "-k",
        worker_class,
        "-w",
        str(workers),
        "-b",
        f"{HOST}:{port}",
        "--backlog",
        "1024",
        "--keep-alive",
        "60",
        "--worker-connections",
        "1000",
        "--log-level",
        "warning",
    ]
    if kind == "gthread":
        argv += ["--threads", "100"]  # one OS thread per connection of the load
    if "control_socket_disable" in _gunicorn_settings():
        argv.append("--no-control-socket")
    del prelude_gevent  # gunicorn's gevent worker patches by itself
    return [*argv, f"{module}:{app}"]


def _gunicorn_settings() -> set[str]:
    try:
        import gunicorn.config
    except ImportError:
        return set()
    return {setting.name for setting in gunicorn.config.KNOWN_SETTINGS}


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("the server never listened") from None
            time.sleep(0.05)  # polling for readiness


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = task.read_text().split()
        except OSError:
            continue
        for child in children:
            pids.extend(process_tree(int(child)))
    return pids


def cpu_by_process(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each live process of ``pids``."""
    seconds = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    return seconds


def cpu_split(before: dict[int, float], after: dict[int, float]) -> list[int]:
    """Each process's share of the CPU used between the two readings, in %, largest first.

    With several workers this is how the load was spread over them (the
    supervisor or arbiter shows up as a share near 0).
    """
    used = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
    total = sum(used.values())
    if total <= 0:
        return []
    return sorted((round(100 * value / total) for value in used.values()), reverse=True)


def run_wrk(wrk: str, port: int, connections: int, seconds: float) -> dict[str, Any]:
    argv = [
        "taskset",
        "-c",
        LOADGEN_CPU,
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
    ]
    argv.append(f"http://{HOST}:{port}/")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    out = done.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(rate.group(1)) if rate else 0.0,
        "requests": int(total.group(1)) if total else 0,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def measure(
    wrk: str, name: str, app: str, workers: int, args: argparse.Namespace, directory: Path
) -> dict[str, Any] | None:
    port = free_port()
    argv = server_argv(name, app, port, workers, directory)
    if argv is None:
        return None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(directory), str(ROOT / "src"), env.get("PYTHONPATH", "")]
    )
    env["BENCH_BACKEND_PORT"] = str(args.backend_port)
    pinned = ["taskset", "-c", SERVER_CPUS[workers], *argv]
    proc = subprocess.Popen(
        pinned, cwd=directory, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        try:
            wait_listening(proc, port)
        except RuntimeError as exc:
            _, stderr = proc.communicate(timeout=30)
            print(f"  {name}: {exc}:\n{stderr.decode(errors='replace')[-1500:]}")
            return None
        run_wrk(wrk, port, args.connections, min(1.0, args.duration))  # warm-up
        pids = process_tree(proc.pid)
        before = cpu_by_process(pids)
        result = run_wrk(wrk, port, args.connections, args.duration)
        after = cpu_by_process(pids)
        cpu = sum(after.values()) - sum(before.get(pid, 0.0) for pid in after)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    requests = max(result["requests"], 1)
    result.update(
        server=name,
        app=app,
        workers=workers,
        cpu_ms_per_1k=round(cpu * 1e6 / requests, 1),
        cpu_split=cpu_split(before, after),
        stderr_tail=stderr.decode(errors="replace")[-500:] if stderr else "",
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="interleaved rounds; medians are reported (1)"
    )
    parser.add_argument("--connections", type=int, default=100, help="wrk connections (100)")
    parser.add_argument(
        "--servers",
        default=(
            "socketloop.wsgi,gevent.pywsgi,gevent.pywsgi-nodelay,"
            "gunicorn-socketloop,gunicorn-gevent,gunicorn-gthread"
        ),
    )
    parser.add_argument("--apps", default="hello", help="hello,backend")
    parser.add_argument("--workers", default="1", help="worker counts, e.g. 1,2")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None or shutil.which("taskset") is None:
        print("wsgi_bench: needs wrk and taskset (apt-get install wrk util-linux)")
        return 2
    backend: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory(prefix="wsgi-bench-") as tmp:
        directory = Path(tmp)
        (directory / "benchapp.py").write_text(APP_MODULE)
        args.backend_port = 0
        if "backend" in args.apps.split(","):
            args.backend_port = free_port()
            env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
            backend = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    LOADGEN_CPU,
                    sys.executable,
                    "-c",
                    BACKEND,
                    str(args.backend_port),
                ],
                env=env,
            )
            wait_listening(backend, args.backend_port)
        try:
            cells = [
                (app, workers, name)
                for app in args.apps.split(",")
                for workers in (int(w) for w in args.workers.split(","))
                for name in args.servers.split(",")
            ]
            runs: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
            unavailable: set[tuple[str, int, str]] = set()
            # Rounds are interleaved (every row once, then again) so that a
            # slow spell of this shared machine hits every row alike.
            for rnd in range(1, args.rounds + 1):
                for cell in cells:
                    if cell in unavailable:
                        continue
                    app, workers, name = cell
                    row = measure(wrk, name, app, workers, args, directory)
                    if row is None:
                        unavailable.add(cell)
                        print(f"  {name:22} {app:8} w={workers}: skipped (not available)")
                        continue
                    row["round"] = rnd
                    runs.setdefault(cell, []).append(row)
                    print(
                        f"  r{rnd} {name:22} {app:8} w={workers}: {row['rps']:9.0f} req/s  "
                        f"{row['cpu_ms_per_1k']:7.1f} CPU ms/1k req  "
                        f"CPU split {'/'.join(map(str, row['cpu_split']))} %  "
                        f"errors: {row['non_2xx']} {row['socket_errors']}",
                        flush=True,
                    )
        finally:
            if backend is not None:
                backend.terminate()
                backend.wait(30)
    rows = [summarize(cell, cell_runs) for cell, cell_runs in runs.items()]
    ratios = same_run_ratios(runs)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "revision": git_revision(),
        "python": sys.version.split()[0],
        "command": "python benchmarks/wsgi_bench.py " + " ".join(sys.argv[1:]),
        "rounds": args.rounds,
        "duration": args.duration,
        "connections": args.connections,
    }
    document = {"meta": meta, "rows": rows, "ratios": ratios, "runs": list(runs.values())}
    print()
    print("\n".join(report.wsgi_section(document)))  # the tables the README shows
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n")
    return 0


def summarize(cell: tuple[str, int, str], cell_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds of one (app, workers, server) row."""
    app, workers, name = cell
    # The spread of the round whose CPU per request is the median one.
    middle = sorted(cell_runs, key=lambda r: r["cpu_ms_per_1k"])[len(cell_runs) // 2]
    return {
        "cpu_split": middle.get("cpu_split", []),
        "server": name,
        "app": app,
        "workers": workers,
        "rps": round(statistics.median([r["rps"] for r in cell_runs]), 1),
        "cpu_ms_per_1k": round(statistics.median([r["cpu_ms_per_1k"] for r in cell_runs]), 1),
        "errors": sum(r["non_2xx"] for r in cell_runs)
        + sum(1 for r in cell_runs if r["socket_errors"]),
        "rounds": len(cell_runs),
    }


#: (server, peer) pairs whose ratio is the figure the targets are stated in.
RATIO_PAIRS = (
    ("socketloop.wsgi", "gevent.pywsgi-nodelay"),
    ("socketloop.wsgi", "gevent.pywsgi"),
    ("gunicorn-socketloop", "gunicorn-gevent"),
    ("gunicorn-socketloop", "gunicorn-gthread"),
)


def same_run_ratios(runs: dict[tuple[str, int, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Median of per-round ratios (req/s and CPU per request) for each pair in ``RATIO_PAIRS``."""
    out = []
    for app, workers in sorted({(a, w) for a, w, _ in runs}):
        for server, peer in RATIO_PAIRS:
            mine = {r["round"]: r for r in runs.get((app, workers, server), [])}
            theirs = {r["round"]: r for r in runs.get((app, workers, peer), [])}
            both = sorted(set(mine) & set(theirs))
            if not both:
                continue
            rps = [mine[n]["rps"] / theirs[n]["rps"] for n in both if theirs[n]["rps"]]
            cpu = [
                mine[n]["cpu_ms_per_1k"] / theirs[n]["cpu_ms_per_1k"]
                for n in both
                if theirs[n]["cpu_ms_per_1k"]
            ]
            out.append(
                {
                    "app": app,
                    "workers": workers,
                    "server": server,
                    "peer": peer,
                    "rps_ratio": round(statistics.median(rps), 2) if rps else None,
                    "cpu_ratio": round(statistics.median(cpu), 2) if cpu else None,
                    "rounds": len(both),
                }
            )
    return out


def git_revision() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
