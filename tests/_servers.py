"""Real peers for the interoperability tests: certificates, ports, server processes.

Everything here runs on loopback only.  The servers are the Debian packages
``nginx``, ``redis-server``, ``memcached``, ``postgresql`` and
``mariadb-server`` and the PyPI package ``aiosmtpd``, each started as a child
process with its own temporary directory and an ephemeral port, and stopped by
the fixture that started it.  The database servers get a throwaway data
directory (``initdb`` / ``mariadb-install-db``) and run as an unprivileged
account when the tests run as root (PostgreSQL refuses root).

A missing server binary skips the tests that need it, with the package name
in the reason, unless ``SOCKETLOOP_REQUIRE_SERVERS=1`` is set (as CI does):
then it fails them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

REQUIRE_SERVERS_ENV = "SOCKETLOOP_REQUIRE_SERVERS"

#: Longest wait for a server process to accept connections.
READY_TIMEOUT = 20.0


# ----------------------------------------------------------------- binaries


def servers_required() -> bool:
    """True when a missing server binary must fail the test instead of skipping it."""
    return os.environ.get(REQUIRE_SERVERS_ENV, "") == "1"


def require_binary(name: str, package: str, *candidates: str) -> str:
    """The path of the program ``name``; skip (or fail, see module doc) when it is missing."""
    path = shutil.which(name)
    if path is None:
        for candidate in candidates:
            if os.access(candidate, os.X_OK):
                path = candidate
                break
    if path is None:
        reason = f"{name} is not installed (Debian package {package!r}: apt-get install {package})"
        if servers_required():
            pytest.fail(f"{reason}; {REQUIRE_SERVERS_ENV}=1 requires it", pytrace=False)
        pytest.skip(reason)
    return path


# -------------------------------------------------------------------- ports


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind port 0, read it, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_until_listening(
    host: str, port: int, process: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    """Connect to ``host``:``port`` repeatedly until it answers (at most ``READY_TIMEOUT``)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if process is not None and process.poll() is not None:
            output = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(
                f"{process.args!r} exited with {process.returncode} before listening:\n{output}"
            )
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"nothing listens on {host}:{port} after {READY_TIMEOUT} s"
                ) from None
            time.sleep(0.05)  # polling a port for readiness


@contextmanager
def hanging_address(family: int = socket.AF_INET) -> Iterator[tuple[str, int]]:
    """An address where ``connect()`` hangs: a listener whose accept queue is full.

    With ``listen(0)`` the kernel queues one connection; a filler takes that
    place and is never accepted, so further SYNs are dropped and connecting
    stays in progress until the caller gives up.
    """
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(0)
        address = listener.getsockname()
        with socket.socket(family, socket.SOCK_STREAM) as filler:
            filler.settimeout(5)
            filler.connect(address)
            yield host, int(address[1])


@contextmanager
def refusing_address(family: int = socket.AF_INET) -> Iterator[tuple[str, int]]:
    """An address where ``connect()`` is refused at once: a bound port nobody listens on."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as bound:
        bound.bind((host, 0))
        yield host, int(bound.getsockname()[1])


# ------------------------------------------------------------- certificates


@dataclass
class Certs:
    """A test CA and a server certificate for localhost, 127.0.0.1 and ::1, also as files."""

    ca: trustme.CA
    server: trustme.LeafCert
    ca_file: str
    cert_file: str
    key_file: str

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A standard-library client context that trusts the test CA."""
        return ssl.create_default_context(cafile=self.ca_file)


def make_certs(directory: Path) -> Certs:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "ca.pem"
    cert_file = directory / "server-chain.pem"
    key_file = directory / "server-key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    return Certs(ca, server, str(ca_file), str(cert_file), str(key_file))


# ---------------------------------------------------------------- processes


