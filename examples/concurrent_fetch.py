"""Fetch several http:// URLs at once with the standard library's http.client.

Run:  python examples/concurrent_fetch.py http://127.0.0.1:8000/a http://127.0.0.1:8000/b

Each fetch is a loop thread running ordinary http.client code over a socket from
loop.connect(); while one waits for its server, the others run.
"""

from __future__ import annotations

import argparse
import http.client
import time
import urllib.parse

import socketloop as loop


def fetch(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    started = time.monotonic()
    conn = http.client.HTTPConnection(host, port)
    conn.sock = loop.connect(host, port, timeout=10)  # the only socketloop line
    try:
        conn.request("GET", parts.path or "/")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return f"{response.status} {len(body):7d} bytes {time.monotonic() - started:6.3f} s  {url}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("urls", nargs="+", metavar="URL")
    args = parser.parse_args()
    started = time.monotonic()
    threads = [loop.newthread(fetch, url) for url in args.urls]
    loop.start()  # returns when every fetch has ended
    for thread in threads:
        print(thread.join())  # the result, or the fetch's exception re-raised
    print(f"{len(threads)} URLs in {time.monotonic() - started:.3f} s")


if __name__ == "__main__":
    main()
