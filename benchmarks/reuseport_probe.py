"""What a bound socket holds: the measurements behind how ``run_server`` holds its port.

Prints one line per case (docs/workers.md has the table).  Each case binds
sockets on a fresh 127.0.0.1 port in this process; "another user" cases run
a child as uid 65534 and only when run as root.

    python benchmarks/reuseport_probe.py
"""

from __future__ import annotations

import collections
import errno
import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bind(port: int, *, reuseport: bool, listen: bool, reuseaddr: bool = True) -> socket.socket:
    s = socket.socket()
    try:
        if reuseaddr:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        if listen:
            s.listen(4096)
    except OSError:
        s.close()
        raise
    return s


def outcome(fn: object) -> str:
    try:
        fn()  # type: ignore[operator]
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "ok"


HOLD_REUSEPORT = {"reuseport": True, "listen": False}
HOLD_PLAIN = {"reuseport": False, "listen": False}
LISTENER = {"reuseport": True, "listen": True}
PLAIN_LISTENER = {"reuseport": False, "listen": True}
SETPRIV = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def case(title: str, held: list[dict[str, bool]], then: dict[str, bool], **extra: bool) -> None:
    port = free_port()
    sockets = [bind(port, **kw) for kw in held]
    try:
        kept: list[socket.socket] = []
        result = outcome(lambda: kept.append(bind(port, **then, **extra)))
        for s in kept:
            s.close()
    finally:
        for s in sockets:
            s.close()
    print(f"{title}: {result}")


def routing() -> None:
    port = free_port()
    hold = bind(port, **HOLD_REUSEPORT)
    listeners = [bind(port, **LISTENER) for _ in range(2)]
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(1000)]
    counts: collections.Counter[str] = collections.Counter()
    for name, s in [("bound", hold), ("listener 1", listeners[0]), ("listener 2", listeners[1])]:
        s.setblocking(False)
        while True:
            try:
                conn, _ = s.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                counts[f"{name}: {errno.errorcode[exc.errno or 0]}"] += 1
                break
            conn.close()
            counts[name] += 1
    for s in [*clients, hold, *listeners]:
        s.close()
    print(f"1000 connects, bound reuseport socket + 2 listeners: {dict(counts)}")
    port = free_port()
    with bind(port, **HOLD_REUSEPORT):
        result = outcome(lambda: socket.create_connection(("127.0.0.1", port), timeout=5).close())
    print(f"connect with only a bound reuseport socket: {result}")


def queued_on_close(keep_open: bool) -> None:
    port = free_port()
    first, second = bind(port, **LISTENER), bind(port, **LISTENER)
    dup = first.dup() if keep_open else None
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
    first.close()
    for s in [second] + ([dup] if dup else []):
        s.setblocking(False)
        while True:
            try:
                conn, _ = s.accept()
            except BlockingIOError:
                break
            conn.sendall(b"x")
            conn.close()
    results: collections.Counter[str] = collections.Counter()
    for c in clients:
        try:
            results["served" if c.recv(1) else "eof"] += 1
        except OSError as exc:
            results[errno.errorcode[exc.errno or 0]] += 1
        c.close()
    second.close()
    if dup:
        dup.close()
    how = "its file kept open by a dup" if keep_open else "closed"
    print(f"200 queued over 2 reuseport listeners, one {how}: {dict(results)}")


def other_user() -> None:
    if os.geteuid() != 0:
        print("another user: skipped (run as root)")
        return
    code = (
        "import socket, errno, sys\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n"
        "try:\n    s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(5); print('ok')\n"
        "except OSError as e: print(errno.errorcode[e.errno])\n"
    )
    for title, held in [
        ("another user's reuseport listener, bound reuseport socket held", [HOLD_REUSEPORT]),
        ("another user's reuseport listener, reuseport listener held", [LISTENER]),
    ]:
        port = free_port()
        sockets = [bind(port, **kw) for kw in held]
        out = subprocess.run(
            [*SETPRIV, sys.executable, "-c", code, str(port)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        for s in sockets:
            s.close()
        print(f"{title}: {out}")


def main() -> None:
    case("bound reuseport held; reuseport listener", [HOLD_REUSEPORT], LISTENER)
    case("bound reuseport held; plain listener", [HOLD_REUSEPORT], PLAIN_LISTENER)
    case("bound plain held; reuseport listener", [HOLD_PLAIN], LISTENER)
    case("bound plain + reuseport listener held; plain bind", [HOLD_PLAIN, LISTENER], HOLD_PLAIN)
    case(
        "bound plain + reuseport listener held; reuseport listener",
        [HOLD_PLAIN, LISTENER],
        LISTENER,
    )
    case("bound plain held; plain bind", [HOLD_PLAIN], HOLD_PLAIN)
    case("bound plain held; bind without SO_REUSEADDR", [HOLD_PLAIN], HOLD_PLAIN, reuseaddr=False)
    routing()
    queued_on_close(keep_open=False)
    queued_on_close(keep_open=True)
    other_user()


if __name__ == "__main__":
    main()
