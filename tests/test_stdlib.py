"""Unmodified stdlib code over async sockets: makefile, http.client/http.server,
socketserver handlers, smtplib."""

from __future__ import annotations

import http.client
import http.server
import io
import smtplib
import socket
import socketserver
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from conftest import close_and_drain, step_until
from socketloop import AsyncSocket, Event, Loop, Server

# -------------------------------------------------------------------- helpers


def serve_with(
    handler_class: type[socketserver.BaseRequestHandler],
) -> Callable[[AsyncSocket], None]:
    """A socketloop connection handler that runs a stdlib request handler class unmodified."""
    server_stub: Any = types.SimpleNamespace(server_name="localhost", server_port=0)

    def handle(conn: AsyncSocket) -> None:
        request: Any = conn
        handler_class(request, conn.getpeername(), server_stub)

    return handle


# ------------------------------------------------------------------- makefile


def test_makefile_rb_reads_lines_and_bytes(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair

    def reader() -> tuple[bytes, bytes, bytes]:
        with b.makefile("rb") as f:
            return f.readline(), f.readline(), f.read(4)

    thread = loop.newthread(reader)
    assert thread.is_alive()  # waiting for data
    a.sendall(b"first line\nsecond line\nrest")
    assert thread.join(5) == (b"first line\n", b"second line\n", b"rest")


def test_makefile_wb_sends_on_flush(loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]) -> None:
    a, b = pair

    def writer() -> None:
        with a.makefile("wb") as f:
            f.write(b"hello ")
            f.write(b"world")
            f.flush()

    def reader() -> bytes:
        data = b""
        while len(data) < 11:
            data += b.recv(100)
        return data

    receiving = loop.newthread(reader)
    loop.newthread(writer).join(5)
    assert receiving.join(5) == b"hello world"