@dataclass
class ServerProcess:
    """A server child process listening on ``host``:``port``; ``stop()`` ends it."""

    name: str
    argv: list[str]
    port: int
    directory: Path
    host: str = "127.0.0.1"
    extra: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    #: Run as this account (by name) instead of the test's own (needs root).
    user: str | None = None
    #: A line the server logs once it accepts sessions (listening may come earlier).
    ready_line: str | None = None
    #: The signal ``stop()`` sends first (PostgreSQL's fast shutdown is SIGINT).
    stop_signal: int = signal.SIGTERM

    @property
    def log(self) -> Path:
        return self.directory / f"{self.name}.log"

    def start(self) -> ServerProcess:
        uid, gid, groups = _account(self.user)
        # Output goes to a file, not a pipe: the test process keeps no fd for it.
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                close_fds=True,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        try:
            wait_until_listening(self.host, self.port, self.process, self.log)
            for port in self.extra.values():
                wait_until_listening(self.host, port, self.process, self.log)
            if self.ready_line is not None:
                wait_for_log_line(self.log, self.ready_line, self.process)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        self.process = None
        if process.poll() is None:
            process.send_signal(self.stop_signal)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _account(user: str | None) -> tuple[int | None, int | None, list[int] | None]:
    """``subprocess``'s ``user``, ``group``, ``extra_groups`` for running as ``user``."""
    if user is None:
        return None, None, None
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid, []


def wait_for_log_line(log: Path, line: str, process: subprocess.Popen[bytes] | None = None) -> None:
    """Read ``log`` until it contains ``line`` (at most ``READY_TIMEOUT``)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        if line in text:
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"{process.args!r} exited with {process.returncode} before logging "
                f"{line!r}:\n{text[-2000:]}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"{log} has no {line!r} after {READY_TIMEOUT} s:\n{text[-2000:]}")
        time.sleep(0.05)  # polling a log file for readiness


def _private_dir(parent: Path, name: str) -> Path:
    directory = parent / name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


#: The backend behind nginx's ``/delay`` location: the standard library's
#: threading HTTP server, answering every request after ``DELAY`` seconds.
#: Stock nginx has no "sleep" directive (``echo_sleep`` needs a third-party
#: module, and ``limit_rate`` works in whole seconds), so nginx proxies
#: ``/delay`` here; the client still talks to nginx only.
#:
#: It also counts the requests in flight, so that a test can prove overlap
#: instead of inferring it from a duration: ``/delay?gather=N`` holds each
#: request until N have arrived (at most ``GATHER_TIMEOUT`` s; after one such
#: timeout the round's later requests answer at once, so a client that does
#: not overlap fails fast), and ``/delay/peak`` answers the most requests seen
#: in flight together since the previous ``/delay/peak``, and starts a new
#: round.
DELAY_BACKEND = textwrap.dedent(
    """
    import http.server, sys, threading, time, urllib.parse

    DELAY, GATHER_TIMEOUT = float(sys.argv[2]), float(sys.argv[3])
    state = threading.Condition()
    in_flight = peak = gathered = 0
    gather_failed = False

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            global in_flight, peak, gathered, gather_failed
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/delay/peak":
                with state:
                    body = str(peak).encode()
                    peak, gathered, gather_failed = in_flight, 0, False
                return self.answer(body)
            query = urllib.parse.parse_qs(url.query)
            with state:
                in_flight += 1
                peak = max(peak, in_flight)
                state.notify_all()
            try:
                if "gather" in query:
                    count = int(query["gather"][0])
                    with state:
                        # Counted apart from in_flight, which the first
                        # released requests lower before the others wake.
                        gathered += 1
                        state.notify_all()
                        if not gather_failed and not state.wait_for(
                            lambda: gathered >= count or gather_failed, GATHER_TIMEOUT
                        ):
                            gather_failed = True
                            state.notify_all()
                else:
                    time.sleep(DELAY)
                self.answer(b"delayed\\n")
            finally:
                with state:
                    in_flight -= 1

        def answer(self, body):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 512
        daemon_threads = True

    Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)

#: Longest a ``/delay?gather=N`` request waits for the other N - 1.
GATHER_TIMEOUT = 20.0

#: Seconds each request to nginx's ``/delay`` takes.
DELAY = 0.5

