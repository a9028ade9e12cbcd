"""The public stream conformance checks (socketloop.testing) on every transport and loop."""

from __future__ import annotations

import socket
import ssl

import pytest
import trustme

from socketloop import AsyncSocket, Loop
from socketloop.testing import (
    check_half_closeable_stream,
    check_two_way_stream,
    socketpair,
    tcp_pair,
    tls_pair,
)


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    return server_context, client_context


def test_tcp_pairs_pass_the_half_closeable_stream_checks(loop: Loop) -> None:
    check_half_closeable_stream(loop, lambda: tcp_pair(loop), seed=1)


def test_tcp_ipv6_pairs_pass_the_half_closeable_stream_checks(loop: Loop) -> None:
    check_half_closeable_stream(loop, lambda: tcp_pair(loop, socket.AF_INET6), seed=2)


def test_unix_pairs_pass_the_half_closeable_stream_checks(loop: Loop) -> None:
    check_half_closeable_stream(loop, lambda: socketpair(loop), seed=3)


def test_tls_pairs_pass_the_two_way_stream_checks(
    loop: Loop, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    # TLS has no half-close (its shutdown is unwrap()), so the two-way checks.
    server_context, client_context = tls_contexts
    check_two_way_stream(loop, lambda: tls_pair(loop, server_context, client_context), seed=4)


class CorruptingSocket(AsyncSocket):
    """A broken transport: flips the last byte of every read."""

    __slots__ = ()

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        data = super().recv(bufsize, flags)
        return data[:-1] + bytes([data[-1] ^ 1]) if data else data


def test_the_checks_catch_a_transport_that_corrupts_data(loop: Loop) -> None:
    def corrupting_pair() -> tuple[AsyncSocket, AsyncSocket]:
        sender, receiver = socket.socketpair()
        return loop.wrap(sender), CorruptingSocket(receiver, loop)

    with pytest.raises(AssertionError, match="corrupted"):
        check_half_closeable_stream(loop, corrupting_pair)
