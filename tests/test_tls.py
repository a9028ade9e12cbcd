"""TLS: connect(tls=...), the AsyncTLSSocket API, STARTTLS, socketloop.ssl, TLS servers.

Certificates come from a test CA made with ``trustme``; all traffic stays on
loopback.  Most tests run on every loop kind (the ``loop`` fixture).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import select
import socket
import ssl
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest

import socketloop
import socketloop.ssl
from _servers import Certs, make_certs
from conftest import close_and_drain, run, tcp_pair
from socketloop import AsyncSocket, AsyncTLSSocket, Loop, Server

# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls-certs"))


# ------------------------------------------------------------------ helpers


def echo(conn: AsyncSocket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def tls_echo_server(lp: Loop, certs: Certs, **options: Any) -> Server:
    return lp.newserver("127.0.0.1", 0, echo, tls=certs.server_context(), **options)


def read_exactly(sock: AsyncSocket, size: int, chunk: int = 65536) -> bytes:
    data = b""
    while len(data) < size:
        piece = sock.recv(min(chunk, size - len(data)))
        if not piece:
            break
        data += piece
    return data


def wait_closed(sock: AsyncSocket) -> None:
    """Read until the peer closes (end of stream or reset); discard the data."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass


def quiet_records_problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """socketloop records at ERROR or above, or carrying a traceback."""
    return [
        f"{r.levelname}: {r.getMessage()}"
        for r in caplog.records
        if r.name == "socketloop" and (r.levelno >= logging.ERROR or r.exc_info)
    ]