#: Bytes of the static file ``/big.bin`` nginx serves (random, for integrity checks).
BIG_FILE_SIZE = 1 << 20

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/octet-stream;
    keepalive_requests 10000;
    server {{
        listen 127.0.0.1:{http_port};
        listen 127.0.0.1:{https_port} ssl;
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {dir}/www;
        location / {{
        }}
        location /delay {{
            proxy_pass http://127.0.0.1:{backend_port};
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    http_port: int
    https_port: int
    index: bytes
    big: bytes


def start_delay_backend(parent: Path) -> ServerProcess:
    directory = _private_dir(parent, "delay-backend")
    port = free_port()
    argv = [sys.executable, "-c", DELAY_BACKEND, str(port), str(DELAY), str(GATHER_TIMEOUT)]
    return ServerProcess("delay-backend", argv, port, directory).start()


def start_nginx(parent: Path, certs: Certs, backend_port: int) -> tuple[ServerProcess, Nginx]:
    binary = require_binary("nginx", "nginx", "/usr/sbin/nginx")
    directory = _private_dir(parent, "nginx")
    www = _private_dir(directory, "www")
    index = b"<h1>hello from nginx</h1>\n"
    big = os.urandom(BIG_FILE_SIZE)
    (www / "index.html").write_bytes(index)
    (www / "big.bin").write_bytes(big)
    http_port, https_port = free_port(), free_port()
    while https_port == http_port:
        https_port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            dir=directory,
            http_port=http_port,
            https_port=https_port,
            backend_port=backend_port,
            cert=certs.cert_file,
            key=certs.key_file,
        )
    )
    argv = [binary, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log")]
    process = ServerProcess("nginx", argv, http_port, directory, extra={"https": https_port})
    process.start()
    return process, Nginx(http_port, https_port, index, big)


def start_redis(parent: Path) -> ServerProcess:
    binary = require_binary("redis-server", "redis-server")
    directory = _private_dir(parent, "redis")
    port = free_port()
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--dir",
        str(directory),
    ]
    return ServerProcess("redis", argv, port, directory).start()


def start_memcached(parent: Path) -> ServerProcess:
    binary = require_binary("memcached", "memcached")
    directory = _private_dir(parent, "memcached")
    port = free_port()
    argv = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "16"]
    if os.geteuid() == 0:
        argv += ["-u", "root"]  # memcached refuses to run as root without it
    return ServerProcess("memcached", argv, port, directory).start()


def start_smtp(parent: Path, certs: Certs) -> tuple[ServerProcess, Path]:
    """aiosmtpd requiring STARTTLS, storing what it receives in a Maildir (returned)."""
    directory = _private_dir(parent, "smtp")
    maildir = directory / "maildir"
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "aiosmtpd",
        "-n",
        "-l",
        f"127.0.0.1:{port}",
        "--tlscert",
        certs.cert_file,
        "--tlskey",
        certs.key_file,
        "-c",
        "aiosmtpd.handlers.Mailbox",
        str(maildir),
    ]
    return ServerProcess("smtp", argv, port, directory).start(), maildir


# ---------------------------------------------------------------- databases

#: The account the database servers run as when the tests run as root.
UNPRIVILEGED_USER = "nobody"

#: Where Debian puts the PostgreSQL server programs (not on PATH).
POSTGRES_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


@dataclass
class Database:
    """A running database server: where to reach it and as whom."""

    host: str
    port: int
    unix_socket: str
    user: str
    database: str
    process: ServerProcess

    @property
    def pid(self) -> int:
        """The server's main process (the postmaster, or mariadbd)."""
        assert self.process.process is not None
        return self.process.process.pid


def _server_account() -> str | None:
    return UNPRIVILEGED_USER if os.geteuid() == 0 else None


def _throwaway_dir(prefix: str, owner: str | None) -> Path:
    """A new directory under the system temporary directory, owned by ``owner``.

    Not under pytest's own temporary tree: that is private to the test's
    user (mode 0700), so an unprivileged server could not reach it.
    """
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    if owner is not None:
        entry = pwd.getpwnam(owner)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    return directory


