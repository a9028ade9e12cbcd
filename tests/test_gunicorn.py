"""``gunicorn -k socketloop.gunicorn.Worker``: the real gunicorn, a real Flask app, on loopback.

gunicorn runs as a child process; the tests drive it with signals and watch
it through HTTP only (the worker's pid is in each answer), polling for
conditions with a deadline.
"""

from __future__ import annotations

import http.client
import http.server
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import gunicorn.config  # type: ignore[import-untyped]
import gunicorn.workers.base  # type: ignore[import-untyped]
import pytest
import requests

from _servers import free_port, make_certs, wait_until_listening

pytestmark = pytest.mark.slow

#: Seconds the slow backend takes per request.
BACKEND_DELAY = 0.2

APP = textwrap.dedent(
    """
    import http.client, os, time
    import flask
    import socketloop

    socketloop.patch()  # the app's blocking calls wait cooperatively
    app = flask.Flask(__name__)
    state = {"inside": 0, "peak": 0}

    @app.get("/")
    def index():
        return {"pid": os.getpid()}

    @app.get("/backend")
    def backend():
        state["inside"] += 1
        state["peak"] = max(state["peak"], state["inside"])
        try:
            conn = http.client.HTTPConnection("127.0.0.1", int(os.environ["BACKEND_PORT"]))
            conn.request("GET", "/")
            body = conn.getresponse().read().decode()
            conn.close()
        finally:
            state["inside"] -= 1
        return {"body": body}

    @app.get("/scheme")
    def scheme():
        return {"scheme": flask.request.scheme}

    @app.get("/peak")
    def peak():
        return {"peak": state["peak"]}

    @app.get("/hold")
    def hold():
        open(os.environ["HOLD_MARKER"], "w").close()
        time.sleep(float(os.environ["HOLD_SECONDS"]))  # in flight when the test signals
        return {"held": True, "pid": os.getpid()}

    @app.get("/block")
    def block():
        open(os.environ["HOLD_MARKER"] + ".block", "w").close()
        end = time.monotonic() + 30
        while time.monotonic() < end:  # CPU-bound: the worker's loop stops
            pass
        return {}
    """
)


class _SlowBackend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        time.sleep(BACKEND_DELAY)  # an OS thread per request (ThreadingHTTPServer)
        body = b"slow backend"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _BackendServer(http.server.ThreadingHTTPServer):
    request_queue_size = 512
    daemon_threads = True


