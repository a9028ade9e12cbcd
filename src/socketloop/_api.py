"""Module-level functions: the loop API bound to the calling OS thread's default loop.

Charter: forward each call to ``get_loop()`` of the module that exposes it
(``socketloop`` for the asymmetric loop, ``socketloop.coro`` for the
symmetric one).  No logic of its own, so the two modules cannot drift apart.
"""

from __future__ import annotations

import socket as _socket
import ssl
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar, overload

from ._threads import Thread
from ._timers import TimerHandle

if TYPE_CHECKING:
    from ._asocket import AsyncSocket
    from ._loop import Loop, Resolver
    from ._server import Server
    from ._timeouts import Timeout
    from ._tls import AsyncTLSSocket

P = ParamSpec("P")
R = TypeVar("R")
L = TypeVar("L", bound="Loop")


def _no_loop_here(module: str, call: str) -> RuntimeError:
    return RuntimeError(
        f"{module}.{call} called from an OS thread that has no loop of its own: the module "
        f"functions act on the calling OS thread's default loop.  Keep the loop in the OS "
        f"thread that runs it (loop = {module}.get_loop()) and call loop.{call} from here"
    )


class LoopFunctions(Generic[L]):
    """The loop methods as functions of the calling OS thread's default loop.

    The thread-safe ones (``call_soon_threadsafe``, ``stop``) create no loop
    in a secondary OS thread: called from one without a default loop of its
    own, the user means another OS thread's loop, which these functions
    cannot know, so they raise ``RuntimeError`` naming the way
    (``loop.call_soon_threadsafe`` on a loop kept from its own OS thread)
    instead of acting on a fresh loop nobody runs.  In the main OS thread
    they act on its default loop as every other function does.
    ``resume_threadsafe`` acts on the thread's own loop.
    """

    def __init__(
        self, get_loop: Callable[[], L], existing_loop: Callable[[], L | None], module: str
    ) -> None:
        self.get_loop = get_loop
        self._existing_loop = existing_loop
        self._module = module

    def wrap(self, sock: _socket.socket) -> AsyncSocket:
        return self.get_loop().wrap(sock)

    @overload
    def connect(
        self,
        address: str,
        port: int | str,
        local_address: str | None = ...,
        local_port: int | None = ...,
        *,
        timeout: float | None = ...,
        tls: Literal[False] | None = ...,
        server_hostname: str | None = ...,
        happy_eyeballs_delay: float | None = ...,
    ) -> AsyncSocket: ...

    @overload
    def connect(
        self,
        address: str,
        port: int | str,
        local_address: str | None = ...,
        local_port: int | None = ...,
        *,
        timeout: float | None = ...,
        tls: Literal[True] | ssl.SSLContext,
        server_hostname: str | None = ...,
        happy_eyeballs_delay: float | None = ...,
    ) -> AsyncTLSSocket: ...

    def connect(
        self,
        address: str,
        port: int | str,
        local_address: str | None = None,
        local_port: int | None = None,
        *,
        timeout: float | None = None,
        tls: bool | ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        happy_eyeballs_delay: float | None = 0.25,
    ) -> AsyncSocket:
        loop: Any = self.get_loop()  # the overloads are re-declared above
        return loop.connect(  # type: ignore[no-any-return]
            address,
            port,
            local_address,
            local_port,
            timeout=timeout,
            tls=tls,
            server_hostname=server_hostname,
            happy_eyeballs_delay=happy_eyeballs_delay,
        )

    @overload
    def connect_unix(
        self,
        path: str | bytes,
        *,
        timeout: float | None = ...,
        tls: Literal[False] | None = ...,
        server_hostname: str | None = ...,
    ) -> AsyncSocket: ...

    @overload
    def connect_unix(
        self,
        path: str | bytes,
        *,
        timeout: float | None = ...,
        tls: Literal[True] | ssl.SSLContext,
        server_hostname: str | None = ...,
    ) -> AsyncTLSSocket: ...

    def connect_unix(
        self,
        path: str | bytes,
        *,
        timeout: float | None = None,
        tls: bool | ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> AsyncSocket:
        loop: Any = self.get_loop()
        return loop.connect_unix(  # type: ignore[no-any-return]
            path, timeout=timeout, tls=tls, server_hostname=server_hostname
        )

    def newserver_unix(
        self, path: str | bytes, handler: Callable[[AsyncSocket], object], **options: Any
    ) -> Server:
        return self.get_loop().newserver_unix(path, handler, **options)

    def serve(
        self,
        sock: AsyncSocket | _socket.socket,
        handler: Callable[[AsyncSocket], object],
        **options: Any,
    ) -> Server:
        return self.get_loop().serve(sock, handler, **options)

    def newthread(self, handler: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Thread[R]:
        return self.get_loop().newthread(handler, *args, **kwargs)

    def spawn(self, handler: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Thread[R]:
        return self.get_loop().spawn(handler, *args, **kwargs)

    def current(self) -> Thread[Any] | None:
        return self.get_loop().current()

    def suspend(self) -> Any:
        return self.get_loop().suspend()

    def resume(self, thread: Thread[Any], arg: Any = None) -> Any:
        return self.get_loop().resume(thread, arg)

    def newserver(
        self,
        host: str | None,
        port: int,
        handler: Callable[[AsyncSocket], object],
        **options: Any,
    ) -> Server:
        return self.get_loop().newserver(host, port, handler, **options)

    def start(self, timeout: float | None = None) -> None:
        self.get_loop().start(timeout)

    def _loop_for_threadsafe(self, call: str) -> L:
        loop = self._existing_loop()
        if loop is None:
            if threading.current_thread() is not threading.main_thread():
                raise _no_loop_here(self._module, call)
            loop = self.get_loop()
        return loop

    def stop(self) -> None:
        self._loop_for_threadsafe("stop()").stop()

    def step(self, timeout: float | None = None) -> bool:
        return self.get_loop().step(timeout)

    def sleep(self, seconds: float) -> None:
        self.get_loop().sleep(seconds)

    def getaddrinfo(
        self,
        host: str | bytes | None,
        port: str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[tuple[Any, ...]]:
        return self.get_loop().getaddrinfo(host, port, family, type, proto, flags)

    def call_soon(self, fn: Callable[..., object], /, *args: Any) -> None:
        self.get_loop().call_soon(fn, *args)

    def call_later(self, delay: float, fn: Callable[..., object], /, *args: Any) -> TimerHandle:
        return self.get_loop().call_later(delay, fn, *args)

    def call_soon_threadsafe(self, fn: Callable[..., object], /, *args: Any) -> None:
        self._loop_for_threadsafe("call_soon_threadsafe()").call_soon_threadsafe(fn, *args)

    def resume_threadsafe(self, thread: Thread[Any], arg: Any = None) -> None:
        # The thread knows its loop: the one meant, from whichever OS thread.
        thread.loop.resume_threadsafe(thread, arg)

    def timeout(self, seconds: float | None) -> Timeout:
        return self.get_loop().timeout(seconds)

    def move_on_after(self, seconds: float | None) -> Timeout:
        return self.get_loop().move_on_after(seconds)

    def run_in_thread(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.get_loop().run_in_thread(fn, *args, **kwargs)

    def on_signal(self, signum: int, handler: Callable[[int], object] | None) -> None:
        self.get_loop().on_signal(signum, handler)

    def set_resolver(self, resolver: Resolver | None) -> None:
        self.get_loop().set_resolver(resolver)

    def statistics(self) -> dict[str, Any]:
        return self.get_loop().statistics()

    def dump(self) -> str:
        return self.get_loop().dump()

    def watchdog(self, threshold: float | None = 0.1, interval: float | None = None) -> None:
        self.get_loop().watchdog(threshold, interval)

    def close(self) -> None:
        self.get_loop().close()


def copy_docs(functions: object, loop_class: type) -> None:
    """Give each forwarding function the docstring of the loop method it forwards to.

    Each is also named by its own name alone, so that Python's messages about
    its arguments say ``connect()``, not the internal ``LoopFunctions.connect()``.
    """
    for name in dir(type(functions)):
        if name.startswith("_"):
            continue
        method = getattr(type(functions), name, None)
        source = getattr(loop_class, name, None)
        if callable(method) and source is not None and source.__doc__:
            method.__doc__ = source.__doc__
            method.__qualname__ = name
