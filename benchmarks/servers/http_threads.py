"""HTTP/1.1 keep-alive "hello" responder: one OS thread per connection (stdlib)."""

import socket
import threading

from common import END, READ_SIZE, RESPONSE, listener


def handle(sock: socket.socket) -> None:
    buf = b""
    with sock:
        try:
            while data := sock.recv(READ_SIZE):
                buf += data
                while (end := buf.find(END)) >= 0:
                    buf = buf[end + 4 :]
                    sock.sendall(RESPONSE)
        except ConnectionError:
            pass


threading.stack_size(256 * 1024)
server = listener()
while True:
    conn, _ = server.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
