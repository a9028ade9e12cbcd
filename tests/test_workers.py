"""Worker processes: ``run_server`` and its supervisor, each test in its own child program.

Every server runs in a subprocess (tests/_workers_child.py) on 127.0.0.1 in a
new session, so a failing test can kill the supervisor and all its workers
by process group.  Nothing waits by sleeping: each wait polls the child's
log or the server with a deadline.
"""

from __future__ import annotations

import collections
import inspect
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import socketloop

CHILD = str(Path(__file__).with_name("_workers_child.py"))
WAIT = 20.0
APIS = ["socketloop", "socketloop.coro"]


class Instance:
    """One ``run_server`` child: its log lines, its port, a way to stop it."""

    def __init__(self, **config: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, CHILD, json.dumps(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = 0

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = WAIT) -> list[re.Match[str]]:
        """The first ``count`` log lines matching ``pattern``, once there are that many."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [m for m in map(regex.search, self.lines) if m is not None]
            if len(found) >= count:
                return found[:count]
            if time.monotonic() > deadline or (self.proc.poll() is not None and self._done()):
                ended = self.proc.poll()
                out = self.proc.stdout.read() if ended is not None and self.proc.stdout else ""
                raise AssertionError(
                    f"no {count} x {pattern!r} in the log (exit status {ended}, "
                    f"output {out!r}):\n{self.log()}"
                )
            time.sleep(0.01)  # polling the log, not synchronising

    def _done(self) -> bool:
        self._reader.join(WAIT)  # the child ended: its stderr reaches EOF
        return not self._reader.is_alive()

    def serving(self) -> Instance:
        match = self.wait_for(r"serving 127\.0\.0\.1:(\d+)")[0]
        self.port = int(match.group(1))
        return self

    def ask(self, command: str = "pid", timeout: float = 10.0) -> int:
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(command.encode() + b"\n")
            return int(read_all(sock))

    def pids_seen(self, wanted: int, limit: int = 2000) -> set[int]:
        """Ask until ``wanted`` distinct pids answered (the kernel hashes connections)."""
        seen: set[int] = set()
        for _ in range(limit):
            seen.add(self.ask())
            if len(seen) >= wanted:
                return seen
        raise AssertionError(f"only {seen} answered in {limit} connections")

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def finish(self, timeout: float = WAIT) -> tuple[int, str]:
        """Wait for the child to end; its exit status and stdout."""
        # Not communicate(): it would read stderr too, under the reader's feet.
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the child did not end:\n{self.log()}") from None
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.proc.stdout.close()
        self._done()
        return self.proc.returncode, out

    def stop(self) -> dict[str, Any]:
        self.signal(signal.SIGTERM)
        code, out = self.finish()
        assert code == 0, f"exit status {code}: {out}\n{self.log()}"
        summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return summary

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(WAIT)
        self._done()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@pytest.fixture
def start() -> Iterator[Callable[..., Instance]]:
    """Start ``run_server`` children; whatever happens, none outlives the test."""
    instances: list[Instance] = []

    def starter(**config: Any) -> Instance:
        instance = Instance(**config)
        instances.append(instance)
        return instance

    yield starter
    for instance in instances:
        instance.kill()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Client(threading.Thread):
    """Keeps asking for pids, one connection after another, until told to stop."""

    def __init__(self, instance: Instance) -> None:
        super().__init__(daemon=True)
        self.instance = instance
        self.answers: list[int] = []
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.answers.append(self.instance.ask())
            except (OSError, ValueError) as exc:
                self.failures.append(repr(exc))

    def answered_after(self, count: int, timeout: float = WAIT) -> None:
        target = len(self.answers) + count
        deadline = time.monotonic() + timeout
        while len(self.answers) < target:
            assert time.monotonic() < deadline, f"the client got stuck ({self.failures[-3:]})"
            time.sleep(0.01)  # polling the client's progress

    def finish(self) -> None:
        self.halt.set()
        self.join(WAIT)


# ------------------------------------------------------------------ surface


def test_run_server_is_exported_by_both_modules_with_one_signature() -> None:
    assert "run_server" in socketloop.__all__
    assert "run_server" in socketloop.coro.__all__
    ours = inspect.signature(socketloop.run_server)
    assert ours == inspect.signature(socketloop.coro.run_server)
    assert list(ours.parameters)[:4] == ["host", "port", "handler", "workers"]
    assert socketloop.run_server.__doc__ == socketloop.coro.run_server.__doc__


def test_run_server_rejects_a_bad_balance_mode() -> None:
    with pytest.raises(ValueError, match="balance"):
        socketloop.run_server("127.0.0.1", 0, print, workers=2, balance="random")


# ------------------------------------------------------------------- serving


@pytest.mark.parametrize("api", APIS)
def test_one_worker_serves_in_the_calling_process(start: Callable[..., Instance], api: str) -> None:
    server = start(api=api, workers=1).serving()
    assert server.ask() == server.proc.pid
    summary = server.stop()
    assert summary["accepted"] == 1
    assert "started worker" not in server.log()


@pytest.mark.parametrize("api", APIS)
def test_two_workers_both_serve_and_are_counted(start: Callable[..., Instance], api: str) -> None:
    server = start(api=api, workers=2).serving()
    counts = collections.Counter(server.ask() for _ in range(200))
    summary = server.stop()
    assert len(counts) == 2, counts
    assert server.proc.pid not in counts
    assert {w["pid"]: w["accepted"] for w in summary["workers"]} == dict(counts)
    assert summary["accepted"] == 200


def test_the_binding_options_of_newserver_apply_to_the_supervisors_listeners(
    start: Callable[..., Instance],
) -> None:
    server = start(workers=2, backlog=16, reuse_port=True, max_connections=8).serving()
    assert len(server.pids_seen(2)) == 2
    assert server.stop()["died"] == 0


def test_a_second_instance_fails_fast_with_address_in_use(start: Callable[..., Instance]) -> None:
    first = start(workers=2).serving()
    began = time.monotonic()
    second = start(workers=2, port=first.port)
    code, out = second.finish()
    assert code == 2
    assert "Address already in use" in out
    assert "started worker" not in second.log()
    assert time.monotonic() - began < 10
    assert first.ask() != first.proc.pid  # the first one goes on serving


def test_a_killed_worker_is_replaced(start: Callable[..., Instance]) -> None:
    server = start(workers=2).serving()
    victim, survivor = sorted(server.pids_seen(2))
    os.kill(victim, signal.SIGKILL)
    server.wait_for(rf"worker {victim} \(slot \d\) killed by SIGKILL; replacing it")
    server.wait_for(r"started worker \d+", count=3)
    after = server.pids_seen(2)
    assert survivor in after
    assert victim not in after
    assert server.stop()["died"] == 1


def test_a_worker_that_keeps_dying_at_start_is_replaced_after_a_growing_back_off(
    start: Callable[..., Instance],
) -> None:
    server = start(workers=2).serving()
    first = server.wait_for(r"started worker (\d+) \(slot 0\)")[0]
    os.kill(int(first.group(1)), signal.SIGKILL)
    server.wait_for(r"\(slot 0\) killed by SIGKILL; replacing it in 0\.1 s \(died at start 1 ")
    second = server.wait_for(r"started worker (\d+) \(slot 0\)", count=2)[1]
    killed = time.monotonic()
    os.kill(int(second.group(1)), signal.SIGKILL)
    server.wait_for(r"\(slot 0\) killed by SIGKILL; replacing it in 0\.2 s \(died at start 2 ")
    third = int(server.wait_for(r"started worker (\d+) \(slot 0\)", count=3)[2].group(1))
    assert time.monotonic() - killed >= 0.2
    assert third in server.pids_seen(2)
    assert server.stop()["died"] == 2


def test_a_worker_that_cannot_start_serving_stops_the_supervisor_with_an_error(
    start: Callable[..., Instance],
) -> None:
    child = start(workers=2, max_accept=0)
    code, out = child.finish()
    assert code == 2
    assert "RuntimeError: run_server: worker" in out
    assert "could not start serving" in out
    assert "max_accept must be at least 1" in child.log()


def test_a_blocked_worker_is_killed_after_timeout_and_replaced(
    start: Callable[..., Instance],
) -> None:
    server = start(workers=2, timeout=2.0).serving()
    began = time.monotonic()
    blocked = server.ask("block")
    server.wait_for(rf"worker {blocked} \(slot \d\) is blocked \(no heartbeat")
    # The 2 s run from the worker's last heartbeat, which may come up to one
    # heartbeat interval (timeout / 4) before `began`.
    assert time.monotonic() - began >= 2.0 - 2.0 / 4
    server.wait_for(r"started worker \d+", count=3)
    assert blocked not in server.pids_seen(2)
    summary = server.stop()
    assert summary["killed_no_heartbeat"] == 1
    assert not pid_alive(blocked)


@pytest.mark.parametrize("api", APIS)
def test_sigterm_lets_in_flight_requests_complete(start: Callable[..., Instance], api: str) -> None:
    server = start(api=api, workers=2, grace=10.0).serving()
    clients = []
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
        sock.sendall(b"slow 1.0\n")
        clients.append(sock)
    for sock in clients:
        assert sock.recv(8) == b"started\n"
    server.signal(signal.SIGTERM)
    replies = []
    for sock in clients:
        reply = read_all(sock)
        sock.close()
        assert reply.isdigit(), f"an in-flight request was cut: {reply!r}\n{server.log()}"
        replies.append(int(reply))
    code, _ = server.finish()
    assert code == 0
    assert all(pid != server.proc.pid for pid in replies)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=WAIT).close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("balance", ["reuseport", "shared"])
def test_sighup_restarts_every_worker_with_zero_failed_requests(
    start: Callable[..., Instance], balance: str
) -> None:
    server = start(workers=2, balance=balance).serving()
    before = server.pids_seen(2) if balance == "reuseport" else {server.ask()}
    clients = [Client(server) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        clients[0].answered_after(50)
        server.signal(signal.SIGHUP)
        server.wait_for(r"ended \(restart \(SIGHUP\)", count=2)
        for client in clients:
            client.answered_after(100)
    finally:
        for client in clients:
            client.finish()
    assert [c.failures for c in clients] == [[]] * len(clients)
    assert all(not before & set(client.answers[-50:]) for client in clients)
    assert server.stop()["restarted"] == 2


def test_sigttin_adds_a_worker(start: Callable[..., Instance]) -> None:
    server = start(workers=2).serving()
    server.signal(signal.SIGTTIN)
    server.wait_for(r"started worker \d+ \(slot 2\)")
    assert len(server.pids_seen(3)) == 3
    assert server.stop()["added"] == 1


def test_sigttou_removes_a_worker(start: Callable[..., Instance]) -> None:
    server = start(workers=3).serving()
    server.wait_for(r"worker \d+ \(slot 2\) serving")
    server.signal(signal.SIGTTOU)
    gone = int(server.wait_for(r"worker (\d+) \(slot 2\) ended \(removed")[0].group(1))
    assert not pid_alive(gone) or gone not in server.pids_seen(2)
    summary = server.stop()
    assert summary["removed"] == 1
    assert sorted(w["slot"] for w in summary["workers"]) == [0, 1, 2]


def test_max_requests_recycles_workers_without_failed_requests(
    start: Callable[..., Instance],
) -> None:
    server = start(workers=2, max_requests=20, max_requests_jitter=5).serving()
    client = Client(server)
    client.start()
    try:
        server.wait_for(r"reached max_requests; starting its successor", count=4)
    finally:
        client.finish()
    summary = server.stop()
    assert client.failures == []
    assert summary["recycled"] >= 4
    recycled = [w for w in summary["workers"] if w["reason"] == "max_requests"]
    assert len(recycled) >= 4
    assert all(20 <= w["accepted"] <= 25 for w in recycled), recycled


def test_shared_listener_serves_every_connection_from_the_workers(
    start: Callable[..., Instance],
) -> None:
    server = start(workers=2, balance="shared").serving()
    server.wait_for(r"worker \d+ \(slot 1\) serving")
    answers = collections.Counter(server.ask() for _ in range(200))
    summary = server.stop()
    assert server.proc.pid not in answers
    assert sum(answers.values()) == 200
    assert summary["accepted"] == 200
    assert set(answers) <= {w["pid"] for w in summary["workers"]}


def test_run_server_refuses_to_fork_with_a_live_loop_thread(
    start: Callable[..., Instance],
) -> None:
    child = start(workers=2, before="loop thread")
    code, out = child.finish()
    assert code == 2
    assert "RuntimeError: run_server() cannot fork worker processes" in out
    assert "thread(s)" in out
    assert "started worker" not in child.log()


def test_run_server_refuses_to_fork_with_a_live_thread_pool(
    start: Callable[..., Instance],
) -> None:
    child = start(workers=2, before="pool")
    code, out = child.finish()
    assert code == 2
    assert "cannot fork worker processes" in out
    assert "OS thread 'socketloop-worker" in out
