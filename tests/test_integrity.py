"""Data integrity: every byte arrives, in order, under concurrency and full duplex.

Payloads are seeded random bytes (``random.Random(seed).randbytes``) and both ends compare
SHA-256 digests, so a lost, duplicated, reordered or corrupted byte anywhere fails the test.
Every test runs on the asymmetric loop, the symmetric loop and the ``poll`` backend.
"""

from __future__ import annotations

import hashlib
import random
import socket
import time
from collections.abc import Iterable
from typing import Any

import pytest

from socketloop import AsyncSocket, Loop, Server, Thread

KIB = 1024
MIB = 1024 * KIB

#: Shared deadline for the joins of one test: generous for a loaded 2-core machine (the
#: tests take about a second each), short enough that a lost wake-up fails rather than
#: running into the 60 s pytest timeout.
JOIN_DEADLINE = 30.0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def join_all(threads: Iterable[Thread[Any]], seconds: float = JOIN_DEADLINE) -> list[Any]:
    """Join every thread within one shared deadline; return their results in order."""
    deadline = time.monotonic() + seconds
    return [thread.join(max(0.0, deadline - time.monotonic())) for thread in threads]


def kill_leftovers(lp: Loop) -> None:
    """After a failure: end every thread still alive, so the failure is reported alone."""
    for thread in lp.threads():
        if thread.is_alive():
            thread.kill(timeout=5)


def recv_exactly_digest(sock: AsyncSocket, size: int, rng: random.Random | None = None) -> str:
    """Read exactly ``size`` bytes (random read sizes with ``rng``); return their SHA-256.

    Alternates ``recv`` and ``recv_into`` when ``rng`` is given.
    """
    hasher = hashlib.sha256()
    buffer = bytearray(256 * KIB)
    view = memoryview(buffer)
    remaining = size
    while remaining:
        want = min(remaining, random_chunk_size(rng) if rng else len(buffer))
        if rng is None or rng.random() < 0.5:
            count = sock.recv_into(view, want)
            chunk: bytes | memoryview = view[:count]
        else:
            chunk = sock.recv(want)
            count = len(chunk)
        if count == 0:
            raise AssertionError(f"end of stream with {remaining} bytes still expected")
        hasher.update(chunk)
        remaining -= count
    return hasher.hexdigest()


def random_chunk_size(rng: random.Random) -> int:
    """Mostly large chunks, sometimes tiny ones (down to a single byte)."""
    if rng.random() < 0.2:
        return rng.randint(1, 64)
    return rng.randint(1, 128 * KIB)


# ------------------------------------------------------ many connections, full duplex


class DigestEchoServer:
    """Echo every byte until the client's end of stream; remember a digest per client port."""

    def __init__(self, lp: Loop) -> None:
        self.received: dict[int, tuple[int, str]] = {}
        self.server: Server = lp.newserver("127.0.0.1", 0, self.handle)

    def handle(self, conn: AsyncSocket) -> None:
        peer_port = conn.getpeername()[1]
        hasher = hashlib.sha256()
        total = 0
        while chunk := conn.recv(64 * KIB):
            hasher.update(chunk)
            total += len(chunk)
            conn.sendall(chunk)
        self.received[peer_port] = (total, hasher.hexdigest())


