"""Child program for tests/test_workers.py: ``run_server`` with a scriptable handler.

Run as ``python tests/_workers_child.py CONFIG_JSON``.  CONFIG holds the
``run_server`` keywords plus ``api`` (``socketloop`` or ``socketloop.coro``),
``port`` (default 0) and ``before`` (``"loop thread"``: start a loop thread
first; ``"pool"``: make one ``run_in_thread`` call first, which leaves the
pool's OS thread alive; either must make ``run_server`` refuse to fork).  Logging goes to
stderr as ``PID message``; the test reads the port from the supervisor's
"serving" line.  On return the summary is printed to stdout as JSON; an
exception is printed as ``error: TYPE: MESSAGE`` with exit status 2.

The handler reads one command line and answers:
  ``pid``          its process id
  ``slow SECONDS`` ``started``, then after a cooperative sleep its pid
  ``block``        its pid, then blocks the whole loop with ``time.sleep``
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
from typing import Any

from socketloop import AsyncSocket


def read_line(conn: AsyncSocket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(256)
        if not chunk:
            break
        data += chunk
    return data.strip()


def main() -> int:
    config: dict[str, Any] = json.loads(sys.argv[1])
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(process)d %(name)s %(message)s"
    )
    api: Any = importlib.import_module(config.pop("api", "socketloop"))
    port = config.pop("port", 0)
    before = config.pop("before", None)

    def handler(conn: AsyncSocket) -> None:
        words = read_line(conn).split()
        pid = str(os.getpid()).encode()
        if not words or words[0] == b"pid":
            conn.sendall(pid)
        elif words[0] == b"slow":
            conn.sendall(b"started\n")
            api.sleep(float(words[1]))
            conn.sendall(pid)
        elif words[0] == b"block":
            conn.sendall(pid)
            time.sleep(60)  # blocks the loop: no heartbeat any more

    if before == "loop thread":
        api.newthread(api.sleep, 30)
    elif before == "pool":
        api.newthread(api.run_in_thread, int, "1")
        api.start()
    try:
        summary = api.run_server("127.0.0.1", port, handler, **config)
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {exc}", flush=True)
        return 2
    print(json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
