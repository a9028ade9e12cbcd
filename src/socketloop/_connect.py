"""Opening connections: resolution, happy eyeballs, TLS, Unix paths.

Charter: turn "host, port" into one connected ``AsyncSocket`` (or
``AsyncTLSSocket``) within one deadline, and nothing else.

Happy eyeballs (RFC 8305): when a name resolves to several addresses, the
attempts are ordered with the address families interleaved (keeping the
resolver's preferred family first, RFC 8305 section 4) and started one
*connection attempt delay* apart (250 ms by default, section 5), each in its
own loop thread; a failed attempt starts the next one at once.  The first
attempt to connect wins and the others are cancelled (killed, their sockets
closed).  With a single address, or from outside a loop thread, or with the
delay set to None, addresses are simply tried in order.
"""

from __future__ import annotations

import queue as _queue
import socket as _socket
import ssl as _ssl
import time
from typing import TYPE_CHECKING, Any

from . import _originals
from ._asocket import AsyncSocket
from ._threads import Thread
from ._tls import create_default_context

if TYPE_CHECKING:
    from ._loop import Loop

__all__ = ["HAPPY_EYEBALLS_DELAY", "open_connection", "open_unix_connection"]

#: RFC 8305's recommended "Connection Attempt Delay".
HAPPY_EYEBALLS_DELAY = 0.25

AddrInfo = tuple[Any, ...]


def interleave(infos: list[AddrInfo]) -> list[AddrInfo]:
    """Alternate address families, the first family of ``infos`` first."""
    by_family: dict[int, list[AddrInfo]] = {}
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    queues = list(by_family.values())
    ordered: list[AddrInfo] = []
    while any(queues):
        for entries in queues:
            if entries:
                ordered.append(entries.pop(0))
    return ordered


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _raise_first(errors: list[OSError], address: Any) -> None:
    if not errors:
        raise OSError(f"getaddrinfo returned no addresses for {address!r}")
    first = errors[0]
    if len(errors) > 1 and hasattr(first, "add_note"):
        for other in errors[1:]:
            first.add_note(f"also tried: {other}")
    raise first


def _local_sockaddr(
    loop: Loop, family: int, local_address: str | None, local_port: int | None
) -> Any:
    if local_address is None:
        local_address = "::" if family == _socket.AF_INET6 else "0.0.0.0"
    infos = loop.getaddrinfo(
        local_address, local_port or 0, family, _socket.SOCK_STREAM, 0, _socket.AI_PASSIVE
    )
    return infos[0][4]


def _attempt(
    loop: Loop,
    info: AddrInfo,
    local_address: str | None,
    local_port: int | None,
    deadline: float | None,
) -> AsyncSocket:
    """Connect one socket to one resolved address; close it on any failure."""
    family, type_, proto, _canonname, sockaddr = info
    local: Any = None
    if local_address is not None or local_port is not None:
        local = _local_sockaddr(loop, family, local_address, local_port)
    sock = _originals.socket_class(family, type_, proto)
    asock = AsyncSocket(sock, loop, timeout=None, stream=True)
    try:
        if local is not None:
            sock.bind(local)
        asock._connect(sockaddr, deadline)
    except BaseException:
        asock.close()
        raise
    return asock


def _connect_in_turn(
    loop: Loop,
    infos: list[AddrInfo],
    address: Any,
    local_address: str | None,
    local_port: int | None,
    deadline: float | None,
) -> AsyncSocket:
    errors: list[OSError] = []
    for info in infos:
        try:
            return _attempt(loop, info, local_address, local_port, deadline)
        except TimeoutError:
            raise  # the whole budget is spent
        except OSError as exc:
            errors.append(exc)
    _raise_first(errors, address)
    raise AssertionError("unreachable")  # pragma: no cover


