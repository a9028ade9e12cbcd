"""Test helpers for code built on socketloop: socket pairs, a quiescence wait,
and reusable stream conformance checks.

The conformance checks exercise a pair of connected async sockets the way
real programs do and raise ``AssertionError`` (with a description) when the
pair misbehaves: data is lost, reordered or corrupted; a close does not wake a
blocked peer; an operation after close does not fail; two readers are not
refused; a half-close is not honoured.  Run them on any transport (TCP, Unix,
TLS, your own wrappers)::

    from socketloop import Loop
    from socketloop.testing import check_two_way_stream, tcp_pair

    def test_my_transport():
        loop = Loop()
        check_two_way_stream(loop, lambda: tcp_pair(loop))
        loop.close()

Every check makes its pairs with ``make_pair()`` (each call must return a
fresh connected pair), closes them, and drives ``loop`` itself; call it from
outside the loop's threads.  Random data and chunk sizes come from a seeded
generator, so a failure reproduces.
"""

from __future__ import annotations

import errno
import hashlib
import random
import socket
import ssl
from collections.abc import Callable
from typing import Any

from . import _originals
from ._asocket import AsyncSocket
from ._errors import BusyResourceError
from ._loop import Loop

__all__ = [
    "check_half_closeable_stream",
    "check_one_way_stream",
    "check_two_way_stream",
    "socketpair",
    "tcp_pair",
    "tls_pair",
    "wait_all_threads_blocked",
]

Pair = tuple[AsyncSocket, AsyncSocket]

#: How long a check waits for any single step before declaring a hang.
STEP_TIMEOUT = 10.0


# ------------------------------------------------------------------ pairs


