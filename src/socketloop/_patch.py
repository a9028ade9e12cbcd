"""Opt-in patching of the standard library: ``patch()``, ``unpatch()``, ``patched()``.

Charter: for libraries with no hook to pass a socket or a socket module
(urllib3, requests, redis-py's default pool), swap the standard library's
pieces for socketloop's cooperative ones, and put them back on ``unpatch``.
Every replacement behaves exactly like the original outside loop threads
(plain blocking calls), so patching is safe for code that never runs in a
loop thread.

What each switch replaces:

- ``socket``: ``socket.socket`` (the cooperative ``AsyncSocket`` class),
  ``create_connection``, ``create_server``, ``socketpair``, ``fromfd`` and
  the resolver functions (which resolve off the loop).
- ``ssl``: ``ssl.SSLContext.wrap_socket`` (every context, also those made
  before patching, then accepts cooperative sockets and returns cooperative
  TLS sockets for them).
- ``select``: ``select.select``, ``select.poll`` and
  ``selectors.DefaultSelector`` (a non-zero timeout suspends only the
  calling loop thread).
- ``time``: ``time.sleep`` (``loop.sleep`` inside loop threads).
- ``threading`` (off by default, see ``_hybrid``): ``threading.Lock``,
  ``RLock`` and the lock allocator behind ``Condition``, ``Event``,
  ``Semaphore``; ``queue.SimpleQueue``.

A module that imported an original by name before patching (``from socket
import create_connection``) keeps the original; ``patch`` warns, naming such
modules, since they will block their loop.
"""

from __future__ import annotations

import contextlib
import queue
import select
import selectors
import socket as _stdlib_socket
import ssl as _stdlib_ssl
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from greenlet import getcurrent

from . import _originals
from ._threads import Thread

__all__ = ["is_patched", "patch", "patched", "unpatch"]

#: (module or class, attribute) -> original value, for everything currently patched.
_saved: dict[tuple[Any, str], Any] = {}

_original_sleep = _originals.sleep


def _cooperative_sleep(seconds: float) -> None:
    """``time.sleep`` that suspends only the calling loop thread."""
    current = getcurrent()
    if isinstance(current, Thread):
        current._loop.sleep(seconds)
    else:
        _original_sleep(seconds)


def _replacements(
    socket: bool, ssl: bool, select_: bool, time_: bool, threading_: bool
) -> list[tuple[Any, str, Any]]:
    items: list[tuple[Any, str, Any]] = []
    if socket:
        from . import socket as drop_in

        # Not SocketType: it stays the C base type, which every socket,
        # cooperative or not, is an instance of (see AsyncSocket.__class__).
        for name in (
            "socket",
            "create_connection",
            "create_server",
            "socketpair",
            "fromfd",
            "getaddrinfo",
            "gethostbyname",
            "gethostbyname_ex",
            "gethostbyaddr",
            "getnameinfo",
            "getfqdn",
        ):
            items.append((_stdlib_socket, name, getattr(drop_in, name)))
    if ssl:
        from . import ssl as cooperative_ssl

        # The method, not the class: the stdlib's SSLContext setters look the
        # class up by name (super(SSLContext, SSLContext)), so replacing the
        # name would make them recurse; and patching the method also covers
        # contexts made before patch() and classes bound at import time.
        items.append(
            (_stdlib_ssl.SSLContext, "wrap_socket", cooperative_ssl.cooperative_wrap_socket)
        )
    if select_:
        from . import _select

        items.append((select, "select", _select.select))
        items.append((select, "poll", _select.poll))
        items.append((selectors, "DefaultSelector", _select.CooperativeSelector))
    if time_:
        items.append((time, "sleep", _cooperative_sleep))
    if threading_:
        from . import _hybrid

        items.append((threading, "Lock", _hybrid.HybridLock))
        items.append((threading, "RLock", _hybrid.HybridRLock))
        items.append((threading, "_allocate_lock", _hybrid.allocate_lock))
        items.append((queue, "SimpleQueue", queue._PySimpleQueue))  # type: ignore[attr-defined]
    return items


