"""A port of the original Lua socketloop project's own test, on both loops.

The test process runs a reverse-echo server on the default loop of ``socketloop`` or
``socketloop.coro`` (the ``api`` fixture).  Ten client processes (``_lua_port_client.py``,
same loop kind) each run five loop threads doing 30 exchanges and a ``close``; once they have
all exited, one more connection sends ``stop``, and the server's loop stops as soon as no
handler is running.  The server must have served exactly 51 clients and 1500 messages.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from socketloop import AsyncSocket

CLIENT_SCRIPT = Path(__file__).with_name("_lua_port_client.py")
PROCESSES = 10
THREADS_PER_PROCESS = 5
EXCHANGES_PER_THREAD = 30
#: Bounds on every wait, so that a broken server or client fails the test instead of hanging.
PROCESS_TIMEOUT = 45.0
LOOP_TIMEOUT = 55.0


class ReverseEchoServer:
    """The Lua test's server: reverse each line; ``close`` ends, ``stop`` stops the loop."""

    def __init__(self, api: types.ModuleType) -> None:
        self.api = api
        self.clients = 0
        self.messages = 0
        self.active = 0
        self.stop_requested = False
        self.stop_called = False

    def handle(self, conn: AsyncSocket) -> None:
        self.clients += 1
        self.active += 1
        reader = conn.makefile("rb")
        try:
            while True:
                line = reader.readline()
                if not line:
                    return  # the client went away without a command
                text = line.rstrip(b"\n")
                if text == b"close":
                    return
                if text == b"stop":
                    self.stop_requested = True
                    return
                conn.sendall(text[::-1] + b"\n")
                self.messages += 1
        finally:
            reader.close()
            self.active -= 1
            if self.stop_requested and self.active == 0:
                self.stop_called = True
                self.api.stop()


class ClientWatcher:
    """An OS thread that waits for the client processes, then sends ``stop``.

    It uses plain blocking sockets: the server loop runs in the test's main thread.
    """

    def __init__(self, processes: list[subprocess.Popen[bytes]], port: int) -> None:
        self.processes = processes
        self.port = port
        self.outputs: list[tuple[int | None, bytes, bytes]] = []
        self.stop_reply: bytes | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="lua-port watcher")

    def _run(self) -> None:
        deadline = time.monotonic() + PROCESS_TIMEOUT
        try:
            for proc in self.processes:
                try:
                    out, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, err = proc.communicate()
                    err += b"\n[killed by the test after a timeout]"
                self.outputs.append((proc.returncode, out, err))
        except BaseException as exc:
            self.error = exc
        finally:
            # Always send stop, so the server loop in the main thread ends.
            try:
                self.stop_reply = self._send_stop()
            except BaseException as exc:
                self.error = self.error or exc

    def _send_stop(self) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=PROCESS_TIMEOUT) as sock:
            sock.sendall(b"stop\n")
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
            return received


def start_clients(kind: str, port: int) -> list[subprocess.Popen[bytes]]:
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(PROCESSES):
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(CLIENT_SCRIPT), kind, str(port)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            )
    except BaseException:
        for proc in processes:
            proc.kill()
            proc.communicate()
        raise
    return processes


@pytest.mark.timeout(120)
def test_reverse_echo_server_serves_51_clients_and_1500_messages_from_10_client_processes(
    api: types.ModuleType,
) -> None:
    loop: Any = api.get_loop()
    kind = "coro" if loop.symmetric else "asym"
    server_state = ReverseEchoServer(api)
    with api.newserver("127.0.0.1", 0, server_state.handle) as server:
        processes = start_clients(kind, server.port)
        watcher = ClientWatcher(processes, server.port)
        watcher.thread.start()
        try:
            api.start(LOOP_TIMEOUT)  # returns when the stop handler calls stop()
        finally:
            if watcher.thread.is_alive():  # the loop stopped early or timed out
                server.close()  # refuse the stop connection instead of leaving it unserved
                for proc in processes:
                    if proc.poll() is None:
                        proc.kill()
            watcher.thread.join(PROCESS_TIMEOUT)
        stats = server.statistics()
    api.start(LOOP_TIMEOUT)  # let the accept thread see the close and end

    assert not watcher.thread.is_alive()
    assert watcher.error is None, repr(watcher.error)
    assert len(watcher.outputs) == PROCESSES
    expected_line = f"ok {THREADS_PER_PROCESS * EXCHANGES_PER_THREAD}\n".encode()
    for returncode, out, err in watcher.outputs:
        assert returncode == 0, err.decode(errors="replace")
        assert out == expected_line
        assert err == b""
    assert watcher.stop_reply == b""  # the stop connection was ended without a reply
    assert server_state.stop_called, "the loop stopped for another reason (timeout?)"
    assert server_state.clients == PROCESSES * THREADS_PER_PROCESS + 1 == 51
    assert server_state.messages == PROCESSES * THREADS_PER_PROCESS * EXCHANGES_PER_THREAD == 1500
    assert server_state.active == 0
    assert stats["accepted"] == 51
    assert stats["handler_errors"] == 0
    assert stats["accept_errors"] == 0