@pytest.fixture
def backend() -> Iterator[int]:
    server = _BackendServer(("127.0.0.1", 0), _SlowBackend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@dataclass
class Gunicorn:
    process: subprocess.Popen[bytes]
    port: int
    directory: Path
    scheme: str = "http"
    verify: str | bool = True

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def get(self, path: str, timeout: float = 10) -> requests.Response:
        return requests.get(self.url + path, timeout=timeout, verify=self.verify)

    def worker_pid(self) -> int:
        return int(self.get("/").json()["pid"])

    def log(self) -> str:
        return (self.directory / "gunicorn.log").read_text(errors="replace")

    def wait_for_new_worker(self, old: int, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pid = self.worker_pid()
            except requests.RequestException:
                pid = old
            if pid != old:
                return pid
            time.sleep(0.05)  # polling the arbiter's progress, with a deadline
        raise AssertionError(f"no new worker after {timeout} s:\n{self.log()[-3000:]}")


def start_gunicorn(
    directory: Path, backend_port: int, *args: str, hold: float = 1.0, ready: bool = True
) -> Gunicorn:
    (directory / "slapp.py").write_text(APP)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-k",
        "socketloop.gunicorn.Worker",
        "-b",
        f"127.0.0.1:{port}",
        "--chdir",
        str(directory),
        "--graceful-timeout",
        "10",
        *args,
    ]
    if any(s.name == "control_socket_disable" for s in gunicorn.config.KNOWN_SETTINGS):
        argv.append("--no-control-socket")
    argv.append("slapp:app")
    env = dict(os.environ)
    env["BACKEND_PORT"] = str(backend_port)
    env["HOLD_MARKER"] = str(directory / "holding")
    env["HOLD_SECONDS"] = str(hold)
    with open(directory / "gunicorn.log", "wb") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        if ready:
            wait_until_listening("127.0.0.1", port, process, directory / "gunicorn.log")
    except BaseException:
        process.kill()
        process.wait()
        raise
    return Gunicorn(process, port, directory)


def stop(server: Gunicorn) -> int:
    if server.process.poll() is None:
        server.process.terminate()
    try:
        return server.process.wait(20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        raise


@pytest.fixture
def run_gunicorn(tmp_path: Path, backend: int) -> Iterator[list[Gunicorn]]:
    started: list[Gunicorn] = []
    try:
        yield started
    finally:
        for server in started:
            stop(server)


def launch(
    started: list[Gunicorn],
    tmp_path: Path,
    backend: int,
    *args: str,
    hold: float = 1.0,
    ready: bool = True,
) -> Gunicorn:
    """Start gunicorn (stopped at the test's end); ``ready``: wait until it listens."""
    server = start_gunicorn(tmp_path, backend, *args, hold=hold, ready=ready)
    started.append(server)
    return server


def test_serves_a_flask_app(run_gunicorn: list[Gunicorn], tmp_path: Path, backend: int) -> None:
    server = launch(run_gunicorn, tmp_path, backend, "-w", "2", "--access-logfile", "-")
    with requests.Session() as session:
        for _ in range(3):  # over one keep-alive connection
            response = session.get(server.url + "/?x=1", timeout=10)
            assert response.status_code == 200
    assert "socketloop.gunicorn.Worker" in server.log()
    deadline = time.monotonic() + 10
    while server.log().count('"GET /?x=1 HTTP/1.1" 200') < 3:  # gunicorn's access log
        assert time.monotonic() < deadline, server.log()[-2000:]
        time.sleep(0.02)  # polling the log file, with a deadline


@pytest.mark.timeout(120)
def test_100_blocking_requests_overlap(
    run_gunicorn: list[Gunicorn], tmp_path: Path, backend: int
) -> None:
    server = launch(run_gunicorn, tmp_path, backend, "-w", "1", "--backlog", "512")

    def fetch(_: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/backend")
        status = conn.getresponse().status
        conn.close()
        return status

    with ThreadPoolExecutor(100) as pool:
        started = time.monotonic()
        statuses = list(pool.map(fetch, range(100)))
        elapsed = time.monotonic() - started
    assert statuses == [200] * 100
    assert server.get("/peak").json()["peak"] == 100
    assert elapsed < 5.0  # about 0.2 s; loose, the machine is shared


def start_holding(server: Gunicorn) -> http.client.HTTPConnection:
    """Send a request that stays in the app; return once the app is inside it."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("GET", "/hold")
    marker = server.directory / "holding"
    deadline = time.monotonic() + 10
    while not marker.exists():
        assert time.monotonic() < deadline, "the request never reached the app"
        time.sleep(0.01)  # polling for the app to be inside the request
    return conn


def test_sigterm_finishes_in_flight_requests(
    run_gunicorn: list[Gunicorn], tmp_path: Path, backend: int
) -> None:
    server = launch(run_gunicorn, tmp_path, backend, "-w", "1")
    conn = start_holding(server)
    server.process.send_signal(signal.SIGTERM)
    response = conn.getresponse()
    assert response.status == 200
    assert b'"held":true' in response.read().replace(b" ", b"")
    assert response.getheader("Connection") == "close"
    conn.close()
    assert server.process.wait(20) == 0


BOOT_HOOK = textwrap.dedent(
    """
    import os, time

    def post_fork(server, worker):
        # Between the fork and the worker's own signal handlers: report, then
        # wait until the arbiter's inherited handler has queued a signal here.
        marker = os.environ["HOLD_MARKER"] + ".forked"
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        deadline = time.monotonic() + 20
        while server.SIG_QUEUE.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
    """
)


def test_sigterm_that_reaches_a_worker_before_its_handlers_still_stops_it(
    run_gunicorn: list[Gunicorn], tmp_path: Path, backend: int
) -> None:
    (tmp_path / "boot_hook.py").write_text(BOOT_HOOK)
    hook = str(tmp_path / "boot_hook.py")
    server = launch(run_gunicorn, tmp_path, backend, "-w", "1", "-c", hook)
    forked = tmp_path / "holding.forked"
    deadline = time.monotonic() + 20
    while not (forked.exists() and forked.read_text()):
        assert time.monotonic() < deadline, server.log()[-2000:]
        time.sleep(0.02)  # polling for the hook's marker, with a deadline
    worker = int(forked.read_text())
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0
    # A worker the arbiter had to SIGKILL after graceful_timeout logs nothing more.
    assert f"Worker exiting (pid: {worker})" in server.log(), server.log()[-2000:]


def test_sigterm_closes_idle_keep_alive_connections_at_once(
    run_gunicorn: list[Gunicorn], tmp_path: Path, backend: int
) -> None:
    server = launch(run_gunicorn, tmp_path, backend, "-w", "1", "--keep-alive", "60")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/")
    assert conn.getresponse().read()
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0
    conn.close()
    assert time.monotonic() - started < 8  # not the 10 s graceful_timeout nor the 60 s keep-alive


def test_sigint_stops_without_waiting_for_requests(
    run_gunicorn: list[Gunicorn], tmp_path: Path, backend: int
) -> None:
    server = launch(run_gunicorn, tmp_path, backend, "-w", "1", hold=60)
    conn = start_holding(server)
    started = time.monotonic()
    server.process.send_signal(signal.SIGINT)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        conn.getresponse()
    conn.close()
    server.process.wait(30)
    assert time.monotonic() - started < 8  # neither the request's 60 s nor the 10 s grace


def test_sighup_replaces_the_worker(
    run_gunicorn: list[Gunicorn], tmp_path: Path, backend: int
) -> None:
    server = launch(run_gunicorn, tmp_path, backend, "-w", "1")
    old = server.worker_pid()
    server.process.send_signal(signal.SIGHUP)
    new = server.wait_for_new_worker(old)
    assert new != old
    assert server.get("/").status_code == 200


def test_killed_worker_is_replaced(
    run_gunicorn: list[Gunicorn], tmp_path: Path, backend: int
) -> None:
    server = launch(run_gunicorn, tmp_path, backend, "-w", "1")
    old = server.worker_pid()
    os.kill(old, signal.SIGKILL)
    server.wait_for_new_worker(old)
    assert server.get("/").status_code == 200


def test_max_requests_recycles_the_worker(
    run_gunicorn: list[Gunicorn], tmp_path: Path, backend: int
) -> None:
    server = launch(run_gunicorn, tmp_path, backend, "-w", "1", "--max-requests", "3")
    first = server.worker_pid()
    server.wait_for_new_worker(first)
    assert "Autorestarting worker" in server.log()


@pytest.mark.timeout(120)
def test_blocked_loop_misses_heartbeats_and_is_replaced(
    run_gunicorn: list[Gunicorn], tmp_path: Path, backend: int
) -> None:
    server = launch(run_gunicorn, tmp_path, backend, "-w", "1", "--timeout", "2")
    old = server.worker_pid()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("GET", "/block")
    marker = tmp_path / "holding.block"
    deadline = time.monotonic() + 10
    while not marker.exists():
        assert time.monotonic() < deadline, "the request never reached the app"
        time.sleep(0.01)  # polling for the app to be inside the request
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        conn.getresponse()  # the worker is killed inside the request: no answer
    conn.close()
    server.wait_for_new_worker(old, timeout=40)
    assert "WORKER TIMEOUT" in server.log()


def test_tls_from_gunicorn_settings(
    run_gunicorn: list[Gunicorn], tmp_path: Path, backend: int
) -> None:
    certs = make_certs(tmp_path / "certs")
    server = launch(
        run_gunicorn,
        tmp_path,
        backend,
        "-w",
        "1",
        "--certfile",
        certs.cert_file,
        "--keyfile",
        certs.key_file,
    )
    server.scheme = "https"
    server.verify = certs.ca_file
    response = server.get("/")
    assert response.status_code == 200
    assert response.json()["pid"] > 0


HOOKS = textwrap.dedent(
    """
    import os

    def pre_request(worker, req):
        req.seen_by_pre = f"{req.method} {req.path} {req.query} {req.version}"
        with open(os.environ["HOOK_LOG"], "a") as log:
            log.write(f"pre {req.seen_by_pre} {dict(req.headers).get('X-TEST')}\\n")

    def post_request(worker, req, environ, resp):
        with open(os.environ["HOOK_LOG"], "a") as log:
            host, _ = req.peer_addr
            log.write(f"post {req.seen_by_pre} {resp.status_code} {environ['PATH_INFO']} {host}\\n")
    """
)


def test_pre_and_post_request_hooks_run_around_each_request(
    run_gunicorn: list[Gunicorn], tmp_path: Path, backend: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook_log = tmp_path / "hooks.log"
    (tmp_path / "hooks.py").write_text(HOOKS)
    monkeypatch.setenv("HOOK_LOG", str(hook_log))
    server = launch(run_gunicorn, tmp_path, backend, "-w", "1", "-c", str(tmp_path / "hooks.py"))
    assert requests.get(server.url + "/?x=1", headers={"X-Test": "yes"}, timeout=10).ok
    assert requests.get(server.url + "/missing", timeout=10).status_code == 404
    deadline = time.monotonic() + 10
    while hook_log.read_text().count("\n") < 4 if hook_log.exists() else True:
        assert time.monotonic() < deadline, server.log()[-2000:]
        time.sleep(0.02)  # polling the hooks' file, with a deadline
    assert hook_log.read_text().splitlines() == [
        "pre GET / x=1 (1, 1) yes",
        "post GET / x=1 (1, 1) 200 / 127.0.0.1",
        "pre GET /missing  (1, 1) None",
        "post GET /missing  (1, 1) 404 /missing 127.0.0.1",
    ]


def test_an_allowed_proxy_sets_the_scheme_with_x_forwarded_proto(
    run_gunicorn: list[Gunicorn], tmp_path: Path, backend: int
) -> None:
    server = launch(run_gunicorn, tmp_path, backend, "-w", "1")  # allows 127.0.0.1 by default
    forwarded = {"X-Forwarded-Proto": "https"}
    assert requests.get(server.url + "/scheme", headers=forwarded, timeout=10).json() == {
        "scheme": "https"
    }
    assert server.get("/scheme").json() == {"scheme": "http"}


def test_scheme_headers_of_a_peer_not_allowed_are_ignored(
    run_gunicorn: list[Gunicorn], tmp_path: Path, backend: int
) -> None:
    server = launch(run_gunicorn, tmp_path, backend, "-w", "1", "--forwarded-allow-ips", "10.9.9.9")
    forwarded = {"X-Forwarded-Proto": "https"}
    assert requests.get(server.url + "/scheme", headers=forwarded, timeout=10).json() == {
        "scheme": "http"
    }


def test_proxy_protocol_is_refused_at_boot(
    run_gunicorn: list[Gunicorn], tmp_path: Path, backend: int
) -> None:
    # Not waiting for it to listen: the arbiter may be gone before a connect.
    server = launch(run_gunicorn, tmp_path, backend, "-w", "1", "--proxy-protocol", ready=False)
    assert server.process.wait(60) != 0  # the arbiter gives up: the worker failed to boot
    assert "does not speak the PROXY protocol" in server.log()


def test_public_names_exist() -> None:
    import socketloop.gunicorn

    assert socketloop.gunicorn.__all__ == ["Request", "Response", "Worker"]
    assert issubclass(socketloop.gunicorn.Worker, gunicorn.workers.base.Worker)
