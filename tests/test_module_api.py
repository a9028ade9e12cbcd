"""The module-level forwarders, one real call each, on both module APIs.

``socketloop.X`` and ``socketloop.coro.X`` act on the calling OS thread's
default loop (asymmetric and symmetric).  Each test here makes one call
through the module (the ``api`` fixture gives both modules, each on a fresh
default loop) and checks its effect, so that a forwarder that went to the
wrong loop, dropped an argument or lost its return value fails.  The drop-in
``socketloop.socket.create_connection`` is tested with ``source_address`` and
``all_errors`` from threads of both default loops.
"""

from __future__ import annotations

import socket
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest

import socketloop
import socketloop.socket as dropin
from _servers import refusing_address
from conftest import close_and_drain, step_until, wait_until_polling
from socketloop import AsyncSocket, Server

WAIT = 10.0


def echo(conn: AsyncSocket) -> None:
    while chunk := conn.recv(1024):
        conn.sendall(chunk)


def test_module_call_soon_runs_on_the_default_loop(api: types.ModuleType) -> None:
    calls: list[tuple[str, int]] = []
    api.call_soon(lambda *args: calls.append(args), "soon", 1)
    assert calls == []
    assert api.step(0) is True
    assert calls == [("soon", 1)]


def test_module_call_later_returns_a_handle_of_the_default_loop(api: types.ModuleType) -> None:
    calls: list[str] = []
    fired = api.call_later(0.01, calls.append, "fired")
    cancelled = api.call_later(0.01, calls.append, "cancelled")
    cancelled.cancel()
    assert api.statistics()["timers"] >= 1
    step_until(api.get_loop(), lambda: bool(calls))
    assert calls == ["fired"]
    assert fired.deadline > 0


def test_module_call_soon_threadsafe_from_another_os_thread_wakes_the_default_loop(
    api: types.ModuleType,
) -> None:
    lp = api.get_loop()
    keeper = api.newthread(api.sleep, 60)  # keeps start() polling
    calls: list[str] = []

    def from_outside() -> None:
        wait_until_polling(lp, WAIT)
        # Called through the module's loop object: the module-level function
        # would act on the helper OS thread's own default loop.
        lp.call_soon_threadsafe(calls.append, "from outside")
        lp.call_soon_threadsafe(lp.stop)

    worker = threading.Thread(target=from_outside)
    worker.start()
    api.start(WAIT)
    worker.join(WAIT)
    keeper.kill()
    assert calls == ["from outside"]


def test_module_call_soon_threadsafe_from_the_loops_os_thread_runs_at_the_next_step(
    api: types.ModuleType,
) -> None:
    calls: list[str] = []
    api.call_soon_threadsafe(calls.append, "queued")
    assert api.step(0) is True
    assert calls == ["queued"]


def test_module_resume_threadsafe_resumes_a_suspended_thread_with_the_value(
    api: types.ModuleType,
) -> None:
    thread = api.newthread(api.suspend)
    assert thread.state == "suspended"
    api.resume_threadsafe(thread, "value")
    assert thread.state == "suspended"  # asynchronous: it happens at the next step
    assert thread.join(WAIT) == "value"


def test_module_getaddrinfo_resolves_in_a_loop_thread(api: types.ModuleType) -> None:
    def lookup() -> list[Any]:
        return api.getaddrinfo("localhost", 80, socket.AF_INET, socket.SOCK_STREAM)  # type: ignore[no-any-return]

    infos = api.newthread(lookup).join(WAIT)
    assert ("127.0.0.1", 80) in [info[4] for info in infos]


