"""Names and addresses: getaddrinfo off the loop, resolvers, happy eyeballs, Unix, UDP, IPv6.

No test sends a DNS query: names are ``localhost`` (from /etc/hosts), fail
locally (``AI_NUMERICHOST``), or are answered by a resolver set with
``set_resolver``.  Every connection goes to 127.0.0.1 or ::1.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import socketloop
from _servers import hanging_address, refusing_address
from conftest import close_and_drain, run, step_until
from socketloop import AsyncSocket, Loop, Server

AddrInfo = tuple[Any, ...]

# ------------------------------------------------------------------ helpers


def echo(conn: AsyncSocket) -> None:
    while data := conn.recv(4096):
        conn.sendall(data)


def ask(lp: Loop, host: str, port: int, data: bytes, **options: Any) -> tuple[Any, bytes]:
    """In a loop thread: connect, send ``data``, read it back; return (peer, reply)."""
    with lp.connect(host, port, **options) as sock:
        sock.sendall(data)
        reply = b""
        while len(reply) < len(data) and (chunk := sock.recv(4096)):
            reply += chunk
        return sock.getpeername(), reply


def info(host: str, port: int) -> AddrInfo:
    """One getaddrinfo entry for a numeric address."""
    if ":" in host:
        return (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))


class FixedResolver:
    """A resolver answering every name with fixed entries, recording the calls."""

    def __init__(self, *entries: AddrInfo) -> None:
        self.entries = list(entries)
        self.calls: list[Any] = []

    def __call__(
        self, host: Any, port: Any, family: int, type: int, proto: int, flags: int
    ) -> list[AddrInfo]:
        self.calls.append(host)
        return list(self.entries)


def new_resolver_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """OS threads of a socketloop resolver pool started since ``before`` was taken."""
    return [
        t
        for t in threading.enumerate()
        if t not in before and t.name.startswith("socketloop-resolver")
    ]


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A directory with a short path (Unix socket paths are limited to ~108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sl-", dir="/tmp") as path:
        yield path


@pytest.fixture
def v4_listener() -> Iterator[socket.socket]:
    """A plain listening socket on 127.0.0.1 that never accepts (the kernel completes
    connections into its backlog), so it adds no fd to this process per client."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        yield listener


@pytest.fixture
def v4_server(loop: Loop) -> Iterator[Server]:
    server = loop.newserver("127.0.0.1", 0, echo)
    yield server
    close_and_drain(loop, server)


# --------------------------------------------------------------- getaddrinfo


def test_getaddrinfo_of_a_name_runs_in_the_resolver_pool(loop: Loop) -> None:
    before = set(threading.enumerate())
    infos = run(loop, loop.getaddrinfo, "localhost", 80, 0, socket.SOCK_STREAM)
    assert infos == socket.getaddrinfo("localhost", 80, 0, socket.SOCK_STREAM)
    # The loop's resolver pool starts its OS threads on first use.
    assert new_resolver_threads(before)


def test_getaddrinfo_outside_loop_threads_blocks_and_answers_like_the_stdlib(loop: Loop) -> None:
    before = set(threading.enumerate())
    infos = loop.getaddrinfo("localhost", 80, 0, socket.SOCK_STREAM)
    assert infos == socket.getaddrinfo("localhost", 80, 0, socket.SOCK_STREAM)
    assert new_resolver_threads(before) == []


def test_a_resolver_blocked_in_an_os_thread_lets_other_loop_threads_run(loop: Loop) -> None:
    log: list[str] = []
    released = threading.Event()

    def slow_resolver(
        host: Any, port: Any, family: int, type: int, proto: int, flags: int
    ) -> list[AddrInfo]:
        log.append("resolver blocks")
        # A truly blocking call (in the loop's OS-thread pool): only another
        # loop thread can end it.
        assert loop.run_in_thread(released.wait, 10)
        log.append("resolver answers")
        return [info("127.0.0.1", int(port))]

    def other() -> None:
        for i in range(3):
            log.append(f"other {i}")
            loop.sleep(0)
        released.set()

    loop.set_resolver(slow_resolver)
    resolving = loop.newthread(loop.getaddrinfo, "slow.test", 80)
    run(loop, other)
    assert resolving.join(10) == [info("127.0.0.1", 80)]
    assert log == ["resolver blocks", "other 0", "other 1", "other 2", "resolver answers"]


