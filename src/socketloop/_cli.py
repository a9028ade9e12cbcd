"""The command line: ``python -m socketloop demo``, ``get URL...`` and ``wsgi MODULE:APP``.

``wsgi`` serves a WSGI app with ``socketloop.wsgi`` (see ``--help``).

``get`` fetches http and https URLs concurrently (https verifies the server
certificate against the system trust store, or ``--cacert``).

The demo is the library's own argument in one screen: the stdlib's
``http.server.BaseHTTPRequestHandler`` serves pages unmodified over accepted
async sockets, and the stdlib's ``http.client`` fetches them unmodified over
``loop.connect``; the fetches overlap, so the total time is close to one
page's delay instead of the sum of all of them.  The comparison is measured:
the same pages are then fetched again one after another, on the same server.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import ssl
import sys
import time
import types
import urllib.parse
from collections.abc import Sequence
from typing import Any

from . import ssl as cooperative_ssl
from ._asocket import AsyncSocket
from ._loop import Loop, get_loop
from ._version import __version__

__all__ = ["main"]


class _DemoPageHandler(http.server.BaseHTTPRequestHandler):
    """A plain stdlib request handler; only ``do_GET`` knows about the demo."""

    protocol_version = "HTTP/1.1"
    delay = 0.2
    loop: Loop

    def do_GET(self) -> None:
        self.loop.sleep(self.delay)  # a slow backend, without blocking other requests
        try:
            number = int(self.path.strip("/").removeprefix("page") or "0")
        except ValueError:
            number = 0
        body = (f"<h1>page {number}</h1>\n" + "socketloop " * (100 * (number + 1))).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the demo prints its own summary


def serve_http(
    loop: Loop, handler_class: type[http.server.BaseHTTPRequestHandler], host: str, port: int
) -> Any:
    """Serve ``handler_class`` (a stdlib request handler) on a socketloop server."""

    def handle(conn: AsyncSocket) -> None:
        address = conn.getpeername()
        info = types.SimpleNamespace(server_name=host, server_port=port)
        handler_class(conn, address, info)  # type: ignore[arg-type]

    return loop.newserver(host, port, handle)


def _fetch(loop: Loop, host: str, port: int, path: str) -> tuple[int, int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host, port)
    conn.sock = loop.connect(host, port)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        return response.status, len(body), time.perf_counter() - started
    finally:
        conn.close()


def demo(pages: int, delay: float, dump: bool = False) -> int:
    loop = get_loop()
    handler = type("DemoPageHandler", (_DemoPageHandler,), {"loop": loop, "delay": delay})
    server = serve_http(loop, handler, "127.0.0.1", 0)
    host, port = "127.0.0.1", server.port
    print(f"socketloop demo: serving on http://{host}:{port}/ (each page takes {delay:.2f} s)")
    print(f"fetching {pages} pages concurrently with http.client over loop.connect()...")
    started = time.perf_counter()
    threads = [loop.newthread(_fetch, loop, host, port, f"/page{i}") for i in range(pages)]
    if dump:
        # Half-way through a page's delay: every fetch and handler is waiting.
        loop.call_later(delay / 2, lambda: print(loop.dump(), flush=True))
    results = [thread.join(timeout=60) for thread in threads]
    total = time.perf_counter() - started
    for i, (status, size, seconds) in enumerate(results):
        print(f"  /page{i:<3} {status}  {size:6d} bytes  {seconds * 1000:7.1f} ms")
    print(f"fetching the same {pages} pages again, one after another, for comparison...")

    def one_after_another() -> float:
        began = time.perf_counter()
        for i in range(pages):
            _fetch(loop, host, port, f"/page{i}")
        return time.perf_counter() - began

    serial = loop.newthread(one_after_another).join(timeout=60 + pages * delay)
    server.close()
    loop.start()
    print(f"total: {total:.2f} s concurrently; one after another (measured): {serial:.2f} s")
    print(f"speed-up: {serial / total:.1f}x on one OS thread")
    return 0


def get(urls: Sequence[str], timeout: float, cafile: str | None = None) -> int:
    loop = get_loop()
    context = None

    def tls_context() -> ssl.SSLContext:
        nonlocal context
        if context is None:
            context = cooperative_ssl.create_default_context(cafile=cafile)
        return context

    def fetch(url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"unsupported URL (http:// and https:// only): {url}"
        secure = parts.scheme == "https"
        host = parts.hostname
        port = parts.port or (443 if secure else 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            sock = loop.connect(host, port, timeout=timeout, tls=tls_context() if secure else None)
            sock.settimeout(timeout)
            conn.sock = sock
            conn.request("GET", path)
            response = conn.getresponse()
            size = len(response.read())
            return f"{response.status} {response.reason}  {size} bytes  {url}"
        except (OSError, ValueError, http.client.HTTPException) as exc:
            return f"error: {exc}  {url}"
        finally:
            conn.close()

    threads = [loop.newthread(fetch, url) for url in urls]
    failed = 0
    for thread in threads:
        line = thread.join()
        failed += line.startswith(("error", "unsupported"))
        print(line)
    return 1 if failed else 0


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` or ``PORT`` -> (host, port); ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]")
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--bind wants HOST:PORT, not {text!r}")
    return host, int(port)


def load_app(spec: str) -> Any:
    """Import ``MODULE:ATTR`` (ATTR may be dotted); the current directory is importable."""
    import importlib
    import os

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"the app must be given as MODULE:APP, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{spec} is not callable")
    return target


def serve_wsgi(args: argparse.Namespace) -> int:
    import logging

    from . import wsgi

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    host, port = parse_bind(args.bind)
    app = load_app(args.app)
    options: dict[str, Any] = {
        "keepalive": args.keepalive,
        "timeout": args.timeout,
        "header_timeout": args.header_timeout,
        "max_body_size": args.max_body_size,
        "access_log": args.access_log,
        "trusted_proxies": args.trusted_proxies,
    }
    if args.max_connections:
        options["max_connections"] = args.max_connections
    if args.certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.certfile, args.keyfile)
        options["tls"] = context
    wsgi.serve(app, host, port, workers=args.workers, grace=args.grace, **options)
    return 0


def _add_wsgi_parser(commands: Any) -> None:
    from .wsgi import (
        DEFAULT_GRACE,
        DEFAULT_HEADER_TIMEOUT,
        DEFAULT_KEEPALIVE,
        DEFAULT_MAX_BODY_SIZE,
        DEFAULT_TIMEOUT,
    )

    parser = commands.add_parser(
        "wsgi",
        help="serve a WSGI app (MODULE:APP) with socketloop.wsgi",
        description=(
            "Serve the WSGI app MODULE:APP over HTTP/1.1, one socketloop thread per "
            "connection. SIGTERM or SIGINT stops gracefully: no new connections, idle "
            "keep-alive connections closed at once, in-flight requests get --grace "
            "seconds and 'Connection: close'. Call socketloop.patch() in the app module "
            "so that its blocking libraries wait cooperatively."
        ),
    )
    parser.add_argument("app", metavar="MODULE:APP", help="e.g. myproject.wsgi:application")
    parser.add_argument(
        "--bind", "-b", default="127.0.0.1:8000", help="HOST:PORT to listen on (127.0.0.1:8000)"
    )
    parser.add_argument(
        "--workers", "-w", type=int, default=1, help="worker processes (1: serve in-process)"
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log each request (Common Log Format)"
    )
    parser.add_argument(
        "--keepalive",
        type=float,
        default=DEFAULT_KEEPALIVE,
        help=f"seconds a connection may idle between requests; 0 disables ({DEFAULT_KEEPALIVE})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds one socket read/write may wait inside a request ({DEFAULT_TIMEOUT})",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=DEFAULT_HEADER_TIMEOUT,
        help=f"seconds for a complete request header block ({DEFAULT_HEADER_TIMEOUT})",
    )
    parser.add_argument(
        "--max-body-size",
        type=int,
        default=DEFAULT_MAX_BODY_SIZE,
        help=f"bytes; larger request bodies get 413 ({DEFAULT_MAX_BODY_SIZE})",
    )
    parser.add_argument(
        "--max-connections", type=int, default=0, help="connections served at once (no limit)"
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        help=f"seconds in-flight requests get at a stop ({DEFAULT_GRACE})",
    )
    parser.add_argument(
        "--trusted-proxies",
        default="",
        metavar="ADDRS",
        help=(
            "comma-separated addresses or networks (or 'unix', '*') whose "
            "X-Forwarded-Proto/-Protocol/-Ssl headers set the URL scheme (none)"
        ),
    )
    parser.add_argument("--certfile", help="serve HTTPS with this certificate chain (PEM)")
    parser.add_argument("--keyfile", help="the private key of --certfile (PEM)")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m socketloop", description="socketloop command line"
    )
    parser.add_argument("--version", action="version", version=f"socketloop {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="serve and fetch pages concurrently")
    demo_parser.add_argument("--pages", type=int, default=10, help="pages to fetch (10)")
    demo_parser.add_argument("--delay", type=float, default=0.2, help="seconds per page (0.2)")
    demo_parser.add_argument(
        "--dump", action="store_true", help="print loop.dump() while the fetches are in flight"
    )
    get_parser = commands.add_parser("get", help="fetch http and https URLs concurrently")
    get_parser.add_argument("urls", nargs="+", metavar="URL")
    get_parser.add_argument("--timeout", type=float, default=30.0, help="seconds (30)")
    get_parser.add_argument(
        "--cacert", metavar="FILE", help="trust this CA bundle instead of the system's"
    )
    try:
        _add_wsgi_parser(commands)
    except ImportError:  # no HTTP parser installed: the command says so when used
        wsgi_parser = commands.add_parser("wsgi", help="serve a WSGI app (needs socketloop[wsgi])")
        wsgi_parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "wsgi":
        if not hasattr(args, "bind"):
            import socketloop.wsgi  # noqa: F401  (raises the ImportError that says what to install)
        return serve_wsgi(args)
    if args.command == "demo":
        return demo(args.pages, args.delay, args.dump)
    return get(args.urls, args.timeout, args.cacert)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