def _run_setup(argv: list[str], directory: Path, name: str, user: str | None) -> None:
    """Run a one-off set-up program (initdb, ...); on failure show its output."""
    uid, gid, groups = _account(user)
    log = directory / f"{name}.log"
    with open(log, "wb") as out:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=directory,
            user=uid,
            group=gid,
            extra_groups=groups,
            timeout=120,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(
            f"{argv[0]} failed ({result.returncode}):\n{log.read_text(errors='replace')[-2000:]}"
        )


@contextmanager
def postgres_server() -> Iterator[Database]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 and a Unix socket, trusting local users.

    ``max_connections`` leaves room for the concurrency tests (20 sessions
    and an observer) with every driver's connections of a module open.
    """
    dirs = [str(d) for d in POSTGRES_BIN_DIRS]
    initdb = require_binary("initdb", "postgresql", *(f"{d}/initdb" for d in dirs))
    postgres = require_binary("postgres", "postgresql", *(f"{d}/postgres" for d in dirs))
    user = _server_account()
    directory = _throwaway_dir("socketloop-pg-", user)
    try:
        data = directory / "data"
        _run_setup(
            [
                initdb,
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            directory,
            "initdb",
            user,
        )
        port = free_port()
        argv = [postgres, "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k"]
        argv += [str(directory)]
        for setting in (
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "max_connections=100",
            "shared_buffers=16MB",
        ):
            argv += ["-c", setting]
        process = ServerProcess(
            "postgres",
            argv,
            port,
            directory,
            user=user,
            ready_line="database system is ready to accept connections",
            stop_signal=signal.SIGINT,  # fast shutdown: do not wait for clients
        ).start()
        try:
            socket_path = str(directory / f".s.PGSQL.{port}")
            yield Database("127.0.0.1", port, socket_path, "postgres", "postgres", process)
        finally:
            process.stop()
            _remove_postgres_shared_memory(data)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _remove_postgres_shared_memory(data: Path) -> None:
    """Remove the System V segment of a postmaster that was killed (SIGKILL).

    A clean shutdown removes it and the pid file; a killed postmaster leaves
    both, and the segment would outlive the test run.  Its id is the second
    number on the pid file's seventh line.
    """
    pid_file = data / "postmaster.pid"
    lines = pid_file.read_text().splitlines() if pid_file.exists() else []
    fields = lines[6].split() if len(lines) > 6 else []
    if len(fields) != 2:
        return
    ipcrm = shutil.which("ipcrm")
    if ipcrm is not None:
        subprocess.run([ipcrm, "-m", fields[1]], capture_output=True, check=False)


@contextmanager
def mariadb_server() -> Iterator[Database]:
    """A throwaway MariaDB server on 127.0.0.1 and a Unix socket; ``root`` without password."""
    install = require_binary("mariadb-install-db", "mariadb-server", "/usr/bin/mysql_install_db")
    mariadbd = require_binary(
        "mariadbd", "mariadb-server", "/usr/sbin/mariadbd", "/usr/sbin/mysqld"
    )
    user = _server_account()
    directory = _throwaway_dir("socketloop-mariadb-", user)
    # Started as root, mariadbd drops to --user by itself (and refuses root without it).
    account = [f"--user={user}"] if user is not None else []
    try:
        data = directory / "data"
        speed = ["--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0"]
        _run_setup(
            [
                install,
                "--no-defaults",
                f"--datadir={data}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                *account,
                *speed,
            ],
            directory,
            "install-db",
            None,
        )
        port = free_port()
        socket_path = str(directory / "mysqld.sock")
        argv = [
            mariadbd,
            "--no-defaults",
            f"--datadir={data}",
            f"--socket={socket_path}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--skip-log-bin",
            f"--pid-file={directory / 'mariadbd.pid'}",
            "--max-connections=200",
            *account,
            *speed,
        ]
        process = ServerProcess(
            "mariadb", argv, port, directory, ready_line="ready for connections"
        ).start()
        try:
            yield Database("127.0.0.1", port, socket_path, "root", "mysql", process)
        finally:
            process.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