def test_a_resolver_that_sleeps_cooperatively_lets_other_loop_threads_run(loop: Loop) -> None:
    log: list[str] = []
    answered = socketloop.Event()

    def resolver(
        host: Any, port: Any, family: int, type: int, proto: int, flags: int
    ) -> list[AddrInfo]:
        log.append("resolver waits")
        answered.wait(10)
        log.append("resolver answers")
        return [info("127.0.0.1", int(port))]

    def other() -> None:
        log.append("other runs")
        answered.set()

    loop.set_resolver(resolver)
    resolving = loop.newthread(loop.getaddrinfo, "slow.test", 80)
    loop.newthread(other)
    assert resolving.join(10) == [info("127.0.0.1", 80)]
    assert log == ["resolver waits", "other runs", "resolver answers"]


def test_connect_resolves_names_with_the_resolver_set(loop: Loop, v4_server: Server) -> None:
    resolver = FixedResolver(info("127.0.0.1", v4_server.port))
    loop.set_resolver(resolver)
    peer, reply = run(loop, ask, loop, "service.test", v4_server.port, b"via resolver")
    assert reply == b"via resolver"
    assert peer == ("127.0.0.1", v4_server.port)
    assert resolver.calls == ["service.test"]


def test_set_resolver_none_restores_the_default_resolver(loop: Loop) -> None:
    resolver = FixedResolver(info("127.0.0.1", 1))
    loop.set_resolver(resolver)
    loop.set_resolver(None)
    infos = run(loop, loop.getaddrinfo, "localhost", 80, 0, socket.SOCK_STREAM)
    assert infos == socket.getaddrinfo("localhost", 80, 0, socket.SOCK_STREAM)
    assert resolver.calls == []


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", b"127.0.0.1", "fe80::1%lo"])
def test_numeric_addresses_skip_the_resolver(loop: Loop, host: str | bytes) -> None:
    resolver = FixedResolver(info("127.0.0.1", 1))
    loop.set_resolver(resolver)
    infos = run(loop, loop.getaddrinfo, host, 80, 0, socket.SOCK_STREAM)
    assert infos == socket.getaddrinfo(host, 80, 0, socket.SOCK_STREAM)
    assert resolver.calls == []


def test_connect_to_numeric_addresses_skips_the_resolver(loop: Loop) -> None:
    resolver = FixedResolver(info("127.0.0.1", 1))
    loop.set_resolver(resolver)
    v4 = loop.newserver("127.0.0.1", 0, echo)
    v6 = loop.newserver("::1", 0, echo)
    assert run(loop, ask, loop, "127.0.0.1", v4.port, b"4")[1] == b"4"
    assert run(loop, ask, loop, "::1", v6.port, b"6")[1] == b"6"
    assert resolver.calls == []
    close_and_drain(loop, v4, v6)


@pytest.mark.expect_errors
def test_gaierror_from_the_default_resolver_names_the_host(loop: Loop) -> None:
    # AI_NUMERICHOST makes the system resolver fail at once, without any DNS query.
    with pytest.raises(socket.gaierror, match=r"not-numeric\.test") as excinfo:
        run(
            loop,
            loop.getaddrinfo,
            "not-numeric.test",
            80,
            0,
            socket.SOCK_STREAM,
            0,
            socket.AI_NUMERICHOST,
        )
    assert excinfo.value.errno == socket.EAI_NONAME


def test_gaierror_outside_loop_threads_names_the_host(loop: Loop) -> None:
    with pytest.raises(socket.gaierror, match=r"not-numeric\.test"):
        loop.getaddrinfo("not-numeric.test", 80, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)


@pytest.mark.expect_errors
def test_gaierror_from_a_custom_resolver_through_connect_names_the_host(loop: Loop) -> None:
    def failing(
        host: Any, port: Any, family: int, type: int, proto: int, flags: int
    ) -> list[AddrInfo]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    loop.set_resolver(failing)
    with pytest.raises(socket.gaierror, match=r"no-such-host\.test") as excinfo:
        run(loop, loop.connect, "no-such-host.test", 80)
    assert excinfo.value.errno == socket.EAI_NONAME