def tcp_pair(loop: Loop, family: int = socket.AF_INET) -> Pair:
    """Two connected TCP sockets on loopback (IPv4, or ``::1`` for AF_INET6)."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with _originals.socket_class(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        client = _originals.socket_class(family, socket.SOCK_STREAM)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    return loop.wrap(client), loop.wrap(server)


def socketpair(loop: Loop) -> Pair:
    """A connected pair of Unix stream sockets (``socket.socketpair``), wrapped."""
    a, b = _originals.socketpair()
    return loop.wrap(a), loop.wrap(b)


def tls_pair(
    loop: Loop,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
    server_hostname: str = "localhost",
) -> Pair:
    """A TCP pair with TLS started on both ends (client first, server second).

    The handshakes run in two loop threads; call from outside the loop.
    """
    client, server = tcp_pair(loop)
    client_side = loop.newthread(client.starttls, client_context, server_hostname)
    server_side = loop.newthread(server.starttls, server_context, None, True)
    return client_side.join(STEP_TIMEOUT), server_side.join(STEP_TIMEOUT)


# ----------------------------------------------------------- quiescence


def wait_all_threads_blocked(loop: Loop, *, rounds: int = 2) -> None:
    """From a loop thread: return once every other thread of ``loop`` is blocked.

    "Blocked" means waiting (on I/O, a timer, a primitive, a join) or
    suspended, with nothing scheduled to run.  It lets a test assert that a
    thread really is stuck somewhere without sleeping; ``rounds`` extra
    dispatch rounds make sure I/O already in the kernel has been seen.
    """
    me = loop.current()
    if me is None:
        raise RuntimeError("wait_all_threads_blocked() must be called from a loop thread")
    quiet = 0
    while quiet <= rounds:
        busy = loop._has_runnable_besides(me)
        quiet = 0 if busy else quiet + 1
        loop.sleep(0)


# ------------------------------------------------------------- helpers


def _run(loop: Loop, *calls: Callable[[], Any]) -> list[Any]:
    """Run each call in its own loop thread at the same time; return their results."""
    threads = [loop.newthread(call) for call in calls]
    return [thread.join(STEP_TIMEOUT) for thread in threads]


def _recv_exactly(sock: AsyncSocket, count: int, rng: random.Random | None = None) -> bytes:
    chunks = []
    while count:
        size = count if rng is None else min(count, rng.randint(1, 16384))
        data = sock.recv(size)
        if not data:
            raise AssertionError(f"stream ended with {count} bytes still expected")
        chunks.append(data)
        count -= len(data)
    return b"".join(chunks)


def _send_chunks(sock: AsyncSocket, data: bytes, rng: random.Random) -> None:
    view = memoryview(data)
    while view:
        size = rng.randint(1, 16384)
        sock.sendall(view[:size])
        view = view[size:]


def _expect_ebadf(what: str, call: Callable[[], Any]) -> None:
    try:
        call()
    except OSError as exc:
        if exc.errno != errno.EBADF and not isinstance(exc, ssl.SSLError):
            raise AssertionError(f"{what}: expected EBADF, got {exc!r}") from exc
        return
    raise AssertionError(f"{what}: no error on a closed socket")


# ----------------------------------------------------------- the checks


def check_one_way_stream(loop: Loop, make_pair: Callable[[], Pair], *, seed: int = 0) -> None:
    """Data sent on the first socket of a pair arrives intact on the second.

    Also: empty sends and buffer types, send-then-close gives the data then
    ``b""``, closing a socket wakes its blocked reader with ``EBADF``, closing
    twice is harmless and later operations fail at once with ``EBADF``, a
    second concurrent reader or ``sendall`` gets ``BusyResourceError``, and a
    sender whose peer has closed eventually fails and stays failed.
    """
    rng = random.Random(seed)

    # Bytes arrive in order, whatever the chunking on either side.
    sender, receiver = make_pair()
    try:
        payload = rng.randbytes(1 << 20)
        received = _run(
            loop,
            lambda: _send_chunks(sender, payload, random.Random(seed + 1)),
            lambda: _recv_exactly(receiver, len(payload), random.Random(seed + 2)),
        )[1]
        if hashlib.sha256(received).digest() != hashlib.sha256(payload).digest():
            raise AssertionError("one-way transfer corrupted the data")

        # Empty sends are no-ops; bytes, bytearray and memoryview all work.
        def send_various() -> None:
            sender.send(b"")
            sender.sendall(b"")
            sender.sendall(bytearray(b"ab"))
            sender.sendall(memoryview(b"cd"))

        _run(loop, send_various)
        got = _run(loop, lambda: _recv_exactly(receiver, 4))[0]
        if got != b"abcd":
            raise AssertionError(f"buffer types: expected b'abcd', got {got!r}")
    finally:
        sender.close()
        receiver.close()

    # Send, then close: the peer gets the data, then end of stream.
    sender, receiver = make_pair()
    try:

        def send_and_close() -> None:
            sender.sendall(b"last words")
            sender.close()

        _run(loop, send_and_close)
        data, eof = _run(loop, lambda: (_recv_exactly(receiver, 10), receiver.recv(100)))[0]
        if data != b"last words" or eof != b"":
            raise AssertionError(f"send-then-close: got {data!r} then {eof!r}")
    finally:
        sender.close()
        receiver.close()

    # Closing a socket wakes the thread blocked reading it, with EBADF.
    sender, receiver = make_pair()
    try:
        outcome: list[BaseException | bytes] = []

        def blocked_reader() -> None:
            try:
                outcome.append(receiver.recv(100))
            except OSError as exc:
                outcome.append(exc)

        reader = loop.newthread(blocked_reader)

        def closer() -> None:
            wait_all_threads_blocked(loop)
            receiver.close()

        _run(loop, closer)
        reader.join(STEP_TIMEOUT)
        if not (outcome and isinstance(outcome[0], OSError) and outcome[0].errno == errno.EBADF):
            raise AssertionError(f"close did not wake the blocked reader with EBADF: {outcome!r}")

        # Closing again is harmless; every later operation fails at once.
        receiver.close()
        _expect_ebadf("recv after close", lambda: receiver.recv(1))
        _expect_ebadf("sendall(b'') after close", lambda: receiver.sendall(b""))
    finally:
        sender.close()
        receiver.close()

    # A second reader (or sendall) is refused while the first waits.
    sender, receiver = make_pair()
    try:
        first = loop.newthread(receiver.recv, 10)

        def second_reader() -> str:
            try:
                receiver.recv(10)
            except BusyResourceError:
                return "refused"
            return "accepted"

        if _run(loop, second_reader)[0] != "refused":
            raise AssertionError("a second concurrent reader was not refused")
        _run(loop, lambda: sender.sendall(b"x"))
        if first.join(STEP_TIMEOUT) != b"x":
            raise AssertionError("the first reader was disturbed by the refused second one")
    finally:
        sender.close()
        receiver.close()

    # A sender whose peer has gone away eventually fails, and stays failed.
    sender, receiver = make_pair()
    try:
        receiver.close()

        def send_until_error() -> BaseException:
            for _ in range(10_000):
                try:
                    sender.sendall(b"x" * 65536)
                except OSError as exc:
                    return exc
            raise AssertionError("sending to a closed peer never failed")

        first_error = _run(loop, send_until_error)[0]
        again = _run(loop, send_until_error)[0]
        if not isinstance(first_error, OSError) or not isinstance(again, OSError):
            raise AssertionError("the broken stream did not stay broken")
    finally:
        sender.close()


def check_two_way_stream(loop: Loop, make_pair: Callable[[], Pair], *, seed: int = 0) -> None:
    """``check_one_way_stream`` in both directions, plus traffic both ways at once.

    Random payloads and random chunk sizes (seeded) flow in both directions
    simultaneously through one pair; both ends must receive exactly what the
    other sent.
    """
    check_one_way_stream(loop, make_pair, seed=seed)

    def reversed_pair() -> Pair:
        first, second = make_pair()
        return second, first

    check_one_way_stream(loop, reversed_pair, seed=seed + 100)
    a, b = make_pair()
    try:
        rng = random.Random(seed + 200)
        to_b = rng.randbytes(1 << 20)
        to_a = rng.randbytes((1 << 20) + 12345)
        results = _run(
            loop,
            lambda: _send_chunks(a, to_b, random.Random(seed + 201)),
            lambda: _send_chunks(b, to_a, random.Random(seed + 202)),
            lambda: _recv_exactly(b, len(to_b), random.Random(seed + 203)),
            lambda: _recv_exactly(a, len(to_a), random.Random(seed + 204)),
        )
        if results[2] != to_b or results[3] != to_a:
            raise AssertionError("simultaneous two-way transfer corrupted the data")
    finally:
        a.close()
        b.close()


def check_half_closeable_stream(
    loop: Loop, make_pair: Callable[[], Pair], *, seed: int = 0
) -> None:
    """``check_two_way_stream`` plus half-close with ``shutdown``.

    After ``shutdown(SHUT_WR)`` on one end, the peer reads ``b""`` while data
    still flows the other way, and sending on the shut-down end fails.
    ``shutdown(SHUT_RD)`` wakes a thread blocked reading that end.
    """
    check_two_way_stream(loop, make_pair, seed=seed)
    a, b = make_pair()
    try:

        def send_then_shut() -> None:
            a.sendall(b"before")
            a.shutdown(socket.SHUT_WR)

        _run(loop, send_then_shut)
        got = _run(loop, lambda: (_recv_exactly(b, 6), b.recv(10)))[0]
        if got != (b"before", b""):
            raise AssertionError(f"half-close: the peer read {got!r}")
        _run(loop, lambda: b.sendall(b"reply"))
        if _run(loop, lambda: _recv_exactly(a, 5))[0] != b"reply":
            raise AssertionError("half-close: the other direction stopped working")

        def send_after_shutdown() -> str:
            try:
                a.sendall(b"more")
            except OSError:
                return "failed"
            return "sent"

        if _run(loop, send_after_shutdown)[0] != "failed":
            raise AssertionError("sending after shutdown(SHUT_WR) did not fail")

        reader = loop.newthread(b.recv, 10)  # b's peer (a) sent EOF already: returns b""
        if reader.join(STEP_TIMEOUT) != b"":
            raise AssertionError("a reader after the peer's half-close did not get b''")
        blocked = loop.newthread(a.recv, 10)

        def shut_reading() -> None:
            wait_all_threads_blocked(loop)
            a.shutdown(socket.SHUT_RD)

        _run(loop, shut_reading)
        if blocked.join(STEP_TIMEOUT) != b"":
            raise AssertionError("shutdown(SHUT_RD) did not wake the blocked reader with b''")
    finally:
        a.close()
        b.close()