def patch(
    socket: bool = True,
    ssl: bool = True,
    select: bool = True,
    time: bool = True,
    threading: bool = False,
) -> None:
    """Make the chosen standard-library pieces cooperative inside loop threads.

    Idempotent; ``unpatch()`` restores the originals.  Warns (``RuntimeWarning``)
    naming the modules that imported an original before the call.
    ``threading=True`` is off by default: it makes every lock created
    afterwards (also those only OS threads use) a little slower, and its
    waiters are not served in FIFO order; turn it on when a library's
    connection pool blocks on ``threading``/``queue`` primitives.
    """
    items = _replacements(socket, ssl, select, time, threading)
    originals = []
    for module, name, replacement in items:
        key = (module, name)
        if key not in _saved:
            _saved[key] = getattr(module, name)
        originals.append((module, name, _saved[key]))
        setattr(module, name, replacement)
    _warn_about_early_imports(originals)


def unpatch() -> None:
    """Restore every standard-library piece ``patch()`` replaced."""
    for (module, name), original in _saved.items():
        setattr(module, name, original)
    _saved.clear()


def is_patched(module: Any, name: str) -> bool:
    """Whether ``module.name`` is currently replaced by ``patch()``."""
    return (module, name) in _saved


@contextlib.contextmanager
def patched(
    socket: bool = True,
    ssl: bool = True,
    select: bool = True,
    time: bool = True,
    threading: bool = False,
) -> Iterator[None]:
    """``with socketloop.patched(): ...`` patches for the block (handy in tests).

    On exit it restores exactly what it patched, leaving earlier patches alone.
    """
    items = _replacements(socket, ssl, select, time, threading)
    already = {(module, name) for module, name, _ in items if (module, name) in _saved}
    patch(socket, ssl, select, time, threading)
    try:
        yield
    finally:
        for module, name, _ in items:
            key = (module, name)
            if key not in already and key in _saved:
                setattr(module, name, _saved.pop(key))


def _warn_about_early_imports(originals: list[tuple[Any, str, Any]]) -> None:
    # Only module-level names can be captured by "from module import name";
    # patched methods reach every user through the class.
    module_items = [item for item in originals if isinstance(item[0], ModuleType)]
    wanted = {
        id(original): f"{module.__name__}.{name}"
        for module, name, original in module_items
        if not isinstance(original, (int, str))
    }
    patched_modules = {module.__name__ for module, _, _ in module_items}
    found: dict[str, set[str]] = {}
    for module_name, module in list(sys.modules.items()):
        if (
            module is None
            or module_name in patched_modules
            or module_name.split(".")[0] == "socketloop"
            or module_name in _STDLIB_INTERNALS
        ):
            continue
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for value in list(namespace.values()):
            label = wanted.get(id(value))
            if label is not None:
                found.setdefault(module_name, set()).add(label)
    if found:
        listing = "; ".join(
            f"{name} ({', '.join(sorted(labels))})" for name, labels in sorted(found.items())
        )
        warnings.warn(
            "socketloop.patch(): these modules were imported before patching and keep the "
            f"blocking originals: {listing}. Call patch() before importing them.",
            RuntimeWarning,
            stacklevel=3,
        )


#: Standard-library modules that hold originals for their own internal use
#: (their behaviour is not what patching is for).
_STDLIB_INTERNALS = frozenset(
    {
        "_socket",
        "_ssl",
        "_thread",
        "threading",
        "queue",
        "selectors",
        "select",
        "time",
        "socket",
        "ssl",
        "subprocess",
        "asyncio.selector_events",
        "asyncio.base_events",
        "asyncio.unix_events",
        "concurrent.futures.thread",
        "multiprocessing.connection",
    }
)