# ------------------------------------------------------------ happy eyeballs


def test_happy_eyeballs_falls_back_to_ipv4_after_the_stagger_when_ipv6_hangs(
    loop: Loop, v4_listener: socket.socket
) -> None:
    v4_port = v4_listener.getsockname()[1]
    with hanging_address(socket.AF_INET6) as (v6_host, v6_port):
        loop.set_resolver(FixedResolver(info(v6_host, v6_port), info("127.0.0.1", v4_port)))

        def client() -> tuple[float, Any, int]:
            started = time.monotonic()
            fds_before = open_fd_count()
            with loop.connect("dual.test", 0, happy_eyeballs_delay=0.25) as sock:
                elapsed = time.monotonic() - started
                # Exactly one new fd: the winner; the IPv6 attempt was closed.
                return elapsed, sock.getpeername(), open_fd_count() - fds_before

        elapsed, peer, new_fds = run(loop, client)
    assert peer == ("127.0.0.1", v4_port)
    assert 0.2 <= elapsed < 2.0
    assert new_fds == 1


def test_happy_eyeballs_stagger_is_configurable(loop: Loop, v4_server: Server) -> None:
    with hanging_address(socket.AF_INET6) as (v6_host, v6_port):
        loop.set_resolver(FixedResolver(info(v6_host, v6_port), info("127.0.0.1", v4_server.port)))

        def client() -> float:
            started = time.monotonic()
            with loop.connect("dual.test", 0, happy_eyeballs_delay=1.0):
                return time.monotonic() - started

        elapsed = run(loop, client)
    assert 0.9 <= elapsed < 3.0


def test_without_happy_eyeballs_a_hanging_first_address_is_waited_on_alone(
    loop: Loop, v4_listener: socket.socket
) -> None:
    v4_port = v4_listener.getsockname()[1]
    with hanging_address(socket.AF_INET6) as (v6_host, v6_port):
        loop.set_resolver(FixedResolver(info(v6_host, v6_port), info("127.0.0.1", v4_port)))

        def client() -> float:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                loop.connect("dual.test", 0, happy_eyeballs_delay=None, timeout=1.0)
            return time.monotonic() - started

        elapsed = run(loop, client)
    assert 0.9 <= elapsed < 3.0
    # Sequential: the IPv4 address was never tried.
    with pytest.raises(BlockingIOError):
        v4_listener.accept()


def test_without_happy_eyeballs_a_refused_address_is_followed_by_the_next(
    loop: Loop, v4_server: Server
) -> None:
    with refusing_address(socket.AF_INET6) as (v6_host, v6_port):
        loop.set_resolver(FixedResolver(info(v6_host, v6_port), info("127.0.0.1", v4_server.port)))

        def client() -> tuple[Any, bytes]:
            return ask(loop, "dual.test", 0, b"next", happy_eyeballs_delay=None)

        peer, reply = run(loop, client)
    assert peer == ("127.0.0.1", v4_server.port)
    assert reply == b"next"


def test_a_refused_first_address_starts_the_next_attempt_at_once(
    loop: Loop, v4_server: Server
) -> None:
    with refusing_address(socket.AF_INET6) as (v6_host, v6_port):
        loop.set_resolver(FixedResolver(info(v6_host, v6_port), info("127.0.0.1", v4_server.port)))

        def client() -> tuple[float, Any]:
            started = time.monotonic()
            with loop.connect("dual.test", 0, happy_eyeballs_delay=5.0) as sock:
                return time.monotonic() - started, sock.getpeername()

        elapsed, peer = run(loop, client)
    assert peer == ("127.0.0.1", v4_server.port)
    assert elapsed < 2.0  # far below the 5 s stagger