def test_makefile_wb_holds_small_writes_until_flush(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    with a.makefile("wb") as f:
        f.write(b"buffered")
        with pytest.raises(BlockingIOError):
            b.socket.recv(100, socket.MSG_DONTWAIT)
        f.flush()
        assert b.recv(100) == b"buffered"


def test_makefile_rwb_writes_a_request_and_reads_the_reply(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair

    def server() -> None:
        with b.makefile("rwb") as f:
            line = f.readline()
            f.write(line.upper())
            f.flush()

    def client() -> bytes:
        with a.makefile("rwb") as f:
            f.write(b"ping\n")
            f.flush()
            reply: bytes = f.readline()
            return reply

    serving = loop.newthread(server)
    assert loop.newthread(client).join(5) == b"PING\n"
    serving.join(5)


def test_makefile_text_mode_round_trips_with_an_encoding(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair

    def reader() -> list[str]:
        with b.makefile("r", encoding="utf-8") as f:
            return [f.readline(), f.readline()]

    def writer() -> None:
        with a.makefile("w", encoding="utf-8") as f:
            f.write("héllo wörld\n")
            f.write("€ 100\n")
            f.flush()

    reading = loop.newthread(reader)
    loop.newthread(writer).join(5)
    assert reading.join(5) == ["héllo wörld\n", "€ 100\n"]


def test_makefile_text_mode_uses_the_given_encoding(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    with a.makefile("w", encoding="latin-1") as f:
        f.write("café\n")
    assert b.recv(100) == "café\n".encode("latin-1")


def test_makefile_read_returns_everything_until_the_peer_closes(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair

    def reader() -> bytes:
        with b.makefile("rb") as f:
            data: bytes = f.read()
            return data

    thread = loop.newthread(reader)  # waiting for data before anything is sent
    a.sendall(b"everything")
    a.shutdown(socket.SHUT_WR)  # data and end of stream arrive together
    try:
        assert thread.join(1) == b"everything"
    finally:
        thread.kill()


def test_makefile_keeps_the_fd_open_after_the_socket_is_closed(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    f = b.makefile("rb")
    fd = b.fileno()
    b.close()
    assert b.socket.fileno() == fd

    def reader() -> bytes:
        line: bytes = f.readline()
        return line

    thread = loop.newthread(reader)
    a.sendall(b"still readable\n")
    assert thread.join(5) == b"still readable\n"
    f.close()
    assert b.socket.fileno() == -1


def test_fd_closes_when_the_last_makefile_file_is_closed(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    _a, b = pair
    reading = b.makefile("rb")
    writing = b.makefile("wb")
    b.close()
    reading.close()
    assert b.socket.fileno() != -1
    writing.close()
    assert b.socket.fileno() == -1


def test_reading_a_file_blocks_only_its_thread(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    log: list[str] = []

    def reader() -> None:
        with b.makefile("rb") as f:
            log.append("reader waits")
            line = f.readline()
            log.append(f"reader got {line.decode().strip()}")

    def other() -> None:
        log.append("other runs")
        loop.sleep(0)
        log.append("other sends")
        a.sendall(b"line\n")

    reading = loop.newthread(reader)
    loop.newthread(other).join(5)
    reading.join(5)
    assert log == ["reader waits", "other runs", "other sends", "reader got line"]


def test_makefile_buffering_0_gives_the_raw_object(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    a, b = pair
    with b.makefile("rb", buffering=0) as raw:
        assert isinstance(raw, io.RawIOBase)
        assert not isinstance(raw, io.BufferedIOBase)
        a.sendall(b"raw bytes")
        assert loop.newthread(raw.read, 100).join(5) == b"raw bytes"


def test_makefile_text_mode_with_buffering_0_raises_value_error(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    _a, b = pair
    with pytest.raises(ValueError, match="binary"):
        b.makefile("r", buffering=0, encoding="utf-8")


def test_makefile_read_timeout_raises_and_poisons_the_file_like_cpython(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    _a, b = pair
    b.settimeout(0.01)

    def reader() -> list[str]:
        seen: list[str] = []
        with b.makefile("rb") as f:
            for _ in range(2):
                try:
                    f.readline()
                except TimeoutError:
                    seen.append("timeout")
                except OSError as exc:
                    seen.append(str(exc))
        return seen

    assert loop.newthread(reader).join(5) == ["timeout", "cannot read from timed out object"]


def test_makefile_read_cut_by_a_timeout_scope_poisons_the_file(
    loop: Loop, pair: tuple[AsyncSocket, AsyncSocket]
) -> None:
    # A reply that arrives after the scope cut the read must never be taken
    # for the answer to the next request (database drivers read this way).
    a, b = pair

    def reader() -> list[str]:
        seen: list[str] = []
        with b.makefile("rb") as f:
            try:
                with loop.timeout(0.01):
                    f.read(5)
            except TimeoutError:
                seen.append("timeout")
            a.sendall(b"stale")
            try:
                f.read(5)
            except OSError as exc:
                seen.append(str(exc))
        return seen

    assert loop.newthread(reader).join(5) == ["timeout", "cannot read from timed out object"]


# ------------------------------------------------------ http.client / server


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 handler: GET /chunked, GET /missing (404), GET anything, POST echo."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_body(self, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Served-By", "socketloop")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/missing":
            self.send_error(404)
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"chunk one, ", b"chunk two, ", b"chunk three"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_body(f"hello {self.path}".encode())

    def do_POST(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self.read_chunked()
        else:
            body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_body(b"received " + body)

    def read_chunked(self) -> bytes:
        body = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return body
            body += self.rfile.read(size)
            self.rfile.readline()


def http_connection(lp: Loop, port: int) -> http.client.HTTPConnection:
    """An ``HTTPConnection`` whose socket is a socketloop connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.sock = lp.connect("127.0.0.1", port)
    return conn


@dataclass
class Reply:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


def fetch(lp: Loop, port: int, method: str, path: str, body: Any = None) -> Reply:
    conn = http_connection(lp, port)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return Reply(response.status, response.reason, dict(response.getheaders()), response.read())
    finally:
        conn.close()


def test_http_get_returns_status_headers_and_body(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, serve_with(QuietHandler))
    reply = loop.newthread(fetch, loop, server.port, "GET", "/index").join(5)
    assert reply.status == 200
    assert reply.reason == "OK"
    assert reply.headers["Content-Type"] == "text/plain"
    assert reply.headers["X-Served-By"] == "socketloop"
    assert reply.headers["Content-Length"] == str(len(b"hello /index"))
    assert reply.body == b"hello /index"
    close_and_drain(loop, server)


def test_http_error_status_is_reported_to_the_client(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, serve_with(QuietHandler))
    reply = loop.newthread(fetch, loop, server.port, "GET", "/missing").join(5)
    assert reply.status == 404
    assert reply.reason == "Not Found"
    close_and_drain(loop, server)


def test_http_keep_alive_serves_several_requests_on_one_connection(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, serve_with(QuietHandler))

    def client() -> list[bytes]:
        conn = http_connection(loop, server.port)
        sock = conn.sock
        bodies: list[bytes] = []
        try:
            for path in ("/one", "/two", "/three"):
                conn.request("GET", path)
                response = conn.getresponse()
                assert not response.will_close
                bodies.append(response.read())
                assert conn.sock is sock
        finally:
            conn.close()
        return bodies

    assert loop.newthread(client).join(5) == [b"hello /one", b"hello /two", b"hello /three"]
    step_until(loop, lambda: server.statistics()["active"] == 0)
    assert server.statistics()["accepted"] == 1
    close_and_drain(loop, server)


def test_http_post_body_with_content_length_reaches_the_handler(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, serve_with(QuietHandler))
    reply = loop.newthread(fetch, loop, server.port, "POST", "/echo", b"x" * 100_000).join(5)
    assert reply.status == 200
    assert reply.body == b"received " + b"x" * 100_000
    close_and_drain(loop, server)


def test_http_chunked_request_body_reaches_the_handler(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, serve_with(QuietHandler))
    body = iter([b"part one, ", b"part two"])
    reply = loop.newthread(fetch, loop, server.port, "POST", "/echo", body).join(5)
    assert reply.body == b"received part one, part two"
    close_and_drain(loop, server)


def test_http_chunked_response_body_is_decoded_by_the_client(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, serve_with(QuietHandler))
    reply = loop.newthread(fetch, loop, server.port, "GET", "/chunked").join(5)
    assert reply.headers["Transfer-Encoding"] == "chunked"
    assert reply.body == b"chunk one, chunk two, chunk three"
    close_and_drain(loop, server)


def test_http_1_0_handler_closes_the_connection_after_one_response(loop: Loop) -> None:
    class OldHandler(QuietHandler):
        protocol_version = "HTTP/1.0"

    server = loop.newserver("127.0.0.1", 0, serve_with(OldHandler))

    conns: list[http.client.HTTPConnection] = []

    def client() -> tuple[bool, bytes]:
        conn = http_connection(loop, server.port)
        conns.append(conn)
        conn.request("GET", "/old")
        response = conn.getresponse()
        return response.will_close, response.read()

    assert loop.newthread(client).join(5) == (True, b"hello /old")
    step_until(loop, lambda: server.statistics()["active"] == 0)  # the client still holds its end
    conns[0].close()
    close_and_drain(loop, server)


#: Concurrent fetches in the overlap tests.
OVERLAPPING = 10


class InFlight:
    """Counts the requests a handler is serving at once, and the peak of that count."""

    def __init__(self, count: int) -> None:
        self.now = 0
        self.peak = 0
        self.count = count
        self.all_in = Event()  # set once ``count`` were in flight together


def gathering_handler_class(counter: InFlight) -> type[QuietHandler]:
    """A handler that holds each request until ``counter.count`` are in flight together.

    It waits at most 5 s, then answers anyway, so a client that does not
    overlap shows as a low peak rather than a hang.
    """

    class GatheringHandler(QuietHandler):
        def do_GET(self) -> None:
            counter.now += 1
            counter.peak = max(counter.peak, counter.now)
            try:
                if counter.peak >= counter.count:
                    counter.all_in.set()
                counter.all_in.wait(5)
                self.send_body(f"slow {self.path}".encode())
            finally:
                counter.now -= 1

    return GatheringHandler


def test_concurrent_http_fetches_overlap(loop: Loop) -> None:
    counter = InFlight(OVERLAPPING)
    handler = gathering_handler_class(counter)
    server = loop.newserver("127.0.0.1", 0, serve_with(handler))
    started = time.monotonic()
    paths = [f"/{i}" for i in range(OVERLAPPING)]
    threads = [loop.newthread(fetch, loop, server.port, "GET", path) for path in paths]
    replies = [thread.join(10) for thread in threads]
    elapsed = time.monotonic() - started
    assert [reply.body for reply in replies] == [f"slow {path}".encode() for path in paths]
    assert all(reply.status == 200 for reply in replies)
    assert counter.peak == OVERLAPPING, f"only {counter.peak} requests were in flight at once"
    assert elapsed < 4, f"{OVERLAPPING} overlapping fetches took {elapsed:.2f} s"
    close_and_drain(loop, server)


def test_concurrent_http_fetches_overlap_on_the_default_loop(api: types.ModuleType) -> None:
    lp: Loop = api.get_loop()
    counter = InFlight(OVERLAPPING)
    handler = gathering_handler_class(counter)
    server: Server = api.newserver("127.0.0.1", 0, serve_with(handler))
    started = time.monotonic()
    paths = [f"/{i}" for i in range(OVERLAPPING)]
    threads = [api.newthread(fetch, lp, server.port, "GET", path) for path in paths]
    bodies = [thread.join(10).body for thread in threads]
    elapsed = time.monotonic() - started
    assert bodies == [f"slow {path}".encode() for path in paths]
    assert counter.peak == OVERLAPPING, f"only {counter.peak} requests were in flight at once"
    assert elapsed < 4, f"{OVERLAPPING} overlapping fetches took {elapsed:.2f} s"
    close_and_drain(lp, server)


# --------------------------------------------------------------- socketserver


class LineEcho(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line.upper())


def test_stream_request_handler_echoes_lines(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, serve_with(LineEcho))

    def client() -> list[bytes]:
        replies: list[bytes] = []
        with loop.connect("127.0.0.1", server.port) as sock, sock.makefile("rwb") as f:
            for line in (b"one\n", b"two\n", b"three\n"):
                f.write(line)
                f.flush()
                replies.append(f.readline())
        return replies

    assert loop.newthread(client).join(5) == [b"ONE\n", b"TWO\n", b"THREE\n"]
    step_until(loop, lambda: server.statistics()["active"] == 0)
    assert server.statistics()["handler_errors"] == 0
    close_and_drain(loop, server)


def test_stream_request_handler_ends_at_the_client_half_close(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, serve_with(LineEcho))

    def client() -> bytes:
        with loop.connect("127.0.0.1", server.port) as sock:
            sock.sendall(b"alpha\nbeta\n")
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(100):
                data += chunk
            return data

    thread = loop.newthread(client)
    try:
        assert thread.join(1) == b"ALPHA\nBETA\n"
    finally:
        server.close()
        for leftover in loop.threads():
            leftover.kill()


# -------------------------------------------------------------------- smtplib


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    data: bytes


def angle_address(command: str) -> str:
    return command[command.index("<") + 1 : command.index(">")]


def smtp_handler(mailbox: list[Mail], verbs: list[str]) -> Callable[[AsyncSocket], None]:
    """Enough of RFC 5321 for smtplib: greeting, EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    def handle(conn: AsyncSocket) -> None:
        def reply(text: str) -> None:
            conn.sendall(text.encode() + b"\r\n")

        sender = ""
        recipients: list[str] = []
        with conn.makefile("rb") as rfile:
            reply("220 localhost ESMTP socketloop test server")
            while line := rfile.readline():
                command = line.decode("ascii").rstrip("\r\n")
                verb = command[:4].upper()
                verbs.append(verb)
                if verb == "EHLO":
                    reply("250-localhost greets you")
                    reply("250 8BITMIME")
                elif verb == "HELO":
                    reply("250 localhost")
                elif verb == "MAIL":
                    sender, recipients = angle_address(command), []
                    reply("250 OK")
                elif verb == "RCPT":
                    recipients.append(angle_address(command))
                    reply("250 OK")
                elif verb == "DATA":
                    reply("354 End data with <CR><LF>.<CR><LF>")
                    lines: list[bytes] = []
                    while (data_line := rfile.readline()) != b".\r\n":
                        if not data_line:
                            return
                        lines.append(data_line[1:] if data_line.startswith(b"..") else data_line)
                    mailbox.append(Mail(sender, recipients, b"".join(lines)))
                    reply("250 OK: queued")
                elif verb in ("RSET", "NOOP"):
                    reply("250 OK")
                elif verb == "QUIT":
                    reply("221 Bye")
                    return
                else:
                    reply("502 Command not implemented")

    return handle


class LoopSMTP(smtplib.SMTP):
    """``smtplib.SMTP`` whose connection is made by ``loop.connect``."""

    def __init__(self, lp: Loop, host: str, port: int) -> None:
        self.socketloop = lp
        super().__init__(host, port, local_hostname="localhost")

    def _get_socket(self, host: str, port: int, timeout: float) -> Any:
        return self.socketloop.connect(host, port)


MESSAGE = (
    "From: alice@example.org\r\n"
    "To: bob@example.org\r\n"
    "Subject: greetings\r\n"
    "\r\n"
    "Hello Bob,\r\n"
    ".a line that starts with a dot\r\n"
    "Bye.\r\n"
)


def send_mail(lp: Loop, port: int, recipients: list[str]) -> dict[str, tuple[int, bytes]]:
    with LoopSMTP(lp, "127.0.0.1", port) as client:
        return client.sendmail("alice@example.org", recipients, MESSAGE)


def test_smtplib_delivers_a_message_to_a_socketloop_smtp_server(loop: Loop) -> None:
    mailbox: list[Mail] = []
    server = loop.newserver("127.0.0.1", 0, smtp_handler(mailbox, []))
    refused = loop.newthread(send_mail, loop, server.port, ["bob@example.org"]).join(5)
    assert refused == {}
    [mail] = mailbox
    assert mail.sender == "alice@example.org"
    assert mail.recipients == ["bob@example.org"]
    assert b"Subject: greetings\r\n" in mail.data
    assert b"Hello Bob,\r\n" in mail.data
    close_and_drain(loop, server)


def test_smtplib_message_survives_dot_stuffing(loop: Loop) -> None:
    mailbox: list[Mail] = []
    server = loop.newserver("127.0.0.1", 0, smtp_handler(mailbox, []))
    loop.newthread(send_mail, loop, server.port, ["bob@example.org"]).join(5)
    assert mailbox[0].data == MESSAGE.encode("ascii")
    close_and_drain(loop, server)


def test_smtplib_speaks_ehlo_mail_rcpt_data_quit(loop: Loop) -> None:
    verbs: list[str] = []
    server = loop.newserver("127.0.0.1", 0, smtp_handler([], verbs))
    recipients = ["bob@example.org", "carol@example.org"]
    loop.newthread(send_mail, loop, server.port, recipients).join(5)
    step_until(loop, lambda: server.statistics()["active"] == 0)
    assert verbs == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]
    close_and_drain(loop, server)


def test_several_smtplib_clients_are_served_concurrently(loop: Loop) -> None:
    mailbox: list[Mail] = []
    verbs: list[str] = []
    server = loop.newserver("127.0.0.1", 0, smtp_handler(mailbox, verbs))
    threads = [
        loop.newthread(send_mail, loop, server.port, [f"user{i}@example.org"]) for i in range(5)
    ]
    for thread in threads:
        thread.join(5)
    # every conversation had begun before the first one ended
    assert verbs[: verbs.index("QUIT")].count("EHLO") == 5
    assert sorted(r for mail in mailbox for r in mail.recipients) == [
        f"user{i}@example.org" for i in range(5)
    ]
    close_and_drain(loop, server)
