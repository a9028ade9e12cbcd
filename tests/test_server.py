"""Servers: newserver, handler threads, close, options, statistics."""

from __future__ import annotations

import errno
import gc
import logging
import socket
import struct
import types
import warnings
from typing import Any

import pytest

from conftest import close_and_drain, run, step_until
from socketloop import AsyncSocket, Event, Loop, Server, Thread

# -------------------------------------------------------------------- helpers


def dial(server: Server) -> socket.socket:
    """A plain blocking client connected to ``server`` (the kernel completes the handshake)."""
    return socket.create_connection((server.address[0], server.port), timeout=5)


def read_all(sock: AsyncSocket | socket.socket) -> bytes:
    chunks: list[bytes] = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def echo(conn: AsyncSocket) -> None:
    while data := conn.recv(4096):
        conn.sendall(data)


def ask(lp: Loop, host: str, port: int, data: bytes) -> bytes:
    """In a loop thread: connect, send ``data``, read as many bytes back, close."""
    with lp.connect(host, port) as sock:
        sock.sendall(data)
        reply = b""
        while len(reply) < len(data) and (chunk := sock.recv(4096)):
            reply += chunk
        return reply


def send_and_half_close(lp: Loop, host: str, port: int, data: bytes) -> bytes:
    """In a loop thread: connect, send ``data``, half-close, read until end of stream."""
    with lp.connect(host, port) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


def counts(server: Server) -> dict[str, int]:
    """The counters of ``server.statistics()`` these tests are about."""
    stats = server.statistics()
    return {key: stats[key] for key in ("active", "accepted", "accept_errors", "handler_errors")}


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "socketloop" and r.levelno >= logging.ERROR]


# ------------------------------------------------------------ binding, address


def test_port_zero_binds_a_free_port(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, echo)
    assert server.port != 0
    assert server.port == server.socket.getsockname()[1]
    close_and_drain(loop, server)


def test_address_equals_getsockname_of_the_listening_socket(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, echo)
    assert server.address == server.socket.socket.getsockname()
    close_and_drain(loop, server)


def test_listening_socket_is_an_async_socket_in_listen_state(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, echo)
    assert isinstance(server.socket, AsyncSocket)
    assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    close_and_drain(loop, server)


def test_ipv4_server_serves_a_client(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, echo)
    assert server.socket.family == socket.AF_INET
    assert run(loop, ask, loop, "127.0.0.1", server.port, b"v4") == b"v4"
    close_and_drain(loop, server)


def test_ipv6_server_serves_a_client(loop: Loop) -> None:
    server = loop.newserver("::1", 0, echo)
    assert server.socket.family == socket.AF_INET6
    assert server.address[0] == "::1"
    assert run(loop, ask, loop, "::1", server.port, b"v6") == b"v6"
    close_and_drain(loop, server)


def test_localhost_server_serves_a_client_connecting_by_name(loop: Loop) -> None:
    server = loop.newserver("localhost", 0, echo)
    assert server.address[0] in ("127.0.0.1", "::1")
    assert run(loop, ask, loop, "localhost", server.port, b"by name") == b"by name"
    close_and_drain(loop, server)


def test_binding_a_port_in_use_raises_oserror_naming_the_address(loop: Loop) -> None:
    first = loop.newserver("127.0.0.1", 0, echo)
    with pytest.raises(OSError, match=f"127.0.0.1:{first.port}") as excinfo:
        loop.newserver("127.0.0.1", first.port, echo)
    assert excinfo.value.errno == errno.EADDRINUSE
    close_and_drain(loop, first)


def test_so_reuseaddr_is_set_on_the_listening_socket(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, echo)
    assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
    close_and_drain(loop, server)


def test_reuse_port_lets_two_servers_bind_the_same_port(loop: Loop) -> None:
    first = loop.newserver("127.0.0.1", 0, echo, reuse_port=True)
    second = loop.newserver("127.0.0.1", first.port, echo, reuse_port=True)
    assert second.port == first.port
    for server in (first, second):
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
    assert run(loop, ask, loop, "127.0.0.1", first.port, b"either") == b"either"
    close_and_drain(loop, first, second)