@pytest.mark.expect_errors
def test_when_every_address_fails_the_first_error_is_raised(loop: Loop) -> None:
    with (
        refusing_address(socket.AF_INET6) as (v6_host, v6_port),
        refusing_address(socket.AF_INET) as (v4_host, v4_port),
    ):
        loop.set_resolver(FixedResolver(info(v6_host, v6_port), info(v4_host, v4_port)))
        with pytest.raises(ConnectionRefusedError) as excinfo:
            run(loop, loop.connect, "dual.test", 0)
    assert f"[::1]:{v6_port}" in str(excinfo.value)


def test_the_overall_timeout_bounds_every_attempt(loop: Loop) -> None:
    with (
        hanging_address(socket.AF_INET6) as (v6_host, v6_port),
        hanging_address(socket.AF_INET) as (v4_host, v4_port),
    ):
        loop.set_resolver(FixedResolver(info(v6_host, v6_port), info(v4_host, v4_port)))

        def client() -> tuple[float, int]:
            fds_before = open_fd_count()
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                loop.connect("dual.test", 0, timeout=0.8, happy_eyeballs_delay=0.25)
            return time.monotonic() - started, open_fd_count() - fds_before

        elapsed, new_fds = run(loop, client)
    assert 0.7 <= elapsed < 3.0
    assert new_fds == 0  # both attempts were closed


def test_connect_by_name_outside_loop_threads_blocks_and_connects(
    loop: Loop, v4_server: Server
) -> None:
    # No loop thread: the name is resolved by the blocking system resolver.
    before = set(threading.enumerate())
    with loop.connect("localhost", v4_server.port) as sock:
        assert sock.getpeername() == ("127.0.0.1", v4_server.port)
    assert new_resolver_threads(before) == []


# -------------------------------------------------------------- Unix sockets


def test_connect_unix_reaches_a_newserver_unix_server(loop: Loop, short_dir: str) -> None:
    path = os.path.join(short_dir, "echo.sock")
    server = loop.newserver_unix(path, echo)

    def client() -> bytes:
        with loop.connect_unix(path) as sock:
            assert sock.family == socket.AF_UNIX
            sock.sendall(b"over unix")
            return sock.recv(100)

    assert run(loop, client) == b"over unix"
    close_and_drain(loop, server)


def test_unix_server_serves_clients_concurrently(loop: Loop, short_dir: str) -> None:
    path = os.path.join(short_dir, "echo.sock")
    log: list[str] = []

    def handler(conn: AsyncSocket) -> None:
        name = conn.recv(100).decode()
        log.append(f"{name} in")
        conn.sendall(conn.recv(100))
        log.append(f"{name} out")

    server = loop.newserver_unix(path, handler)
    gate = socketloop.Event()

    def client(name: str) -> None:
        with loop.connect_unix(path) as sock:
            sock.sendall(name.encode())
            gate.wait(10)
            sock.sendall(b"bye")
            assert sock.recv(100) == b"bye"

    clients = [loop.newthread(client, name) for name in ("first", "second")]
    # Both handlers run at once: each has its client's name before either ends.
    step_until(loop, lambda: sorted(log) == ["first in", "second in"])
    gate.set()
    for thread in clients:
        thread.join(10)
    assert sorted(log[2:]) == ["first out", "second out"]
    close_and_drain(loop, server)


def test_newserver_unix_removes_its_socket_file_on_close(loop: Loop, short_dir: str) -> None:
    path = os.path.join(short_dir, "gone.sock")
    server = loop.newserver_unix(path, echo)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    close_and_drain(loop, server)
    assert not os.path.exists(path)