def test_module_set_resolver_is_used_by_module_connect(api: types.ModuleType) -> None:
    server: Server = api.newserver("127.0.0.1", 0, echo)
    asked: list[str] = []

    def resolver(
        host: Any, port: Any, family: int, type: int, proto: int, flags: int
    ) -> list[tuple[Any, ...]]:
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", int(port)))]

    def client() -> bytes:
        with api.connect("echo.invalid", server.port) as sock:
            sock.sendall(b"named")
            return sock.recv(100)  # type: ignore[no-any-return]

    api.set_resolver(resolver)
    try:
        assert api.newthread(client).join(WAIT) == b"named"
    finally:
        api.set_resolver(None)
    assert asked == ["echo.invalid"]
    close_and_drain(api.get_loop(), server)


def test_module_newserver_unix_and_connect_unix_exchange_bytes(
    api: types.ModuleType, tmp_path: Path
) -> None:
    path = str(tmp_path / "echo.sock")
    server: Server = api.newserver_unix(path, echo)

    def client() -> bytes:
        with api.connect_unix(path) as sock:
            sock.sendall(b"over unix")
            return sock.recv(100)  # type: ignore[no-any-return]

    assert api.newthread(client).join(WAIT) == b"over unix"
    assert server.statistics()["accepted"] == 1
    close_and_drain(api.get_loop(), server)


def test_module_serve_accepts_on_an_already_listening_socket(api: types.ModuleType) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    server: Server = api.serve(listener, echo)

    def client() -> bytes:
        with api.connect("127.0.0.1", listener.getsockname()[1]) as sock:
            sock.sendall(b"served")
            return sock.recv(100)  # type: ignore[no-any-return]

    assert api.newthread(client).join(WAIT) == b"served"
    close_and_drain(api.get_loop(), server)
    listener.close()


def test_coro_module_transfer_passes_control_and_a_value() -> None:
    coro = socketloop.coro
    coro.get_loop().close()
    log: list[Any] = []
    try:
        main = coro.newthread(lambda: log.append(("main got", coro.suspend())))

        def partner() -> None:
            log.append("partner runs")
            coro.transfer(main, "handed over")

        coro.newthread(partner)
        coro.start(WAIT)
        assert log == ["partner runs", ("main got", "handed over")]
    finally:
        coro.get_loop().close()


@pytest.mark.parametrize("module", ["socketloop", "socketloop.coro"])
def test_dropin_create_connection_binds_the_source_address(module: str) -> None:
    api: Any = socketloop if module == "socketloop" else socketloop.coro
    api.get_loop().close()
    lp = api.get_loop()
    try:
        peers: list[Any] = []

        def record(conn: AsyncSocket) -> None:
            peers.append(conn.getpeername())

        server: Server = api.newserver("127.0.0.1", 0, record)
        source_port = socket.socket()
        source_port.bind(("127.0.0.1", 0))
        wanted = source_port.getsockname()
        source_port.close()  # free again, to be bound by create_connection

        def client() -> Any:
            with dropin.create_connection(
                ("127.0.0.1", server.port), timeout=WAIT, source_address=wanted
            ) as sock:
                return sock.getsockname()

        assert api.newthread(client).join(WAIT) == wanted
        step_until(lp, lambda: bool(peers))
        assert peers == [wanted]
        close_and_drain(lp, server)
    finally:
        lp.close()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="all_errors needs ExceptionGroup")
@pytest.mark.parametrize("module", ["socketloop", "socketloop.coro"])
def test_dropin_create_connection_all_errors_raises_every_attempts_error(module: str) -> None:
    api: Any = socketloop if module == "socketloop" else socketloop.coro
    api.get_loop().close()
    lp = api.get_loop()
    try:
        with refusing_address() as address:

            def client() -> BaseException | None:
                try:
                    dropin.create_connection(address, timeout=WAIT, all_errors=True)
                except BaseException as exc:
                    return exc
                return None

            error: Any = api.newthread(client).join(WAIT)
        assert type(error).__name__ == "ExceptionGroup"  # a name mypy's 3.10 target lacks
        assert all(isinstance(e, ConnectionRefusedError) for e in error.exceptions)
        assert len(error.exceptions) >= 1
    finally:
        lp.close()