@pytest.mark.parametrize("option", [{"max_accept": 0}, {"max_connections": 0}])
def test_invalid_option_raises_value_error_and_leaves_no_socket_behind(
    loop: Loop, option: dict[str, int]
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(ValueError, match="at least 1"):
            loop.newserver("127.0.0.1", 0, echo, **option)
        gc.collect()
    unclosed = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not unclosed, f"listening socket left to the garbage collector: {unclosed[0].message}"


def test_backlog_option_is_accepted_and_the_server_serves(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, echo, backlog=5)
    assert run(loop, ask, loop, "127.0.0.1", server.port, b"backlog") == b"backlog"
    close_and_drain(loop, server)


# ------------------------------------------------------------------- handlers


def test_handler_gets_the_accepted_connection_as_an_async_socket(loop: Loop) -> None:
    peers: list[Any] = []

    def handler(conn: AsyncSocket) -> None:
        assert isinstance(conn, AsyncSocket)
        peers.append(conn.getpeername())

    server = loop.newserver("127.0.0.1", 0, handler)
    with dial(server) as client:
        step_until(loop, lambda: bool(peers))
        assert peers == [client.getsockname()]
    close_and_drain(loop, server)


def test_each_connection_runs_its_handler_on_its_own_loop_thread(loop: Loop) -> None:
    threads: list[Thread[Any] | None] = []

    def handler(conn: AsyncSocket) -> None:
        threads.append(loop.current())
        conn.recv(1)

    server = loop.newserver("127.0.0.1", 0, handler)
    with dial(server) as first, dial(server) as second:
        step_until(loop, lambda: len(threads) == 2)
        assert all(isinstance(t, Thread) for t in threads)
        assert threads[0] is not threads[1]
        assert all(t is not None and t.is_alive() for t in threads)
        first.sendall(b"x")
        second.sendall(b"x")
        step_until(loop, lambda: server.statistics()["active"] == 0)
    close_and_drain(loop, server)


def test_clients_are_served_concurrently(loop: Loop) -> None:
    log: list[str] = []

    def handler(conn: AsyncSocket) -> None:
        name = conn.recv(1).decode()
        log.append(f"{name} start")
        data = conn.recv(100)
        log.append(f"{name} end")
        conn.sendall(data)

    server = loop.newserver("127.0.0.1", 0, handler)
    with dial(server) as a, dial(server) as b:
        a.sendall(b"a")
        b.sendall(b"b")
        step_until(loop, lambda: len(log) == 2)
        b.sendall(b"reply b")
        step_until(loop, lambda: "b end" in log)
        a.sendall(b"reply a")
        step_until(loop, lambda: "a end" in log)
        assert b.recv(100) == b"reply b"
        assert a.recv(100) == b"reply a"
    assert sorted(log[:2]) == ["a start", "b start"]
    assert log[2:] == ["b end", "a end"]
    close_and_drain(loop, server)


def test_connection_is_closed_when_the_handler_returns(loop: Loop) -> None:
    def handler(conn: AsyncSocket) -> None:
        conn.sendall(b"bye")

    server = loop.newserver("127.0.0.1", 0, handler)
    with dial(server) as client:
        step_until(loop, lambda: server.statistics()["accepted"] == 1)
        step_until(loop, lambda: server.statistics()["active"] == 0)
        assert read_all(client) == b"bye"
    close_and_drain(loop, server)


@pytest.mark.expect_errors
def test_connection_is_closed_when_the_handler_raises(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    def handler(conn: AsyncSocket) -> None:
        conn.sendall(b"partial")
        raise ValueError("handler failed")

    server = loop.newserver("127.0.0.1", 0, handler)
    with caplog.at_level(logging.ERROR, logger="socketloop"), dial(server) as client:
        step_until(loop, lambda: server.statistics()["accepted"] == 1)
        step_until(loop, lambda: server.statistics()["active"] == 0)
        assert read_all(client) == b"partial"
    close_and_drain(loop, server)


def test_a_handler_may_close_the_connection_itself(loop: Loop) -> None:
    def handler(conn: AsyncSocket) -> None:
        conn.sendall(b"closing myself")
        conn.close()

    server = loop.newserver("127.0.0.1", 0, handler)
    with dial(server) as client:
        step_until(loop, lambda: server.statistics()["accepted"] == 1)
        step_until(loop, lambda: server.statistics()["active"] == 0)
        assert read_all(client) == b"closing myself"
    assert server.statistics()["handler_errors"] == 0
    close_and_drain(loop, server)


def test_client_that_sends_and_half_closes_at_once_gets_the_echo_and_end_of_stream(
    loop: Loop,
) -> None:
    # The request and the FIN reach the server before its next poll: the
    # handler must see the data, then the end of stream, then return.
    server = loop.newserver("127.0.0.1", 0, echo)
    client = loop.newthread(send_and_half_close, loop, "127.0.0.1", server.port, b"all at once")
    try:
        assert client.join(1) == b"all at once"
    finally:
        server.close()
        for thread in loop.threads():
            thread.kill()


def test_data_and_end_of_stream_pending_at_accept_are_both_seen_by_the_handler(
    loop: Loop,
) -> None:
    # Both are queued before the server accepts: the first read returns the
    # data short of the size asked, and the end of stream behind it must
    # still be reported although no wake-up announced it.
    reads: list[bytes] = []

    def handler(conn: AsyncSocket) -> None:
        reads.append(conn.recv(100))
        reads.append(conn.recv(100))

    server = loop.newserver("127.0.0.1", 0, handler)
    with dial(server) as client:
        client.sendall(b"early")
        client.shutdown(socket.SHUT_WR)
        step_until(loop, lambda: len(reads) == 2)
    assert reads == [b"early", b""]
    close_and_drain(loop, server)


@pytest.mark.expect_errors
def test_handler_exception_is_logged_with_the_peer_address_and_traceback(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    def handler(conn: AsyncSocket) -> None:
        raise ValueError("handler failed")

    server = loop.newserver("127.0.0.1", 0, handler)
    with caplog.at_level(logging.ERROR, logger="socketloop"), dial(server) as client:
        peer = "{}:{}".format(*client.getsockname())
        step_until(loop, lambda: server.statistics()["accepted"] == 1)
        step_until(loop, lambda: server.statistics()["active"] == 0)
    [record] = error_records(caplog)
    assert peer in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[0] is ValueError
    close_and_drain(loop, server)


@pytest.mark.expect_errors
def test_handler_exception_does_not_stop_the_server(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def handler(conn: AsyncSocket) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first client only")
        conn.sendall(b"served")

    server = loop.newserver("127.0.0.1", 0, handler)
    with caplog.at_level(logging.ERROR, logger="socketloop"), dial(server) as first:
        step_until(loop, lambda: server.statistics()["handler_errors"] == 1)
        assert read_all(first) == b""
    with dial(server) as later:
        step_until(loop, lambda: server.statistics()["accepted"] == 2)
        step_until(loop, lambda: server.statistics()["active"] == 0)
        assert read_all(later) == b"served"
    assert not server.closed
    close_and_drain(loop, server)


def test_peer_reset_in_the_handler_is_logged_quietly(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[type[BaseException]] = []

    def handler(conn: AsyncSocket) -> None:
        conn.recv(5)
        conn.sendall(b"ack")
        try:
            conn.recv(5)
        except BaseException as exc:
            seen.append(type(exc))
            raise

    server = loop.newserver("127.0.0.1", 0, handler)
    with caplog.at_level(logging.DEBUG, logger="socketloop"):
        client = dial(server)
        peer = "{}:{}".format(*client.getsockname())
        client.sendall(b"hello")
        step_until(loop, lambda: server.statistics()["accepted"] == 1)
        assert client.recv(3) == b"ack"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # linger 0: the close sends a reset
        step_until(loop, lambda: bool(seen))
    assert seen == [ConnectionResetError]
    assert error_records(caplog) == []
    mentions = [r for r in caplog.records if r.name == "socketloop" and peer in r.getMessage()]
    assert mentions, "the reset is not logged at all"
    assert all(r.exc_info is None for r in mentions)
    assert server.statistics()["handler_errors"] == 0
    close_and_drain(loop, server)


# ---------------------------------------------------------------------- close


def test_close_refuses_new_connections_at_once(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, echo)
    address = ("127.0.0.1", server.port)
    server.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5)
    close_and_drain(loop, server)


def test_close_lets_running_handlers_finish(loop: Loop) -> None:
    log: list[str] = []

    def handler(conn: AsyncSocket) -> None:
        log.append("started")
        data = conn.recv(100)
        conn.sendall(data.upper())
        log.append("finished")

    server = loop.newserver("127.0.0.1", 0, handler)
    with dial(server) as client:
        step_until(loop, lambda: log == ["started"])
        server.close()
        assert server.closed
        client.sendall(b"after close")
        step_until(loop, lambda: "finished" in log)
        assert client.recv(100) == b"AFTER CLOSE"
    close_and_drain(loop, server)


def test_close_twice_is_harmless(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, echo)
    server.close()
    server.close()
    assert server.closed
    close_and_drain(loop, server)


def test_context_manager_closes_the_server(loop: Loop) -> None:
    with loop.newserver("127.0.0.1", 0, echo) as server:
        assert not server.closed
        assert run(loop, ask, loop, "127.0.0.1", server.port, b"inside") == b"inside"
    assert server.closed
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5)
    close_and_drain(loop)


def test_open_server_counts_as_pending_for_step(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, echo)
    assert loop.step(0) is True
    close_and_drain(loop, server)
    assert loop.step(0) is False


def test_start_keeps_running_until_the_server_is_closed(loop: Loop) -> None:
    log: list[str] = []
    servers: list[Server] = []

    def handler(conn: AsyncSocket) -> None:
        log.append("served")
        servers[0].close()

    servers.append(loop.newserver("127.0.0.1", 0, handler))
    with dial(servers[0]):
        loop.start(timeout=5)
    assert log == ["served"]
    assert servers[0].closed
    assert not loop.threads()


def test_start_returns_on_stop_with_the_server_still_open(loop: Loop) -> None:
    log: list[str] = []

    def handler(conn: AsyncSocket) -> None:
        log.append("served")
        loop.stop()

    server = loop.newserver("127.0.0.1", 0, handler)
    with dial(server):
        loop.start(timeout=5)
    assert log == ["served"]
    assert not server.closed
    assert loop.step(0) is True  # still serving
    close_and_drain(loop, server)


def test_closing_the_server_ends_its_accept_thread(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, echo)
    assert len(loop.threads()) == 1
    server.close()
    step_until(loop, lambda: not loop.threads())


# ----------------------------------------------- max_connections, max_accept


def test_max_connections_holds_back_the_next_client_until_a_handler_ends(loop: Loop) -> None:
    log: list[str] = []

    def handler(conn: AsyncSocket) -> None:
        name = conn.recv(1).decode()
        log.append(f"{name} start")
        conn.recv(1)
        log.append(f"{name} end")

    server = loop.newserver("127.0.0.1", 0, handler, max_connections=2)
    with dial(server) as a, dial(server) as b, dial(server) as c:
        for client, name in ((a, b"a"), (b, b"b"), (c, b"c")):
            client.sendall(name)
        step_until(loop, lambda: len(log) == 2)
        for _ in range(3):
            loop.step(0)
        assert sorted(log) == ["a start", "b start"]
        assert server.statistics()["accepted"] == 2
        a.sendall(b".")
        step_until(loop, lambda: "c start" in log)
        assert log.index("a end") < log.index("c start")
        b.sendall(b".")
        c.sendall(b".")
        step_until(loop, lambda: server.statistics()["active"] == 0)
    assert server.statistics()["accepted"] == 3
    close_and_drain(loop, server)


@pytest.mark.expect_errors
def test_a_handler_that_raises_frees_its_connection_slot(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def handler(conn: AsyncSocket) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first client only")
        conn.sendall(b"second served")

    server = loop.newserver("127.0.0.1", 0, handler, max_connections=1)
    with caplog.at_level(logging.ERROR, logger="socketloop"), dial(server), dial(server) as second:
        step_until(loop, lambda: server.statistics()["accepted"] == 2)
        step_until(loop, lambda: server.statistics()["active"] == 0)
        assert read_all(second) == b"second served"
    assert server.statistics()["handler_errors"] == 1
    close_and_drain(loop, server)


def test_close_while_waiting_for_a_free_slot_ends_the_accept_thread(loop: Loop) -> None:
    started: list[int] = []

    def handler(conn: AsyncSocket) -> None:
        started.append(1)
        conn.recv(1)

    server = loop.newserver("127.0.0.1", 0, handler, max_connections=1)
    with dial(server) as client:
        step_until(loop, lambda: bool(started))
        server.close()
        step_until(loop, lambda: len(loop.threads()) == 1)  # only the handler is left
        client.sendall(b".")
        step_until(loop, lambda: not loop.threads())
    assert started == [1]


def test_burst_of_50_connects_is_fully_served_with_max_accept_4(loop: Loop) -> None:
    def handler(conn: AsyncSocket) -> None:
        conn.sendall(conn.recv(10).upper())

    server = loop.newserver("127.0.0.1", 0, handler, max_accept=4)
    clients = [dial(server) for _ in range(50)]
    try:
        for i, client in enumerate(clients):
            client.sendall(b"c%d" % i)
        step_until(loop, lambda: server.statistics()["accepted"] == 50)
        step_until(loop, lambda: server.statistics()["active"] == 0)
        assert [client.recv(10) for client in clients] == [b"C%d" % i for i in range(50)]
    finally:
        for client in clients:
            client.close()
    close_and_drain(loop, server)


# --------------------------------------------------------------- idle_timeout


def test_idle_client_is_closed_after_the_idle_timeout(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, echo, idle_timeout=0.05)
    with dial(server) as client:
        step_until(loop, lambda: server.statistics()["accepted"] == 1)
        step_until(loop, lambda: server.statistics()["active"] == 0)
        assert client.recv(10) == b""
    close_and_drain(loop, server)


def test_idle_timeout_closes_the_connection_quietly(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    server = loop.newserver("127.0.0.1", 0, echo, idle_timeout=0.05)
    with caplog.at_level(logging.DEBUG, logger="socketloop"), dial(server):
        step_until(loop, lambda: server.statistics()["accepted"] == 1)
        step_until(loop, lambda: server.statistics()["active"] == 0)
    assert error_records(caplog) == []
    assert server.statistics()["handler_errors"] == 0
    close_and_drain(loop, server)


def test_another_client_is_served_while_one_idles(loop: Loop) -> None:
    log: list[str] = []

    def handler(conn: AsyncSocket) -> None:
        try:
            data = conn.recv(100)
        except TimeoutError:
            log.append("idle client timed out")
            raise
        conn.sendall(data)
        log.append("active client served")

    server = loop.newserver("127.0.0.1", 0, handler, idle_timeout=0.3)
    with dial(server) as idle:
        step_until(loop, lambda: server.statistics()["active"] == 1)
        assert run(loop, ask, loop, "127.0.0.1", server.port, b"ping") == b"ping"
        step_until(loop, lambda: server.statistics()["active"] == 0)
        assert idle.recv(10) == b""
    assert log == ["active client served", "idle client timed out"]
    close_and_drain(loop, server)


@pytest.mark.expect_errors
def test_timeout_error_without_idle_timeout_is_logged_as_a_handler_error(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    def handler(conn: AsyncSocket) -> None:
        conn.settimeout(0.01)
        conn.recv(1)

    server = loop.newserver("127.0.0.1", 0, handler)
    with caplog.at_level(logging.ERROR, logger="socketloop"), dial(server):
        step_until(loop, lambda: server.statistics()["accepted"] == 1)
        step_until(loop, lambda: server.statistics()["active"] == 0)
    [record] = error_records(caplog)
    assert record.exc_info is not None
    assert record.exc_info[0] is TimeoutError
    assert server.statistics()["handler_errors"] == 1
    close_and_drain(loop, server)


# -------------------------------------------------------- statistics and repr


@pytest.mark.expect_errors
def test_statistics_count_active_accepted_and_errors(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    def handler(conn: AsyncSocket) -> None:
        if conn.recv(1) == b"!":
            raise ValueError("bad request")

    server = loop.newserver("127.0.0.1", 0, handler)
    assert counts(server) == {"active": 0, "accepted": 0, "accept_errors": 0, "handler_errors": 0}
    with (
        caplog.at_level(logging.ERROR, logger="socketloop"),
        dial(server) as good,
        dial(server) as bad,
    ):
        step_until(loop, lambda: server.statistics()["active"] == 2)
        bad.sendall(b"!")
        step_until(loop, lambda: server.statistics()["active"] == 1)
        good.sendall(b".")
        step_until(loop, lambda: server.statistics()["active"] == 0)
    assert counts(server) == {"active": 0, "accepted": 2, "accept_errors": 0, "handler_errors": 1}
    close_and_drain(loop, server)


def test_connections_lists_the_connections_being_served(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, echo)
    with dial(server) as client:
        step_until(loop, lambda: server.statistics()["active"] == 1)
        [conn] = server.connections()
        assert conn.getpeername() == client.getsockname()
    step_until(loop, lambda: server.statistics()["active"] == 0)
    assert server.connections() == []
    close_and_drain(loop, server)


def test_repr_mentions_the_address_and_the_state(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, echo)
    assert f"127.0.0.1:{server.port}" in repr(server)
    assert "serving" in repr(server)
    server.close()
    assert f"127.0.0.1:{server.port}" in repr(server)
    assert "closed" in repr(server)
    close_and_drain(loop, server)


def test_repr_of_an_ipv6_server_brackets_the_address(loop: Loop) -> None:
    server = loop.newserver("::1", 0, echo)
    assert f"[::1]:{server.port}" in repr(server)
    close_and_drain(loop, server)


# ------------------------------------------------------- the module-level API


def test_module_newserver_serves_on_the_default_loop(api: types.ModuleType) -> None:
    lp: Loop = api.get_loop()
    threads: list[Any] = []

    def handler(conn: AsyncSocket) -> None:
        threads.append(api.current())
        echo(conn)

    server: Server = api.newserver("127.0.0.1", 0, handler)
    reply = api.newthread(ask, lp, "127.0.0.1", server.port, b"default loop").join(10)
    assert reply == b"default loop"
    assert len(threads) == 1
    assert threads[0] is not None
    assert threads[0].loop is lp
    close_and_drain(lp, server)


def test_module_start_runs_until_a_handler_closes_the_server(api: types.ModuleType) -> None:
    log: list[str] = []
    servers: list[Server] = []

    def handler(conn: AsyncSocket) -> None:
        log.append(conn.recv(10).decode())
        servers[0].close()

    servers.append(api.newserver("127.0.0.1", 0, handler))

    def client() -> None:
        with api.connect("127.0.0.1", servers[0].port) as sock:
            sock.sendall(b"last")

    api.newthread(client)
    api.start(timeout=5)
    assert log == ["last"]
    assert servers[0].closed


def test_module_stop_from_a_handler_leaves_the_server_open(api: types.ModuleType) -> None:
    def handler(conn: AsyncSocket) -> None:
        api.stop()

    server: Server = api.newserver("127.0.0.1", 0, handler)
    with dial(server):
        api.start(timeout=5)
    assert not server.closed
    assert server.statistics()["accepted"] == 1
    close_and_drain(api.get_loop(), server)


# ------------------------------------------------------------ graceful stop


def test_stop_lets_handlers_finish_within_the_grace_period(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    handling = Event()

    def slow(conn: AsyncSocket) -> None:
        handling.set()
        loop.sleep(0.02)
        conn.sendall(b"done")

    server = loop.newserver("127.0.0.1", 0, slow)

    def client_and_stop() -> bytes:
        sock = loop.connect("127.0.0.1", server.port)
        with sock:
            assert handling.wait(5), "the handler never started"
            server.stop(grace=5)
            return read_all(sock)

    assert run(loop, client_and_stop) == b"done"
    assert server.statistics()["stopped"] == 0
    assert not error_records(caplog)


def test_stop_closes_handlers_that_outlive_the_grace_period_quietly(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    outcome: list[int | None] = []

    def stubborn(conn: AsyncSocket) -> None:
        try:
            conn.recv(100)  # the client never sends
        except OSError as exc:
            outcome.append(exc.errno)
            raise

    server = loop.newserver("127.0.0.1", 0, stubborn)

    def client_and_stop() -> dict[str, int]:
        with loop.connect("127.0.0.1", server.port):
            loop.sleep(0)
            server.stop(grace=0.01)
            return server.statistics()

    with caplog.at_level(logging.INFO, logger="socketloop"):
        stats = run(loop, client_and_stop)
    assert outcome == [errno.EBADF]
    # stop() returned after the handler unwound, and did not call it a crash.
    assert stats["active"] == 0
    assert stats["stopped"] == 1
    assert stats["handler_errors"] == 0
    assert not error_records(caplog)


def test_stop_called_by_a_handler_spares_its_own_connection(loop: Loop) -> None:
    def stopping_handler(conn: AsyncSocket) -> None:
        server.stop(grace=0)
        conn.sendall(b"still open")

    server = loop.newserver("127.0.0.1", 0, stopping_handler)

    def client() -> bytes:
        with loop.connect("127.0.0.1", server.port) as sock:
            return read_all(sock)

    assert run(loop, client) == b"still open"
    assert server.closed
