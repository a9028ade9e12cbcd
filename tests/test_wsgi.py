"""socketloop.wsgi: PEP 3333 over HTTP/1.1, with real clients (http.client, requests, curl).

Every app runs under ``wsgiref.validate.validator`` (the one exception says
why); the server runs on the asymmetric and the symmetric loop.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask
import pytest
import requests

import socketloop
from socketloop import AsyncSocket
from socketloop import wsgi as slwsgi
from test_dropin import quietly_patched
from wsgi_support import (
    RunningServer,
    exchange,
    hello_app,
    read_responses,
    running,
    status_of,
    wait_for,
)

CURL = "/usr/bin/curl"
TEXT = [("Content-Type", "text/plain")]


@pytest.fixture(params=["asym", "coro"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def no_errors(server: RunningServer) -> None:
    assert server.messages(logging.ERROR) == []


def echo_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0) or 1 << 30)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [body]


def echo_all_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Reads the body in pieces until the end (how chunked bodies are read)."""
    pieces = []
    while True:
        piece = environ["wsgi.input"].read(4096)
        if not piece:
            break
        pieces.append(piece)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [b"".join(pieces)]


def streaming_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    for i in range(3):
        yield f"part {i}\n".encode()


def assert_server_goes_on(server: RunningServer) -> None:
    conn = server.http()
    try:
        conn.request("GET", "/after")
        response = conn.getresponse()
        assert response.status == 200
        response.read()
    finally:
        conn.close()


# ------------------------------------------------------------------ basics


def test_get_with_http_client(kind: str) -> None:
    with running(hello_app, kind) as server:
        conn = server.http()
        conn.request("GET", "/")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"hello\n")
        assert response.getheader("Date")
        conn.close()
        no_errors(server)


