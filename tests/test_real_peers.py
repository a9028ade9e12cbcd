"""Proof against real peers: libraries people use, talking to servers nobody here wrote.

Servers: Debian's ``nginx``, ``redis-server`` and ``memcached``, and
``aiosmtpd`` from PyPI, each a child process on 127.0.0.1 with an ephemeral
port and its own temporary directory (see ``_servers``); clients: the
standard library, ``urllib3``, ``requests``, ``redis``, ``pymemcache`` and
``curl``.  A missing server binary skips its tests, unless
``SOCKETLOOP_REQUIRE_SERVERS=1`` (then it fails them).

nginx's ``/delay`` location answers after ``_servers.DELAY`` seconds (it
proxies to a small standard-library backend that sleeps).  The overlap tests
ask for ``/delay?gather=50``, which the backend holds until all 50 requests
are in flight together, and then read the backend's peak count of requests
in flight: it must equal the number started.  Their time bound is only a
loose guard.
"""

from __future__ import annotations

import contextlib
import email.message
import hashlib
import http.client
import http.server
import json
import logging
import mailbox
import os
import smtplib
import subprocess
import sys
import textwrap
import time
import types
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymemcache  # type: ignore[import-untyped]
import pytest
import redis
import requests
import requests.adapters
import urllib3

import socketloop
import socketloop.socket
import socketloop.ssl
from _servers import (
    DELAY,
    Certs,
    Nginx,
    make_certs,
    require_binary,
    start_delay_backend,
    start_memcached,
    start_nginx,
    start_redis,
    start_smtp,
)
from conftest import close_and_drain, run
from socketloop import AsyncSocket, AsyncTLSSocket, Loop, Server

#: Concurrent requests in the overlap tests; each takes DELAY seconds at nginx.
CONCURRENT = 50

#: The path the overlap tests request: held by the backend until all are in flight.
GATHER_PATH = f"/delay?gather={CONCURRENT}"

#: A loose guard on the overlap tests' duration (the proof is the peak count).
OVERLAP_BOUND = 10 * DELAY

# ------------------------------------------------------------ server fixtures


@pytest.fixture(scope="module")
def peers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("peers")


@pytest.fixture(scope="module")
def certs(peers_dir: Path) -> Certs:
    return make_certs(peers_dir / "certs")


@pytest.fixture(scope="module")
def nginx(peers_dir: Path, certs: Certs) -> Iterator[Nginx]:
    require_binary("nginx", "nginx", "/usr/sbin/nginx")
    backend = start_delay_backend(peers_dir)
    try:
        process, info = start_nginx(peers_dir, certs, backend.port)
        try:
            yield info
        finally:
            process.stop()
    finally:
        backend.stop()


@pytest.fixture(scope="module")
def redis_port(peers_dir: Path) -> Iterator[int]:
    process = start_redis(peers_dir)
    try:
        yield process.port
    finally:
        process.stop()


@pytest.fixture(scope="module")
def memcached_port(peers_dir: Path) -> Iterator[int]:
    process = start_memcached(peers_dir)
    try:
        yield process.port
    finally:
        process.stop()


@pytest.fixture(scope="module")
def smtp(peers_dir: Path, certs: Certs) -> Iterator[tuple[int, Path]]:
    process, maildir = start_smtp(peers_dir, certs)
    try:
        yield process.port, maildir
    finally:
        process.stop()


# ------------------------------------------------------------------- helpers


def peak_in_flight(nginx: Nginx) -> int:
    """The most ``/delay`` requests the backend had in flight together since the last call.

    A blocking request from the test's own OS thread (not a loop thread);
    reading the peak also starts a new count.
    """
    conn = http.client.HTTPConnection("127.0.0.1", nginx.http_port, timeout=30)
    try:
        conn.request("GET", "/delay/peak")
        response = conn.getresponse()
        assert response.status == 200
        return int(response.read())
    finally:
        conn.close()


@pytest.fixture
def fresh_peak(nginx: Nginx) -> Nginx:
    """``nginx``, with the backend's peak count of requests in flight started afresh."""
    peak_in_flight(nginx)
    return nginx


@contextlib.contextmanager
def quietly_patched(**switches: bool) -> Iterator[None]:
    """``socketloop.patched()``; its early-import warning is expected here (urllib3,
    requests and redis are imported by this module before any patching)."""
    with contextlib.ExitStack() as stack:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            stack.enter_context(socketloop.patched(**switches))
        yield