def test_200_concurrent_full_duplex_connections_echo_256_kib_each_intact(loop: Loop) -> None:
    connections = 200
    size = 256 * KIB
    echo = DigestEchoServer(loop)
    sockets: list[AsyncSocket] = []
    expected: dict[int, str] = {}
    local_ports: dict[int, int] = {}
    readers: dict[int, Thread[tuple[int, str]]] = {}
    writers: list[Thread[None]] = []

    def read_to_end(conn: AsyncSocket) -> tuple[int, str]:
        hasher = hashlib.sha256()
        total = 0
        while chunk := conn.recv(64 * KIB):
            hasher.update(chunk)
            total += len(chunk)
        return total, hasher.hexdigest()

    def write_all(conn: AsyncSocket, seed: int) -> None:
        # Generated here, so that some writers start while others already transfer.
        data = random.Random(seed).randbytes(size)
        expected[seed] = sha256(data)
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)  # the echo server ends the connection in turn

    def open_connection(seed: int) -> None:
        conn = loop.connect("127.0.0.1", echo.server.port)
        sockets.append(conn)
        local_ports[seed] = conn.getsockname()[1]
        # Reading and writing run at the same time, on two threads of one socket.
        readers[seed] = loop.newthread(read_to_end, conn)
        writers.append(loop.newthread(write_all, conn, seed))

    try:
        join_all([loop.newthread(open_connection, seed) for seed in range(connections)])
        join_all(writers)
        results = dict(zip(readers, join_all(readers.values()), strict=True))
        # A reader sees end of stream once its handler has ended and closed the connection.
        assert echo.server.statistics()["active"] == 0
    finally:
        kill_leftovers(loop)
        for conn in sockets:
            conn.close()
        echo.server.close()
        loop.start(5)  # the accept thread ends

    assert len(results) == connections
    for seed in range(connections):
        assert results[seed] == (size, expected[seed]), f"connection {seed}: echo differs"
        server_side = echo.received[local_ports[seed]]
        assert server_side == (size, expected[seed]), f"connection {seed}: server side differs"
    stats = echo.server.statistics()
    assert stats["accepted"] == connections
    assert stats["handler_errors"] == 0


# ------------------------------------------------------------- one connection


def test_random_chunks_in_both_directions_at_once_arrive_intact(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    size = 4 * MIB
    data = {"a": random.Random(1).randbytes(size), "b": random.Random(2).randbytes(size)}

    def write_random_chunks(sock: AsyncSocket, payload: bytes, seed: int) -> None:
        rng = random.Random(seed)
        view = memoryview(payload)
        position = 0
        while position < len(payload):
            chunk = view[position : position + random_chunk_size(rng)]
            if rng.random() < 0.5:
                sock.sendall(chunk)
                position += len(chunk)
            else:
                position += sock.send(chunk)  # may be partial: the rest goes next round

    try:
        threads: list[Thread[Any]] = [
            loop.newthread(write_random_chunks, a, data["a"], 10),
            loop.newthread(write_random_chunks, b, data["b"], 20),
            loop.newthread(recv_exactly_digest, b, size, random.Random(30)),
            loop.newthread(recv_exactly_digest, a, size, random.Random(40)),
        ]
        _, _, a_to_b, b_to_a = join_all(threads)
    finally:
        kill_leftovers(loop)

    assert a_to_b == sha256(data["a"])
    assert b_to_a == sha256(data["b"])


def test_32_mib_sent_with_one_sendall_arrives_intact(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    size = 32 * MIB
    payload = random.Random(32).randbytes(size)

    try:
        writer = loop.newthread(a.sendall, payload)
        reader = loop.newthread(recv_exactly_digest, b, size)
        _, received = join_all([writer, reader])
    finally:
        kill_leftovers(loop)

    assert received == sha256(payload)


# ------------------------------------------------- the end of the stream


@pytest.mark.parametrize("method", ["recv", "recv_into", "makefile"])
def test_end_of_stream_arriving_with_the_last_data_ends_the_read_loop(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket], method: str
) -> None:
    a, b = pair
    payload = random.Random(7).randbytes(1000)

    def read_to_end() -> bytes:
        if method == "makefile":
            with b.makefile("rb") as stream:
                return bytes(stream.read())
        received = bytearray()
        buffer = bytearray(64 * KIB)
        while True:
            if method == "recv":
                chunk = b.recv(64 * KIB)
            else:
                chunk = bytes(buffer[: b.recv_into(buffer)])
            if not chunk:
                return bytes(received)
            received += chunk

    reader = loop.newthread(read_to_end)  # waits: nothing has been sent yet
    assert reader.state == "waiting"
    # Both the data and the end of stream are there before the loop polls again.
    a.sendall(payload)
    a.shutdown(socket.SHUT_WR)
    try:
        received = reader.join(5)
    finally:
        kill_leftovers(loop)

    assert received == payload