def test_environ_carries_path_query_and_headers(kind: str) -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.update(environ)
        start_response("200 OK", TEXT)
        return [b""]

    with running(app, kind) as server:
        headers = {"X-Thing": "1", "Cookie": "a=1", "X_Dropped": "2"}
        response = requests.get(f"{server.url}/a%20b/c?x=1&y=2", headers=headers, timeout=10)
        assert response.status_code == 200
    assert seen["PATH_INFO"] == "/a b/c"
    assert seen["QUERY_STRING"] == "x=1&y=2"
    assert seen["RAW_URI"] == "/a%20b/c?x=1&y=2"
    assert seen["HTTP_X_THING"] == "1"
    assert "HTTP_X_DROPPED" not in seen  # underscores would alias X-Dropped
    assert seen["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert seen["REMOTE_ADDR"] == "127.0.0.1"
    assert seen["wsgi.url_scheme"] == "http"


def test_requests_posts_a_form(kind: str) -> None:
    with running(echo_app, kind) as server:
        response = requests.post(f"{server.url}/echo", data={"a": "1", "b": "two"}, timeout=10)
        assert response.status_code == 200
        assert response.content == b"a=1&b=two"
        no_errors(server)


def test_curl_get_and_reuse(kind: str) -> None:
    with running(hello_app, kind) as server:
        result = subprocess.run(
            [CURL, "-sv", f"{server.url}/one", f"{server.url}/two"],
            capture_output=True,
            timeout=30,
            check=True,
        )
        assert result.stdout == b"hello\nhello\n"
        assert b"Re-using existing connection" in result.stderr or b"Reusing" in result.stderr


def test_curl_uploads_a_chunked_body(kind: str, tmp_path: Path) -> None:
    payload = os.urandom(200_000)
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    with running(echo_all_app, kind) as server:
        result = subprocess.run(
            [
                CURL,
                "-s",
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                f"@{source}",
                f"{server.url}/echo",
            ],
            capture_output=True,
            timeout=30,
            check=True,
        )
        assert result.stdout == payload
        no_errors(server)


# ---------------------------------------------------- keep-alive, pipelining


def test_keep_alive_serves_requests_on_one_connection(kind: str) -> None:
    ports = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        ports.append(environ["REMOTE_PORT"])
        start_response("200 OK", TEXT)
        return [b"x"]

    with running(app, kind) as server:
        conn = server.http()
        for _ in range(3):
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.read() == b"x"
            assert response.getheader("Connection") is None
        conn.close()
    assert len(set(ports)) == 1
    assert len(ports) == 3


def test_idle_keep_alive_connection_is_closed_after_keepalive(kind: str) -> None:
    with running(hello_app, kind, keepalive=0.3) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        [(status, _, _)] = read_responses(sock, 1)
        assert status == 200
        started = time.monotonic()
        assert sock.recv(100) == b""  # the server closed the idle connection
        assert 0.2 < time.monotonic() - started < 5


def test_keepalive_zero_closes_after_each_response(kind: str) -> None:
    with running(hello_app, kind, keepalive=0) as server:
        raw = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(raw) == 200
        assert b"Connection: close\r\n" in raw


def test_body_timeout_is_separate_from_the_idle_timeout(kind: str) -> None:
    with running(echo_app, kind, keepalive=30, timeout=0.3) as server:
        started = time.monotonic()
        raw = exchange(server, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        assert status_of(raw) == 408
        assert time.monotonic() - started < 5
        assert_server_goes_on(server)
        no_errors(server)


def test_pipelined_requests_are_answered_in_order(kind: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", TEXT)
        return [environ["PATH_INFO"].encode()]

    with running(app, kind) as server, server.connect() as sock:
        sock.sendall(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5)))
        bodies = [body for _, _, body in read_responses(sock, 5)]
        assert bodies == [b"/0", b"/1", b"/2", b"/3", b"/4"]


def test_wsgi_input_never_reads_past_the_body(kind: str) -> None:
    reads = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        reads.append(stream.read(1000))
        reads.append(stream.read(1000))
        start_response("200 OK", TEXT)
        return [environ["PATH_INFO"].encode()]

    with running(app, kind) as server, server.connect() as sock:
        sock.sendall(
            b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nde"
        )
        bodies = [body for _, _, body in read_responses(sock, 2)]
    assert bodies == [b"/first", b"/second"]
    assert reads == [b"abc", b"", b"de", b""]


def test_unread_body_is_drained_and_the_connection_kept(kind: str) -> None:
    with running(hello_app, kind) as server, server.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        sock.sendall(b"12345GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert [status for status, _, _ in read_responses(sock, 2)] == [200, 200]


def test_wsgi_input_readline_and_iteration(kind: str) -> None:
    lines: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        lines.append(stream.readline())
        lines.append(stream.readline(2))
        lines.append(list(stream))
        start_response("200 OK", TEXT)
        return [b""]

    with running(app, kind) as server:
        conn = server.http()
        conn.request("POST", "/", body=b"one\ntwo\nthree\nfour")
        assert conn.getresponse().status == 200
        conn.close()
    assert lines == [b"one\n", b"tw", [b"o\n", b"three\n", b"four"]]


def test_http10_keep_alive_is_echoed(kind: str) -> None:
    with running(sized_app, kind) as server, server.connect() as sock:
        request = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        sock.sendall(request + request)
        [(_, first, _), (_, _, body)] = read_responses(sock, 2)
        assert first["Connection"] == "keep-alive"
        assert body == b"hello\n"


def test_https_sets_the_url_scheme(kind: str, tmp_path: Path) -> None:
    from _servers import make_certs

    certs = make_certs(tmp_path / "certs")
    schemes = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        schemes.append(environ["wsgi.url_scheme"])
        return hello_app(environ, start_response)

    with running(app, kind, tls=certs.server_context()) as server:
        url = f"https://localhost:{server.port}/"
        assert requests.get(url, verify=certs.ca_file, timeout=10).content == b"hello\n"
    assert schemes == ["https"]


@pytest.mark.expect_errors
def test_wsgi_errors_go_to_the_errors_logger(kind: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["wsgi.errors"].write("first line\nsecond ")
        environ["wsgi.errors"].write("line\n")
        return hello_app(environ, start_response)

    with running(app, kind) as server:
        assert requests.get(server.url, timeout=10).status_code == 200
        logged = [r.getMessage() for r in server.records() if r.name == "socketloop.wsgi.errors"]
        assert logged == ["first line", "second line"]
        server.forget_records()


# ------------------------------------------------------- request bodies


def test_chunked_request_body_with_http_client(kind: str) -> None:
    with running(echo_all_app, kind) as server:
        conn = server.http()
        conn.request("POST", "/", body=iter([b"ab", b"cde", b"f" * 10000]), encode_chunked=True)
        response = conn.getresponse()
        assert response.read() == b"abcde" + b"f" * 10000
        conn.close()


def test_expect_100_continue_is_answered_when_the_app_reads(kind: str) -> None:
    with running(echo_app, kind) as server, server.connect() as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"body")
        [(status, _, body)] = read_responses(sock, 1)
        assert (status, body) == (200, b"body")


def test_expect_100_continue_is_not_sent_when_the_app_ignores_the_body(kind: str) -> None:
    with running(hello_app, kind) as server:
        raw = exchange(
            server,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        )
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"100 Continue" not in raw
        assert b"Connection: close\r\n" in raw  # the body may never come: the connection ends


# ------------------------------------------------------- response framing


def test_generator_response_is_chunked(kind: str) -> None:
    with running(streaming_app, kind) as server:
        conn = server.http()
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert response.getheader("Content-Length") is None
        assert response.read() == b"part 0\npart 1\npart 2\n"
        conn.request("GET", "/")  # still usable
        assert conn.getresponse().read() == b"part 0\npart 1\npart 2\n"
        conn.close()


def test_http10_stream_is_delimited_by_closing(kind: str) -> None:
    with running(streaming_app, kind) as server:
        raw = exchange(server, b"GET / HTTP/1.0\r\n\r\n")
        head, body = raw.split(b"\r\n\r\n", 1)
        assert b"Transfer-Encoding" not in head
        assert b"Connection: close" in head
        assert body == b"part 0\npart 1\npart 2\n"


def test_list_response_gets_content_length(kind: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", TEXT)
        return [b"ab", b"cd"]

    # Not under the validator: it wraps the list in an iterator, and a
    # wrapped iterable is streamed (chunked), as it must be.
    with running(app, kind, validate=False) as server:
        response = requests.get(server.url, timeout=10)
        assert response.headers["Content-Length"] == "4"
        assert "Transfer-Encoding" not in response.headers
        assert response.content == b"abcd"


def sized_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
    return [b"hello\n"]


def test_head_sends_headers_only(kind: str) -> None:
    with running(sized_app, kind) as server:
        conn = server.http()
        conn.request("HEAD", "/")
        response = conn.getresponse()
        assert response.getheader("Content-Length") == "6"
        assert response.read() == b""
        conn.request("GET", "/")  # no stray body bytes precede the next response
        response = conn.getresponse()
        assert response.read() == b"hello\n"
        assert response.getheader("Content-Length") == "6"
        conn.close()


def test_head_of_a_stream_sends_no_chunks(kind: str) -> None:
    with running(streaming_app, kind) as server, server.connect() as sock:
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        [(_, headers, body), (_, _, second)] = read_responses(sock, 2, methods=["HEAD", "GET"])
        assert body == b""
        assert headers["Transfer-Encoding"] is None
        assert second == b"part 0\npart 1\npart 2\n"


def test_write_callable_streams(kind: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", TEXT)
        write(b"early ")
        return [b"late"]

    with running(app, kind) as server:
        assert requests.get(server.url, timeout=10).content == b"early late"


def test_file_wrapper_uses_sendfile(kind: str, tmp_path: Path, monkeypatch: Any) -> None:
    # Not under the validator: it wraps the iterable, which hides the file
    # from the server by design (the next test covers that fallback).
    data = os.urandom(300_000)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    calls = []
    original = AsyncSocket.sendfile

    def counting(self: AsyncSocket, file: Any, offset: int = 0, count: int | None = None) -> int:
        calls.append((offset, count))
        return original(self, file, offset, count)

    monkeypatch.setattr(AsyncSocket, "sendfile", counting)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(path, "rb"))

    with running(app, kind, validate=False) as server:
        response = requests.get(server.url, timeout=10)
        assert response.content == data
        assert response.headers["Content-Length"] == str(len(data))
    assert calls == [(0, len(data))]


def test_file_wrapper_under_middleware_is_iterated(kind: str, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    path = tmp_path / "file.bin"
    path.write_bytes(data)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [*TEXT, ("Content-Length", str(len(data)))])
        return environ["wsgi.file_wrapper"](open(path, "rb"), 8192)

    with running(app, kind) as server:
        assert requests.get(server.url, timeout=10).content == data


# ----------------------------------------------------- the app's iterable


class Tracked:
    """An app iterable that records ``close()``; raises after ``fail_after`` items."""

    def __init__(self, items: list[bytes], fail_after: int | None = None) -> None:
        self.items = items
        self.fail_after = fail_after
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        for i, item in enumerate(self.items):
            if self.fail_after is not None and i >= self.fail_after:
                raise RuntimeError("the app broke mid-body")
            yield item

    def close(self) -> None:
        self.closed.set()


def test_close_is_called_after_a_normal_response(kind: str) -> None:
    body = Tracked([b"a", b"b"])

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", TEXT)
        return body

    with running(app, kind) as server:
        assert requests.get(server.url, timeout=10).content == b"ab"
        wait_for(body.closed.is_set)


@pytest.mark.expect_errors
def test_close_is_called_when_the_iterable_raises(kind: str) -> None:
    body = Tracked([b"a" * 100, b"b"], fail_after=1)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", TEXT)
        return body

    with running(app, kind) as server:
        conn = server.http()
        conn.request("GET", "/")
        response = conn.getresponse()
        with pytest.raises(http.client.IncompleteRead):
            response.read()
        conn.close()
        wait_for(body.closed.is_set)
        wait_for(lambda: bool(server.records()))
        assert "app raised on 'GET / HTTP/1.1'" in server.messages(logging.ERROR)[0]


def test_client_disconnect_mid_response_is_quiet_and_closes(kind: str) -> None:
    body = Tracked([b"x" * 65536] * 200)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [*TEXT, ("Content-Length", str(65536 * 200))])
        return body

    with running(app, kind) as server:
        sock = server.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # reset mid-response
        wait_for(body.closed.is_set)
        wait_for(lambda: any("went away" in m or "during the" in m for m in server.messages()))
        no_errors(server)
        assert_server_goes_on(server)


# -------------------------------------------------- start_response rules


@pytest.mark.expect_errors
def test_start_response_twice_without_exc_info_is_an_error(kind: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", TEXT)
        start_response("200 OK", TEXT)
        return [b""]

    with running(app, kind, validate=False) as server:
        # Not under the validator: it asserts on the second call itself,
        # and the server's own rule is what is tested here.
        assert requests.get(server.url, timeout=10).status_code == 500
        assert "already called" in server.records()[0].exc_text  # type: ignore[operator]
        server.forget_records()


def test_start_response_with_exc_info_replaces_unsent_headers(kind: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [*TEXT, ("X-First", "1")])
        try:
            raise ValueError("late failure")
        except ValueError:
            start_response("503 Service Unavailable", [*TEXT, ("X-Second", "1")], sys.exc_info())
        return [b"sorry"]

    with running(app, kind) as server:
        response = requests.get(server.url, timeout=10)
        assert response.status_code == 503
        assert "X-First" not in response.headers
        assert response.content == b"sorry"


@pytest.mark.expect_errors
def test_start_response_with_exc_info_after_headers_reraises(kind: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", TEXT)
        yield b"started"
        try:
            raise ValueError("too late")
        except ValueError:
            start_response("500 Internal Server Error", TEXT, sys.exc_info())
        yield b"never"

    with running(app, kind) as server:
        conn = server.http()
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead):
            response.read()  # the chunked body was cut: the client knows it failed
        conn.close()
        wait_for(lambda: bool(server.records()))
        assert "too late" in server.records()[0].exc_text  # type: ignore[operator]
        server.forget_records()


@pytest.mark.expect_errors
def test_app_exception_is_500_logged_with_the_request_line(kind: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/broken":
            raise KeyError("boom")
        return hello_app(environ, start_response)

    with running(app, kind) as server:
        response = requests.get(f"{server.url}/broken?x=1", timeout=10)
        assert response.status_code == 500
        [record] = server.records()
        assert "'GET /broken?x=1 HTTP/1.1'" in record.getMessage()
        assert "KeyError" in record.exc_text  # type: ignore[operator]
        server.forget_records()
        assert_server_goes_on(server)


@pytest.mark.expect_errors
def test_header_with_newline_from_the_app_is_500(kind: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("X-Bad", "a\r\nSet-Cookie: evil=1")])
        return [b""]

    with running(app, kind, validate=False) as server:
        response = requests.get(server.url, timeout=10)
        assert response.status_code == 500
        assert "Set-Cookie" not in response.headers
        server.forget_records()


# ------------------------------------------------------------- bad input


def refused(server: RunningServer, data: bytes) -> int:
    status = status_of(exchange(server, data))
    assert_server_goes_on(server)
    return status


def test_malformed_request_line_is_400(kind: str) -> None:
    with running(hello_app, kind) as server:
        assert refused(server, b"NOT A REQUEST\r\n\r\n") == 400
        no_errors(server)


def test_bad_http_version_is_400(kind: str) -> None:
    with running(hello_app, kind) as server:
        assert refused(server, b"GET / HTTP/7.0\r\n\r\n") == 400


def test_long_request_target_is_414(kind: str) -> None:
    with running(hello_app, kind, max_request_line=1000) as server:
        assert refused(server, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n") == 414


def test_long_header_line_is_431(kind: str) -> None:
    with running(hello_app, kind) as server:
        data = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n"
        assert refused(server, data) == 431


def test_too_many_headers_is_431(kind: str) -> None:
    with running(hello_app, kind) as server:
        headers = b"".join(b"X-%d: 1\r\n" % i for i in range(150))
        assert refused(server, b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n") == 431


def test_header_block_too_large_is_431(kind: str) -> None:
    with running(hello_app, kind) as server:
        headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 4000) for i in range(20))
        assert refused(server, b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n") == 431


def test_unterminated_giant_header_is_431(kind: str) -> None:
    with running(hello_app, kind) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        raw = b""
        try:
            for _ in range(100):  # 3.2 MB at most; the server refuses after 64 KiB or so
                sock.sendall(b"a" * 32768)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            raw = sock.recv(65536)
        except ConnectionResetError:
            raw = b""
        assert raw == b"" or status_of(raw) == 431


def test_body_over_the_limit_by_content_length_is_413(kind: str) -> None:
    called = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        called.append(1)
        return hello_app(environ, start_response)

    with running(app, kind, max_body_size=1000) as server:
        assert refused(server, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n") == 413
    assert called == [1]  # only the follow-up request reached the app


def test_chunked_body_over_the_limit_is_413(kind: str) -> None:
    with running(echo_all_app, kind, max_body_size=1000) as server:
        body = b"400\r\n" + b"a" * 1024 + b"\r\n" + b"0\r\n\r\n"
        data = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body
        assert refused(server, data) == 413
        no_errors(server)


def test_unsupported_transfer_encoding_is_501(kind: str) -> None:
    with running(hello_app, kind) as server:
        data = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
        assert refused(server, data) == 501
        data = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc"
        assert refused(server, data) == 501


def test_content_length_with_transfer_encoding_is_400(kind: str) -> None:
    with running(hello_app, kind) as server:
        data = (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"
        )
        raw = exchange(server, data)
        assert status_of(raw) == 400
        assert raw.count(b"HTTP/1.1") == 1  # nothing after the refusal was served


def test_duplicate_content_length_is_400(kind: str) -> None:
    with running(hello_app, kind) as server:
        data = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
        assert refused(server, data) == 400


def test_conflicting_content_length_is_400(kind: str) -> None:
    with running(hello_app, kind) as server:
        data = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabc"
        assert refused(server, data) == 400
        data = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 5\r\n\r\nabc"
        assert refused(server, data) == 400


def test_good_request_before_a_bad_one_is_served(kind: str) -> None:
    with running(hello_app, kind) as server:
        raw = exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nBROKEN\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200 OK")
        assert b"HTTP/1.1 400 Bad Request" in raw


def test_slowloris_is_cut_at_the_header_deadline(kind: str) -> None:
    with running(hello_app, kind, header_timeout=0.5) as server, server.connect() as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        raw = b""
        sock.settimeout(0.1)
        while time.monotonic() - started < 10:
            try:
                sock.sendall(b"X-Trickle: 1\r\n")  # a header line every 0.1 s, forever
                chunk = sock.recv(1000)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if not chunk:
                break
            raw += chunk
        elapsed = time.monotonic() - started
        assert 0.4 < elapsed < 5
        assert status_of(raw) == 408


def test_silent_connection_is_closed_at_the_header_deadline(kind: str) -> None:
    with running(hello_app, kind, header_timeout=0.3) as server, server.connect() as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert 0.2 < time.monotonic() - started < 5


# --------------------------------------------------------- graceful stop


def test_stop_closes_idle_keep_alive_connections_at_once(kind: str) -> None:
    with running(hello_app, kind, keepalive=60) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_responses(sock, 1)[0][0] == 200
        took = server.stop(grace=30)
        assert took < 2  # not the grace period: the idle connection ended at once
        assert sock.recv(100) == b""


def test_stop_sends_connection_close_on_in_flight_requests(kind: str) -> None:
    state: dict[str, Any] = {"inside": 0, "release": False, "loop": None}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        state["inside"] += 1
        while not state["release"]:
            state["loop"].sleep(0.01)  # the app is busy until the test releases it
        start_response("200 OK", TEXT)
        return [b"finished"]

    with running(app, kind, keepalive=60) as server:
        state["loop"] = server.loop
        conn = server.http()
        conn.request("GET", "/")
        wait_for(lambda: state["inside"] == 1)
        stopper = threading.Thread(target=server.stop, args=(30,))
        stopper.start()
        wait_for(lambda: server.server is not None and server.server.closed)
        state["release"] = True
        response = conn.getresponse()
        assert response.read() == b"finished"
        assert response.getheader("Connection") == "close"
        stopper.join(10)
        assert server.stopped_in is not None
        assert server.stopped_in < 5
        conn.close()


# -------------------------------------------------------------- access log


def test_access_log_uses_the_common_log_format(kind: str) -> None:
    with running(hello_app, kind, access_log=True) as server:
        requests.get(f"{server.url}/page?q=1", timeout=10)
        wait_for(lambda: any(r.name == "socketloop.wsgi.access" for r in server.records(0)))
        [line] = [r.getMessage() for r in server.records(0) if r.name == "socketloop.wsgi.access"]
    when = r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]"
    pattern = r"127\.0\.0\.1 - - " + when + r' "GET /page\?q=1 HTTP/1\.1" 200 6'
    assert re.fullmatch(pattern, line), line


# ------------------------------------------------ hooks and trusted proxies

Reported = tuple[str, int]  # (status line, body bytes sent) as on_response saw them


def reporting(reports: list[Reported]) -> Any:
    def on_response(
        environ: dict[str, Any], status: str, headers: Any, sent: int, seconds: float
    ) -> None:
        reports.append((status, sent))

    return on_response


def test_on_request_runs_before_the_app_with_its_environ(kind: str) -> None:
    order = []

    def on_request(environ: dict[str, Any]) -> None:
        order.append(("hook", environ["PATH_INFO"]))

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        order.append(("app", environ["PATH_INFO"]))
        return hello_app(environ, start_response)

    with running(app, kind, on_request=on_request) as server:
        assert requests.get(f"{server.url}/p", timeout=10).status_code == 200
    assert order == [("hook", "/p"), ("app", "/p")]


@pytest.mark.expect_errors
def test_on_request_exception_is_a_500_and_the_app_is_not_called(kind: str) -> None:
    called = []

    def on_request(environ: dict[str, Any]) -> None:
        raise ValueError("refused by the hook")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        called.append(1)
        return hello_app(environ, start_response)

    with running(app, kind, on_request=on_request) as server:
        assert requests.get(f"{server.url}/", timeout=10).status_code == 500
        wait_for(lambda: bool(server.messages(logging.ERROR)))
        assert "GET / HTTP/1.1" in server.messages(logging.ERROR)[0]
    assert called == []


def test_on_response_reports_a_response_cut_short_by_the_client(kind: str) -> None:
    reports: list[Reported] = []
    body = Tracked([b"x" * 65536] * 200)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [*TEXT, ("Content-Length", str(65536 * 200))])
        return body

    with running(app, kind, on_response=reporting(reports)) as server:
        sock = server.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        wait_for(lambda: bool(reports))
    [(status, sent)] = reports
    assert status == "200 OK"
    assert 0 < sent < 65536 * 200


def test_on_response_reports_a_413_met_while_the_app_reads(kind: str) -> None:
    reports: list[Reported] = []
    with running(echo_all_app, kind, max_body_size=1000, on_response=reporting(reports)) as server:
        body = b"400\r\n" + b"a" * 1024 + b"\r\n" + b"0\r\n\r\n"
        data = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body
        assert refused(server, data) == 413
    assert [status for status, _ in reports] == ["413 Content Too Large", "200 OK"]


def scheme_app(schemes: list[str]) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        schemes.append(environ["wsgi.url_scheme"])
        return hello_app(environ, start_response)

    return app


def test_a_trusted_proxy_sets_the_url_scheme_with_x_forwarded_proto(kind: str) -> None:
    schemes: list[str] = []
    with running(scheme_app(schemes), kind, trusted_proxies=["127.0.0.1"]) as server:
        for proto in ("https", "http"):
            headers = {"X-Forwarded-Proto": proto}
            assert requests.get(server.url, headers=headers, timeout=10).status_code == 200
        assert requests.get(server.url, timeout=10).status_code == 200
    assert schemes == ["https", "http", "http"]


def test_scheme_headers_of_an_untrusted_peer_are_ignored(kind: str) -> None:
    schemes: list[str] = []
    with running(scheme_app(schemes), kind, trusted_proxies="10.0.0.0/8") as server:
        headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "on"}
        assert requests.get(server.url, headers=headers, timeout=10).status_code == 200
    assert schemes == ["http"]


def test_scheme_headers_are_ignored_by_default(kind: str) -> None:
    schemes: list[str] = []
    with running(scheme_app(schemes), kind) as server:
        headers = {"X-Forwarded-Proto": "https"}
        assert requests.get(server.url, headers=headers, timeout=10).status_code == 200
    assert schemes == ["http"]


def test_contradictory_scheme_headers_are_400(kind: str) -> None:
    schemes: list[str] = []
    with running(scheme_app(schemes), kind, trusted_proxies="*") as server:
        data = (
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Ssl: off\r\n\r\n"
        )
        assert refused(server, data) == 400
    assert schemes == ["http"]  # only the follow-up request reached the app


def test_custom_secure_scheme_headers_replace_the_defaults(kind: str) -> None:
    schemes: list[str] = []
    secure = {"X-Scheme": "https"}
    with running(
        scheme_app(schemes), kind, trusted_proxies="127.0.0.1", secure_scheme_headers=secure
    ) as server:
        for headers in ({"X-Scheme": "https"}, {"X-Forwarded-Proto": "https"}):
            assert requests.get(server.url, headers=headers, timeout=10).status_code == 200
    assert schemes == ["https", "http"]


def test_repeated_scheme_header_lines_that_agree_set_https(kind: str) -> None:
    schemes: list[str] = []
    with running(scheme_app(schemes), kind, trusted_proxies="127.0.0.1") as server:
        data = (
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\n"
            b"X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n"
        )
        assert status_of(exchange(server, data)) == 200
    assert schemes == ["https"]


def test_trailers_never_reach_the_environ_nor_set_the_scheme(kind: str) -> None:
    seen: list[tuple[str, bool]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read(4096)
        seen.append((environ["wsgi.url_scheme"], "HTTP_X_FORWARDED_PROTO" in environ))
        start_response("200 OK", TEXT)
        return [body]

    with running(app, kind, trusted_proxies="127.0.0.1") as server:
        data = (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n1\r\nx\r\n0\r\nX-Forwarded-Proto: https\r\n\r\n"
        )
        # One write: the trailer is parsed before the app runs.
        assert status_of(exchange(server, data)) == 200
    assert seen == [("http", False)]


def test_on_response_comes_before_an_unread_body_is_drained(kind: str) -> None:
    reports: list[Reported] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("403 Forbidden", TEXT)  # answers without reading the body
        return [b"no\n"]

    with running(app, kind, on_response=reporting(reports)) as server:
        sock = server.connect()
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        [(status, _, body)] = read_responses(sock, 1)
        assert (status, body) == (403, b"no\n")
        wait_for(lambda: bool(reports))  # while 8 bytes of the body are still to come
        assert reports == [("403 Forbidden", 3)]
        sock.sendall(b"cdefghij" + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        [(status, _, _)] = read_responses(sock, 1)  # the connection was kept
        assert status == 403
        sock.close()


def test_trusted_proxies_match_addresses_networks_and_unix_peers() -> None:
    handler = slwsgi.handler(hello_app, trusted_proxies="127.0.0.1, 10.0.0.0/8, ::1, unix")
    for peer in (("127.0.0.1", 5), ("10.2.3.4", 5), ("::1", 5, 0, 0), ("::ffff:10.0.0.9", 5, 0, 0)):
        assert handler.scheme_keys_for(peer), peer
    assert handler.scheme_keys_for("/run/app.sock")
    untrusted: list[Any] = [("127.0.0.2", 5), ("192.168.1.1", 5), ("::2", 5, 0, 0), None]
    for peer in untrusted:
        assert not handler.scheme_keys_for(peer), peer
    assert not slwsgi.handler(hello_app, trusted_proxies="10.0.0.1").scheme_keys_for("/s")


# ------------------------------------------------------------ concurrency


def test_100_blocking_requests_overlap(kind: str) -> None:
    """An app doing a blocking http.client call to a 0.2 s backend serves 100 clients at once."""
    state = {"inside": 0, "peak": 0}
    backend_port: list[int] = []

    def backend(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        time.sleep(0.2)  # patched: suspends only this connection's thread
        start_response("200 OK", TEXT)
        return [b"backend"]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        state["inside"] += 1
        state["peak"] = max(state["peak"], state["inside"])
        try:
            conn = http.client.HTTPConnection("127.0.0.1", backend_port[0], timeout=10)
            conn.request("GET", "/")
            body = conn.getresponse().read()
            conn.close()
        finally:
            state["inside"] -= 1
        start_response("200 OK", TEXT)
        return [body]

    with quietly_patched(), running(backend, kind) as back:
        backend_port.append(back.port)
        with running(app, kind, backlog=512) as front:
            client_loop = socketloop.Loop()
            try:

                def fetch() -> bytes:
                    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
                    conn.request("GET", "/")
                    data = conn.getresponse().read()
                    conn.close()
                    return data

                started = time.monotonic()
                threads = [client_loop.newthread(fetch) for _ in range(100)]
                results = [thread.join(30) for thread in threads]
                elapsed = time.monotonic() - started
            finally:
                client_loop.close()
    assert results == [b"backend"] * 100
    assert state["peak"] == 100
    assert elapsed < 3.0  # about 0.2 s; loose, the machine may be busy


# -------------------------------------------------------------- Flask


def make_flask_app(tmp_path: Path) -> Any:
    app = flask.Flask("socketloop_test_app")
    static = tmp_path / "static.bin"
    static.write_bytes(b"s" * 50_000)

    @app.get("/")
    def index() -> Any:
        return {"hello": "world", "path": flask.request.path}

    @app.post("/form")
    def form() -> Any:
        return {"fields": dict(flask.request.form)}

    @app.post("/json")
    def echo_json() -> Any:
        return {"got": flask.request.get_json()}

    @app.get("/stream")
    def stream() -> Any:
        return flask.Response((f"{i}\n" for i in range(5)), mimetype="text/plain")

    @app.get("/file")
    def file() -> Any:
        return flask.send_file(static)

    @app.get("/missing")
    def missing() -> Any:
        flask.abort(404)

    return app


def test_flask_app_under_the_validator(kind: str, tmp_path: Path) -> None:
    app = make_flask_app(tmp_path)
    with running(app, kind) as server, requests.Session() as session:
        assert session.get(f"{server.url}/", timeout=10).json() == {"hello": "world", "path": "/"}
        response = session.post(f"{server.url}/form", data={"a": "1"}, timeout=10)
        assert response.json() == {"fields": {"a": "1"}}
        response = session.post(f"{server.url}/json", json={"k": [1, 2]}, timeout=10)
        assert response.json() == {"got": {"k": [1, 2]}}
        assert session.get(f"{server.url}/stream", timeout=10).text == "0\n1\n2\n3\n4\n"
        assert session.get(f"{server.url}/file", timeout=10).content == b"s" * 50_000
        assert session.get(f"{server.url}/missing", timeout=10).status_code == 404
        no_errors(server)


def test_flask_reads_a_chunked_upload(kind: str, tmp_path: Path) -> None:
    # Not under the validator: for a body without Content-Length, werkzeug
    # reads the terminated wsgi.input with read() and no size, which the
    # validator (a PEP 333 rule) refuses; the server's side is the same.
    app = make_flask_app(tmp_path)
    with running(app, kind, validate=False) as server:
        response = requests.post(
            f"{server.url}/json",
            data=iter([b'{"k":', b" 3}"]),
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert response.json() == {"got": {"k": 3}}
        no_errors(server)


# ----------------------------------------------------------- command line


def test_command_line_help_documents_the_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "socketloop", "wsgi", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for option in (
        "MODULE:APP",
        "--bind",
        "--workers",
        "--access-log",
        "--keepalive",
        "--grace",
        "--trusted-proxies",
    ):
        assert option in result.stdout


@pytest.mark.parametrize("workers", [1, 2])
def test_command_line_serves_and_stops_on_sigterm(tmp_path: Path, workers: int) -> None:
    from _servers import free_port, wait_until_listening

    (tmp_path / "cliapp.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'from the command line\\n']\n"
    )
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "socketloop",
                "wsgi",
                "cliapp:app",
                "--bind",
                f"127.0.0.1:{port}",
                "--access-log",
                "--workers",
                str(workers),
            ],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_listening("127.0.0.1", port, process, log)
        result = subprocess.run(
            [CURL, "-s", f"http://127.0.0.1:{port}/cli"],
            capture_output=True,
            timeout=30,
            check=True,
        )
        assert result.stdout == b"from the command line\n"
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert '"GET /cli HTTP/1.1" 200 22' in text


# ------------------------------------------------------------ API, errors


def test_public_names_exist() -> None:
    for name in slwsgi.__all__:
        assert hasattr(slwsgi, name), name


def test_handler_refuses_bad_options() -> None:
    with pytest.raises(TypeError):
        slwsgi.handler(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keepalive"):
        slwsgi.handler(hello_app, keepalive=-1)
    with pytest.raises(TypeError):
        slwsgi.handler(hello_app, no_such_option=1)
    with pytest.raises(ValueError, match=r"trusted_proxies: 'proxy\.example'"):
        slwsgi.handler(hello_app, trusted_proxies=["proxy.example"])
    with pytest.raises(TypeError, match="on_request must be callable"):
        slwsgi.handler(hello_app, on_request=42)


def test_missing_parser_gives_a_clear_import_error() -> None:
    code = (
        "import sys; sys.modules['httptools'] = None\n"
        "try:\n    import socketloop.wsgi\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'socketloop[wsgi]'" in result.stdout


def test_serve_with_workers_calls_run_server(monkeypatch: Any) -> None:
    calls: list[tuple[Any, ...]] = []

    def fake_run_server(host: str, port: int, handler: Any, **options: Any) -> None:
        calls.append((host, port, handler, options))

    monkeypatch.setattr(socketloop, "run_server", fake_run_server)
    slwsgi.serve(hello_app, "127.0.0.1", 8000, workers=3, keepalive=7, backlog=10)
    [(host, port, handler, options)] = calls
    assert (host, port) == ("127.0.0.1", 8000)
    assert isinstance(handler, slwsgi.WSGIHandler)
    assert handler.keepalive == 7
    assert options["workers"] == 3
    assert options["backlog"] == 10