def in_os_thread(lp: Loop, argv: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
    """Run a child process to completion from a loop thread, without blocking the loop."""

    def call() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, check=False, capture_output=True, text=True, timeout=60, **options
        )

    result: subprocess.CompletedProcess[str] = lp.run_in_thread(call)
    return result


class PageHandler(http.server.BaseHTTPRequestHandler):
    """A plain standard-library request handler, run unmodified over async sockets."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        agent = self.headers.get("User-Agent", "?")
        body = f"page {self.path} for {agent}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_http(lp: Loop, **options: Any) -> Server:
    """A socketloop server running ``PageHandler`` for every connection."""

    def handle(conn: AsyncSocket) -> None:
        info: Any = types.SimpleNamespace(server_name="localhost", server_port=0)
        PageHandler(conn, conn.getpeername(), info)  # type: ignore[arg-type]

    return lp.newserver("127.0.0.1", 0, handle, **options)


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


# ------------------------------------------------------ http.client and nginx


def test_http_client_fetches_pages_from_nginx_over_http(loop: Loop, nginx: Nginx) -> None:
    def fetch() -> list[tuple[int, bytes]]:
        conn = http.client.HTTPConnection("127.0.0.1", nginx.http_port)
        conn.sock = loop.connect("127.0.0.1", nginx.http_port)
        try:  # two requests over one kept-alive connection
            return [get(conn, "/"), get(conn, "/big.bin")]
        finally:
            conn.close()

    (status, index), (big_status, big) = run(loop, fetch, timeout=30)
    assert (status, index) == (200, nginx.index)
    assert big_status == 200
    assert hashlib.sha256(big).digest() == hashlib.sha256(nginx.big).digest()


def test_http_client_fetches_pages_from_nginx_over_https(
    loop: Loop, nginx: Nginx, certs: Certs
) -> None:
    context = socketloop.ssl.create_default_context(cafile=certs.ca_file)

    def fetch() -> tuple[int, bytes, int, bytes, str]:
        conn = http.client.HTTPSConnection("localhost", nginx.https_port, context=context)
        conn._create_connection = lambda address, *args: loop.connect(*address)  # type: ignore[attr-defined]
        try:
            status, index = get(conn, "/")
            big_status, big = get(conn, "/big.bin")
            return status, index, big_status, big, type(conn.sock).__name__
        finally:
            conn.close()

    status, index, big_status, big, kind = run(loop, fetch, timeout=30)
    assert (status, index) == (200, nginx.index)
    assert big_status == 200
    assert hashlib.sha256(big).digest() == hashlib.sha256(nginx.big).digest()
    assert kind == AsyncTLSSocket.__name__


def test_http_client_requests_to_nginx_overlap_without_patching(
    loop: Loop, fresh_peak: Nginx
) -> None:
    nginx = fresh_peak

    def fetch() -> int:
        conn = http.client.HTTPConnection("127.0.0.1", nginx.http_port)
        conn.sock = loop.connect("127.0.0.1", nginx.http_port)
        try:
            return get(conn, GATHER_PATH)[0]
        finally:
            conn.close()

    started = time.monotonic()
    threads = [loop.newthread(fetch) for _ in range(CONCURRENT)]
    statuses = [thread.join(60) for thread in threads]
    elapsed = time.monotonic() - started
    assert statuses == [200] * CONCURRENT
    assert peak_in_flight(nginx) == CONCURRENT
    assert elapsed < OVERLAP_BOUND


# ---------------------------------------------- http.client, socketloop server


def test_http_client_fetches_from_a_socketloop_http_server_over_http(loop: Loop) -> None:
    server = serve_http(loop)

    def fetch() -> list[tuple[int, bytes]]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port)
        conn.sock = loop.connect("127.0.0.1", server.port)
        try:
            return [get(conn, "/one"), get(conn, "/two")]
        finally:
            conn.close()

    # http.client sends no User-Agent of its own: the handler shows "?".
    assert run(loop, fetch) == [(200, b"page /one for ?\n"), (200, b"page /two for ?\n")]
    close_and_drain(loop, server)


def test_http_client_fetches_from_a_socketloop_http_server_over_https(
    loop: Loop, certs: Certs
) -> None:
    server = serve_http(loop, tls=certs.server_context())
    context = socketloop.ssl.create_default_context(cafile=certs.ca_file)

    def fetch() -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection("localhost", server.port, context=context)
        conn._create_connection = lambda address, *args: loop.connect(*address)  # type: ignore[attr-defined]
        try:
            return get(conn, "/secure")
        finally:
            conn.close()

    assert run(loop, fetch) == (200, b"page /secure for ?\n")
    close_and_drain(loop, server)


# ------------------------------------------------------------------ the CLI


def cli_get(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "socketloop", "get", "--timeout", "20", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_get_fetches_an_http_url(nginx: Nginx) -> None:
    result = cli_get(f"http://127.0.0.1:{nginx.http_port}/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "200 OK" in result.stdout
    assert f"{len(nginx.index)} bytes" in result.stdout


def test_cli_get_fetches_an_https_url(nginx: Nginx, certs: Certs) -> None:
    result = cli_get("--cacert", certs.ca_file, f"https://localhost:{nginx.https_port}/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "200 OK" in result.stdout
    assert f"{len(nginx.index)} bytes" in result.stdout


def test_cli_get_refuses_an_https_certificate_it_cannot_verify(nginx: Nginx) -> None:
    # Without --cacert the system trust store is used, which knows nothing of the test CA.
    result = cli_get(f"https://localhost:{nginx.https_port}/")
    assert result.returncode == 1
    assert "certificate verify failed" in result.stdout


# ------------------------------------------- urllib3 and requests, patched


def overlapping(lp: Loop, fetch: Callable[[], int]) -> tuple[list[int], float]:
    started = time.monotonic()
    threads = [lp.newthread(fetch) for _ in range(CONCURRENT)]
    statuses = [thread.join(60) for thread in threads]
    return statuses, time.monotonic() - started


def test_urllib3_under_patching_overlaps_50_requests_to_nginx_over_http(
    loop: Loop, fresh_peak: Nginx
) -> None:
    url = f"http://127.0.0.1:{fresh_peak.http_port}{GATHER_PATH}"
    with quietly_patched():
        pool = urllib3.PoolManager(maxsize=CONCURRENT)
        try:
            statuses, elapsed = overlapping(loop, lambda: pool.request("GET", url).status)
        finally:
            pool.clear()
    assert statuses == [200] * CONCURRENT
    assert peak_in_flight(fresh_peak) == CONCURRENT
    assert elapsed < OVERLAP_BOUND


def test_requests_under_patching_overlaps_50_requests_to_nginx_over_http(
    loop: Loop, fresh_peak: Nginx
) -> None:
    url = f"http://127.0.0.1:{fresh_peak.http_port}{GATHER_PATH}"
    with quietly_patched(), requests.Session() as session:
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=CONCURRENT))
        statuses, elapsed = overlapping(loop, lambda: session.get(url, timeout=30).status_code)
    assert statuses == [200] * CONCURRENT
    assert peak_in_flight(fresh_peak) == CONCURRENT
    assert elapsed < OVERLAP_BOUND


#: A fresh interpreter that patches *before* importing the library, as a
#: program would (a module imported earlier keeps the blocking originals:
#: urllib3 binds ``ssl.SSLContext`` at import), then fetches ``count`` URLs
#: from as many loop threads and prints the statuses and the elapsed time.
PATCHED_CLIENT = textwrap.dedent(
    """
    import json, sys, time
    import socketloop

    library, url, cafile, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with socketloop.patched():
        if library == "urllib3":
            import urllib3

            pool = urllib3.PoolManager(maxsize=count, ca_certs=cafile)

            def fetch():
                return pool.request("GET", url).status
        else:
            import requests, requests.adapters

            session = requests.Session()
            session.mount("https://", requests.adapters.HTTPAdapter(pool_maxsize=count))

            def fetch():
                return session.get(url, verify=cafile, timeout=30).status_code

        started = time.monotonic()
        threads = [socketloop.newthread(fetch) for _ in range(count)]
        statuses = [thread.join(60) for thread in threads]
        elapsed = time.monotonic() - started
    print(json.dumps({"statuses": statuses, "elapsed": elapsed}))
    """
)


@pytest.mark.parametrize("library", ["urllib3", "requests"])
def test_library_under_patching_overlaps_50_requests_to_nginx_over_https(
    fresh_peak: Nginx, certs: Certs, library: str
) -> None:
    url = f"https://localhost:{fresh_peak.https_port}{GATHER_PATH}"
    argv = [sys.executable, "-c", PATCHED_CLIENT, library, url, certs.ca_file, str(CONCURRENT)]
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-1500:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["statuses"] == [200] * CONCURRENT
    assert peak_in_flight(fresh_peak) == CONCURRENT
    assert outcome["elapsed"] < OVERLAP_BOUND


# --------------------------------------------------------------------- redis


def blpop_scenario(lp: Loop, clients: list[Any], key: str) -> list[str]:
    """Two threads block in BLPOP, a third pushes once redis reports both blocked.

    Returns the ordered log.
    """
    log: list[str] = []

    def popper(i: int) -> None:
        log.append(f"pop {i} blocks")
        _, value = clients[i].blpop([f"{key}:{i}"], timeout=20)
        log.append(f"pop {i} got {value.decode()}")

    def pusher() -> None:
        # The server's own count proves both poppers wait inside BLPOP (a log
        # entry made before the call would not): poll it, at most 20 s.
        deadline = time.monotonic() + 20
        while clients[2].info("clients")["blocked_clients"] != 2:
            assert time.monotonic() < deadline, "the poppers never both blocked in BLPOP"
            lp.sleep(0.01)  # the server offers no notification of blocked clients
        log.append("push")
        clients[2].rpush(f"{key}:0", "a")
        clients[2].rpush(f"{key}:1", "b")
        log.append("pushed")

    threads = [lp.newthread(popper, 0), lp.newthread(popper, 1), lp.newthread(pusher)]
    for thread in threads:
        thread.join(30)
    return log


def assert_blpop_log(log: list[str]) -> None:
    # Both poppers were blocked in BLPOP (redis said so) when the pusher pushed,
    # all on one OS thread.
    assert log[:3] == ["pop 0 blocks", "pop 1 blocks", "push"]
    assert sorted(log[3:]) == ["pop 0 got a", "pop 1 got b", "pushed"]


def test_redis_through_a_connection_class_hook_without_patching(
    loop: Loop, redis_port: int
) -> None:
    class LoopConnection(redis.Connection):
        def _connect(self) -> Any:
            sock = loop.connect(self.host, self.port, timeout=self.socket_connect_timeout)
            sock.settimeout(self.socket_timeout)
            return sock

    pool = redis.ConnectionPool(connection_class=LoopConnection, host="127.0.0.1", port=redis_port)
    client = redis.Redis(connection_pool=pool)
    try:
        log = blpop_scenario(loop, [client, client, client], f"hook-{uuid.uuid4().hex}")
    finally:
        pool.disconnect()
    assert_blpop_log(log)


def test_redis_default_pool_under_patching(loop: Loop, redis_port: int) -> None:
    with quietly_patched():
        client = redis.Redis(host="127.0.0.1", port=redis_port)
        try:
            log = blpop_scenario(loop, [client, client, client], f"patched-{uuid.uuid4().hex}")
        finally:
            client.connection_pool.disconnect()
    assert_blpop_log(log)


# ----------------------------------------------------------------- memcached


def test_pymemcache_with_the_drop_in_socket_module_sets_and_gets(
    loop: Loop, memcached_port: int
) -> None:
    key = f"k-{uuid.uuid4().hex}"

    def use() -> Any:
        client = pymemcache.Client(
            ("127.0.0.1", memcached_port), socket_module=socketloop.socket, timeout=10
        )
        try:
            assert client.set(key, b"value", noreply=False)
            return client.get(key), type(client.sock) is socketloop.socket.socket
        finally:
            client.close()

    assert run(loop, use) == (b"value", True)


def test_pymemcache_clients_in_two_loop_threads_interleave(loop: Loop, memcached_port: int) -> None:
    # Values large enough that replies arrive in pieces, so each call waits on I/O.
    value = os.urandom(512 * 1024)
    log: list[str] = []
    prefix = uuid.uuid4().hex

    def use(name: str) -> None:
        client = pymemcache.Client(
            ("127.0.0.1", memcached_port), socket_module=socketloop.socket, timeout=10
        )
        try:
            for i in range(5):
                client.set(f"{prefix}-{name}-{i}", value, noreply=False)
                assert client.get(f"{prefix}-{name}-{i}") == value
                log.append(f"{name} {i}")
        finally:
            client.close()

    threads = [loop.newthread(use, "a"), loop.newthread(use, "b")]
    for thread in threads:
        thread.join(30)
    assert sorted(log) == [f"a {i}" for i in range(5)] + [f"b {i}" for i in range(5)]
    # Neither client did all its work before the other began: they ran at once
    # on one OS thread.
    assert log.index("b 0") < log.index("a 4")
    assert log.index("a 0") < log.index("b 4")


# ---------------------------------------------------------------------- SMTP


def test_smtplib_starttls_delivers_a_message_to_aiosmtpd(
    loop: Loop, smtp: tuple[int, Path], certs: Certs
) -> None:
    port, maildir = smtp
    subject = f"socketloop {uuid.uuid4().hex}"
    context = socketloop.ssl.create_default_context(cafile=certs.ca_file)

    class LoopSMTP(smtplib.SMTP):
        def _get_socket(self, host: str, port: int, timeout: float) -> Any:
            return loop.connect(host, port, timeout=timeout)

    def send() -> tuple[bool, str, dict[str, Any]]:
        message = email.message.EmailMessage()
        message["From"] = "sender@example.test"
        message["To"] = "receiver@example.test"
        message["Subject"] = subject
        message.set_content("sent through socketloop\n")
        with LoopSMTP("127.0.0.1", port, local_hostname="client.test", timeout=20) as client:
            client.ehlo()
            offered = client.has_extn("starttls")
            client.starttls(context=context)
            secure = type(client.sock).__name__
            client.ehlo()
            refused = client.send_message(message)
        return offered, secure, refused

    offered, secure, refused = run(loop, send, timeout=30)
    assert offered
    assert secure == AsyncTLSSocket.__name__
    assert refused == {}
    subjects = [m["Subject"] for m in mailbox.Maildir(maildir, create=False)]
    assert subject in subjects


def test_aiosmtpd_refuses_mail_before_starttls(loop: Loop, smtp: tuple[int, Path]) -> None:
    port, _ = smtp

    class LoopSMTP(smtplib.SMTP):
        def _get_socket(self, host: str, port: int, timeout: float) -> Any:
            return loop.connect(host, port, timeout=timeout)

    def try_plain() -> int:
        with LoopSMTP("127.0.0.1", port, local_hostname="client.test", timeout=20) as client:
            client.ehlo()
            code, _ = client.mail("sender@example.test")
            return code

    assert run(loop, try_plain) == 530  # "Must issue a STARTTLS command first"


# ---------------------------------------------------------------------- curl


def test_curl_fetches_a_page_from_a_socketloop_http_server_over_http(loop: Loop) -> None:
    curl = require_binary("curl", "curl")
    server = serve_http(loop)
    url = f"http://127.0.0.1:{server.port}/page"
    result = run(loop, in_os_thread, loop, [curl, "-sS", "--fail", "--max-time", "20", url])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("page /page for curl/")
    close_and_drain(loop, server)


def test_curl_fetches_a_page_from_a_socketloop_http_server_over_https(
    loop: Loop, certs: Certs
) -> None:
    curl = require_binary("curl", "curl")
    server = serve_http(loop, tls=certs.server_context())
    url = f"https://127.0.0.1:{server.port}/secure"
    argv = [curl, "-sS", "--fail", "--max-time", "20", "--cacert", certs.ca_file, url]
    result = run(loop, in_os_thread, loop, argv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("page /secure for curl/")
    close_and_drain(loop, server)


# --------------------------------------------- a TLS server and bad clients


def test_tls_server_closes_silent_and_garbage_clients_while_curl_is_served(
    loop: Loop, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    curl = require_binary("curl", "curl")
    handshake_timeout = 2.0
    server = serve_http(loop, tls=certs.server_context(), handshake_timeout=handshake_timeout)
    log: list[str] = []

    def bad(kind: str) -> float:
        with loop.connect("127.0.0.1", server.port) as sock:
            sock.settimeout(15)
            started = time.monotonic()
            if kind == "garbage":
                sock.sendall(b"\x00\x01garbage, not a TLS record\r\n" * 4)
            try:
                while sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass
            log.append(f"{kind} closed")
            return time.monotonic() - started

    def good() -> None:
        url = f"https://127.0.0.1:{server.port}/meanwhile"
        argv = [curl, "-sS", "--fail", "--max-time", "20", "--cacert", certs.ca_file, url]
        result = in_os_thread(loop, argv)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("page /meanwhile for curl/")
        log.append("curl served")

    with caplog.at_level(logging.DEBUG, logger="socketloop"):
        silent = loop.newthread(bad, "silent")
        garbage = loop.newthread(bad, "garbage")
        run(loop, good, timeout=30)
        silent_after = silent.join(15)
        garbage_after = garbage.join(15)
        close_and_drain(loop, server)
    assert garbage_after < handshake_timeout  # closed at once, not at the timeout
    assert handshake_timeout * 0.9 <= silent_after < handshake_timeout + 5
    assert log.index("curl served") < log.index("silent closed")
    problems = [
        f"{r.levelname}: {r.getMessage()}"
        for r in caplog.records
        if r.name == "socketloop" and (r.levelno >= logging.ERROR or r.exc_info)
    ]
    assert problems == []