def test_newserver_unix_replaces_a_stale_socket_file(loop: Loop, short_dir: str) -> None:
    path = os.path.join(short_dir, "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
        old.bind(path)  # leaves a socket file nobody listens on
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    server = loop.newserver_unix(path, echo)

    def client() -> bytes:
        with loop.connect_unix(path) as sock:
            sock.sendall(b"fresh")
            return sock.recv(100)

    assert run(loop, client) == b"fresh"
    close_and_drain(loop, server)


def test_newserver_unix_refuses_to_replace_a_regular_file(loop: Loop, short_dir: str) -> None:
    path = os.path.join(short_dir, "data.txt")
    with open(path, "w") as f:
        f.write("precious")
    with pytest.raises(OSError):
        loop.newserver_unix(path, echo)
    with open(path) as f:
        assert f.read() == "precious"


@pytest.mark.expect_errors
def test_connect_unix_to_a_missing_path_raises_file_not_found(loop: Loop, short_dir: str) -> None:
    with pytest.raises(FileNotFoundError):
        run(loop, loop.connect_unix, os.path.join(short_dir, "missing.sock"))


# ----------------------------------------------------------------------- UDP


@pytest.fixture
def udp_pair(loop: Loop) -> Iterator[tuple[AsyncSocket, AsyncSocket]]:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    wa, wb = loop.wrap(a), loop.wrap(b)
    try:
        yield wa, wb
    finally:
        wa.close()
        wb.close()


def test_udp_recvfrom_suspends_only_the_calling_thread(
    loop: Loop, udp_pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = udp_pair
    log: list[Any] = []

    def receiver() -> None:
        log.append("receiver waits")
        data, sender = a.recvfrom(100)
        log.append((data, sender))

    def sender() -> None:
        log.append("sender runs")
        b.sendto(b"datagram", a.getsockname())

    loop.newthread(receiver)
    run(loop, sender)
    step_until(loop, lambda: len(log) == 3)
    assert log == ["receiver waits", "sender runs", (b"datagram", b.getsockname())]


def test_udp_keeps_datagram_boundaries(
    loop: Loop, udp_pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = udp_pair

    def exchange() -> list[bytes]:
        for size in (1, 100, 1000):
            b.sendto(b"d" * size, a.getsockname())
        return [a.recvfrom(2000)[0] for _ in range(3)]

    assert [len(d) for d in run(loop, exchange)] == [1, 100, 1000]


def test_udp_recvfrom_honours_the_socket_timeout(
    loop: Loop, udp_pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, _ = udp_pair
    a.settimeout(0.3)

    def receive() -> float:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            a.recvfrom(100)
        return time.monotonic() - started

    assert 0.25 <= run(loop, receive) < 3.0


def test_udp_sendto_a_name_resolves_in_the_resolver_pool(
    loop: Loop, udp_pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = udp_pair
    port = a.getsockname()[1]
    before = set(threading.enumerate())
    assert run(loop, b.sendto, b"to localhost", ("localhost", port)) == len(b"to localhost")
    assert new_resolver_threads(before)
    assert run(loop, a.recvfrom, 100) == (b"to localhost", b.getsockname())


def test_udp_sendto_a_name_uses_the_resolver_set(
    loop: Loop, udp_pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = udp_pair
    resolver = FixedResolver(
        (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP, "", a.getsockname())
    )
    loop.set_resolver(resolver)
    run(loop, b.sendto, b"named", ("receiver.test", 9))
    assert run(loop, a.recvfrom, 100) == (b"named", b.getsockname())
    assert resolver.calls == ["receiver.test"]


def test_udp_over_ipv6_loopback(loop: Loop) -> None:
    a = loop.wrap(socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
    b = loop.wrap(socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
    with a, b:
        a.bind(("::1", 0))

        def exchange() -> bytes:
            b.sendto(b"six", a.getsockname())
            return bytes(a.recvfrom(100)[0])

        assert run(loop, exchange) == b"six"


# ---------------------------------------------------------------------- IPv6


def test_connect_to_the_ipv6_loopback(loop: Loop) -> None:
    server = loop.newserver("::1", 0, echo)
    peer, reply = run(loop, ask, loop, "::1", server.port, b"v6")
    assert reply == b"v6"
    assert peer[0] == "::1"
    close_and_drain(loop, server)


@pytest.mark.parametrize("host", [None, ""])
def test_a_server_on_every_interface_accepts_ipv4_and_ipv6(loop: Loop, host: str | None) -> None:
    server = loop.newserver(host, 0, echo)
    v4_peer, v4_reply = run(loop, ask, loop, "127.0.0.1", server.port, b"four")
    v6_peer, v6_reply = run(loop, ask, loop, "::1", server.port, b"six")
    assert (v4_reply, v6_reply) == (b"four", b"six")
    assert v4_peer[0] == "127.0.0.1"
    assert v6_peer[0] == "::1"
    close_and_drain(loop, server)