def _connect_racing(
    loop: Loop,
    infos: list[AddrInfo],
    address: Any,
    local_address: str | None,
    local_port: int | None,
    deadline: float | None,
    delay: float,
) -> AsyncSocket:
    from ._sync import Queue

    results: Queue[tuple[AsyncSocket | None, OSError | None]] = Queue()
    attempts: list[Thread[None]] = []
    errors: list[OSError] = []
    pending = list(infos)

    def attempt(info: AddrInfo) -> None:
        try:
            asock = _attempt(loop, info, local_address, local_port, deadline)
        except OSError as exc:
            results.put((None, exc))
            return
        results.put((asock, None))

    def start_next() -> None:
        thread = loop.newthread(attempt, pending.pop(0))
        thread.name = f"connect attempt {len(attempts) + 1} to {address!r}"
        attempts.append(thread)

    winner: AsyncSocket | None = None
    finished = 0
    try:
        start_next()
        while finished < len(attempts):
            wait = _remaining(deadline)
            if pending:
                wait = delay if wait is None else min(delay, wait)
            try:
                asock, error = results.get(timeout=wait)
            except _queue.Empty:
                if pending and (deadline is None or time.monotonic() < deadline):
                    start_next()  # the attempt delay passed: race another address
                    continue
                raise TimeoutError(f"timed out connecting to {address!r}") from None
            finished += 1
            if asock is not None:
                winner = asock
                break
            assert error is not None
            errors.append(error)
            if pending:
                start_next()  # a failure starts the next attempt at once
    finally:
        for thread in attempts:
            if thread.is_alive():
                thread.kill()
        while not results.empty():  # a loser that connected in the same instant
            late, _ = results.get_nowait()
            if late is not None and late is not winner:
                late.close()
    if winner is not None:
        return winner
    timeouts = [e for e in errors if isinstance(e, TimeoutError)]
    if timeouts and len(timeouts) == len(errors):
        raise timeouts[0]
    _raise_first(errors, address)
    raise AssertionError("unreachable")  # pragma: no cover


def open_connection(
    loop: Loop,
    address: str,
    port: int | str,
    local_address: str | None = None,
    local_port: int | None = None,
    *,
    timeout: float | None = None,
    tls: bool | _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    happy_eyeballs_delay: float | None = HAPPY_EYEBALLS_DELAY,
) -> AsyncSocket:
    """The body of ``Loop.connect``."""
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    infos = interleave(loop.getaddrinfo(address, port, 0, _socket.SOCK_STREAM))
    if len(infos) > 1 and happy_eyeballs_delay is not None and loop.current() is not None:
        asock = _connect_racing(
            loop, infos, address, local_address, local_port, deadline, happy_eyeballs_delay
        )
    else:
        asock = _connect_in_turn(loop, infos, address, local_address, local_port, deadline)
    if tls:
        asock = _start_client_tls(asock, tls, server_hostname or address, deadline)
    asock._timeout = _socket.getdefaulttimeout()
    return asock


def _start_client_tls(
    asock: AsyncSocket,
    tls: bool | _ssl.SSLContext,
    server_hostname: str | None,
    deadline: float | None,
) -> AsyncSocket:
    if tls is True:
        context: _ssl.SSLContext = create_default_context()
    elif isinstance(tls, _originals.SSLContext):
        context = tls
    else:
        raise TypeError(f"tls must be True or an ssl.SSLContext, not {type(tls).__name__}")
    asock._timeout = _remaining(deadline)
    try:
        return asock.starttls(context, server_hostname=server_hostname)  # type: ignore[no-any-return]
    except BaseException:
        asock.close()
        raise


def open_unix_connection(
    loop: Loop,
    path: str | bytes,
    *,
    timeout: float | None = None,
    tls: bool | _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> AsyncSocket:
    """The body of ``Loop.connect_unix``."""
    if tls and server_hostname is None and (tls is True or getattr(tls, "check_hostname", False)):
        raise ValueError("TLS over a Unix socket needs server_hostname")
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    plain = _originals.socket_class(_socket.AF_UNIX, _socket.SOCK_STREAM)
    asock = AsyncSocket(plain, loop, timeout=None)
    try:
        asock._connect(path, deadline)
    except BaseException:
        asock.close()
        raise
    if tls:
        asock = _start_client_tls(asock, tls, server_hostname, deadline)
    asock._timeout = _socket.getdefaulttimeout()
    return asock
