"""The fault, bad-input and load scenarios of issue 6 that the rest of the suite leaves open.

Each test names its scenario (the numbers of the B.3 checklist in
``../shared/notes/reliability.md``) in its docstring; ``docs/reliability.md``
maps every scenario to the tests that check it, here or elsewhere.  Faults are
real wherever the kernel can produce them: resets with ``SO_LINGER`` 0,
half-closes, descriptors closed behind the loop's back, ``RLIMIT_NOFILE``
lowered in a child process.  Only accept errors that loopback cannot produce
(ECONNABORTED, EPROTO, ENOTSOCK, ...) come from a scripted listening socket.

Every test that takes ``loop`` runs on the asymmetric loop, the symmetric loop
and the poll backend.  Events are ordered with logs, joins and kernel
readiness; time appears only where the scenario is about time (deadlines,
back-off, starvation).  Deadlines are checked exactly on the early side (timers
never fire early) and generously on the late side, because this runs on shared
machines.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import itertools
import logging
import math
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import greenlet
import pytest

from _servers import Certs, make_certs
from conftest import (
    LOOP_KINDS,
    close_and_drain,
    fill_send_buffer,
    make_loop,
    run,
    step_until,
    tcp_pair,
    wait_until_polling,
)
from socketloop import (
    AsyncSocket,
    BusyResourceError,
    CoroLoop,
    Loop,
    SendallTimeoutError,
    Server,
    Thread,
    ThreadExit,
)
from socketloop._kernel import FAIRNESS_BUDGET, MAX_POLL_TIMEOUT
from socketloop._loop import _defaults as _loop_defaults
from socketloop._server import ACCEPT_BACKOFF_MIN, FATAL_ERRNOS, PER_CONNECTION_ERRNOS
from socketloop._timers import MAX_DELAY
from socketloop.testing import tls_pair

T = TypeVar("T")
Pair = tuple[AsyncSocket, AsyncSocket]

CHILD = str(Path(__file__).with_name("_faults_child.py"))

#: Small timeouts whose expiry is the behaviour under test.
SHORT = 0.05
#: Generous upper bound for anything that should happen "promptly" on a shared machine.
PROMPT = 5.0

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


def kill_if_alive(*threads: Thread[Any]) -> None:
    """End threads a failed test left behind (the fixtures reject leftovers)."""
    for thread in threads:
        if thread.is_alive():
            thread.kill()


def open_fds() -> set[int]:
    """The descriptors open in this process (not counting the one the listing used)."""
    listed = {int(name) for name in os.listdir("/proc/self/fd")}
    return {fd for fd in listed if os.path.exists(f"/proc/self/fd/{fd}")}


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


def wait_for_poll_event(sock: AsyncSocket | socket.socket | int, events: int) -> None:
    """Block (outside the loop) until the kernel reports one of ``events`` on ``sock``."""
    poller = select.poll()
    poller.register(sock if isinstance(sock, int) else sock.fileno(), events)
    assert poller.poll(5000), "the socket never reported the expected event"


def wait_readable(sock: AsyncSocket | socket.socket | int) -> None:
    wait_for_poll_event(sock, select.POLLIN)


def read_exactly(sock: AsyncSocket, size: int) -> bytes:
    """Read ``size`` bytes (fewer only at end of stream)."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def move_to_fd(sock: socket.socket, fd: int) -> socket.socket:
    """Move ``sock`` to the (free) descriptor number ``fd``; return the socket there."""
    if sock.fileno() != fd:
        os.dup2(sock.fileno(), fd, inheritable=False)
        sock.close()
    else:
        sock.detach()
    return socket.socket(fileno=fd)


def reset(sock: AsyncSocket | socket.socket) -> None:
    """Close ``sock`` so that the kernel sends a reset (``SO_LINGER`` on, 0 s)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def dial(server: Server) -> socket.socket:
    """A plain blocking client connected to ``server``."""
    return socket.create_connection(("127.0.0.1", server.port), timeout=PROMPT)


def read_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def socketloop_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "socketloop" and r.levelno >= level]


def accept_queue_length(port: int) -> int:
    """How many connections wait in the accept queue of the 127.0.0.1 listener on ``port``."""
    with open("/proc/net/tcp") as table:
        for line in table:
            fields = line.split()
            if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":  # 0A: LISTEN
                return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"no listener on 127.0.0.1:{port}")


def cpu_seconds() -> float:
    """CPU time of this whole process (every OS thread), user plus system."""
    times = os.times()
    return times.user + times.system


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


@pytest.fixture
def default_loop_restored() -> Iterator[None]:
    """Close the OS thread's default loop if the test created it.

    Waiting on a primitive outside loop threads (as ``Server.stop(grace)``
    does when called from the main program) creates the default loop; its two
    descriptors would otherwise count as leaked by this test.
    """
    before = getattr(_loop_defaults, "loop", None)
    yield
    after = getattr(_loop_defaults, "loop", None)
    if after is not None and after is not before:
        after.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("fault-certs"))


# ------------------------------------------------- 1. close under a waiter


def test_close_wakes_a_reader_blocked_in_recv_into_with_ebadf_at_the_next_step(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 1: a thread blocked in ``recv_into`` wakes with EBADF when the socket closes."""
    a, _ = pair
    reader = loop.newthread(capture, a.recv_into, bytearray(100))
    assert reader.state == "waiting"
    a.close()
    loop.step(0)  # no I/O needed: the next dispatch ends the wait
    assert not reader.is_alive()
    assert_ebadf(reader.join())


