"""Async sockets: the ``socket.socket`` API, suspending only the calling loop thread.

Every test that takes ``loop`` runs on the asymmetric loop, the symmetric loop
and the poll backend.  Events are ordered with logs, joins, ``step()`` and
kernel readiness (``select.poll`` on the raw fd); time only appears as small
timeouts whose expiry is the behaviour under test (and as the pace of a
deliberately slow reader).
"""

from __future__ import annotations

import array
import contextlib
import errno
import functools
import hashlib
import os
import select
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from conftest import fill_send_buffer, run, tcp_pair
from socketloop import AsyncSocket, BusyResourceError, Loop, SendallTimeoutError, Thread

T = TypeVar("T")

#: Small timeouts whose expiry is what a test checks.
SHORT = 0.03

# ------------------------------------------------------------------ helpers


def capture(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | Exception:
    """Call ``fn(*args, **kwargs)``; return its result, or the exception it raised."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        return exc


def assert_ebadf(outcome: object) -> None:
    assert isinstance(outcome, OSError), f"expected OSError(EBADF), got {outcome!r}"
    assert outcome.errno == errno.EBADF, f"expected EBADF, got {outcome!r}"


def read_exactly(sock: AsyncSocket, size: int) -> bytes:
    """Read ``size`` bytes (fewer only at end of stream)."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def read_to_eof(sock: AsyncSocket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(1 << 20):
        data += chunk
    return bytes(data)


def wait_for_poll_event(sock: AsyncSocket | socket.socket, events: int) -> None:
    """Block (outside the loop) until the kernel reports one of ``events`` on ``sock``."""
    poller = select.poll()
    poller.register(sock.fileno(), events)
    assert poller.poll(5000), "the socket never reported the expected event"


def wait_readable(sock: AsyncSocket | socket.socket) -> None:
    wait_for_poll_event(sock, select.POLLIN)


def raw_tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected plain (unwrapped, blocking) TCP sockets on loopback."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def closed_port() -> int:
    """A loopback port nobody listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class CountingSocket(socket.socket):
    """A socket that counts its ``recv`` system calls: each wake-up costs a retry."""

    recv_calls = 0

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        self.recv_calls += 1
        return super().recv(bufsize, flags)


def socket_on_fd(sock: socket.socket, fd: int, cls: type[socket.socket]) -> Any:
    """Move ``sock`` to the (free) descriptor number ``fd``; return it as a ``cls``."""
    if sock.fileno() != fd:
        os.dup2(sock.fileno(), fd, inheritable=False)
        sock.close()
    else:
        sock.detach()
    return cls(fileno=fd)


def suspends_only_the_caller(loop: Loop, call: Callable[[], T], release: Callable[[], object]) -> T:
    """Run ``call`` in a loop thread; check that it suspends only that thread.

    ``release`` runs in another loop thread, started while the first one is
    suspended; it must make ``call`` complete.  Returns what ``call`` returned.
    """
    log: list[str] = []

    def waiter() -> T:
        log.append("waiter starts")
        result = call()
        log.append("waiter done")
        return result

    def other() -> None:
        log.append("other runs")
        release()
        log.append("other done")

    blocked = loop.newthread(waiter)
    assert blocked.state == "waiting", "the call did not suspend its thread"
    assert log == ["waiter starts"]
    helper = loop.newthread(other)
    result = blocked.join(5)
    helper.join(5)
    assert log[:2] == ["waiter starts", "other runs"]
    assert sorted(log) == sorted(["waiter starts", "other runs", "other done", "waiter done"])
    return result


def kill_if_alive(*threads: Thread[Any]) -> None:
    """End threads a failed test left behind (the fixtures reject leftovers)."""
    for thread in threads:
        if thread.is_alive():
            thread.kill()


def ticks_while_waiting(loop: Loop, thread: Thread[Any]) -> int:
    """Yield to the loop until ``thread`` ends; count the turns it was still waiting."""
    ticks = 0
    while thread.is_alive():
        loop.sleep(0)
        if thread.state == "waiting":
            ticks += 1
    return ticks


# ----------------------------------------------------------------- fixtures


@pytest.fixture
def listener(loop: Loop) -> Iterator[AsyncSocket]:
    """A wrapped TCP socket listening on 127.0.0.1."""
    sock = loop.wrap(socket.socket())
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock
    finally:
        sock.close()


# ------------------------------------- 1. blocking calls suspend only their thread


def test_accept_suspends_only_its_thread_and_returns_an_async_socket_and_address(
    loop: Loop, listener: AsyncSocket
) -> None:
    clients: list[AsyncSocket] = []

    def connect_a_client() -> None:
        clients.append(loop.connect(*listener.getsockname()))

    conn, address = suspends_only_the_caller(loop, listener.accept, connect_a_client)
    try:
        assert isinstance(conn, AsyncSocket)
        assert address == clients[0].getsockname()
        assert conn.getpeername() == address
    finally:
        conn.close()
        for client in clients:
            client.close()


def test_connect_suspends_only_its_thread(loop: Loop, listener: AsyncSocket) -> None:
    client = loop.wrap(socket.socket())
    try:
        result = suspends_only_the_caller(
            loop, functools.partial(client.connect, listener.getsockname()), lambda: None
        )
        assert result is None
        assert client.getpeername() == listener.getsockname()
    finally:
        client.close()


def test_connect_ex_suspends_only_its_thread_and_returns_zero(
    loop: Loop, listener: AsyncSocket
) -> None:
    client = loop.wrap(socket.socket())
    try:
        result = suspends_only_the_caller(
            loop, functools.partial(client.connect_ex, listener.getsockname()), lambda: None
        )
        assert result == 0
        assert client.getpeername() == listener.getsockname()
    finally:
        client.close()


def test_loop_connect_suspends_only_its_thread(loop: Loop, listener: AsyncSocket) -> None:
    host, port = listener.getsockname()
    conn = suspends_only_the_caller(loop, lambda: loop.connect(host, port), lambda: None)
    try:
        assert isinstance(conn, AsyncSocket)
        assert conn.getpeername() == (host, port)
    finally:
        conn.close()


def test_recv_suspends_only_its_thread(loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]) -> None:
    a, b = pair
    data = suspends_only_the_caller(loop, lambda: a.recv(100), lambda: b.sendall(b"hello"))
    assert data == b"hello"


def test_recv_into_suspends_only_its_thread(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    buffer = bytearray(100)
    count = suspends_only_the_caller(loop, lambda: a.recv_into(buffer), lambda: b.sendall(b"hello"))
    assert buffer[:count] == b"hello"


def test_recvfrom_suspends_only_its_thread(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    data, _ = suspends_only_the_caller(loop, lambda: a.recvfrom(100), lambda: b.sendall(b"hello"))
    assert data == b"hello"


def test_recvfrom_into_suspends_only_its_thread(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    buffer = bytearray(100)
    count, _ = suspends_only_the_caller(
        loop, lambda: a.recvfrom_into(buffer), lambda: b.sendall(b"hello")
    )
    assert buffer[:count] == b"hello"


def test_recvmsg_suspends_only_its_thread(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    data, ancdata, _flags, _address = suspends_only_the_caller(
        loop, lambda: a.recvmsg(100), lambda: b.sendall(b"hello")
    )
    assert data == b"hello"
    assert ancdata == []


def test_send_suspends_only_its_thread_while_the_send_buffer_is_full(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    filled = fill_send_buffer(a)
    count = suspends_only_the_caller(
        loop, lambda: a.send(b"y" * 100), lambda: read_exactly(b, filled)
    )
    assert 0 < count <= 100
    assert run(loop, read_exactly, b, count) == b"y" * count


def test_sendall_suspends_only_its_thread_and_delivers_everything(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    filled = fill_send_buffer(a)
    payload = os.urandom(200_000)
    received: list[bytes] = []
    result = suspends_only_the_caller(
        loop,
        lambda: a.sendall(payload),
        lambda: received.append(read_exactly(b, filled + len(payload))),
    )
    assert result is None
    assert received[0][filled:] == payload


def test_sendto_suspends_only_its_thread_while_the_peer_queue_is_full(
    loop: Loop, tmp_path: Path
) -> None:
    # A UDP send never blocks on loopback; a Unix datagram send does when the
    # receiver's queue is full.
    path = str(tmp_path / "receiver")
    receiver = loop.wrap(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
    sender = loop.wrap(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
    try:
        receiver.bind(path)
        sender.connect(path)
        queued = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                sender.socket.send(b"queued")
                queued += 1
        received: list[bytes] = []

        def drain() -> None:
            for _ in range(queued + 1):
                received.append(receiver.recv(100))

        count = suspends_only_the_caller(loop, lambda: sender.sendto(b"last", path), drain)
        assert count == 4
        assert received == [b"queued"] * queued + [b"last"]
    finally:
        sender.close()
        receiver.close()


def test_sendmsg_suspends_only_its_thread_while_the_send_buffer_is_full(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    filled = fill_send_buffer(a)
    count = suspends_only_the_caller(
        loop, lambda: a.sendmsg([b"ab", b"cd"]), lambda: read_exactly(b, filled)
    )
    assert count == 4
    assert run(loop, read_exactly, b, 4) == b"abcd"


def test_sendfile_suspends_only_its_thread_and_delivers_the_file(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket], tmp_path: Path
) -> None:
    a, b = pair
    content = os.urandom(300_000)
    path = tmp_path / "payload.bin"
    path.write_bytes(content)
    filled = fill_send_buffer(a)
    received: list[bytes] = []
    with path.open("rb") as file:
        sent = suspends_only_the_caller(
            loop,
            lambda: a.sendfile(file),
            lambda: received.append(read_exactly(b, filled + len(content))),
        )
        assert file.tell() == len(content)
    assert sent == len(content)
    assert hashlib.sha256(received[0][filled:]).hexdigest() == hashlib.sha256(content).hexdigest()


def test_recv_of_data_already_buffered_returns_without_suspending(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    b.sendall(b"ready")
    wait_readable(a)
    thread = loop.newthread(a.recv, 100)
    assert thread.state == "dead"  # it never parked
    assert thread.join() == b"ready"


def test_accept_of_a_pending_connection_returns_without_suspending(
    loop: Loop, listener: AsyncSocket
) -> None:
    with socket.create_connection(listener.getsockname()) as client:
        wait_readable(listener)
        thread = loop.newthread(listener.accept)
        assert thread.state == "dead"
        conn, address = thread.join()
        conn.close()
        assert address == client.getsockname()


def test_sendall_with_room_in_the_send_buffer_returns_without_suspending(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    thread = loop.newthread(a.sendall, b"fits")
    assert thread.state == "dead"
    assert run(loop, read_exactly, b, 4) == b"fits"


# ------------------------------------------- 2. the other socket.socket attributes


def test_bind_listen_and_getsockname_work_on_the_wrapper(loop: Loop) -> None:
    with loop.wrap(socket.socket()) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        host, port = server.getsockname()
        assert host == "127.0.0.1"
        assert port > 0
        with socket.create_connection((host, port)):
            conn, _ = run(loop, server.accept)
            conn.close()


def test_fileno_is_the_fileno_of_the_wrapped_socket(
    pair: tuple[AsyncSocket, AsyncSocket],
) -> None:
    a, _ = pair
    assert a.fileno() == a.socket.fileno()
    assert a.fileno() >= 0


def test_getpeername_is_the_getsockname_of_the_peer(
    pair: tuple[AsyncSocket, AsyncSocket],
) -> None:
    a, b = pair
    assert a.getpeername() == b.getsockname()
    assert b.getpeername() == a.getsockname()


def test_setsockopt_and_getsockopt_reach_the_socket(
    pair: tuple[AsyncSocket, AsyncSocket],
) -> None:
    a, _ = pair
    a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert a.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert a.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
    assert a.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0


def test_family_type_and_proto_are_those_of_the_socket(loop: Loop) -> None:
    with loop.wrap(socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)) as sock:
        assert sock.family == socket.AF_INET6
        assert sock.type == socket.SOCK_DGRAM
        assert sock.proto == sock.socket.proto


def test_detach_returns_the_fd_without_closing_it(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    fd = a.fileno()
    detached = a.detach()
    assert detached == fd
    assert a.fileno() == -1
    with socket.socket(fileno=detached) as raw:
        raw.sendall(b"via the detached fd")
        assert run(loop, read_exactly, b, 19) == b"via the detached fd"


def test_dup_gives_an_async_socket_on_a_new_fd_with_the_same_timeout(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    a.settimeout(2.5)
    duplicate = a.dup()
    try:
        assert isinstance(duplicate, AsyncSocket)
        assert duplicate.fileno() != a.fileno()
        assert duplicate.gettimeout() == 2.5
        a.close()
        assert suspends_only_the_caller(
            loop, lambda: duplicate.recv(100), lambda: b.sendall(b"to the dup")
        ) == (b"to the dup")
    finally:
        duplicate.close()


def test_context_manager_returns_the_socket_and_closes_it(loop: Loop) -> None:
    sock = loop.wrap(socket.socket())
    with sock as entered:
        assert entered is sock
        assert sock.fileno() >= 0
    assert sock.fileno() == -1
    assert sock.socket.fileno() == -1


def test_repr_names_the_async_socket_and_its_fd(pair: tuple[AsyncSocket, AsyncSocket]) -> None:
    a, _ = pair
    text = repr(a)
    assert text.startswith("<socketloop.AsyncSocket")
    assert f"fd={a.fileno()}" in text


def test_socket_attribute_is_the_original_socket_object(loop: Loop) -> None:
    raw = socket.socket()
    with loop.wrap(raw) as sock:
        assert sock.socket is raw


def test_the_wrapper_offers_every_public_attribute_of_socket_socket(
    pair: tuple[AsyncSocket, AsyncSocket],
) -> None:
    a, _ = pair
    # Spelled out rather than forwarded with __getattr__ (which would slow
    # every attribute access): check nothing was forgotten.
    missing = [
        name for name in dir(socket.socket) if not name.startswith("_") and not hasattr(a, name)
    ]
    assert not missing


def test_attributes_the_socket_lacks_raise_attribute_error(
    pair: tuple[AsyncSocket, AsyncSocket],
) -> None:
    a, _ = pair
    name = "no_such_attribute"
    with pytest.raises(AttributeError):
        getattr(a, name)


# ---------------------------------------------------------------- 3. timeouts


@pytest.mark.parametrize("operation", ["recv", "accept", "connect", "send", "sendall"])
def test_timeout_raises_timeout_error_in_the_waiting_thread_while_others_keep_running(
    loop: Loop,
    pair: tuple[AsyncSocket, AsyncSocket],
    listener: AsyncSocket,
    request: pytest.FixtureRequest,
    operation: str,
) -> None:
    a, _ = pair
    with contextlib.ExitStack() as cleanup:
        call: Callable[[], object]
        if operation == "recv":
            a.settimeout(SHORT)
            call = functools.partial(a.recv, 100)
        elif operation == "accept":
            listener.settimeout(SHORT)
            call = listener.accept
        elif operation == "connect":
            client = cleanup.enter_context(loop.wrap(socket.socket()))
            client.settimeout(SHORT)
            call = functools.partial(client.connect, request.getfixturevalue("hanging_address"))
        elif operation == "send":
            fill_send_buffer(a)
            a.settimeout(SHORT)
            call = functools.partial(a.send, b"x" * 1000)
        else:
            fill_send_buffer(a)
            a.settimeout(SHORT)
            call = functools.partial(a.sendall, b"x" * 1000)
        waiter = loop.newthread(capture, call)
        assert waiter.state == "waiting"
        ticker = loop.newthread(ticks_while_waiting, loop, waiter)
        assert isinstance(waiter.join(5), TimeoutError)
        assert ticker.join(5) > 0


def test_sendall_timeout_reports_the_bytes_sent_so_far(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    a.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = bytes(range(256)) * (64 * 1024)  # 16 MiB: more than the buffers hold
    a.settimeout(SHORT)
    error = run(loop, capture, a.sendall, payload)
    assert isinstance(error, SendallTimeoutError)
    assert isinstance(error, TimeoutError)
    assert 0 < error.bytes_sent < len(payload)
    a.shutdown(socket.SHUT_WR)
    assert run(loop, read_to_eof, b) == payload[: error.bytes_sent]


def test_sendall_has_one_deadline_that_a_slow_reader_cannot_extend(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    a.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    # The reader takes 32 KiB every 5 ms: each wait of the sender is far
    # shorter than the timeout, but the whole payload needs ~0.6 s.
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB
    a.settimeout(0.05)
    sender_done = [False]
    slow_reads = [0]
    received = bytearray()

    def sender() -> SendallTimeoutError | None:
        try:
            a.sendall(payload)
        except SendallTimeoutError as exc:
            return exc
        finally:
            sender_done[0] = True
            a.shutdown(socket.SHUT_WR)
        return None

    def slow_reader() -> None:
        while not sender_done[0]:
            chunk = b.recv(32768)
            if not chunk:
                return
            received.extend(chunk)
            slow_reads[0] += 1
            loop.sleep(0.005)

    sending = loop.newthread(sender)
    reading = loop.newthread(slow_reader)
    error = sending.join(10)
    reading.join(10)
    assert isinstance(error, SendallTimeoutError), "a slow reader extended the deadline"
    assert slow_reads[0] >= 1
    rest = run(loop, read_exactly, b, error.bytes_sent - len(received))
    assert bytes(received) + rest == payload[: error.bytes_sent]


def test_timeout_none_waits_until_data_arrives_however_long_it_takes(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    a.settimeout(0.01)
    a.settimeout(None)
    reader = loop.newthread(a.recv, 100)
    for _ in range(3):
        loop.step(0.02)  # nothing to dispatch: each step lets 20 ms pass
    assert reader.state == "waiting"
    b.sendall(b"late")
    assert reader.join(5) == b"late"


@pytest.mark.parametrize("operation", ["recv", "accept", "send", "sendall", "connect"])
@pytest.mark.parametrize("how", ["settimeout(0)", "setblocking(False)"])
def test_non_blocking_mode_raises_blocking_io_error_instead_of_suspending(
    loop: Loop,
    pair: tuple[AsyncSocket, AsyncSocket],
    listener: AsyncSocket,
    operation: str,
    how: str,
) -> None:
    a, _ = pair
    with contextlib.ExitStack() as cleanup:
        target = a
        if operation == "accept":
            target = listener
        elif operation == "connect":
            target = cleanup.enter_context(loop.wrap(socket.socket()))
        elif operation in ("send", "sendall"):
            fill_send_buffer(a)
        if how == "settimeout(0)":
            target.settimeout(0)
        else:
            target.setblocking(False)
        calls: dict[str, Callable[[], object]] = {
            "recv": lambda: target.recv(100),
            "accept": target.accept,
            "send": lambda: target.send(b"x" * 1000),
            "sendall": lambda: target.sendall(b"x" * 1000),
            "connect": lambda: target.connect(listener.getsockname()),
        }
        thread = loop.newthread(capture, calls[operation])
        try:
            assert thread.state == "dead", "the call suspended its thread"
            assert isinstance(thread.join(), BlockingIOError)
        finally:
            kill_if_alive(thread)


def test_connect_ex_in_non_blocking_mode_returns_einprogress_at_once(
    loop: Loop, listener: AsyncSocket
) -> None:
    with loop.wrap(socket.socket()) as client:
        client.setblocking(False)
        thread = loop.newthread(client.connect_ex, listener.getsockname())
        try:
            assert thread.state == "dead", "connect_ex suspended its thread"
            assert thread.join() == errno.EINPROGRESS
        finally:
            kill_if_alive(thread)


def test_gettimeout_reports_the_user_value_while_the_os_socket_stays_non_blocking(
    pair: tuple[AsyncSocket, AsyncSocket],
) -> None:
    a, _ = pair
    for value in (1.5, None, 0.0):
        a.settimeout(value)
        assert a.gettimeout() == value
        assert a.timeout == value
        assert a.socket.gettimeout() == 0.0


def test_wrap_keeps_the_timeout_of_the_wrapped_socket(loop: Loop) -> None:
    raw = socket.socket()
    raw.settimeout(2.5)
    with loop.wrap(raw) as sock:
        assert sock.gettimeout() == 2.5
        assert raw.gettimeout() == 0.0


def test_wrapped_socket_timeout_applies_to_its_calls(loop: Loop) -> None:
    raw_a, raw_b = raw_tcp_pair()
    raw_a.settimeout(SHORT)
    with loop.wrap(raw_a) as a, raw_b:
        assert isinstance(run(loop, capture, a.recv, 100), TimeoutError)


def test_getblocking_is_false_only_for_timeout_zero(
    pair: tuple[AsyncSocket, AsyncSocket],
) -> None:
    a, _ = pair
    a.settimeout(None)
    assert a.getblocking() is True
    a.settimeout(1.0)
    assert a.getblocking() is True
    a.settimeout(0)
    assert a.getblocking() is False
    a.setblocking(True)
    assert a.getblocking() is True
    assert a.gettimeout() is None
    a.setblocking(False)
    assert a.getblocking() is False
    assert a.gettimeout() == 0.0


def test_socket_stays_usable_after_a_recv_timeout(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    a.settimeout(SHORT)
    assert isinstance(run(loop, capture, a.recv, 100), TimeoutError)
    b.sendall(b"after the timeout")
    assert run(loop, read_exactly, a, 17) == b"after the timeout"


def test_loop_connect_timeout_bounds_the_whole_connect(
    loop: Loop, hanging_address: tuple[str, int]
) -> None:
    host, port = hanging_address
    started = time.monotonic()
    connecting = loop.newthread(capture, loop.connect, host, port, timeout=SHORT)
    assert connecting.state == "waiting"
    ticker = loop.newthread(ticks_while_waiting, loop, connecting)
    assert isinstance(connecting.join(5), TimeoutError)
    assert time.monotonic() - started < 5
    assert ticker.join(5) > 0


# ------------------------------------------------------------------ 4. close()


def test_close_wakes_a_blocked_reader_with_ebadf(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, _ = pair
    reader = loop.newthread(capture, a.recv, 100)
    assert reader.state == "waiting"
    a.close()
    loop.step(0)  # no I/O needed: the next dispatch ends the wait
    assert not reader.is_alive()
    assert_ebadf(reader.join())


def test_close_wakes_a_blocked_writer_with_ebadf(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, _ = pair
    fill_send_buffer(a)
    writer = loop.newthread(capture, a.sendall, b"x" * 100_000)
    assert writer.state == "waiting"
    a.close()
    loop.step(0)
    assert not writer.is_alive()
    assert_ebadf(writer.join())


def test_close_wakes_a_blocked_accepter_with_ebadf(loop: Loop, listener: AsyncSocket) -> None:
    accepter = loop.newthread(capture, listener.accept)
    assert accepter.state == "waiting"
    listener.close()
    loop.step(0)
    assert not accepter.is_alive()
    assert_ebadf(accepter.join())


def test_close_from_another_loop_thread_wakes_the_reader_with_ebadf(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, _ = pair
    log: list[str] = []

    def reader() -> None:
        try:
            a.recv(100)
        except OSError as exc:
            log.append(f"reader woke with {errno.errorcode[exc.errno or 0]}")

    def closer() -> None:
        log.append("closing")
        a.close()

    reading = loop.newthread(reader)
    loop.newthread(closer)
    reading.join(5)
    assert log == ["closing", "reader woke with EBADF"]


def test_close_twice_is_harmless(pair: tuple[AsyncSocket, AsyncSocket]) -> None:
    a, _ = pair
    a.close()
    a.close()
    assert a.fileno() == -1


CLOSED_SOCKET_OPERATIONS: dict[str, Callable[[AsyncSocket], object]] = {
    "recv": lambda s: s.recv(100),
    "recv(0)": lambda s: s.recv(0),
    "recv_into": lambda s: s.recv_into(bytearray(10)),
    "recvfrom": lambda s: s.recvfrom(100),
    "send": lambda s: s.send(b"x"),
    "sendall": lambda s: s.sendall(b"x"),
    'sendall(b"")': lambda s: s.sendall(b""),
    "accept": lambda s: s.accept(),
    "connect": lambda s: s.connect(("127.0.0.1", 9)),
    "getsockname": lambda s: s.getsockname(),
}


@pytest.mark.parametrize("operation", sorted(CLOSED_SOCKET_OPERATIONS))
def test_any_operation_after_close_raises_ebadf_at_once(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket], operation: str
) -> None:
    a, _ = pair
    a.close()
    thread = loop.newthread(capture, CLOSED_SOCKET_OPERATIONS[operation], a)
    assert thread.state == "dead"
    assert_ebadf(thread.join())


def test_close_with_an_open_makefile_file_keeps_the_fd_usable_for_the_file(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    file = a.makefile("rb")
    try:
        a.close()
        reading = loop.newthread(file.readline)
        assert reading.state == "waiting"
        b.sendall(b"still open\n")
        assert reading.join(5) == b"still open\n"
    finally:
        file.close()


def test_closing_the_last_makefile_file_after_close_closes_the_fd(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    file = a.makefile("wb")
    a.close()
    file.write(b"via the file")
    file.flush()
    assert a.fileno() != -1
    file.close()
    assert a.fileno() == -1
    assert run(loop, read_to_eof, b) == b"via the file"


# -------------------------------------------------------------- 5. fd reuse


def test_a_new_socket_on_the_fd_of_a_closed_one_gets_only_its_own_data(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    fd = a.fileno()
    old_reader = loop.newthread(capture, a.recv, 100)
    a.close()
    client, server = raw_tcp_pair()
    new = loop.wrap(socket_on_fd(client, fd, socket.socket))
    try:
        assert new.fileno() == fd
        new_reader = loop.newthread(new.recv, 100)
        assert new_reader.state == "waiting"
        with contextlib.suppress(OSError):
            b.send(b"stale")
        server.sendall(b"fresh")
        assert new_reader.join(5) == b"fresh"
        assert_ebadf(old_reader.join(5))
    finally:
        new.close()
        server.close()


def test_a_new_socket_on_a_reused_fd_is_not_woken_by_an_event_fetched_for_the_closed_one(
    loop: Loop,
) -> None:
    # Two readers are woken by the same poll.  Whichever runs first closes the
    # other's socket and puts a new socket (with a new reader) on its fd
    # number, while the closed socket's readiness is still in the batch.
    a1, a2 = tcp_pair(loop)
    b1, b2 = tcp_pair(loop)
    spare_client, spare_server = raw_tcp_pair()
    replacements: list[AsyncSocket] = []
    counters: list[CountingSocket] = []
    watchers: list[Thread[bytes]] = []

    def reader_that_replaces(mine: AsyncSocket, other: AsyncSocket) -> bytes:
        data = mine.recv(100)
        if not replacements:
            fd = other.fileno()
            other.close()
            counting: CountingSocket = socket_on_fd(spare_client, fd, CountingSocket)
            counters.append(counting)
            replacements.append(loop.wrap(counting))
            watchers.append(loop.newthread(replacements[0].recv, 100))
        return data

    try:
        first = loop.newthread(capture, reader_that_replaces, a1, b1)
        second = loop.newthread(capture, reader_that_replaces, b1, a1)
        a2.sendall(b"one")
        b2.sendall(b"two")
        wait_readable(a1)
        wait_readable(b1)
        loop.step(0)  # both readers' events come back from one poll
        outcomes = [first.join(5), second.join(5)]
        data = [o for o in outcomes if isinstance(o, bytes)]
        errors = [o for o in outcomes if not isinstance(o, bytes)]
        assert len(data) == 1
        assert data[0] in (b"one", b"two")
        assert len(errors) == 1
        assert_ebadf(errors[0])
        assert len(replacements) == 1
        [watcher] = watchers
        assert watcher.state == "waiting"
        assert counters[0].recv_calls == 1, "woken by the closed socket's event"
        spare_server.sendall(b"fresh")
        assert watcher.join(5) == b"fresh"
    finally:
        kill_if_alive(*watchers)
        for sock in (a1, a2, b1, b2, *replacements):
            sock.close()
        spare_client.close()
        spare_server.close()


def test_a_waiter_on_an_fd_closed_behind_the_loops_back_ends_or_is_killable(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, _ = pair
    fd = a.fileno()
    old_reader = loop.newthread(capture, a.recv, 100)
    assert old_reader.state == "waiting"
    a.socket.close()  # behind the loop's back: the wrapper is not told
    client, server = raw_tcp_pair()
    new = loop.wrap(socket_on_fd(client, fd, socket.socket))
    try:
        assert new.fileno() == fd
        new_reader = loop.newthread(new.recv, 100)
        server.sendall(b"fresh")
        assert new_reader.join(5) == b"fresh"
        if old_reader.is_alive():
            old_reader.kill()
            assert not old_reader.is_alive()
        else:
            assert_ebadf(old_reader.join())
    finally:
        new.close()
        server.close()


def test_a_new_socket_on_the_fd_of_a_socket_closed_behind_the_loops_back_works(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    fd = a.fileno()
    b.sendall(b"registers the old socket")
    assert run(loop, read_exactly, a, 24) == b"registers the old socket"
    reader = loop.newthread(a.recv, 100)  # the old socket is now known to the poller
    reader.kill()
    a.socket.close()
    client, server = raw_tcp_pair()
    new = loop.wrap(socket_on_fd(client, fd, socket.socket))
    try:
        assert new.fileno() == fd
        assert suspends_only_the_caller(
            loop, lambda: new.recv(100), lambda: server.sendall(b"fresh")
        ) == (b"fresh")
    finally:
        new.close()
        server.close()


# ----------------------------------------------------- 6. families and types


def test_wrap_of_an_ipv6_tcp_socket_suspends_only_the_reader(loop: Loop) -> None:
    a, b = tcp_pair(loop, socket.AF_INET6)
    try:
        assert a.family == socket.AF_INET6
        assert a.getpeername()[0] == "::1"
        data = suspends_only_the_caller(loop, lambda: a.recv(100), lambda: b.sendall(b"over v6"))
        assert data == b"over v6"
    finally:
        a.close()
        b.close()


def test_wrap_of_a_unix_socketpair_suspends_only_the_reader(
    loop: Loop, unix_pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = unix_pair
    assert a.family == socket.AF_UNIX
    data = suspends_only_the_caller(loop, lambda: a.recv(100), lambda: b.sendall(b"over unix"))
    assert data == b"over unix"


def test_wrap_of_a_udp_socket_recvfrom_suspends_only_the_caller_and_names_the_sender(
    loop: Loop,
) -> None:
    receiver = loop.wrap(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sender = loop.wrap(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        receiver.bind(("127.0.0.1", 0))
        sender.bind(("127.0.0.1", 0))
        counts: list[int] = []
        data, address = suspends_only_the_caller(
            loop,
            lambda: receiver.recvfrom(100),
            lambda: counts.append(sender.sendto(b"datagram", receiver.getsockname())),
        )
        assert data == b"datagram"
        assert address == sender.getsockname()
        assert counts == [8]
    finally:
        receiver.close()
        sender.close()


def test_wrap_of_a_udp_socket_returns_one_datagram_per_recv(loop: Loop) -> None:
    receiver = loop.wrap(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sender = loop.wrap(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        receiver.bind(("127.0.0.1", 0))
        sender.sendto(b"first", receiver.getsockname())
        sender.sendto(b"second", receiver.getsockname())

        def two_datagrams() -> list[bytes]:
            return [receiver.recv(100), receiver.recv(100)]

        assert run(loop, two_datagrams) == [b"first", b"second"]
    finally:
        receiver.close()
        sender.close()


# ------------------------------------------------ 7. one reader, one writer


def test_second_reader_gets_busy_resource_error_at_once_and_the_first_still_reads(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    first = loop.newthread(capture, a.recv, 100)
    second = loop.newthread(capture, a.recv, 100)
    assert second.state == "dead"
    error = second.join()
    assert isinstance(error, BusyResourceError)
    assert isinstance(error, RuntimeError)
    assert first.state == "waiting"
    b.sendall(b"for the first")
    assert first.join(5) == b"for the first"


def test_second_writer_gets_busy_resource_error_at_once_and_the_first_still_writes(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    filled = fill_send_buffer(a)
    first = loop.newthread(capture, a.send, b"1" * 10)
    assert first.state == "waiting"
    second = loop.newthread(capture, a.send, b"2" * 10)
    assert second.state == "dead"
    assert isinstance(second.join(), BusyResourceError)
    assert run(loop, read_exactly, b, filled + 10) == b"x" * filled + b"1" * 10
    assert first.join(5) == 10


def test_second_accepter_gets_busy_resource_error_at_once(
    loop: Loop, listener: AsyncSocket
) -> None:
    first = loop.newthread(capture, listener.accept)
    second = loop.newthread(capture, listener.accept)
    assert second.state == "dead"
    assert isinstance(second.join(), BusyResourceError)
    with socket.create_connection(listener.getsockname()) as client:
        outcome = first.join(5)
        assert isinstance(outcome, tuple)
        conn, address = outcome
        conn.close()
        assert address == client.getsockname()


@pytest.mark.parametrize("second_call", ["sendall", "send"])
def test_a_write_while_a_sendall_is_between_chunks_gets_busy_resource_error(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket], second_call: str
) -> None:
    a, b = pair
    a.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    payload = os.urandom(1 << 20)  # more than the buffers hold
    first = loop.newthread(capture, a.sendall, payload)
    assert first.state == "waiting"
    wait_readable(b)  # the first chunk has gone out: the sendall is between chunks
    intrusion = getattr(a, second_call)
    second = loop.newthread(capture, intrusion, b"intruder")
    assert second.state == "dead"
    assert isinstance(second.join(), BusyResourceError)
    assert run(loop, read_exactly, b, len(payload)) == payload
    assert first.join(5) is None


def test_one_reader_and_one_writer_work_concurrently_on_one_socket(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    filled = fill_send_buffer(a)
    payload = os.urandom(100_000)
    reader = loop.newthread(a.recv, 100)
    writer = loop.newthread(a.sendall, payload)
    assert reader.state == "waiting"
    assert writer.state == "waiting"

    def peer() -> bytes:
        received = read_exactly(b, filled + len(payload))
        b.sendall(b"reply")
        return received

    assert run(loop, peer)[filled:] == payload
    assert writer.join(5) is None
    assert reader.join(5) == b"reply"


# --------------------------------------------------------- 8. calling context


def test_call_in_a_thread_before_start_suspends_it_and_start_completes_it(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    reader = loop.newthread(a.recv, 100)
    assert reader.state == "waiting"
    assert not loop.running
    b.sendall(b"after start")
    loop.start()
    assert not reader.is_alive()
    assert reader.join() == b"after start"


def test_recv_from_the_main_program_blocks_until_a_helper_os_thread_sends(
    pair: tuple[AsyncSocket, AsyncSocket],
) -> None:
    a, b = pair
    a.settimeout(5)
    go = threading.Event()

    def helper() -> None:
        go.wait(5)
        b.sendall(b"from the helper")

    worker = threading.Thread(target=helper)
    worker.start()
    try:
        go.set()
        assert read_exactly(a, 15) == b"from the helper"
    finally:
        worker.join()


def test_recv_from_the_main_program_honours_the_timeout(
    pair: tuple[AsyncSocket, AsyncSocket],
) -> None:
    a, _ = pair
    a.settimeout(SHORT)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        a.recv(100)
    assert time.monotonic() - started < 5


def test_accept_from_the_main_program_blocks_until_a_helper_os_thread_connects(
    listener: AsyncSocket,
) -> None:
    listener.settimeout(5)
    go = threading.Event()
    clients: list[socket.socket] = []

    def helper() -> None:
        go.wait(5)
        clients.append(socket.create_connection(listener.getsockname()))

    worker = threading.Thread(target=helper)
    worker.start()
    try:
        go.set()
        conn, address = listener.accept()
        conn.close()
        worker.join()
        assert address == clients[0].getsockname()
    finally:
        worker.join()
        for client in clients:
            client.close()


def test_sendall_from_the_main_program_blocks_until_a_helper_os_thread_drains(
    pair: tuple[AsyncSocket, AsyncSocket],
) -> None:
    a, b = pair
    filled = fill_send_buffer(a)
    payload = os.urandom(200_000)
    a.settimeout(5)
    b.settimeout(5)
    go = threading.Event()
    received: list[bytes] = []

    def helper() -> None:
        go.wait(5)
        received.append(read_exactly(b, filled + len(payload)))

    worker = threading.Thread(target=helper)
    worker.start()
    try:
        go.set()
        a.sendall(payload)
    finally:
        worker.join()
    assert received[0][filled:] == payload


@pytest.mark.parametrize("operation", ["recv", "accept", "sendall", "connect"])
def test_socket_call_that_would_block_in_a_loop_callback_raises_runtime_error(
    loop: Loop,
    pair: tuple[AsyncSocket, AsyncSocket],
    listener: AsyncSocket,
    operation: str,
) -> None:
    a, _ = pair
    with loop.wrap(socket.socket()) as client:
        if operation == "sendall":
            fill_send_buffer(a)
        calls: dict[str, Callable[[], object]] = {
            "recv": lambda: a.recv(100),
            "accept": listener.accept,
            "sendall": lambda: a.sendall(b"x" * 1000),
            "connect": lambda: client.connect(listener.getsockname()),
        }
        outcomes: list[object] = []
        loop.call_soon(lambda: outcomes.append(capture(calls[operation])))
        loop.step(0)
        assert len(outcomes) == 1
        assert isinstance(outcomes[0], RuntimeError)
        assert "callback" in str(outcomes[0])


def test_socket_call_that_would_block_in_a_timer_callback_raises_runtime_error(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, _ = pair
    outcomes: list[object] = []
    loop.call_later(0, lambda: outcomes.append(capture(a.recv, 100)))
    while not outcomes:
        assert loop.step(1)
    assert isinstance(outcomes[0], RuntimeError)


# ------------------------------------------------------------------ 9. errors


def test_loop_connect_to_a_closed_port_raises_connection_refused_naming_the_address(
    loop: Loop,
) -> None:
    port = closed_port()
    error = run(loop, capture, loop.connect, "127.0.0.1", port)
    assert isinstance(error, ConnectionRefusedError)
    assert f"127.0.0.1:{port}" in str(error)


def test_connect_to_a_closed_port_raises_connection_refused_naming_the_address(
    loop: Loop,
) -> None:
    port = closed_port()
    with loop.wrap(socket.socket()) as client:
        error = run(loop, capture, client.connect, ("127.0.0.1", port))
    assert isinstance(error, ConnectionRefusedError)
    assert f"127.0.0.1:{port}" in str(error)


def test_connect_ex_to_a_closed_port_returns_econnrefused(loop: Loop) -> None:
    port = closed_port()
    with loop.wrap(socket.socket()) as client:
        assert run(loop, client.connect_ex, ("127.0.0.1", port)) == errno.ECONNREFUSED


def test_peer_reset_wakes_a_blocked_reader_with_connection_reset_error(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    reader = loop.newthread(capture, a.recv, 100)
    assert reader.state == "waiting"
    b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    b.close()
    assert isinstance(reader.join(5), ConnectionResetError)


def test_send_to_a_closed_peer_raises_broken_pipe_error(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    b.close()
    assert run(loop, a.recv, 100) == b""  # the peer's FIN has arrived
    a.send(b"provokes a reset")
    wait_for_poll_event(a, select.POLLHUP | select.POLLERR)  # the reset has arrived
    assert isinstance(run(loop, capture, a.sendall, b"more"), BrokenPipeError)


SIGPIPE_SCRIPT = textwrap.dedent(
    """
    import select, signal, socket
    import socketloop

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # what a C program would have
    loop = socketloop.Loop()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        raw = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
    peer.close()
    sock = loop.wrap(raw)
    assert loop.newthread(sock.recv, 100).join(5) == b""
    sock.send(b"provokes a reset")
    poller = select.poll()
    poller.register(raw, select.POLLHUP | select.POLLERR)
    assert poller.poll(5000)
    try:
        loop.newthread(sock.sendall, b"more").join(5)
    except BrokenPipeError:
        print("BrokenPipeError")
    """
)


def test_send_to_a_closed_peer_does_not_raise_sigpipe_even_when_it_is_not_ignored() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SIGPIPE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"exit status {result.returncode}: {result.stderr}"
    assert result.stdout.strip() == "BrokenPipeError"


def test_loop_connect_to_an_unresolvable_name_raises_gaierror_naming_it(loop: Loop) -> None:
    error = run(loop, capture, loop.connect, "nonexistent.invalid", 80)
    assert isinstance(error, socket.gaierror)
    assert "nonexistent.invalid" in str(error)


def test_connect_to_an_unresolvable_name_raises_gaierror_naming_it(loop: Loop) -> None:
    with loop.wrap(socket.socket()) as client:
        error = run(loop, capture, client.connect, ("nonexistent.invalid", 80))
    assert isinstance(error, socket.gaierror)
    assert "nonexistent.invalid" in str(error)


def test_connect_ex_to_an_unresolvable_name_raises_gaierror_like_a_plain_socket(
    loop: Loop,
) -> None:
    with socket.socket() as plain, pytest.raises(socket.gaierror):
        plain.connect_ex(("nonexistent.invalid", 80))
    with loop.wrap(socket.socket()) as client:
        outcome = run(loop, capture, client.connect_ex, ("nonexistent.invalid", 80))
    assert isinstance(outcome, socket.gaierror)


# ------------------------------------------------------------ 10. loop.connect


@pytest.mark.parametrize(
    ("host", "family"),
    [("localhost", socket.AF_INET), ("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)],
)
def test_loop_connect_reaches_a_loopback_listener(loop: Loop, host: str, family: int) -> None:
    bind_host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    server = loop.wrap(socket.socket(family))
    try:
        server.bind((bind_host, 0))
        server.listen(1)
        port = server.getsockname()[1]
        conn = run(loop, loop.connect, host, port)
        try:
            assert isinstance(conn, AsyncSocket)
            assert conn.getpeername()[:2] == (bind_host, port)
            accepted, address = run(loop, server.accept)
            accepted.close()
            assert address == conn.getsockname()
        finally:
            conn.close()
    finally:
        server.close()


def test_loop_connect_binds_the_local_address_and_port(loop: Loop, listener: AsyncSocket) -> None:
    host, port = listener.getsockname()
    local_port = closed_port()
    conn = run(loop, loop.connect, host, port, "127.0.0.1", local_port)
    try:
        assert conn.getsockname() == ("127.0.0.1", local_port)
        accepted, address = run(loop, listener.accept)
        accepted.close()
        assert address == ("127.0.0.1", local_port)
    finally:
        conn.close()


def test_loop_connect_binds_the_local_address_alone(loop: Loop, listener: AsyncSocket) -> None:
    host, port = listener.getsockname()
    conn = run(loop, loop.connect, host, port, "127.0.0.1")
    try:
        local_host, local_port = conn.getsockname()
        assert local_host == "127.0.0.1"
        assert local_port > 0
    finally:
        conn.close()


@pytest.mark.parametrize("default", [None, 2.5])
def test_loop_connect_returns_a_socket_with_the_default_timeout(
    loop: Loop, listener: AsyncSocket, default: float | None
) -> None:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(default)
    try:
        conn = run(loop, loop.connect, *listener.getsockname())
    finally:
        socket.setdefaulttimeout(previous)
    try:
        assert conn.gettimeout() == default
        assert conn.socket.gettimeout() == 0.0
    finally:
        conn.close()


@pytest.mark.parametrize("default", [None, 2.5])
def test_accepted_socket_gets_the_default_timeout(
    loop: Loop, listener: AsyncSocket, default: float | None
) -> None:
    listener.settimeout(7.0)
    with socket.create_connection(listener.getsockname()):
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(default)
        try:
            conn, _ = run(loop, listener.accept)
        finally:
            socket.setdefaulttimeout(previous)
        with conn:
            assert conn.gettimeout() == default
            assert conn.socket.gettimeout() == 0.0


def test_module_connect_opens_a_connection_from_a_loop_thread(api: types.ModuleType) -> None:
    server = api.wrap(socket.socket())
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def client() -> bytes:
            with api.connect("127.0.0.1", port) as conn:
                conn.sendall(b"ping")
                data: bytes = conn.recv(100)
                return data

        def echo() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(conn.recv(100).upper())

        asking = api.newthread(client)
        api.newthread(echo)
        assert asking.state == "waiting"
        assert asking.join(5) == b"PING"
    finally:
        server.close()


def test_module_wrap_gives_a_socket_that_suspends_a_module_thread(api: types.ModuleType) -> None:
    raw_a, raw_b = socket.socketpair()
    a = api.wrap(raw_a)
    try:
        assert isinstance(a, AsyncSocket)
        reader = api.newthread(a.recv, 100)
        assert reader.state == "waiting"
        assert reader.loop is api.get_loop()
        raw_b.sendall(b"module")
        api.start()
        assert reader.join() == b"module"
    finally:
        a.close()
        raw_b.close()


# --------------------------------------------------- 11. reading, end of stream


def test_data_sent_before_the_peer_closes_is_read_before_end_of_stream(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    b.sendall(b"last words")
    b.close()

    def read_twice() -> list[bytes]:
        return [a.recv(100), a.recv(100)]

    assert run(loop, read_twice) == [b"last words", b""]


def test_data_and_end_of_stream_arriving_while_nobody_reads_are_both_seen(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    # The socket is known to the poller (a reader waited on it before), and
    # its readiness is reported while no thread waits on it.
    a, b = pair
    b.sendall(b"first")
    assert run(loop, a.recv, 100) == b"first"
    b.sendall(b"last words")
    b.close()
    wait_for_poll_event(a, select.POLLRDHUP)  # data and end of stream have both arrived
    loop.step(0)  # their readiness is reported while nobody waits
    reader = loop.newthread(read_to_eof, a)
    try:
        assert reader.join(1) == b"last words"
    finally:
        kill_if_alive(reader)


@pytest.mark.parametrize("method", ["recv", "recv_into", "makefile"])
def test_reader_woken_by_data_and_end_of_stream_together_reads_both(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket], method: str
) -> None:
    # The common client pattern: the peer answers and closes at once, and
    # the reader loops until end of stream.
    a, b = pair

    def read_all() -> bytes:
        if method == "makefile":
            with a.makefile("rb") as file:
                everything: bytes = file.read()
                return everything
        data = bytearray()
        buffer = bytearray(65536)
        while True:
            if method == "recv":
                chunk = a.recv(65536)
            else:
                chunk = bytes(buffer[: a.recv_into(buffer)])
            if not chunk:
                return bytes(data)
            data += chunk

    reader = loop.newthread(read_all)
    try:
        assert reader.state == "waiting"
        b.sendall(b"response")
        b.close()
        wait_for_poll_event(a, select.POLLRDHUP)  # data and end of stream have both arrived
        assert reader.join(1) == b"response"
    finally:
        kill_if_alive(reader)


def test_shutdown_wr_gives_the_peer_end_of_stream_while_the_other_direction_works(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    a.sendall(b"request")
    a.shutdown(socket.SHUT_WR)

    def peer() -> bytes:
        request = read_to_eof(b)
        b.sendall(b"response to " + request)
        return request

    assert run(loop, peer) == b"request"
    assert run(loop, read_exactly, a, 19) == b"response to request"


def test_shutdown_rd_wakes_a_blocked_reader_with_end_of_stream(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, _ = pair
    reader = loop.newthread(a.recv, 100)
    assert reader.state == "waiting"
    a.shutdown(socket.SHUT_RD)
    assert reader.join(5) == b""


@pytest.mark.parametrize("empty", [b"", bytearray(), memoryview(b"")], ids=repr)
def test_send_of_an_empty_buffer_returns_zero_without_suspending(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket], empty: Any
) -> None:
    a, _ = pair
    thread = loop.newthread(a.send, empty)
    assert thread.state == "dead"
    assert thread.join() == 0


@pytest.mark.parametrize("empty", [b"", bytearray(), memoryview(b"")], ids=repr)
def test_sendall_of_an_empty_buffer_returns_at_once_even_with_a_full_send_buffer(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket], empty: Any
) -> None:
    a, _ = pair
    fill_send_buffer(a)
    thread = loop.newthread(a.sendall, empty)
    assert thread.state == "dead"
    assert thread.join() is None


def test_recv_zero_returns_empty_bytes_without_suspending(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, _ = pair
    thread = loop.newthread(a.recv, 0)
    assert thread.state == "dead"
    assert thread.join() == b""


def test_recv_into_an_empty_buffer_returns_zero_without_suspending(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, _ = pair
    thread = loop.newthread(a.recv_into, bytearray())
    assert thread.state == "dead"
    assert thread.join() == 0


@pytest.mark.parametrize(
    "make",
    [bytes, bytearray, memoryview, lambda data: memoryview(bytearray(b"--" + data))[2:]],
    ids=["bytes", "bytearray", "memoryview", "memoryview-slice"],
)
def test_sendall_of_a_large_buffer_of_any_kind_delivers_every_byte(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket], make: Callable[[bytes], Any]
) -> None:
    a, b = pair
    payload = os.urandom(1 << 20)
    reader = loop.newthread(read_exactly, b, len(payload))
    writer = loop.newthread(a.sendall, make(payload))
    assert writer.join(5) is None
    assert reader.join(5) == payload


def test_sendall_of_a_memoryview_of_wide_items_sends_every_byte(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    items = array.array("i", range(300_000))
    expected = items.tobytes()
    reader = loop.newthread(read_exactly, b, len(expected))
    writer = loop.newthread(a.sendall, memoryview(items))
    assert writer.join(5) is None
    assert reader.join(5) == expected


def test_recv_into_a_memoryview_slice_fills_only_the_slice(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    buffer = bytearray(b"." * 10)
    b.sendall(b"abcdefgh")
    count = run(loop, a.recv_into, memoryview(buffer)[2:6])
    assert count == 4
    assert buffer == b"..abcd...."
    assert run(loop, read_exactly, a, 4) == b"efgh"


def test_recv_into_honours_nbytes(loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]) -> None:
    a, b = pair
    buffer = bytearray(10)
    b.sendall(b"abcdefgh")
    assert run(loop, a.recv_into, buffer, 3) == 3
    assert buffer[:3] == b"abc"
    assert run(loop, read_exactly, a, 5) == b"defgh"


# ------------------------------------------- what the stdlib's own tests need


def test_sendfile_of_a_file_os_sendfile_cannot_take_falls_back_to_send(
    loop: Loop, tmp_path: Path
) -> None:
    import io

    a, b = tcp_pair(loop)
    source = io.BytesIO(b"from memory" * 100)  # no fileno(): os.sendfile is impossible
    with a, b:
        reading = loop.newthread(lambda: b"".join(iter(functools.partial(b.recv, 65536), b"")))
        assert run(loop, a.sendfile, source) == 1100
        a.shutdown(socket.SHUT_WR)
        assert reading.join(10) == b"from memory" * 100
        assert source.tell() == 1100


def test_sendfile_use_sendfile_gives_up_on_a_file_without_fileno(loop: Loop) -> None:
    import io

    a, b = tcp_pair(loop)
    with a, b, pytest.raises(socket._GiveupOnSendfile):  # type: ignore[attr-defined]
        a._sendfile_use_sendfile(io.BytesIO(b"x"))


def test_sendfile_use_send_leaves_the_file_position_after_the_bytes_sent(
    loop: Loop, tmp_path: Path
) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"0123456789")
    a, b = tcp_pair(loop)
    with a, b, path.open("rb") as file:
        assert run(loop, a._sendfile_use_send, file, 2, 5) == 5
        assert file.tell() == 7
        assert run(loop, b.recv, 100) == b"23456"


def test_setblocking_on_an_invalid_fd_raises_os_error(loop: Loop) -> None:
    plain = socket.socket()
    sock = loop.wrap(socket.socket(fileno=os.dup(plain.fileno())))
    plain.close()
    os.close(sock.fileno())
    try:
        with pytest.raises(OSError):
            sock.setblocking(False)
    finally:
        sock.detach()


def test_private_accept_returns_an_fd_and_the_address(loop: Loop) -> None:
    listener = loop.wrap(socket.create_server(("127.0.0.1", 0)))
    with listener:
        host, port = listener.getsockname()
        client = loop.newthread(lambda: loop.connect(host, port))
        fd, address = run(loop, listener._accept)
        os.close(fd)
        client.join(10).close()
        assert address[0] == "127.0.0.1"


def test_sendto_with_a_wrong_argument_count_raises_the_socket_type_error(loop: Loop) -> None:
    sock = loop.wrap(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with sock:
        with pytest.raises(TypeError, match=r"\(1 given\)"):
            sock.sendto(b"x")
        with pytest.raises(TypeError, match=r"\(4 given\)"):
            sock.sendto(b"x", 0, ("127.0.0.1", 9), 4)


@pytest.mark.expect_errors
def test_recv_with_msg_dontwait_raises_instead_of_waiting(loop: Loop) -> None:
    a, b = tcp_pair(loop)
    with a, b, pytest.raises(BlockingIOError):
        run(loop, a.recv, 10, socket.MSG_DONTWAIT)


@pytest.mark.expect_errors
def test_sendmsg_with_msg_dontwait_raises_when_the_buffer_is_full(loop: Loop) -> None:
    a, b = tcp_pair(loop)

    def fill() -> None:
        while True:
            a.sendmsg([b"x" * 65536], [], socket.MSG_DONTWAIT)

    with a, b, pytest.raises(BlockingIOError):
        run(loop, fill)


def test_recvmsg_into_a_generator_of_buffers_fills_them_after_a_wait(loop: Loop) -> None:
    a, b = tcp_pair(loop)
    buffer = bytearray(10)

    def reader() -> int:
        count: int = a.recvmsg_into(buf for buf in [buffer])[0]
        return count

    with a, b:
        reading = loop.newthread(reader)  # waits: nothing sent yet
        run(loop, b.sendall, b"hello")
        assert reading.join(10) == 5
        assert buffer[:5] == b"hello"


def test_an_async_socket_cannot_be_pickled(loop: Loop) -> None:
    import pickle

    a, b = tcp_pair(loop)
    with a, b, pytest.raises(TypeError, match="cannot pickle"):
        pickle.dumps(a)


def test_an_async_socket_passes_isinstance_checks_for_the_class_it_wraps(loop: Loop) -> None:
    class MySocket(socket.socket):
        pass

    sock = loop.wrap(MySocket())
    with sock:
        assert isinstance(sock, MySocket)
        assert isinstance(sock, AsyncSocket)
        assert type(sock) is AsyncSocket
