"""The programs in examples/ run: each is started briefly on loopback and talked to."""

from __future__ import annotations

import http.server
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
WAIT = 20.0


def start(name: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def port_of(process: subprocess.Popen[str]) -> int:
    """The port a server example announces on its first line."""
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"127\.0\.0\.1:(\d+)", line)
    assert match, f"no address announced: {line!r}; stderr: {process.communicate()[1]}"
    return int(match[1])


def interrupt(process: subprocess.Popen[str]) -> str:
    """Ctrl-C the example; it must end cleanly. Returns its stderr."""
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=WAIT)
    assert process.returncode == 0, err
    assert "Traceback" not in err, err
    return err


@pytest.fixture
def echo_server() -> Iterator[int]:
    process = start("echo_server.py", "--port", "0")
    try:
        yield port_of(process)
    finally:
        interrupt(process)


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1024)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def test_echo_server_echoes(echo_server: int) -> None:
    with socket.create_connection(("127.0.0.1", echo_server), timeout=WAIT) as conn:
        conn.sendall(b"hello\n")
        assert read_line(conn) == b"hello\n"


def test_proxy_relays_both_ways_and_passes_the_end_of_stream_on(echo_server: int) -> None:
    proxy = start("proxy.py", "--port", "0", "--target", f"127.0.0.1:{echo_server}")
    try:
        port = port_of(proxy)
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as conn:
            conn.sendall(b"through the proxy\n")
            assert read_line(conn) == b"through the proxy\n"
            conn.shutdown(socket.SHUT_WR)
            assert conn.recv(1024) == b""  # the echo server's close came back through
    finally:
        interrupt(proxy)


def test_chat_sends_a_line_to_the_other_clients() -> None:
    chat = start("chat.py", "--port", "0")
    try:
        port = port_of(chat)
        with (
            socket.create_connection(("127.0.0.1", port), timeout=WAIT) as one,
            socket.create_connection(("127.0.0.1", port), timeout=WAIT) as two,
        ):
            # Both are in the room once welcomed.
            assert read_line(one).startswith(b"welcome, you are user")
            welcome = read_line(two)
            one.sendall(b"hi all\n")
            line = read_line(two)
            assert line.endswith(b": hi all\n")
            assert line.split(b":")[0] != welcome.split()[-1]  # from the other client
    finally:
        interrupt(chat)


def test_tls_echo_verifies_and_echoes() -> None:
    process = start("tls_echo.py")
    out, err = process.communicate(timeout=WAIT)
    assert process.returncode == 0, err
    assert "client: got b'hello'" in out
    assert "client: got b'over TLS'" in out
    assert "client: TLS TLSv1." in out


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_concurrent_fetch_fetches_every_url() -> None:
    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 64

    server = Server(("127.0.0.1", 0), _Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        urls = [f"http://127.0.0.1:{port}/page{i}" for i in range(5)]
        process = start("concurrent_fetch.py", *urls)
        out, err = process.communicate(timeout=WAIT)
    finally:
        server.shutdown()
        server.server_close()
    assert process.returncode == 0, err
    for url in urls:
        assert re.search(rf"^200 +\d+ bytes .*{re.escape(url)}$", out, re.M), out
    assert "5 URLs in" in out