def test_close_wakes_a_writer_blocked_in_send_with_ebadf_at_the_next_step(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 1: a thread blocked in ``send`` on a full buffer wakes with EBADF on close."""
    a, _ = pair
    fill_send_buffer(a)
    writer = loop.newthread(capture, a.send, b"x" * 100_000)
    assert writer.state == "waiting"
    a.close()
    loop.step(0)
    assert not writer.is_alive()
    assert_ebadf(writer.join())


def test_close_wakes_the_reader_and_the_writer_of_one_socket_in_the_same_step(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 1: both directions' waiters are failed by one close, in one dispatch."""
    a, _ = pair
    fill_send_buffer(a)
    reader = loop.newthread(capture, a.recv, 100)
    writer = loop.newthread(capture, a.sendall, b"x" * 100_000)
    assert (reader.state, writer.state) == ("waiting", "waiting")
    a.close()
    loop.step(0)
    assert (reader.is_alive(), writer.is_alive()) == (False, False)
    assert_ebadf(reader.join())
    assert_ebadf(writer.join())
    stats = loop.statistics()
    assert (stats["waiting_readers"], stats["waiting_writers"]) == (0, 0)


def test_close_under_a_waiter_returns_to_the_closer_before_the_waiter_runs(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 1 (decision B.1): the closer never runs the waiter's code; it returns first."""
    a, _ = pair
    log: list[str] = []

    def reader() -> None:
        try:
            a.recv(100)
        except OSError as exc:
            log.append(f"reader woke with {errno.errorcode[exc.errno or 0]}")

    def closer() -> None:
        a.close()
        log.append("close returned")
        log.append(f"fd after close {a.fileno()}")

    reading = loop.newthread(reader)
    loop.newthread(closer)
    assert log == ["close returned", "fd after close -1"]
    reading.join(PROMPT)
    assert log == ["close returned", "fd after close -1", "reader woke with EBADF"]


def test_close_wakes_a_reader_blocked_on_a_unix_socket_with_ebadf(
    loop: Loop, unix_pair: Pair
) -> None:
    """Scenario 1: the close protocol is the same for Unix stream sockets."""
    a, _ = unix_pair
    reader = loop.newthread(capture, a.recv, 100)
    assert reader.state == "waiting"
    a.close()
    assert_ebadf(reader.join(PROMPT))


def test_close_of_a_tls_socket_wakes_its_blocked_reader_with_ebadf(
    loop: Loop, certs: Certs
) -> None:
    """Scenario 1: a reader blocked in a TLS ``recv`` gets EBADF, not an SSL or attribute error."""
    client, server = tls_pair(loop, certs.server_context(), certs.client_context())
    try:
        reader = loop.newthread(capture, client.recv, 100)
        assert reader.state == "waiting"
        client.close()
        assert_ebadf(reader.join(PROMPT))
    finally:
        client.close()
        server.close()


# ------------------------------------------- 2. a listener closed underfoot


@pytest.mark.expect_errors
def test_closing_a_servers_listening_socket_underfoot_closes_the_server_and_reports_it(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    """Scenario 2: the accept thread's EBADF goes through the fatal-error policy.

    Closing ``server.socket`` directly (not ``server.close()``) fails the accept
    waiter with EBADF; the server must end cleanly: marked closed, the error
    counted and reported once as an accept failure.
    """
    server = loop.newserver("127.0.0.1", 0, lambda conn: None)
    with caplog.at_level(logging.DEBUG, logger="socketloop"):
        server.socket.close()
        step_until(loop, lambda: not loop.threads())
    assert server.closed, "the server still claims to be serving"
    assert server.statistics()["accept_errors"] == 1
    errors = socketloop_records(caplog, logging.ERROR)
    assert len(errors) == 1
    assert "closing the server" in errors[0].getMessage()
    server.close()


def test_accept_after_the_listener_was_closed_under_a_waiter_raises_ebadf_at_once(
    loop: Loop, listener: AsyncSocket
) -> None:
    """Scenario 2: once the accept waiter has been failed, later accepts fail at once too."""
    accepter = loop.newthread(capture, listener.accept)
    listener.close()
    assert_ebadf(accepter.join(PROMPT))
    again = loop.newthread(capture, listener.accept)
    assert again.state == "dead"
    assert_ebadf(again.join())


# ------------------------------------------------ 3. close during connect


def test_close_during_a_connect_in_progress_fails_it_with_ebadf_and_unregisters_it(
    loop: Loop, hanging_address: tuple[str, int]
) -> None:
    """Scenario 3: ``connect`` raises, the socket ends closed and nothing stays registered."""
    client = loop.wrap(socket.socket())
    connecting = loop.newthread(capture, client.connect, hanging_address)
    try:
        assert connecting.state == "waiting"
        assert loop.statistics()["waiting_writers"] == 1
        client.close()
        assert_ebadf(connecting.join(PROMPT))
        assert client.fileno() == -1
        assert loop.statistics()["waiting_writers"] == 0
    finally:
        kill_if_alive(connecting)
        client.close()


def test_killing_a_thread_in_loop_connect_closes_the_socket_it_opened(
    loop: Loop, hanging_address: tuple[str, int]
) -> None:
    """Scenario 3: an abandoned ``loop.connect`` leaves no descriptor and no waiter behind."""
    before = open_fds()
    host, port = hanging_address
    connecting = loop.newthread(loop.connect, host, port)
    assert connecting.state == "waiting"
    assert len(open_fds() - before) >= 1  # the connecting socket
    connecting.kill()
    assert not connecting.is_alive()
    assert open_fds() - before == set()
    assert loop.statistics()["waiting_writers"] == 0


# ---------------------------------------- 5. an fd closed behind the loop's back


def test_recv_on_a_socket_whose_fd_was_closed_with_os_close_raises_ebadf_at_once(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 5: waiting on an invalid descriptor is an immediate EBADF, never a wait."""
    a, _ = pair
    os.close(a.fileno())
    try:
        reader = loop.newthread(capture, a.recv, 100)
        assert reader.state == "dead"
        assert_ebadf(reader.join())
    finally:
        a.socket.detach()  # the number is no longer ours: never close it again


def test_a_reader_whose_fd_is_closed_with_os_close_times_out_without_spinning(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 5: the loop neither spins nor hangs on a waiter whose fd vanished.

    epoll drops a closed descriptor by itself, so the waiter ends at its
    timeout; the poll backend sees POLLNVAL and the retried ``recv`` fails with
    EBADF at once.  Either way the process uses little CPU meanwhile.
    """
    a, b = pair
    a.settimeout(0.3)
    reader = loop.newthread(capture, a.recv, 100)
    assert reader.state == "waiting"
    os.close(a.fileno())
    try:
        b.sendall(b"nobody will read this")  # readiness for a descriptor that is gone
        cpu_before = cpu_seconds()
        outcome = reader.join(PROMPT)
        cpu = cpu_seconds() - cpu_before
    finally:
        a.socket.detach()
    assert isinstance(outcome, (TimeoutError, OSError))
    if not isinstance(outcome, TimeoutError):
        assert_ebadf(outcome)
    # A spin would burn the whole 0.3 s (and more); waiting costs almost nothing.
    assert cpu < 0.2, f"the loop used {cpu:.3f} s of CPU while the waiter waited"
    assert loop.statistics()["waiting_readers"] == 0


def test_a_reader_whose_fd_is_closed_with_os_close_can_be_killed_leaving_no_waiter(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 5: a waiter on a vanished descriptor is cancellable; the tables stay clean."""
    a, _ = pair
    reader = loop.newthread(capture, a.recv, 100)
    os.close(a.fileno())
    try:
        loop.step(0.01)
        if reader.is_alive():
            reader.kill()
        else:
            assert_ebadf(reader.join())
        assert not reader.is_alive()
        assert loop.statistics()["waiting_readers"] == 0
    finally:
        a.socket.detach()


@pytest.mark.parametrize("how", ["os.close", "socket.close"])
def test_a_reader_whose_fd_is_closed_behind_the_loops_back_while_a_dup_lives_gets_ebadf(
    loop: Loop, pair: Pair, how: str
) -> None:
    """Scenario 5: a ``dup`` keeps the file description (and its registration) alive.

    Readiness of the description still reaches the old fd number; the woken
    waiter retries ``recv`` on a closed descriptor and gets EBADF.
    """
    a, b = pair
    duplicate = os.dup(a.fileno())
    try:
        reader = loop.newthread(capture, a.recv, 100)
        assert reader.state == "waiting"
        if how == "os.close":
            os.close(a.fileno())
            a.socket.detach()
        else:
            a.socket.close()
        b.sendall(b"readiness for the dup")
        assert_ebadf(reader.join(PROMPT))
        assert loop.statistics()["waiting_readers"] == 0
    finally:
        os.close(duplicate)


def test_stale_readiness_of_a_dup_never_delivers_its_data_to_the_new_owner_of_the_fd_number(
    loop: Loop, pair: Pair
) -> None:
    """Scenarios 5 and 6: a registration kept alive by a ``dup`` only causes a harmless retry.

    The old socket is closed behind the loop's back while a ``dup`` lives; a
    new socket gets the same number.  Traffic on the old description may wake
    the new socket's reader (the same fd number), which must retry and keep
    waiting, and in the end read only its own data.
    """
    a, b = pair
    fd = a.fileno()
    b.sendall(b"registers the old socket")
    assert run(loop, read_exactly, a, 24) == b"registers the old socket"
    duplicate = os.dup(fd)
    a.socket.close()  # behind the loop's back; the dup keeps the description registered
    client, server = raw_tcp_pair()
    new = loop.wrap(move_to_fd(client, fd))
    try:
        assert new.fileno() == fd
        new_reader = loop.newthread(new.recv, 100)
        assert new_reader.state == "waiting"
        b.sendall(b"stale")  # readiness of the old description, reported as fd
        wait_readable(duplicate)
        for _ in range(3):
            loop.step(0.01)
        assert new_reader.state == "waiting", "the new reader returned on a stale event"
        server.sendall(b"fresh")
        assert new_reader.join(PROMPT) == b"fresh"
        assert os.read(duplicate, 100) == b"stale"  # the old data stayed where it belongs
    finally:
        new.close()
        server.close()
        os.close(duplicate)


# ------------------------------------------------------------- 6. fd reuse


def test_a_writer_blocked_on_a_closed_socket_never_writes_into_a_new_socket_on_its_fd(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 6: the sendall counterpart of asyncio's ``test_sock_sendall_reconnection``."""
    a, _ = pair
    fd = a.fileno()
    fill_send_buffer(a)
    old_writer = loop.newthread(capture, a.sendall, b"old" * 100_000)
    assert old_writer.state == "waiting"
    a.close()
    client, server = raw_tcp_pair()
    new = loop.wrap(move_to_fd(client, fd))
    try:
        assert new.fileno() == fd
        new_writer = loop.newthread(new.sendall, b"fresh")
        assert_ebadf(old_writer.join(PROMPT))
        assert new_writer.join(PROMPT) is None
        new.shutdown(socket.SHUT_WR)
        assert read_all(server) == b"fresh"
    finally:
        new.close()
        server.close()


def test_an_accepter_on_a_closed_listener_never_accepts_for_a_new_listener_on_its_fd(
    loop: Loop, listener: AsyncSocket
) -> None:
    """Scenario 6: a stale accept waiter is failed; the new listener's accepter gets the client."""
    fd = listener.fileno()
    old_accepter = loop.newthread(capture, listener.accept)
    listener.close()
    fresh = socket.socket()
    fresh.bind(("127.0.0.1", 0))
    fresh.listen(1)
    new = loop.wrap(move_to_fd(fresh, fd))
    try:
        assert new.fileno() == fd
        new_accepter = loop.newthread(new.accept)
        with socket.create_connection(new.getsockname()) as client:
            conn, address = new_accepter.join(PROMPT)
            conn.close()
            assert address == client.getsockname()
        assert_ebadf(old_accepter.join(PROMPT))
    finally:
        new.close()


# ------------------------------------------------- 7. two readers at once


def test_a_second_reader_using_another_read_method_gets_busy_resource_error(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 7: ``recv_into`` while another thread waits in ``recv`` is refused at once."""
    a, b = pair
    first = loop.newthread(capture, a.recv, 100)
    second = loop.newthread(capture, a.recv_into, bytearray(100))
    assert second.state == "dead"
    assert isinstance(second.join(), BusyResourceError)
    b.sendall(b"for the first")
    assert first.join(PROMPT) == b"for the first"


# -------------------------------------- 10. a new recv right after a cancelled one


def test_data_arriving_as_a_recv_times_out_is_read_exactly_once(loop: Loop, pair: Pair) -> None:
    """Scenario 10: the timeout and the readiness land in the same step; nothing is lost.

    The reader's deadline passes while its data is already in the kernel; the
    step that follows sees both.  Whether the first ``recv`` returns the data
    or times out, a second ``recv`` straight after gets what is left.
    """
    a, b = pair
    a.settimeout(SHORT)

    def two_reads() -> list[object]:
        outcomes: list[object] = [capture(a.recv, 100)]
        a.settimeout(0.5)
        outcomes.append(capture(a.recv, 100))
        return outcomes

    reader = loop.newthread(two_reads)
    assert reader.state == "waiting"
    b.sendall(b"racing")
    wait_readable(a)
    time.sleep(SHORT * 2)  # the point of the test: the deadline has passed too
    outcomes = reader.join(PROMPT)
    data = [o for o in outcomes if isinstance(o, bytes)]
    assert data == [b"racing"], outcomes
    assert all(isinstance(o, (bytes, TimeoutError)) for o in outcomes), outcomes


def test_a_reader_killed_in_the_step_its_data_arrives_leaves_the_data_to_the_next_reader(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 10: the killed waiter consumes neither the wake-up nor the data."""
    a, b = pair
    first = loop.newthread(a.recv, 100)
    b.sendall(b"arrived with the kill")
    wait_readable(a)
    first.kill(block=False)  # the kill and the readiness are dispatched in the same step
    loop.step(0)
    assert not first.is_alive()
    assert first.join() is None
    assert run(loop, a.recv, 100) == b"arrived with the kill"


def test_a_recv_started_right_after_a_non_blocking_kill_of_the_reader_gets_the_data(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 10: cancel the blocked reader, start a new ``recv`` at once: it gets the data.

    ``kill(block=False)`` returns before the victim has run its ``finally``
    blocks; its registration must not make the new reader look like a second
    concurrent reader (``BusyResourceError``) or steal its wake-up.
    """
    a, b = pair
    first = loop.newthread(a.recv, 100)
    assert first.state == "waiting"
    first.kill(block=False)
    second = loop.newthread(capture, a.recv, 100)
    try:
        b.sendall(b"for the new reader")
        assert second.join(PROMPT) == b"for the new reader"
    finally:
        kill_if_alive(first, second)
        loop.step(0)


# ------------------------------------------------- 11. no stale registrations


def test_readiness_after_a_timed_out_recv_does_not_wake_the_thread_later(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 11: a wait that ended by timeout leaves no interest that could fire later."""
    a, b = pair
    a.settimeout(SHORT)
    log: list[object] = []

    def body() -> None:
        log.append(capture(a.recv, 100))
        log.append(("resumed with", loop.suspend()))

    thread = loop.newthread(body)
    step_until(loop, lambda: thread.state == "suspended")
    assert isinstance(log[0], TimeoutError)
    b.sendall(b"late data")
    wait_readable(a)
    for _ in range(3):
        loop.step(0.01)
    assert thread.state == "suspended", "readiness woke a thread that no longer waits"
    loop.resume(thread, "resume")
    assert log[1] == ("resumed with", "resume")
    assert run(loop, a.recv, 100) == b"late data"


def test_a_connect_timeout_leaves_no_writer_registered(
    loop: Loop, hanging_address: tuple[str, int]
) -> None:
    """Scenario 11: a timed-out connect unregisters its socket (asyncio issue #205)."""
    with loop.wrap(socket.socket()) as client:
        client.settimeout(SHORT)
        outcome = run(loop, capture, client.connect, hanging_address)
        assert isinstance(outcome, TimeoutError)
        assert loop.statistics()["waiting_writers"] == 0
        assert loop.step(0) is False  # nothing is left that could ever wake up


def test_an_accept_timeout_leaves_no_reader_and_the_next_accept_gets_the_client(
    loop: Loop, listener: AsyncSocket
) -> None:
    """Scenarios 11 and 18: after an accept timeout nothing waits; the listener still works."""
    listener.settimeout(SHORT)
    assert isinstance(run(loop, capture, listener.accept), TimeoutError)
    assert loop.statistics()["waiting_readers"] == 0
    with socket.create_connection(listener.getsockname()) as client:
        listener.settimeout(PROMPT)
        conn, address = run(loop, listener.accept)
        conn.close()
        assert address == client.getsockname()


# ------------------------------------------------------------ 13. half-close


def test_send_after_our_own_shutdown_wr_raises_broken_pipe_error(loop: Loop, pair: Pair) -> None:
    """Scenario 13: writing after ``shutdown(SHUT_WR)`` fails at once (and raises no SIGPIPE)."""
    a, _ = pair
    a.shutdown(socket.SHUT_WR)
    outcome = run(loop, capture, a.sendall, b"too late")
    assert isinstance(outcome, BrokenPipeError)


def test_after_the_peer_half_closes_we_read_eof_and_can_still_send_to_it(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 13: end of stream in one direction leaves the other direction working."""
    a, b = pair
    b.shutdown(socket.SHUT_WR)

    def reader_then_writer() -> bytes:
        data = a.recv(100)
        a.sendall(b"reply after eof")
        return data

    assert run(loop, reader_then_writer) == b""
    assert run(loop, read_exactly, b, 15) == b"reply after eof"


# ------------------------------------------------------ 14. resets and EPIPE


def test_a_reset_wakes_a_writer_blocked_in_sendall_with_a_connection_error(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 14: RST while ``sendall`` waits on a full buffer ends it promptly with an error."""
    a, b = pair
    fill_send_buffer(a)
    writer = loop.newthread(capture, a.sendall, b"x" * 1_000_000)
    assert writer.state == "waiting"
    reset(b)
    outcome = writer.join(PROMPT)
    assert isinstance(outcome, (ConnectionResetError, BrokenPipeError)), outcome


def test_after_a_reset_later_sends_keep_failing_while_other_threads_keep_running(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 14: once broken, the socket stays broken; the loop itself is unaffected."""
    a, b = pair
    reset(b)
    wait_for_poll_event(a, select.POLLHUP | select.POLLERR)  # the reset has arrived
    survivor_a, survivor_b = tcp_pair(loop)
    try:
        first = run(loop, capture, a.recv, 100)
        assert isinstance(first, ConnectionResetError), first
        for _ in range(3):
            assert isinstance(run(loop, capture, a.sendall, b"again"), BrokenPipeError)
        echo = loop.newthread(survivor_b.recv, 100)
        survivor_a.sendall(b"still alive")
        assert echo.join(PROMPT) == b"still alive"
    finally:
        survivor_a.close()
        survivor_b.close()


# ----------------------------------------------- 15. refused, unresolvable


def test_loop_connect_to_a_closed_port_leaves_no_socket_open(loop: Loop) -> None:
    """Scenario 15: the refused attempt's socket is closed, not left to the garbage collector."""
    port = closed_port()
    before = open_fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        outcome = run(loop, capture, loop.connect, "127.0.0.1", port)
        gc.collect()
    assert isinstance(outcome, ConnectionRefusedError)
    assert outcome.errno == errno.ECONNREFUSED
    assert open_fds() - before == set()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_loop_connect_to_a_closed_ipv6_port_names_the_bracketed_address(loop: Loop) -> None:
    """Scenario 15: the error names the address it could not reach, IPv6 included."""
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    outcome = run(loop, capture, loop.connect, "::1", port)
    assert isinstance(outcome, ConnectionRefusedError)
    assert f"[::1]:{port}" in str(outcome)


# ---------------------------------------------------- 16. empty arguments


@pytest.mark.parametrize("empty", [b"", bytearray(), memoryview(b"")], ids=repr)
def test_empty_sends_on_a_tls_socket_neither_hang_nor_break_the_stream(
    loop: Loop, certs: Certs, empty: Any
) -> None:
    """Scenario 16: ``send``/``sendall`` of nothing and ``recv(0)`` on TLS are harmless."""
    client, server = tls_pair(loop, certs.server_context(), certs.client_context())
    try:

        def empties() -> list[object]:
            outcomes: list[object] = [client.send(empty)]
            client.sendall(empty)
            outcomes.append(client.recv(0))
            return outcomes

        thread = loop.newthread(empties)
        assert thread.state == "dead", "an empty operation suspended its thread"
        assert thread.join() == [0, b""]
        client.sendall(b"after the empties")
        assert run(loop, read_exactly, server, 17) == b"after the empties"
    finally:
        client.close()
        server.close()


# ------------------------------------------------------------ 17, 18. timeouts


def test_loop_connect_to_a_black_hole_times_out_at_the_deadline_and_closes_its_socket(
    loop: Loop, hanging_address: tuple[str, int]
) -> None:
    """Scenario 17: ``TimeoutError`` not before the deadline; the half-open socket is closed."""
    before = open_fds()
    started = time.monotonic()
    host, port = hanging_address
    outcome = run(loop, capture, functools.partial(loop.connect, host, port, timeout=SHORT))
    elapsed = time.monotonic() - started
    assert isinstance(outcome, TimeoutError)
    assert elapsed >= SHORT
    assert elapsed < PROMPT
    assert open_fds() - before == set()
    assert loop.statistics()["waiting_writers"] == 0


def test_socket_connect_timeout_keeps_cpythons_rule_and_leaves_closing_to_the_caller(
    loop: Loop, hanging_address: tuple[str, int]
) -> None:
    """Scenario 17 (decision): ``AsyncSocket.connect`` behaves as ``socket.connect`` does.

    The caller owns the socket, so a timeout leaves it open (its state is
    undefined; the caller closes it), with nothing registered in the loop.
    """
    with loop.wrap(socket.socket()) as client:
        client.settimeout(SHORT)
        outcome = run(loop, capture, client.connect, hanging_address)
        assert isinstance(outcome, TimeoutError)
        assert "timed out" in str(outcome)
        assert client.fileno() != -1
        assert loop.statistics()["waiting_writers"] == 0


def test_recv_timeout_says_timed_out_and_never_fires_before_the_deadline(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 18: a recv timeout is ``TimeoutError("timed out")``, never before the deadline."""
    a, _ = pair
    a.settimeout(SHORT)
    started = time.monotonic()
    outcome = run(loop, capture, a.recv, 100)
    elapsed = time.monotonic() - started
    assert isinstance(outcome, TimeoutError)
    assert str(outcome) == "timed out"
    assert elapsed >= SHORT


def test_accept_timeout_says_timed_out_and_never_fires_before_the_deadline(
    loop: Loop, listener: AsyncSocket
) -> None:
    """Scenario 18: the same for ``accept``."""
    listener.settimeout(SHORT)
    started = time.monotonic()
    outcome = run(loop, capture, listener.accept)
    elapsed = time.monotonic() - started
    assert isinstance(outcome, TimeoutError)
    assert str(outcome) == "timed out"
    assert elapsed >= SHORT


# ---------------------------------------------- 19. a huge sendall that stalls


def test_sendall_of_100_mb_to_a_peer_that_never_reads_times_out_in_budget_with_bytes_sent(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 19: ``SendallTimeoutError`` within the budget, progress reported, no copies.

    tracemalloc watches the call: sending slices of a memoryview must not copy
    the 100 MB payload (a copy per chunk would also make the cost quadratic).
    """
    a, b = pair
    payload = b"\x5a" * (100 * 1024 * 1024)
    budget = 0.2
    a.settimeout(budget)
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        started = time.monotonic()
        outcome = run(loop, capture, a.sendall, payload)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(outcome, SendallTimeoutError)
    assert isinstance(outcome, TimeoutError)
    assert 0 < outcome.bytes_sent < len(payload)
    assert str(outcome.bytes_sent) in str(outcome)
    assert elapsed >= budget
    assert elapsed < budget + 2.0, f"the timeout fired after {elapsed:.3f} s"
    assert peak - baseline < 4 * 1024 * 1024, f"sendall allocated {peak - baseline} bytes"
    b.settimeout(PROMPT)
    a.shutdown(socket.SHUT_WR)
    received = run(loop, read_exactly, b, outcome.bytes_sent + 1)
    assert len(received) == outcome.bytes_sent  # exactly what was reported, then EOF


# ------------------------------------------- 20. deadlines for whole operations


def trickle(sock: AsyncSocket, loop: Loop, count: int, period: float) -> None:
    """Send one byte every ``period`` seconds, ``count`` times, then a newline."""
    for _ in range(count):
        sock.sendall(b"x")
        loop.sleep(period)
    sock.sendall(b"\n")


def test_readline_with_a_socket_timeout_is_bounded_against_a_trickling_peer(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 20: ``settimeout`` bounds ``makefile().readline()`` as a whole.

    The peer sends one byte every 10 ms for a second; each single ``recv`` is
    quick, but the line takes far longer than the 0.1 s timeout.  The notes
    require ``TimeoutError`` at about 0.1 s, not the line after a second.
    """
    a, b = pair
    a.settimeout(0.1)
    sender = loop.newthread(trickle, b, loop, 100, 0.01)
    file = a.makefile("rb")
    try:
        started = time.monotonic()
        outcome = run(loop, capture, file.readline)
        elapsed = time.monotonic() - started
    finally:
        file.close()
        sender.kill()
    assert isinstance(outcome, TimeoutError), (
        f"readline returned {outcome!r} after {elapsed:.2f} s despite a 0.1 s timeout"
    )
    assert elapsed < 0.1 + 0.5


def test_a_timeout_scope_bounds_readline_against_a_trickling_peer(loop: Loop, pair: Pair) -> None:
    """Scenario 20: ``loop.timeout()`` is a deadline for the whole block, trickle or not."""
    a, b = pair
    sender = loop.newthread(trickle, b, loop, 100, 0.01)
    file = a.makefile("rb")

    def bounded_readline() -> bytes:
        with loop.timeout(0.1):
            return bytes(file.readline())
        raise AssertionError("the timeout scope swallowed its expiry")

    try:
        started = time.monotonic()
        outcome = run(loop, capture, bounded_readline)
        elapsed = time.monotonic() - started
    finally:
        file.close()
        sender.kill()
    assert isinstance(outcome, TimeoutError), outcome
    assert 0.1 <= elapsed < 0.1 + 0.5


# ------------------------------------------------------- 21. timer edge cases


@pytest.mark.parametrize("delay", [0, -1, -1e9, float("-inf")])
def test_call_later_with_a_zero_or_negative_delay_runs_at_the_next_step(
    loop: Loop, delay: float
) -> None:
    """Scenario 21: zero and negative delays mean "as soon as possible", not an error."""
    calls: list[str] = []
    loop.call_later(delay, calls.append, "ran")
    assert calls == []
    assert loop.step(0) is True
    assert calls == ["ran"]


def test_a_zero_delay_timer_rearmed_from_its_own_callback_runs_once_per_step(loop: Loop) -> None:
    """Scenario 21: a callback re-arming itself with delay 0 cannot keep a step from ending."""
    calls: list[int] = []

    def again() -> None:
        calls.append(len(calls))
        if len(calls) < 5:
            loop.call_later(0, again)

    loop.call_later(0, again)
    for expected in range(1, 6):
        loop.step(0)
        assert len(calls) == expected


@pytest.mark.parametrize("delay", [1e12, 1e300, float("inf")])
def test_a_huge_delay_is_clamped_to_max_delay(loop: Loop, delay: float) -> None:
    """Scenario 21: huge and infinite delays are clamped, so deadlines stay finite numbers."""
    before = time.monotonic()
    handle = loop.call_later(delay, lambda: None)
    try:
        assert handle.deadline <= time.monotonic() + MAX_DELAY
        assert handle.deadline >= before + MAX_DELAY
    finally:
        handle.cancel()


def test_a_poll_for_a_far_timer_is_capped_and_does_not_overflow_the_poller(loop: Loop) -> None:
    """Scenario 21: waiting for a timer a year away passes the kernel a sane timeout.

    Without the cap the poll timeout (about 3e10 ms) would overflow epoll's
    and poll's int milliseconds.  Another OS thread wakes the loop once it polls.
    """
    handle = loop.call_later(1e12, lambda: None)
    woken: list[str] = []

    def waker() -> None:
        wait_until_polling(loop, PROMPT)
        loop.call_soon_threadsafe(woken.append, "woken")

    helper = threading.Thread(target=waker)
    helper.start()
    try:
        assert loop.step(1e12) is True  # asks for more than the cap; returns when woken
    finally:
        helper.join(PROMPT)
        handle.cancel()
    assert woken == ["woken"]
    assert MAX_POLL_TIMEOUT * 1000 < 2**31 - 1


def test_timers_with_equal_deadlines_run_in_the_order_they_were_scheduled(loop: Loop) -> None:
    """Scenario 21: same deadline, FIFO order."""
    calls: list[int] = []
    when = time.monotonic() + 0.01
    for i in range(100):
        loop.call_at(when, calls.append, i)
    step_until(loop, lambda: len(calls) == 100)
    assert calls == list(range(100))


def test_100000_timers_armed_and_cancelled_one_by_one_leave_the_heap_and_memory_flat(
    loop: Loop,
) -> None:
    """Scenario 21: the pattern of a timeout armed and cancelled per operation.

    Cancelled entries are compacted away, so neither the heap nor traced memory
    grows with the number of timers ever cancelled.
    """
    keeper = loop.call_later(3600, lambda: None)  # one live timer, as a real program has
    for _ in range(1000):  # warm up caches and free lists before measuring
        loop.call_later(30, lambda: None).cancel()
    gc.collect()
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        for _ in range(100_000):
            loop.call_later(30, lambda: None).cancel()
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        keeper.cancel()
    assert len(loop._timers._heap) < 200
    assert current - baseline < 64 * 1024, f"memory grew by {current - baseline} bytes"
    assert loop.statistics()["timers"] == 0


def test_100000_live_timers_cancelled_at_once_are_compacted_away(loop: Loop) -> None:
    """Scenario 21: a heap that held 100,000 timers shrinks back when they are cancelled."""
    gc.collect()
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        handles = [loop.call_later(30 + i * 1e-6, lambda: None) for i in range(100_000)]
        assert len(loop._timers._heap) == 100_000
        for handle in handles:
            handle.cancel()
        del handles
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(loop._timers._heap) < 200
    assert current - baseline < 256 * 1024, f"memory grew by {current - baseline} bytes"
    assert loop.step(0) is False


# -------------------------------------------------- 22. a timer callback raises


@pytest.mark.expect_errors
def test_a_timer_callback_that_raises_is_logged_and_the_other_timers_stay_on_time(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    """Scenario 22: the error reaches the log with its callback and traceback; timing holds."""
    fired: list[float] = []

    def failing() -> None:
        raise ValueError("timer failed")

    loop.call_later(0.01, failing)
    due = time.monotonic() + 0.03
    loop.call_at(due, lambda: fired.append(time.monotonic()))
    with caplog.at_level(logging.ERROR, logger="socketloop"):
        loop.start()
    [record] = socketloop_records(caplog, logging.ERROR)
    assert "failing" in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[0] is ValueError
    assert len(fired) == 1
    # The loop kept time: the second timer ran at its deadline, give or take the
    # scheduling noise of a shared machine.
    assert due <= fired[0] < due + 0.5


# ------------------------------------------------------- 23. handler failures


def test_killing_a_handler_thread_closes_its_connection_and_the_server_keeps_accepting(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    """Scenario 23: a killed handler is not an error; its connection is closed, serving goes on."""
    handlers: list[Thread[Any]] = []

    def handler(conn: AsyncSocket) -> None:
        me = loop.current()
        assert me is not None
        handlers.append(me)
        conn.sendall(conn.recv(100))

    server = loop.newserver("127.0.0.1", 0, handler)
    with caplog.at_level(logging.DEBUG, logger="socketloop"):
        with dial(server) as victim:
            step_until(loop, lambda: len(handlers) == 1)
            handlers[0].kill()
            assert read_all(victim) == b""  # closed by the server
        with dial(server) as later:
            later.sendall(b"still serving")
            step_until(loop, lambda: server.statistics()["accepted"] == 2)
            step_until(loop, lambda: server.statistics()["active"] == 0)
            assert later.recv(100) == b"still serving"
    assert socketloop_records(caplog, logging.WARNING) == []
    assert server.statistics()["handler_errors"] == 0
    close_and_drain(loop, server)


@pytest.mark.expect_errors
def test_a_handler_error_is_logged_with_the_peer_address_the_handler_thread_is_named_after(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    """Scenario 23: the log record and the handler thread's name both carry the peer address."""
    names: list[str] = []

    def handler(conn: AsyncSocket) -> None:
        me = loop.current()
        assert me is not None
        names.append(me.name)
        raise ValueError("handler failed")

    server = loop.newserver("127.0.0.1", 0, handler)
    with caplog.at_level(logging.ERROR, logger="socketloop"), dial(server) as client:
        peer = "{}:{}".format(*client.getsockname())
        step_until(loop, lambda: server.statistics()["handler_errors"] == 1)
    [record] = socketloop_records(caplog, logging.ERROR)
    assert peer in record.getMessage()
    assert names == [f"connection from {peer}"]
    close_and_drain(loop, server)


# ----------------------------------------------------------- 24. accept errors


class ScriptedListener(socket.socket):
    """A real listening socket whose ``accept`` first raises the scripted errors.

    Loopback cannot be made to produce ECONNABORTED, EPROTO, ENOTSOCK & co. on
    demand, so the policy for them is tested with this stand-in; it raises
    each scripted errno once (only once armed), then accepts for real.
    """

    def __init__(self) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_STREAM)
        self.script: list[int] = []
        self.calls: list[float] = []

    def _accept(self) -> tuple[int, Any]:
        self.calls.append(time.monotonic())
        if self.script:
            code = self.script.pop(0)
            raise OSError(code, os.strerror(code))
        result: tuple[int, Any] = super()._accept()  # type: ignore[misc]
        return result


@pytest.fixture
def scripted() -> Iterator[ScriptedListener]:
    sock = ScriptedListener()
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock
    finally:
        sock.close()


def echo_once(conn: AsyncSocket) -> None:
    conn.sendall(conn.recv(100))


@pytest.mark.parametrize("code", sorted(PER_CONNECTION_ERRNOS), ids=errno.errorcode.get)
def test_a_per_connection_accept_error_is_skipped_and_accepting_continues(
    loop: Loop, scripted: ScriptedListener, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    """Scenario 24: ECONNABORTED, EPROTO, EPERM, ... cost one connection, never the server.

    The errors come from a scripted listening socket (see ``ScriptedListener``).
    """
    server = loop.serve(scripted, echo_once)
    scripted.script[:] = [code, code]
    with caplog.at_level(logging.DEBUG, logger="socketloop"), dial(server) as client:
        client.sendall(b"served anyway")
        step_until(loop, lambda: server.statistics()["accepted"] == 1)
        step_until(loop, lambda: server.statistics()["active"] == 0)
        assert client.recv(100) == b"served anyway"
    assert not server.closed
    assert server.statistics()["accept_errors"] == 2
    assert socketloop_records(caplog, logging.WARNING) == []
    close_and_drain(loop, server)


@pytest.mark.parametrize("code", sorted(FATAL_ERRNOS), ids=errno.errorcode.get)
@pytest.mark.expect_errors
def test_a_fatal_accept_error_closes_the_server_and_is_logged_once(
    loop: Loop, scripted: ScriptedListener, caplog: pytest.LogCaptureFixture, code: int
) -> None:
    """Scenario 24: EBADF, ENOTSOCK, EINVAL mean the listener is unusable: close and report.

    The errors come from a scripted listening socket (see ``ScriptedListener``).
    """
    server = loop.serve(scripted, echo_once)
    scripted.script[:] = [code]
    with caplog.at_level(logging.DEBUG, logger="socketloop"), dial(server):
        step_until(loop, lambda: not loop.threads())
    assert server.closed
    assert server.statistics()["accept_errors"] == 1
    assert server.statistics()["accepted"] == 0
    [record] = socketloop_records(caplog, logging.ERROR)
    assert os.strerror(code) in record.getMessage()
    assert "closing the server" in record.getMessage()
    with pytest.raises(ConnectionRefusedError):
        dial(server)


@pytest.mark.expect_errors
def test_an_unknown_accept_error_is_logged_with_its_traceback_and_closes_the_server(
    loop: Loop, scripted: ScriptedListener, caplog: pytest.LogCaptureFixture
) -> None:
    """Scenario 24: an errno no policy names is reported in full, never retried blindly.

    The error comes from a scripted listening socket (see ``ScriptedListener``).
    """
    server = loop.serve(scripted, echo_once)
    scripted.script[:] = [errno.EIO]
    with caplog.at_level(logging.DEBUG, logger="socketloop"), dial(server):
        step_until(loop, lambda: not loop.threads())
    assert server.closed
    [record] = socketloop_records(caplog, logging.ERROR)
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], OSError)
    assert record.exc_info[1].errno == errno.EIO


def test_resource_accept_errors_back_off_from_10_ms_doubling_and_log_once(
    loop: Loop, scripted: ScriptedListener, caplog: pytest.LogCaptureFixture
) -> None:
    """Scenario 25: the back-off schedule itself, 10, 20, 40, 80 ms, one warning per burst.

    The errors come from a scripted listening socket (see ``ScriptedListener``);
    the real EMFILE is in ``test_emfile_*`` below.
    """
    server = loop.serve(scripted, echo_once)
    scripted.calls.clear()
    scripted.script[:] = [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM]
    with caplog.at_level(logging.DEBUG, logger="socketloop"), dial(server) as client:
        client.sendall(b"served after the pause")
        step_until(loop, lambda: server.statistics()["accepted"] == 1)
        step_until(loop, lambda: server.statistics()["active"] == 0)
        assert client.recv(100) == b"served after the pause"
    gaps = [later - earlier for earlier, later in itertools.pairwise(scripted.calls)]
    expected = [ACCEPT_BACKOFF_MIN * 2**i for i in range(4)]
    assert len(gaps) >= 4
    assert all(gap >= pause for gap, pause in zip(gaps, expected, strict=False)), (gaps, expected)
    [warning] = socketloop_records(caplog, logging.WARNING)
    assert "pausing accepts" in warning.getMessage()
    assert server.statistics()["accept_errors"] == 4
    close_and_drain(loop, server)


# ------------------------------------------------ 25. EMFILE for real, in a child

#: Clients the parent connects to the child's server: several times what fits.
EMFILE_CLIENTS = 12


def run_emfile_child(kind: str) -> tuple[dict[str, str], list[bytes]]:
    """Run the EMFILE child; return its report (``key: value`` per line) and each
    client's greeting (read after the child has served everyone)."""
    proc = subprocess.Popen(
        [sys.executable, CHILD, "emfile", kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    clients: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        first = proc.stdout.readline().split()
        assert first[:1] == ["port"], f"unexpected first line {first!r}"
        port, free = int(first[1]), int(first[3])
        assert free < EMFILE_CLIENTS // 2, "the child left too many descriptors free"
        for _ in range(EMFILE_CLIENTS):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        proc.stdin.write(f"{EMFILE_CLIENTS}\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"child failed ({proc.returncode}): {err}"
        greetings = [read_all(client) for client in clients]
    finally:
        for client in clients:
            client.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = out.splitlines()
    report: dict[str, str] = {"last line": lines[-1] if lines else ""}
    for line in lines:
        key, _, value = line.rpartition(" ")
        report[key] = value
    return report, greetings


@pytest.fixture(scope="module", params=LOOP_KINDS)
def emfile_run(request: pytest.FixtureRequest) -> tuple[dict[str, str], list[bytes]]:
    """One run of the EMFILE child per loop kind, shared by the tests that read its report."""
    return run_emfile_child(request.param)


def test_emfile_in_the_accept_loop_is_logged_once_per_burst(
    emfile_run: tuple[dict[str, str], list[bytes]],
) -> None:
    """Scenario 25: a persistent fd shortage gives one warning, not a flood.

    A child lowers its ``RLIMIT_NOFILE`` so accept() fails with a real EMFILE.
    """
    report, _ = emfile_run
    assert report["warnings during the burst"] == "1"
    assert report["warning errnos"] == f"[{errno.EMFILE}]"
    assert report["warning mentions pausing"] == "True"
    assert report["warnings in total"] == "1"


def test_emfile_in_the_accept_loop_pauses_accepting_without_spinning(
    emfile_run: tuple[dict[str, str], list[bytes]],
) -> None:
    """Scenario 25: while accept() keeps failing, the process uses almost no CPU.

    The child measures its own CPU time (``getrusage``) over a one-second pause
    in which the listener stays readable and accept() keeps failing.  A retry
    spin would use the whole second; the back-off (10 ms doubling to 1 s) makes
    a handful of attempts.
    """
    report, _ = emfile_run
    assert float(report["pause seconds"]) >= 1.0
    assert float(report["pause cpu seconds"]) < 0.3
    attempts = int(report["pause accept errors"])
    assert 2 <= attempts <= 20, f"{attempts} failed accepts in one second"
    assert report["accepted during the pause"] == "0"


def test_accepting_resumes_after_emfile_once_descriptors_are_free(
    emfile_run: tuple[dict[str, str], list[bytes]],
) -> None:
    """Scenario 25: when handlers end and free their fds, every queued client is served."""
    report, greetings = emfile_run
    assert 0 < int(report["accepted before the pause"]) < EMFILE_CLIENTS
    assert report["accepted in total"] == str(EMFILE_CLIENTS)
    assert greetings == [b"hi"] * EMFILE_CLIENTS
    assert report["last line"] == "closed"


# ------------------------------------------------ 26. bursts and connection caps


def test_a_burst_is_accepted_at_most_max_accept_connections_per_turn(loop: Loop) -> None:
    """Scenario 26: between batches of ``max_accept`` accepts, other threads get to run.

    All 20 clients are in the kernel's accept queue before the server starts
    (checked in /proc/net/tcp), so without the limit one wake-up would accept
    them all; a ticker thread records the accepted count at each of its turns.
    """
    raw = socket.socket()
    raw.bind(("127.0.0.1", 0))
    raw.listen(64)
    port = raw.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port), timeout=PROMPT) for _ in range(20)]
    try:
        deadline = time.monotonic() + PROMPT
        while accept_queue_length(port) < 20:
            assert time.monotonic() < deadline, "the clients never reached the accept queue"
            time.sleep(0.001)  # the kernel completes loopback handshakes asynchronously here
        server = loop.serve(raw, lambda conn: None, max_accept=4)
        seen: list[int] = []

        def ticker() -> None:
            while server.statistics()["accepted"] < 20:
                seen.append(server.statistics()["accepted"])
                loop.sleep(0)

        run(loop, ticker)
        assert seen, "every connection was accepted before any other thread ran"
        assert seen[0] <= 4
        steps = [later - earlier for earlier, later in itertools.pairwise(seen)]
        assert all(step <= 4 for step in steps), seen
        assert len(set(seen)) >= 4, seen
        close_and_drain(loop, server)
    finally:
        for client in clients:
            client.close()
        raw.close()  # already closed by the server unless the test failed early


def test_a_full_server_leaves_further_clients_in_the_backlog_until_a_slot_frees(
    loop: Loop,
) -> None:
    """Scenario 26: with ``max_connections`` reached, no more accepts (the kernel queues them)."""
    finished: list[int] = []

    def handler(conn: AsyncSocket) -> None:
        conn.recv(1)
        finished.append(1)

    server = loop.newserver("127.0.0.1", 0, handler, max_connections=2)
    clients = [dial(server) for _ in range(5)]
    try:
        step_until(loop, lambda: server.statistics()["active"] == 2)
        deadline = time.monotonic() + PROMPT
        while accept_queue_length(server.port) < 3:
            assert time.monotonic() < deadline, "the other clients never reached the backlog"
            loop.step(0.001)
        for _ in range(5):
            loop.step(0.001)
        assert server.statistics()["accepted"] == 2
        assert accept_queue_length(server.port) == 3
        for client in clients:
            client.sendall(b".")
        step_until(loop, lambda: server.statistics()["accepted"] == 5)
        step_until(loop, lambda: server.statistics()["active"] == 0)
        assert len(finished) == 5
    finally:
        for client in clients:
            client.close()
    close_and_drain(loop, server)


# ------------------------------------------------------------ 27. slowloris


def test_handler_timeout_drops_a_trickling_client_at_its_absolute_deadline(
    loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    """Scenario 27: trickled bytes keep every read short but cannot extend the deadline."""

    def read_request_line(conn: AsyncSocket) -> None:
        with conn.makefile("rb") as file:
            file.readline()
        conn.sendall(b"served")

    server = loop.newserver("127.0.0.1", 0, read_request_line, handler_timeout=0.2)

    def slow_client() -> bytes:
        with loop.connect("127.0.0.1", server.port) as sock:
            try:
                for _ in range(200):  # one byte every 10 ms, for 2 s at most
                    sock.sendall(b"x")
                    loop.sleep(0.01)
            except OSError:
                pass  # the server closed us, as it should
            return b"".join(iter(lambda: sock.recv(100), b""))

    with caplog.at_level(logging.DEBUG, logger="socketloop"):
        started = time.monotonic()
        reply = run(loop, capture, slow_client)
        elapsed = time.monotonic() - started
    assert reply == b"" or isinstance(reply, ConnectionResetError), reply
    assert server.statistics()["idle_closed"] == 1
    assert 0.2 <= elapsed < 0.2 + 1.5
    assert socketloop_records(caplog, logging.ERROR) == []
    close_and_drain(loop, server)


def test_a_trickling_client_does_not_delay_another_client(loop: Loop) -> None:
    """Scenario 27: while one client trickles, another is served at once."""
    log: list[str] = []

    def handler(conn: AsyncSocket) -> None:
        with conn.makefile("rb") as file:
            line = file.readline()
        log.append(f"served {line.strip().decode()}")
        conn.sendall(b"ok")

    server = loop.newserver("127.0.0.1", 0, handler, handler_timeout=5)

    def trickler() -> None:
        with loop.connect("127.0.0.1", server.port) as sock:
            for _ in range(30):
                sock.sendall(b"t")
                loop.sleep(0.01)
            sock.sendall(b"\n")
            sock.recv(10)

    def quick() -> None:
        with loop.connect("127.0.0.1", server.port) as sock:
            sock.sendall(b"quick\n")
            sock.recv(10)
            log.append("quick done")

    slow = loop.newthread(trickler)
    run(loop, quick)
    assert log == ["served quick", "quick done"]
    slow.join(PROMPT)
    assert log[-1] == "served " + "t" * 30
    close_and_drain(loop, server)


# --------------------------------------------------------- 29. graceful stop


def test_stop_refuses_new_connections_at_once_while_handlers_may_still_finish(
    loop: Loop,
) -> None:
    """Scenario 29: from the first instant of ``stop(grace)``, connects are refused."""
    log: list[str] = []

    def handler(conn: AsyncSocket) -> None:
        conn.recv(1)
        log.append("handler finished")

    server = loop.newserver("127.0.0.1", 0, handler)

    def stopper() -> None:
        server.stop(grace=PROMPT)
        log.append("stop returned")

    def prober() -> None:
        outcome = capture(loop.connect, "127.0.0.1", server.port)
        log.append(f"connect during grace: {type(outcome).__name__}")
        client.sendall(b".")

    with dial(server) as client:
        step_until(loop, lambda: server.statistics()["active"] == 1)
        stopping = loop.newthread(stopper)
        assert stopping.state == "waiting"
        run(loop, prober)
        stopping.join(PROMPT)
    assert log == [
        "connect during grace: ConnectionRefusedError",
        "handler finished",
        "stop returned",
    ]
    close_and_drain(loop, server)


@pytest.mark.usefixtures("default_loop_restored")
def test_stop_returns_as_soon_as_the_handlers_have_finished_within_the_grace_period(
    loop: Loop,
) -> None:
    """Scenario 29: handlers that end in time end normally, and stop() does not wait longer."""
    finished: list[str] = []

    def handler(conn: AsyncSocket) -> None:
        conn.sendall(conn.recv(100))
        finished.append("normally")

    server = loop.newserver("127.0.0.1", 0, handler)
    with dial(server) as client:
        step_until(loop, lambda: server.statistics()["active"] == 1)

        def finish_later() -> None:
            loop.sleep(0.01)
            client.sendall(b"done")

        helper = loop.newthread(finish_later)
        started = time.monotonic()
        server.stop(grace=10)  # from outside a loop thread: it runs the loop
        elapsed = time.monotonic() - started
        helper.join(PROMPT)
        assert client.recv(100) == b"done"
    assert finished == ["normally"]
    assert elapsed < 5, f"stop() waited {elapsed:.2f} s for handlers that had ended"
    close_and_drain(loop, server)


@pytest.mark.usefixtures("default_loop_restored")
def test_stop_closes_connections_still_served_after_the_grace_period_with_ebadf(
    loop: Loop,
) -> None:
    """Scenario 29: after ``grace`` seconds, lingering handlers get EBADF and their client EOF."""
    outcomes: list[object] = []

    def handler(conn: AsyncSocket) -> None:
        try:
            conn.recv(100)
        except OSError as exc:
            outcomes.append(exc)
            raise

    server = loop.newserver("127.0.0.1", 0, handler)
    with dial(server) as client:
        step_until(loop, lambda: server.statistics()["active"] == 1)
        started = time.monotonic()
        server.stop(grace=0.1)
        elapsed = time.monotonic() - started
        step_until(loop, lambda: bool(outcomes))
        assert read_all(client) == b""
    assert len(outcomes) == 1
    assert_ebadf(outcomes[0])
    assert 0.1 <= elapsed < 0.1 + 2.0
    stats = server.statistics()
    assert (stats["stopped"], stats["handler_errors"], stats["active"]) == (1, 0, 0)
    close_and_drain(loop, server)


@pytest.mark.usefixtures("default_loop_restored")
def test_stop_twice_is_harmless(loop: Loop) -> None:
    """Scenario 29: ``stop()`` is idempotent."""
    server = loop.newserver("127.0.0.1", 0, lambda conn: None)
    server.stop(grace=0.1)
    server.stop(grace=0.1)
    server.stop()
    assert server.closed
    close_and_drain(loop, server)


# ------------------------------------------------ 31-34. threads misused


def test_resume_of_something_that_is_not_a_loop_thread_raises_type_error(loop: Loop) -> None:
    """Scenario 31: resuming the main greenlet (or any plain greenlet) is refused clearly."""
    with pytest.raises(TypeError, match="expects a Thread"):
        loop.resume(greenlet.getcurrent())  # type: ignore[arg-type]
    plain = greenlet.greenlet(lambda: None)
    with pytest.raises(TypeError, match="expects a Thread"):
        loop.resume(plain)  # type: ignore[arg-type]
    assert not plain.dead  # never switched into


def test_resume_of_a_thread_waiting_in_socket_io_neither_fakes_readiness_nor_disturbs_it(
    loop: Loop, pair: Pair
) -> None:
    """Scenario 31: the refused resume leaves the I/O wait intact; real data still ends it."""
    a, b = pair
    reader = loop.newthread(a.recv, 100)
    with pytest.raises(RuntimeError, match="waiting in an async call"):
        loop.resume(reader, b"fake")
    assert reader.state == "waiting"
    b.sendall(b"real")
    assert reader.join(PROMPT) == b"real"


@pytest.fixture
def coro_loop() -> Iterator[CoroLoop]:
    lp = CoroLoop()
    try:
        yield lp
    finally:
        lp.close()


def test_transfer_to_a_thread_waiting_in_socket_io_raises(coro_loop: CoroLoop) -> None:
    """Scenario 31: ``transfer`` can no more fake readiness than ``resume`` can."""
    a, b = tcp_pair(coro_loop)
    try:
        reader = coro_loop.newthread(a.recv, 100)
        with pytest.raises(RuntimeError, match="waiting in an async call"):
            coro_loop.transfer(reader, b"fake")
        b.sendall(b"real")
        assert reader.join(PROMPT) == b"real"
    finally:
        a.close()
        b.close()


@pytest.mark.expect_errors
def test_an_error_in_a_transferred_to_thread_keeps_its_original_traceback(
    coro_loop: CoroLoop, caplog: pytest.LogCaptureFixture
) -> None:
    """Scenario 32: the error is logged and re-raised by ``join`` with the raising frame."""
    threads: list[Thread[Any]] = []

    def deep_failure() -> None:
        raise ValueError("deep in a transferred thread")

    def failing() -> None:
        deep_failure()

    def transferrer() -> None:
        coro_loop.transfer(threads[1])

    threads.append(coro_loop.spawn(transferrer))
    threads.append(coro_loop.spawn(failing))
    with caplog.at_level(logging.ERROR, logger="socketloop"):
        coro_loop.resume(threads[0])
    with pytest.raises(ValueError, match="deep in a transferred thread") as excinfo:
        threads[1].join()
    assert any(entry.name == "deep_failure" for entry in excinfo.traceback)
    [record] = socketloop_records(caplog, logging.ERROR)
    assert record.exc_info is not None
    assert record.exc_info[1] is excinfo.value
    threads[0].kill()


@pytest.mark.expect_errors
def test_a_raw_greenlet_switch_out_of_a_loop_thread_is_reported_as_an_error(loop: Loop) -> None:
    """Scenario 33: a foreign yield into the loop must fail loudly, not strand the thread.

    A loop thread that switches to its parent greenlet by hand (as code written
    for another greenlet library would) bypasses the loop's bookkeeping.  The
    notes require an immediate, specific error: from ``start()``, or raised in
    the thread.  What must not happen is a silent return with the thread left
    "running" forever.
    """

    def foreign_yield() -> None:
        loop.sleep(0)
        parent = greenlet.getcurrent().parent
        assert parent is not None
        parent.switch("not from the loop")

    thread = loop.newthread(foreign_yield)
    try:
        started = time.monotonic()
        outcome = capture(loop.start, PROMPT)
        elapsed = time.monotonic() - started
        thread_error = thread._exc
        assert isinstance(outcome, RuntimeError) or isinstance(thread_error, RuntimeError), (
            f"start() returned {outcome!r} after {elapsed:.2f} s with the thread "
            f"left {thread.state}"
        )
    finally:
        if thread.state == "running":
            thread.throw(ThreadExit)  # free it by hand so the loop can close cleanly


def test_start_returns_at_once_when_only_suspended_threads_remain_and_they_stay_resumable(
    loop: Loop,
) -> None:
    """Scenario 34: nothing can run, so ``start()`` returns instead of sleeping forever.

    A suspended thread is not an error in the asymmetric model: the caller of
    ``start()`` may resume it afterwards.
    """
    log: list[str] = []

    def body() -> None:
        log.append(f"resumed with {loop.suspend()}")

    thread = loop.newthread(body)
    started = time.monotonic()
    loop.start()
    assert time.monotonic() - started < 1.0
    assert thread.state == "suspended"
    loop.resume(thread, "later")
    assert log == ["resumed with later"]


# ------------------------------------------------------------- 37. starvation

# Fairness is asserted by counting, not by the clock: a probe timer notes
# how many operations a hogging thread completed between the timer's deadline
# and the moment the timer actually ran.  A loop that starved timers would
# let the hog run on without bound; a fair one lets it finish at most its
# current burst (FAIRNESS_BUDGET non-blocking socket operations, or one turn
# of a sleep(0) loop), then runs the due timer at its next step.  Descheduling
# of the process by a busy machine stops the hog too, so it cannot inflate
# the count.  benchmarks/fairness.py gives the lateness in milliseconds.


class TimerProbe:
    """A timer re-armed ``rounds`` times; each firing records the hog's operations since it was due.

    The hog calls ``op()`` once per operation.  ``samples`` gets one count per
    firing; ``done`` is true after the last one (no timer is left behind).
    """

    def __init__(self, loop: Loop, rounds: int = 10, delay: float = 0.01) -> None:
        self._loop = loop
        self._rounds = rounds
        self._delay = delay
        self.samples: list[int] = []
        self.ops = 0
        self._after_due = 0
        self._deadline = math.inf
        self._arm()

    @property
    def done(self) -> bool:
        return len(self.samples) >= self._rounds

    def _arm(self) -> None:
        self._deadline = self._loop.call_later(self._delay, self._fire).deadline

    def _fire(self) -> None:
        self.samples.append(self._after_due)
        self._after_due = 0
        if self.done:
            self._deadline = math.inf
        else:
            self._arm()

    def op(self) -> None:
        self.ops += 1
        if time.monotonic() >= self._deadline:
            self._after_due += 1


def test_a_sleep_zero_loop_lets_a_due_timer_run_within_one_turn(loop: Loop) -> None:
    """Scenario 37: a thread yielding with ``sleep(0)`` forever cannot starve timers."""
    probe = TimerProbe(loop)

    def spinner() -> None:
        while not probe.done:
            probe.op()
            loop.sleep(0)

    hog = loop.newthread(spinner)
    step_until(loop, lambda: probe.done)
    hog.join(PROMPT)
    assert probe.ops > 10, "the hog never ran: the test proves nothing"
    # The operation that saw the deadline pass may be the last before the timer runs.
    assert max(probe.samples) <= 1, f"operations after a timer was due: {probe.samples}"


def test_a_reader_of_an_always_ready_socket_lets_a_due_timer_run_within_one_budget(
    loop: Loop, unix_pair: Pair
) -> None:
    """Scenario 37: a socket with data always waiting is read in bounded bursts.

    The peer is fed by an OS thread so the reader never has to wait; it reads
    one byte per call, so it makes a very large number of non-blocking calls.
    """
    a, b = unix_pair
    done = threading.Event()
    probe = TimerProbe(loop)

    def feeder() -> None:
        raw = b.socket
        raw.setblocking(True)
        with contextlib.suppress(OSError):
            while not done.is_set():
                raw.sendall(b"y" * 65536)

    def reader() -> None:
        while not probe.done:
            a.recv(1)
            probe.op()

    feeding = threading.Thread(target=feeder)
    feeding.start()
    try:
        wait_readable(a)
        hog = loop.newthread(reader)
        step_until(loop, lambda: probe.done)
        hog.join(PROMPT)
    finally:
        done.set()
        b.socket.shutdown(socket.SHUT_RDWR)
        feeding.join(PROMPT)
    assert probe.ops > 1000, "the hog never ran: the test proves nothing"
    assert max(probe.samples) <= FAIRNESS_BUDGET, f"reads after a timer was due: {probe.samples}"


def test_a_50_mb_transfer_between_two_threads_leaves_turns_to_a_ping_pong_and_a_timer(
    loop: Loop,
) -> None:
    """Scenario 37: a bulk transfer on loopback leaves room for other threads' I/O and timers.

    Counted in the receiver's reads: how many happen between a timer's
    deadline and its firing (at most one burst), and during one ping-pong
    round trip, which waits four times for its turn (at most a burst of the
    receiver per wait).
    """
    a, b = tcp_pair(loop)
    c, d = tcp_pair(loop)
    payload = os.urandom(1 << 20) * 50
    probe = TimerProbe(loop, rounds=5)

    def bulk_sender() -> None:
        a.sendall(payload)
        a.shutdown(socket.SHUT_WR)

    def bulk_receiver() -> int:
        total = 0
        while chunk := b.recv(1 << 16):
            total += len(chunk)
            probe.op()
        return total

    def ping_pong() -> list[int]:
        reads_per_round_trip: list[int] = []
        while not probe.done or len(reads_per_round_trip) < 5:
            before = probe.ops
            c.sendall(b"p")
            assert d.recv(1) == b"p"
            d.sendall(b"q")
            assert c.recv(1) == b"q"
            reads_per_round_trip.append(probe.ops - before)
        return reads_per_round_trip

    try:
        sender = loop.newthread(bulk_sender)
        receiver = loop.newthread(bulk_receiver)
        pinger = loop.newthread(ping_pong)
        step_until(loop, lambda: probe.done, timeout=60)
        reads = pinger.join(60)
        assert receiver.join(60) == len(payload)
        sender.join(PROMPT)
    finally:
        for sock in (a, b, c, d):
            sock.close()
    assert max(probe.samples) <= FAIRNESS_BUDGET, f"reads after a timer was due: {probe.samples}"
    assert sum(reads) > 0, "the transfer never overlapped the ping-pong: the test proves nothing"
    assert max(reads) <= 4 * FAIRNESS_BUDGET, f"reads during a round trip: {reads}"


# --------------------------------------------------------- 41. resource hygiene


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_an_unclosed_loop_warns_when_collected_and_leaks_no_descriptor(kind: str) -> None:
    """Scenario 41: a loop dropped without ``close()`` warns and gives its fds back.

    As with an unclosed socket or file, the garbage collector must not leave
    the loop's epoll and wake-up descriptors open, and a ``ResourceWarning``
    tells the programmer about the missing ``close()``.
    """
    before = open_fds()
    lp = make_loop(kind)
    lp.newthread(lambda: None)
    wakeup_fds = {lp._wakeup.fd, lp._wakeup.write_fd}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        del lp
        gc.collect()
    leaked = open_fds() - before
    for fd in wakeup_fds & leaked:  # the defect itself: free it, or the suite's leak check fails
        os.close(fd)
    assert not leaked, f"descriptors left open by the collected loop: {sorted(leaked)}"
    assert [w for w in caught if issubclass(w.category, ResourceWarning)], "no ResourceWarning"


def test_every_descriptor_of_a_loop_that_served_connections_is_released_by_close(
    loop: Loop,
) -> None:
    """Scenario 41: poller, wake-up, listener and connections: nothing outlives ``close()``."""
    before = open_fds() - _fds_of(loop)
    server = loop.newserver("127.0.0.1", 0, lambda conn: conn.sendall(conn.recv(100)))

    def client() -> bytes:
        with loop.connect("127.0.0.1", server.port) as sock:
            sock.sendall(b"x")
            data: bytes = sock.recv(100)
            return data

    assert run(loop, client) == b"x"
    server.close()
    loop.close()
    loop.close()  # twice is fine
    assert open_fds() - before == set()
    with pytest.raises(RuntimeError, match="closed"):
        loop.newthread(lambda: None)


def _fds_of(lp: Loop) -> set[int]:
    """The loop's own descriptors (poller and wake-up)."""
    fds = {lp._wakeup.fd, lp._wakeup.write_fd}
    poller_fd = lp._poller.fileno()
    if poller_fd >= 0:
        fds.add(poller_fd)
    return fds
