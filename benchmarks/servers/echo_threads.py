"""Echo server: one OS thread per connection, blocking sockets (stdlib only)."""

import socket
import threading

from common import READ_SIZE, listener


def handle(sock: socket.socket) -> None:
    with sock:
        try:
            while data := sock.recv(READ_SIZE):
                sock.sendall(data)
        except ConnectionError:
            pass


# 256 KiB stacks instead of 8 MiB: 10,000 threads must fit in the address space
# limits of small machines; it changes no measured figure (RSS counts touched pages).
threading.stack_size(256 * 1024)
server = listener()
while True:
    conn, _ = server.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