def client_hello(certs: Certs) -> bytes:
    """The first flight of a real TLS client (a ClientHello), made in memory."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = certs.client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16"  # a TLS handshake record
    return hello


# ------------------------------------------------------- connect(tls=...)


def test_connect_with_a_tls_context_returns_an_async_tls_socket_that_echoes(
    loop: Loop, certs: Certs
) -> None:
    server = tls_echo_server(loop, certs)

    def client() -> tuple[bool, bytes]:
        with loop.connect("127.0.0.1", server.port, tls=certs.client_context()) as sock:
            sock.sendall(b"hello over tls")
            return isinstance(sock, AsyncTLSSocket), read_exactly(sock, 14)

    assert run(loop, client) == (True, b"hello over tls")
    close_and_drain(loop, server)


@pytest.mark.expect_errors
def test_connect_with_tls_true_refuses_a_certificate_outside_the_default_trust_store(
    loop: Loop, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    server = tls_echo_server(loop, certs)

    def client() -> None:
        loop.connect("localhost", server.port, tls=True)

    with pytest.raises(ssl.SSLCertVerificationError):
        run(loop, client)
    close_and_drain(loop, server)


def test_connect_with_tls_true_verifies_against_the_default_trust_store(
    loop: Loop, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenSSL's default trust store honours SSL_CERT_FILE: point it at the test CA.
    monkeypatch.setenv("SSL_CERT_FILE", certs.ca_file)
    server = tls_echo_server(loop, certs)

    def client() -> bytes:
        with loop.connect("localhost", server.port, tls=True) as sock:
            sock.sendall(b"trusted")
            return read_exactly(sock, 7)

    assert run(loop, client) == b"trusted"
    close_and_drain(loop, server)


def test_server_hostname_defaults_to_the_address_connected_to(loop: Loop, certs: Certs) -> None:
    server = tls_echo_server(loop, certs)

    def client() -> str | None:
        with loop.connect("localhost", server.port, tls=certs.client_context()) as sock:
            return sock.server_hostname

    assert run(loop, client) == "localhost"
    close_and_drain(loop, server)


@pytest.mark.expect_errors
def test_a_server_hostname_the_certificate_does_not_name_is_refused(
    loop: Loop, certs: Certs
) -> None:
    server = tls_echo_server(loop, certs)

    def client() -> None:
        loop.connect(
            "127.0.0.1", server.port, tls=certs.client_context(), server_hostname="example.org"
        )

    with pytest.raises(ssl.SSLCertVerificationError, match=r"example\.org"):
        run(loop, client)
    close_and_drain(loop, server)


@pytest.mark.expect_errors
def test_connect_unix_with_tls_but_no_server_hostname_raises_and_closes_the_socket(
    loop: Loop, certs: Certs
) -> None:
    path = f"/tmp/socketloop-tls-{os.getpid()}.sock"
    server = loop.newserver_unix(path, echo, tls=certs.server_context(), handshake_timeout=5.0)

    def client() -> None:
        loop.connect_unix(path, tls=certs.client_context())

    def proper_client() -> bytes:
        sock = loop.connect_unix(path, tls=certs.client_context(), server_hostname="localhost")
        with sock:
            sock.sendall(b"ok")
            return sock.recv(2)

    try:
        with pytest.raises(ValueError, match="server_hostname"):
            run(loop, client)
        # The call was refused before any connection was made (nothing leaks,
        # the server never saw it): the next, proper client is the first one.
        assert run(loop, proper_client) == b"ok"
        assert server.statistics()["accepted"] == 1
    finally:
        close_and_drain(loop, server)


def test_connect_unix_with_tls_and_a_server_hostname_echoes(loop: Loop, certs: Certs) -> None:
    path = f"/tmp/socketloop-tls-{os.getpid()}.sock"
    server = loop.newserver_unix(path, echo, tls=certs.server_context())

    def client() -> bytes:
        ctx = certs.client_context()
        with loop.connect_unix(path, tls=ctx, server_hostname="localhost") as sock:
            sock.sendall(b"unix tls")
            return read_exactly(sock, 8)

    try:
        assert run(loop, client) == b"unix tls"
    finally:
        close_and_drain(loop, server)


# ---------------------------------------------------- the AsyncTLSSocket API


def test_tls_socket_send_and_recv_carry_data_both_ways(loop: Loop, certs: Certs) -> None:
    server = tls_echo_server(loop, certs)

    def client() -> bytes:
        with loop.connect("127.0.0.1", server.port, tls=certs.client_context()) as sock:
            sent = sock.send(b"partial api")
            assert sent == 11
            return sock.recv(1024)

    assert run(loop, client) == b"partial api"
    close_and_drain(loop, server)


def test_tls_socket_sendall_sends_a_large_buffer_intact(loop: Loop, certs: Certs) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    server = tls_echo_server(loop, certs)
    received: list[bytes] = []

    def reader(sock: AsyncSocket) -> None:
        received.append(read_exactly(sock, len(payload)))

    def client() -> None:
        with loop.connect("127.0.0.1", server.port, tls=certs.client_context()) as sock:
            # TLS sockets may be read and written by two threads at once.
            thread = loop.newthread(reader, sock)
            sock.sendall(payload)
            thread.join(20)

    run(loop, client, timeout=30)
    assert hashlib.sha256(received[0]).digest() == hashlib.sha256(payload).digest()
    close_and_drain(loop, server)


def test_tls_socket_makefile_reads_and_writes_lines(loop: Loop, certs: Certs) -> None:
    server = tls_echo_server(loop, certs)

    def client() -> list[str]:
        with loop.connect("127.0.0.1", server.port, tls=certs.client_context()) as sock:
            writer = sock.makefile("w", encoding="ascii")
            reader = sock.makefile("r", encoding="ascii")
            with writer, reader:
                writer.write("first line\nsecond line\n")
                writer.flush()
                return [reader.readline(), reader.readline()]

    assert run(loop, client) == ["first line\n", "second line\n"]
    close_and_drain(loop, server)


def test_getpeercert_cipher_and_version_describe_the_session(loop: Loop, certs: Certs) -> None:
    server = tls_echo_server(loop, certs)

    def client() -> tuple[Any, ...]:
        with loop.connect("localhost", server.port, tls=certs.client_context()) as sock:
            return sock.getpeercert(), sock.getpeercert(True), sock.cipher(), sock.version()

    cert, der, cipher, version = run(loop, client)
    assert ("DNS", "localhost") in cert["subjectAltName"]
    assert isinstance(der, bytes)
    assert der == ssl.PEM_cert_to_DER_cert(certs.server.cert_chain_pems[0].bytes().decode())
    name, protocol, bits = cipher
    assert isinstance(name, str)
    assert protocol == version
    assert bits >= 128
    assert version in ("TLSv1.2", "TLSv1.3")
    close_and_drain(loop, server)


def test_selected_alpn_protocol_is_the_one_both_sides_offered(loop: Loop, certs: Certs) -> None:
    server_context = certs.server_context()
    server_context.set_alpn_protocols(["h2", "http/1.1"])
    on_server: list[str | None] = []

    def handler(conn: AsyncSocket) -> None:
        assert isinstance(conn, AsyncTLSSocket)
        on_server.append(conn.selected_alpn_protocol())
        echo(conn)

    server = loop.newserver("127.0.0.1", 0, handler, tls=server_context)
    client_context = certs.client_context()
    client_context.set_alpn_protocols(["http/1.1"])

    def client() -> str | None:
        with loop.connect("127.0.0.1", server.port, tls=client_context) as sock:
            sock.sendall(b"x")
            read_exactly(sock, 1)
            return sock.selected_alpn_protocol()

    assert run(loop, client) == "http/1.1"
    assert on_server == ["http/1.1"]
    close_and_drain(loop, server)


def test_pending_counts_decrypted_bytes_not_yet_read_and_recv_returns_them_at_once(
    loop: Loop, certs: Certs
) -> None:
    finished = socketloop.Event()

    def handler(conn: AsyncSocket) -> None:
        conn.sendall(b"x" * 100)  # one record
        finished.wait(10)  # keeps the connection open and silent

    server = loop.newserver("127.0.0.1", 0, handler, tls=certs.server_context())

    def client() -> tuple[int, int, bytes]:
        with loop.connect("127.0.0.1", server.port, tls=certs.client_context()) as sock:
            sock.settimeout(3)
            first = sock.recv(10)
            pending = sock.pending()
            # Nothing more arrives on the socket: this must come from the TLS buffer.
            rest = sock.recv(1000)
            finished.set()
            return len(first), pending, rest

    assert run(loop, client) == (10, 90, b"x" * 90)
    close_and_drain(loop, server)


def test_unwrap_returns_a_plain_socket_that_goes_on_in_clear_text(loop: Loop, certs: Certs) -> None:
    on_server: list[Any] = []

    def handler(conn: AsyncSocket) -> None:
        assert isinstance(conn, AsyncTLSSocket)
        on_server.append(conn.recv(100))
        conn.sendall(b"secret ack")
        on_server.append(conn.recv(100))  # b"": the client's close_notify
        plain = conn.unwrap()
        with plain:
            on_server.append(type(plain))
            on_server.append(plain.recv(100))
            plain.sendall(b"clear echo")

    server = loop.newserver("127.0.0.1", 0, handler, tls=certs.server_context())

    def client() -> tuple[bytes, Any, bytes]:
        sock = loop.connect("127.0.0.1", server.port, tls=certs.client_context())
        try:
            sock.sendall(b"secret")
            ack = read_exactly(sock, 10)
            plain = sock.unwrap()
        finally:
            sock.close()
        with plain:
            plain.sendall(b"clear")
            return ack, type(plain), read_exactly(plain, 10)

    assert run(loop, client) == (b"secret ack", AsyncSocket, b"clear echo")
    assert on_server == [b"secret", b"", AsyncSocket, b"clear"]
    close_and_drain(loop, server)


def test_unwrap_times_out_when_the_peer_never_answers_close_notify(
    loop: Loop, certs: Certs
) -> None:
    finished = socketloop.Event()

    def handler(conn: AsyncSocket) -> None:
        conn.recv(100)  # the close_notify: b""
        finished.wait(10)  # ... and never answer it

    server = loop.newserver("127.0.0.1", 0, handler, tls=certs.server_context())

    def client() -> float:
        with loop.connect("127.0.0.1", server.port, tls=certs.client_context()) as sock:
            sock.settimeout(0.5)
            started = time.monotonic()
            try:
                with pytest.raises(TimeoutError):
                    sock.unwrap()
            finally:
                finished.set()
            return time.monotonic() - started

    assert run(loop, client) < 3.0
    close_and_drain(loop, server)


# ------------------------------------------------------------------ STARTTLS


def test_starttls_after_a_plain_text_exchange_secures_both_sides(loop: Loop, certs: Certs) -> None:
    a, b = tcp_pair(loop)
    log: list[str] = []

    def server_side() -> None:
        assert b.recv(100) == b"STARTTLS\r\n"
        b.sendall(b"220 go ahead\r\n")
        secure = b.starttls(certs.server_context(), server_side=True)
        with secure:
            log.append(f"server {secure.version()}")
            secure.sendall(b"secret:" + secure.recv(100))

    def client_side() -> bytes:
        a.sendall(b"STARTTLS\r\n")
        assert a.recv(100) == b"220 go ahead\r\n"
        secure = a.starttls(certs.client_context(), server_hostname="localhost")
        with secure:
            log.append(f"client {type(secure).__name__}")
            secure.sendall(b"payload")
            return read_exactly(secure, 14)

    try:
        server_thread = loop.newthread(server_side)
        assert run(loop, client_side) == b"secret:payload"
        server_thread.join(10)
    finally:
        a.close()
        b.close()
    assert "client AsyncTLSSocket" in log
    assert any(entry.startswith("server TLSv1.") for entry in log)


def test_starttls_detaches_the_plain_socket(loop: Loop, certs: Certs) -> None:
    a, b = tcp_pair(loop)

    def server_side() -> None:
        with b.starttls(certs.server_context(), server_side=True) as secure:
            secure.recv(1)

    def client_side() -> tuple[int, int]:
        with a.starttls(certs.client_context(), server_hostname="localhost") as secure:
            secure.sendall(b"!")
            return a.socket.fileno(), secure.fileno()

    try:
        server_thread = loop.newthread(server_side)
        plain_fd, secure_fd = run(loop, client_side)
        server_thread.join(10)
    finally:
        a.close()
        b.close()
    assert plain_fd == -1
    assert secure_fd >= 0


@pytest.mark.expect_errors
def test_starttls_on_a_tls_socket_raises_value_error(loop: Loop, certs: Certs) -> None:
    server = tls_echo_server(loop, certs)

    def client() -> None:
        with loop.connect("127.0.0.1", server.port, tls=certs.client_context()) as sock:
            sock.starttls(certs.client_context(), server_hostname="localhost")

    with pytest.raises(ValueError, match="already"):
        run(loop, client)
    close_and_drain(loop, server)


@pytest.mark.expect_errors
def test_starttls_with_a_wrong_hostname_fails_and_closes_the_socket(
    loop: Loop, certs: Certs
) -> None:
    a, b = tcp_pair(loop)

    def server_side() -> None:
        try:
            b.starttls(certs.server_context(), server_side=True)
        except (ssl.SSLError, OSError):
            pass

    def client_side() -> None:
        a.starttls(certs.client_context(), server_hostname="wrong.example")

    try:
        server_thread = loop.newthread(server_side)
        with pytest.raises(ssl.SSLCertVerificationError):
            run(loop, client_side)
        server_thread.join(10)
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------ socketloop.ssl


def test_cooperative_create_default_context_keeps_the_stdlib_settings() -> None:
    context = socketloop.ssl.create_default_context()
    reference = ssl.create_default_context()
    assert isinstance(context, ssl.SSLContext)
    assert isinstance(context, socketloop.ssl.SSLContext)
    assert context.verify_mode == reference.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.options == reference.options
    assert context.minimum_version == reference.minimum_version


def test_cooperative_ssl_module_reexports_the_stdlib_names() -> None:
    module: Any = socketloop.ssl  # its names are computed from the stdlib's
    for name in ("SSLError", "SSLCertVerificationError", "CERT_REQUIRED", "SSLSocket", "Purpose"):
        assert getattr(module, name) is getattr(ssl, name), name


def test_cooperative_context_wraps_an_async_socket_into_an_async_tls_socket(
    loop: Loop, certs: Certs
) -> None:
    server = tls_echo_server(loop, certs)
    context = socketloop.ssl.create_default_context(cafile=certs.ca_file)

    def client() -> tuple[str, bytes]:
        plain = loop.connect("127.0.0.1", server.port)
        with context.wrap_socket(plain, server_hostname="localhost") as sock:
            sock.sendall(b"wrapped")
            return type(sock).__name__, read_exactly(sock, 7)

    assert run(loop, client) == ("AsyncTLSSocket", b"wrapped")
    close_and_drain(loop, server)


@pytest.mark.expect_errors
def test_cooperative_context_wrap_socket_verifies_the_host_name(loop: Loop, certs: Certs) -> None:
    server = tls_echo_server(loop, certs)
    context = socketloop.ssl.create_default_context(cafile=certs.ca_file)

    def client() -> None:
        plain = loop.connect("127.0.0.1", server.port)
        try:
            context.wrap_socket(plain, server_hostname="example.org")
        finally:
            plain.close()

    with pytest.raises(ssl.SSLCertVerificationError):
        run(loop, client)
    close_and_drain(loop, server)


def test_cooperative_context_handshake_suspends_only_the_calling_thread(
    loop: Loop, certs: Certs
) -> None:
    log: list[str] = []

    def handler(conn: AsyncSocket) -> None:
        log.append("server starts its handshake")
        with conn.starttls(certs.server_context(), server_side=True) as secure:
            log.append("server handshake done")
            secure.sendall(secure.recv(10))

    server = loop.newserver("127.0.0.1", 0, handler)
    context = socketloop.ssl.create_default_context(cafile=certs.ca_file)

    def client() -> bytes:
        plain = loop.connect("127.0.0.1", server.port)
        log.append("client starts its handshake")
        with context.wrap_socket(plain, server_hostname="localhost") as sock:
            log.append("client handshake done")
            sock.sendall(b"ping")
            return read_exactly(sock, 4)

    assert run(loop, client) == b"ping"
    # Both handshakes ran interleaved on one OS thread: each side started
    # before the other finished.
    assert log.index("server starts its handshake") < log.index("client handshake done")
    assert log.index("client starts its handshake") < log.index("server handshake done")
    close_and_drain(loop, server)


def test_cooperative_context_wraps_a_plain_socket_like_the_stdlib(loop: Loop, certs: Certs) -> None:
    server = tls_echo_server(loop, certs)
    context = socketloop.ssl.create_default_context(cafile=certs.ca_file)

    def blocking_client() -> tuple[type, bytes]:  # in an OS thread: plain blocking sockets
        plain = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        with context.wrap_socket(plain, server_hostname="localhost") as sock:
            sock.sendall(b"stdlib")
            data = b""
            while len(data) < 6:
                data += sock.recv(6 - len(data))
            return type(sock), data

    kind, data = run(loop, loop.run_in_thread, blocking_client)
    assert kind is ssl.SSLSocket
    assert data == b"stdlib"
    close_and_drain(loop, server)


# ----------------------------------------------- reads never stall on buffers


def small_records_server(certs: Certs, lines: int) -> Callable[[AsyncSocket], None]:
    def handler(conn: AsyncSocket) -> None:
        assert conn.recv(10) == b"go"
        for i in range(lines):
            conn.sendall(f"record {i:03d}\n".encode())  # one small TLS record each
        conn.recv(10)  # stay open, silent, until the client is done

    return handler


def test_small_records_sent_in_one_flight_are_all_read_with_small_recvs(
    loop: Loop, certs: Certs
) -> None:
    lines = 50
    expected = b"".join(f"record {i:03d}\n".encode() for i in range(lines))
    server = loop.newserver(
        "127.0.0.1", 0, small_records_server(certs, lines), tls=certs.server_context()
    )

    def client() -> bytes:
        with loop.connect("127.0.0.1", server.port, tls=certs.client_context()) as sock:
            sock.settimeout(3)  # a stalled read fails instead of hanging
            sock.sendall(b"go")
            data = b""
            while len(data) < len(expected):
                data += sock.recv(5)
            sock.sendall(b"done")
            return data

    assert run(loop, client) == expected
    close_and_drain(loop, server)


def test_small_records_sent_in_one_flight_are_all_read_by_makefile_readline(
    loop: Loop, certs: Certs
) -> None:
    lines = 50
    server = loop.newserver(
        "127.0.0.1", 0, small_records_server(certs, lines), tls=certs.server_context()
    )

    def client() -> list[bytes]:
        with loop.connect("127.0.0.1", server.port, tls=certs.client_context()) as sock:
            sock.settimeout(3)
            sock.sendall(b"go")
            with sock.makefile("rb") as stream:
                got = [stream.readline() for _ in range(lines)]
            sock.sendall(b"done")
            return got

    assert run(loop, client) == [f"record {i:03d}\n".encode() for i in range(lines)]
    close_and_drain(loop, server)


# ------------------------------------------------------------------ timeouts


def silent_server(lp: Loop) -> Server:
    """Accepts TCP and never says a word (reads until the client goes away)."""

    def handler(conn: AsyncSocket) -> None:
        while conn.recv(4096):
            pass

    return lp.newserver("127.0.0.1", 0, handler)


def test_connect_timeout_covers_the_tls_handshake(loop: Loop, certs: Certs) -> None:
    server = silent_server(loop)

    def client() -> float:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            loop.connect("127.0.0.1", server.port, tls=certs.client_context(), timeout=0.5)
        return time.monotonic() - started

    elapsed = run(loop, client)
    assert 0.4 <= elapsed < 3.0
    close_and_drain(loop, server)


def test_socket_timeout_covers_starttls_when_the_peer_never_speaks_tls(
    loop: Loop, certs: Certs
) -> None:
    server = silent_server(loop)

    def client() -> float:
        plain = loop.connect("127.0.0.1", server.port)
        plain.settimeout(0.5)
        started = time.monotonic()
        try:
            with pytest.raises(TimeoutError):
                plain.starttls(certs.client_context(), server_hostname="localhost")
        finally:
            plain.close()
        return time.monotonic() - started

    elapsed = run(loop, client)
    assert 0.4 <= elapsed < 3.0
    close_and_drain(loop, server)


# ------------------------------------------- TLS servers and bad handshakes


HANDSHAKE_TIMEOUT = 1.0


def silent_client(sock: AsyncSocket, certs: Certs) -> None:
    pass  # connects and never sends a ClientHello


def garbage_client(sock: AsyncSocket, certs: Certs) -> None:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")  # plain HTTP on a TLS port


def stalling_client(sock: AsyncSocket, certs: Certs) -> None:
    sock.sendall(client_hello(certs))  # ... and never the rest of the handshake


BAD_CLIENTS = {"silent": silent_client, "garbage": garbage_client, "stalling": stalling_client}


def bad_client_closed_after(lp: Loop, port: int, certs: Certs, kind: str) -> float:
    """In a loop thread: behave as ``kind``; return the seconds until the server closed."""
    with lp.connect("127.0.0.1", port) as sock:
        sock.settimeout(10)
        started = time.monotonic()
        BAD_CLIENTS[kind](sock, certs)
        wait_closed(sock)
        return time.monotonic() - started


@pytest.mark.parametrize("kind", ["silent", "stalling"])
def test_tls_server_closes_a_stuck_handshake_after_the_handshake_timeout(
    loop: Loop, certs: Certs, kind: str
) -> None:
    server = tls_echo_server(loop, certs, handshake_timeout=HANDSHAKE_TIMEOUT)
    elapsed = run(loop, bad_client_closed_after, loop, server.port, certs, kind)
    assert HANDSHAKE_TIMEOUT * 0.9 <= elapsed < HANDSHAKE_TIMEOUT + 3.0
    close_and_drain(loop, server)


def test_tls_server_closes_a_client_that_sends_garbage_at_once(loop: Loop, certs: Certs) -> None:
    server = tls_echo_server(loop, certs, handshake_timeout=10.0)
    elapsed = run(loop, bad_client_closed_after, loop, server.port, certs, "garbage")
    assert elapsed < 3.0
    close_and_drain(loop, server)


def test_tls_server_logs_failed_handshakes_quietly(
    loop: Loop, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    server = tls_echo_server(loop, certs, handshake_timeout=HANDSHAKE_TIMEOUT)
    with caplog.at_level(logging.DEBUG, logger="socketloop"):
        threads = [
            loop.newthread(bad_client_closed_after, loop, server.port, certs, kind)
            for kind in BAD_CLIENTS
        ]
        for thread in threads:
            thread.join(10)
        close_and_drain(loop, server)
    assert quiet_records_problems(caplog) == []
    assert server.statistics()["handler_errors"] == 0


def test_tls_server_serves_another_client_while_handshakes_are_stuck(
    loop: Loop, certs: Certs
) -> None:
    server = tls_echo_server(loop, certs, handshake_timeout=HANDSHAKE_TIMEOUT * 2)
    log: list[str] = []

    def bad(kind: str) -> None:
        bad_client_closed_after(loop, server.port, certs, kind)
        log.append(f"{kind} closed")

    def good() -> None:
        with loop.connect("127.0.0.1", server.port, tls=certs.client_context()) as sock:
            sock.sendall(b"served")
            assert read_exactly(sock, 6) == b"served"
        log.append("good client served")

    stuck = [loop.newthread(bad, kind) for kind in ("silent", "stalling")]
    started = time.monotonic()
    run(loop, good)
    served_after = time.monotonic() - started
    for thread in stuck:
        thread.join(15)
    assert log[0] == "good client served"
    assert served_after < HANDSHAKE_TIMEOUT * 2
    assert sorted(log[1:]) == ["silent closed", "stalling closed"]
    close_and_drain(loop, server)


def test_tls_server_hands_its_handler_a_tls_socket_without_a_timeout(
    loop: Loop, certs: Certs
) -> None:
    seen: list[tuple[str, float | None]] = []

    def handler(conn: AsyncSocket) -> None:
        seen.append((type(conn).__name__, conn.gettimeout()))
        echo(conn)

    server = loop.newserver(
        "127.0.0.1", 0, handler, tls=certs.server_context(), handshake_timeout=5.0
    )

    def client() -> bytes:
        with loop.connect("127.0.0.1", server.port, tls=certs.client_context()) as sock:
            sock.sendall(b"ok")
            return read_exactly(sock, 2)

    assert run(loop, client) == b"ok"
    assert seen == [("AsyncTLSSocket", None)]
    close_and_drain(loop, server)


# --------------------------------------------------------------------- scale


@pytest.mark.slow
def test_200_concurrent_tls_echo_connections_keep_their_data_intact(
    loop: Loop, certs: Certs
) -> None:
    clients = 200
    chunk = 4096
    chunks = 8
    server = tls_echo_server(loop, certs)
    context = certs.client_context()

    def client(seed: int) -> tuple[bytes, bytes]:
        sent = hashlib.sha256()
        received = hashlib.sha256()
        with loop.connect("127.0.0.1", server.port, tls=context) as sock:
            sock.settimeout(30)
            for i in range(chunks):
                data = hashlib.sha256(f"{seed}/{i}".encode()).digest() * (chunk // 32)
                sent.update(data)
                sock.sendall(data)
                received.update(read_exactly(sock, len(data)))
        return sent.digest(), received.digest()

    threads = [loop.newthread(client, seed) for seed in range(clients)]
    results = [thread.join(60) for thread in threads]
    assert len(results) == clients
    assert all(sent == received for sent, received in results)
    assert len({sent for sent, _ in results}) == clients  # every stream was distinct
    close_and_drain(loop, server)


# ------------------------------------------- wrapped before connect, types


def test_wrapped_before_connect_handshakes_in_connect(loop: Loop, certs: Certs) -> None:
    server = tls_echo_server(loop, certs)
    context = socketloop.ssl.create_default_context(cafile=certs.ca_file)

    def client() -> tuple[str | None, bytes]:
        plain = loop.wrap(socket.socket())
        with context.wrap_socket(plain, server_hostname="localhost") as sock:
            sock.connect(("127.0.0.1", server.port))
            version = sock.version()  # the handshake is done
            sock.sendall(b"after connect")
            return version, read_exactly(sock, 13)

    version, echoed = run(loop, client)
    assert version is not None
    assert echoed == b"after connect"
    close_and_drain(loop, server)


def test_wrapped_before_connect_without_handshake_on_connect_waits_for_do_handshake(
    loop: Loop, certs: Certs
) -> None:
    server = tls_echo_server(loop, certs)
    context = socketloop.ssl.create_default_context(cafile=certs.ca_file)

    def client() -> tuple[str | None, str | None, bytes]:
        plain = loop.wrap(socket.socket())
        with context.wrap_socket(
            plain, server_hostname="localhost", do_handshake_on_connect=False
        ) as sock:
            sock.connect(("127.0.0.1", server.port))
            before = sock.version()
            sock.do_handshake()
            sock.sendall(b"x")
            return before, sock.version(), read_exactly(sock, 1)

    before, after, echoed = run(loop, client)
    assert before is None
    assert after is not None
    assert echoed == b"x"
    close_and_drain(loop, server)


@pytest.mark.expect_errors  # the thread's error is logged, then re-raised by run()
def test_wrapped_before_connect_refuses_a_second_connect(loop: Loop, certs: Certs) -> None:
    server = tls_echo_server(loop, certs)
    context = socketloop.ssl.create_default_context(cafile=certs.ca_file)

    def client() -> None:
        with context.wrap_socket(loop.wrap(socket.socket()), server_hostname="localhost") as sock:
            sock.connect(("127.0.0.1", server.port))
            sock.connect(("127.0.0.1", server.port))

    with pytest.raises(ValueError, match="already-connected"):
        run(loop, client)
    close_and_drain(loop, server)


def test_wrapped_listening_socket_accepts_tls_connections(loop: Loop, certs: Certs) -> None:
    context = socketloop.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    certs.server.configure_cert(context)
    listener = loop.wrap(socket.socket())
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    secure_listener = context.wrap_socket(listener, server_side=True)
    client_context = socketloop.ssl.create_default_context(cafile=certs.ca_file)

    def serve() -> bytes:
        conn, _ = secure_listener.accept()
        with conn:
            assert isinstance(conn, AsyncTLSSocket)
            data = conn.recv(10)
            conn.sendall(data)
            return data

    def client() -> bytes:
        plain = loop.connect(*secure_listener.getsockname())
        with client_context.wrap_socket(plain, server_hostname="localhost") as sock:
            sock.sendall(b"hello")
            return read_exactly(sock, 5)

    with secure_listener:
        serving = loop.newthread(serve)
        assert run(loop, client) == b"hello"
        assert serving.join(10) == b"hello"


def test_a_stdlib_context_refuses_an_async_socket_naming_socketloop_ssl(
    loop: Loop, certs: Certs
) -> None:
    context = ssl.create_default_context(cafile=certs.ca_file)
    a, b = tcp_pair(loop)
    untyped: Any = a
    with a, b:
        with pytest.raises(TypeError, match=r"socketloop\.ssl"):
            context.wrap_socket(untyped, server_hostname="localhost")
        assert a.fileno() >= 0  # refused before anything took the fd


def test_a_tls_socket_passes_isinstance_checks_for_ssl_sslsocket(loop: Loop, certs: Certs) -> None:
    server = tls_echo_server(loop, certs)
    context = socketloop.ssl.create_default_context(cafile=certs.ca_file)

    def client() -> tuple[bool, bool, bool]:
        with context.wrap_socket(
            loop.connect("127.0.0.1", server.port), server_hostname="localhost"
        ) as sock:
            return (
                isinstance(sock, ssl.SSLSocket),
                isinstance(sock, socket.socket),
                type(sock) is AsyncTLSSocket,
            )

    assert run(loop, client) == (True, True, True)
    close_and_drain(loop, server)


def test_a_plain_async_socket_is_a_socket_socket_but_not_an_sslsocket(loop: Loop) -> None:
    a, b = tcp_pair(loop)
    with a, b:
        assert isinstance(a, socket.socket)
        assert isinstance(a, socket.SocketType)
        assert not isinstance(a, ssl.SSLSocket)
        assert type(a) is AsyncSocket


def test_a_tls_socket_made_by_a_context_with_its_own_class_is_an_instance_of_it(
    loop: Loop, certs: Certs
) -> None:
    class MySSLSocket(ssl.SSLSocket):
        pass

    context = socketloop.ssl.create_default_context(cafile=certs.ca_file)
    context.sslsocket_class = MySSLSocket
    with context.wrap_socket(loop.wrap(socket.socket()), server_hostname="localhost") as sock:
        assert isinstance(sock, MySSLSocket)


@pytest.mark.expect_errors
def test_write_after_close_raises_value_error(loop: Loop, certs: Certs) -> None:
    server = tls_echo_server(loop, certs)
    context = socketloop.ssl.create_default_context(cafile=certs.ca_file)

    def client() -> None:
        sock = context.wrap_socket(
            loop.connect("127.0.0.1", server.port), server_hostname="localhost"
        )
        sock.close()
        sock.write(b"late")

    with pytest.raises(ValueError, match="closed or unwrapped"):
        run(loop, client)
    close_and_drain(loop, server)


def test_unconnected_tls_socket_recvfrom_raises_the_plain_os_error(
    loop: Loop, certs: Certs
) -> None:
    context = socketloop.ssl.create_default_context(cafile=certs.ca_file)
    with context.wrap_socket(loop.wrap(socket.socket()), server_hostname="localhost") as sock:
        with pytest.raises(OSError):
            sock.recvfrom(1)
        with pytest.raises(OSError):
            sock.sendto(b"x", ("127.0.0.1", 9))


def test_non_blocking_connect_ex_then_do_handshake_completes(loop: Loop, certs: Certs) -> None:
    server = tls_echo_server(loop, certs)
    context = socketloop.ssl.create_default_context(cafile=certs.ca_file)

    def client() -> bytes:
        sock = context.wrap_socket(
            loop.wrap(socket.socket()), server_hostname="localhost", do_handshake_on_connect=False
        )
        with sock:
            sock.setblocking(False)
            assert sock.connect_ex(("127.0.0.1", server.port)) in (0, errno.EINPROGRESS)
            while True:
                try:
                    sock.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    select.select([sock], [], [], 5.0)
                except ssl.SSLWantWriteError:
                    select.select([], [sock], [], 5.0)
            sock.setblocking(True)
            sock.sendall(b"nb")
            return read_exactly(sock, 2)

    with contextlib.ExitStack() as patching:
        with warnings.catch_warnings():
            # Modules other tests imported earlier (psycopg's selectors) keep
            # their originals; the warning saying so depends on test order.
            warnings.simplefilter("ignore", RuntimeWarning)
            patching.enter_context(socketloop.patched(socket=False, ssl=False, time=False))
        assert run(loop, client) == b"nb"
    close_and_drain(loop, server)
