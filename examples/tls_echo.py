"""A TLS echo server and a client talking to it, with a certificate made at run time.

Run:  python examples/tls_echo.py            (needs trustme: pip install trustme)

trustme makes a throwaway certificate authority and a certificate for
"localhost" signed by it; the server presents the certificate, the client
trusts only that authority and verifies the server's name, as it would on the
open network with the system's trust store (loop.connect(host, 443, tls=True)).
"""

from __future__ import annotations

import ssl
import sys

import socketloop
import socketloop as loop

try:
    import trustme
except ImportError:
    sys.exit("this example needs trustme to make its certificate: pip install trustme")


def echo(conn: socketloop.AsyncSocket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def client(port: int, context: ssl.SSLContext, lines: list[bytes]) -> list[bytes]:
    # server_hostname: the name the certificate must carry (checked by the context).
    sock = loop.connect("127.0.0.1", port, tls=context, server_hostname="localhost", timeout=10)
    replies = []
    with sock:
        cipher = sock.cipher()
        print(f"client: TLS {sock.version()}, cipher {cipher[0] if cipher else '?'}")
        for line in lines:
            sock.sendall(line)
            replies.append(sock.recv(65536))
    return replies


def main() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = socketloop.ssl.create_default_context()
    ca.configure_trust(client_context)

    server = loop.newserver("127.0.0.1", 0, echo, tls=server_context, handshake_timeout=10)
    print(f"server: TLS echo on 127.0.0.1:{server.port}")

    def run_client() -> None:
        try:
            for reply in client(server.port, client_context, [b"hello", b"over TLS"]):
                print(f"client: got {reply!r}")
        finally:
            server.close()  # an open server keeps start() running

    loop.newthread(run_client)
    loop.start()


if __name__ == "__main__":
    main()
