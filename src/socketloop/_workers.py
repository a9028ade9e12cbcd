"""Worker processes: ``run_server`` serves one handler on every core.

Charter: own the process model.  A supervisor process opens the listening
sockets, forks worker processes that each run their own loop and server over
an inherited listener, and keeps them alive: replaces the dead (with back-off
when they die at start), kills the blocked (no heartbeat from inside their
loop), restarts them one at a time on SIGHUP, grows and shrinks on
SIGTTIN/SIGTTOU, recycles them after ``max_requests`` connections, and stops
them gracefully on SIGTERM/SIGINT.  The supervisor runs no loop, no loop
thread and no OS-thread pool, and refuses to fork while any exists.  This
module must not reach into the loop's scheduling, and workers must never
return into the caller's code after the fork (they end with ``os._exit``).

The work is done in two rooms below this one: ``_supervisor`` (the
supervisor process, and how it holds the port) and ``_workerproc`` (a process
that serves: a forked worker or the ``workers=1`` case).  This module is the
entry point: the checks before any fork and ``WorkerFunctions.run_server``.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from greenlet import getcurrent

from ._kernel import open_loops
from ._supervisor import _Supervisor
from ._threads import Thread
from ._workerproc import DEFAULT_GRACE, DEFAULT_TIMEOUT, Handler, _Config, _serve_in_process

if TYPE_CHECKING:
    from ._loop import Loop

__all__ = ["WorkerFunctions", "check_can_fork"]

logger = logging.getLogger("socketloop.workers")

L = TypeVar("L", bound="Loop")


def check_can_fork() -> None:
    """Raise ``RuntimeError`` unless forking worker processes is safe here.

    Refused: a loop that is running or has threads (they would be copied
    into every worker and never run there), a socketloop OS-thread pool
    (``run_in_thread``, the resolver) or watchdog thread, a running asyncio
    loop or its executor threads (a fork copies their locks in whatever state
    they are in).  Other OS threads are logged as a warning.
    """
    problems: list[str] = []
    for loop in open_loops():
        if loop.running:
            problems.append(f"{loop!r} is running")
        threads = loop.threads()
        if threads:
            names = ", ".join(repr(t.name) for t in threads[:3])
            problems.append(f"{loop!r} has {len(threads)} thread(s) ({names})")
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and asyncio.events._get_running_loop() is not None:
        problems.append("an asyncio event loop is running")
    others = []
    for thread in threading.enumerate():
        if thread is threading.current_thread() or not thread.is_alive():
            continue
        if thread.name.startswith(("socketloop-", "asyncio_")):
            problems.append(f"OS thread {thread.name!r} is alive")
        else:
            others.append(thread.name)
    if problems:
        raise RuntimeError(
            "run_server() cannot fork worker processes: "
            + "; ".join(problems)
            + ".  Call it before any loop thread, run_in_thread() pool, resolver lookup or "
            "asyncio loop exists (each worker makes its own), or close them first."
        )
    if others:
        logger.warning(
            "forking worker processes while other OS threads exist (%s): "
            "only the calling thread is copied",
            ", ".join(others),
        )


class WorkerFunctions(Generic[L]):
    """``run_server`` bound to a module's default-loop function (like ``LoopFunctions``)."""

    def __init__(self, get_loop: Callable[[], L]) -> None:
        self.get_loop = get_loop

    def run_server(
        self,
        host: str | None,
        port: int,
        handler: Handler,
        *,
        workers: int = 1,
        balance: str = "reuseport",
        timeout: float = DEFAULT_TIMEOUT,
        grace: float = DEFAULT_GRACE,
        max_requests: int = 0,
        max_requests_jitter: int = 0,
        **server_options: Any,
    ) -> dict[str, Any]:
        """Serve ``handler`` on ``host``:``port`` in ``workers`` processes; block until stopped.

        ``handler`` and ``server_options`` are what ``newserver`` takes; each
        worker runs its own default loop with one server (``backlog`` and
        ``family`` apply to the listeners the supervisor binds, ``reuse_port``
        is implied by the balance mode).  ``workers=1``
        serves in the calling process (no fork, no supervision; SIGTERM and
        SIGINT stop it gracefully, ``max_requests`` is refused).  With more,
        the calling process becomes the supervisor:

        * ``balance="reuseport"`` (default): every worker accepts from its
          own ``SO_REUSEPORT`` listener and the kernel spreads connections by
          hash; ``"shared"``: one listener, inherited by all, registered with
          ``EPOLLEXCLUSIVE`` so a connection wakes one idle worker, which
          accepts one connection per turn of its loop.
        * a worker that dies is replaced (after a back-off if it keeps dying
          at start); one whose loop sends no heartbeat for ``timeout``
          seconds (a handler blocking the loop) is killed and replaced;
          after ``max_requests`` connections (plus a random
          0..``max_requests_jitter``) a worker stops accepting, its
          successor starts, and it finishes its connections.
        * SIGTERM/SIGINT: graceful stop (stop accepting, give in-flight
          connections ``grace`` seconds, then close them and end their
          threads with ``ThreadExit``); a second one kills the workers.
          SIGHUP: rolling restart, one worker at a time, each successor
          serving before its predecessor stops.  SIGTTIN/SIGTTOU: one worker
          more/less.

        Returns a summary (also logged): connections accepted per worker,
        replacements, kills, recycles.  Raises ``OSError(EADDRINUSE)`` at once
        if anything listens on the port already (a second instance), and
        ``RuntimeError`` if forking is unsafe (see ``check_can_fork``), if
        called from a loop thread or outside the main OS thread, or if no
        worker could ever start serving.  ``ValueError`` for bad arguments.
        """
        config = _Config(
            host=host,
            port=port,
            handler=handler,
            workers=workers,
            balance=balance,
            timeout=timeout,
            grace=grace,
            max_requests=max_requests,
            max_requests_jitter=max_requests_jitter,
            options=dict(server_options),
            get_loop=self.get_loop,
        )
        config.validate()
        if isinstance(getcurrent(), Thread):
            raise RuntimeError("run_server() blocks until stopped: call it outside loop threads")
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("run_server() handles signals: call it from the main OS thread")
        if workers == 1:
            return _serve_in_process(config)
        check_can_fork()
        return _Supervisor(config).run()
