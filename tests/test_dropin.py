"""The drop-in ``socketloop.socket`` module and opt-in patching of the standard library.

``socketloop.socket`` mirrors the standard ``socket`` module; its sockets and
resolver functions are cooperative in loop threads and plain blocking calls
elsewhere.  ``patch()``/``unpatch()``/``patched()`` swap standard-library
pieces for cooperative ones and put the originals back.
"""

from __future__ import annotations

import contextlib
import queue
import select
import selectors
import socket
import ssl
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import socketloop
import socketloop.socket as dropin
import socketloop.ssl
from _servers import hanging_address
from conftest import run
from socketloop import AsyncSocket, Loop

# ------------------------------------------------------------------ helpers

#: The names the drop-in module defines itself (everything else is the stdlib's).
OWN_NAMES = frozenset(
    {
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
    }
)

#: What each switch of ``patch()`` replaces, as (module, attribute).
SWITCHES: dict[str, list[tuple[Any, str]]] = {
    "socket": [(socket, name) for name in sorted(OWN_NAMES)],
    # The method, not the class: the stdlib's setters look SSLContext up by name.
    "ssl": [(ssl.SSLContext, "wrap_socket")],
    "select": [(select, "select"), (select, "poll"), (selectors, "DefaultSelector")],
    "time": [(time, "sleep")],
    "threading": [
        (threading, "Lock"),
        (threading, "RLock"),
        (threading, "_allocate_lock"),
        (queue, "SimpleQueue"),
    ],
}

ALL_PATCHED = [item for items in SWITCHES.values() for item in items]


@pytest.fixture(autouse=True)
def never_left_patched() -> Iterator[None]:
    """Every test starts and ends with the standard library unpatched."""
    originals = {(m, n): getattr(m, n) for m, n in ALL_PATCHED}
    yield
    leftovers = [f"{m.__name__}.{n}" for (m, n), v in originals.items() if getattr(m, n) is not v]
    socketloop.unpatch()
    assert leftovers == [], "left patched"


@contextlib.contextmanager
def quietly_patched(**switches: bool) -> Iterator[None]:
    """``socketloop.patched()`` without the early-import warning (tested on its own)."""
    with contextlib.ExitStack() as stack:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            stack.enter_context(socketloop.patched(**switches))
        yield


def new_resolver_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t not in before and t.name.startswith("socketloop-resolver")
    ]


def attr(module: types.ModuleType, name: str) -> Any:
    """``module.name`` as it is now (possibly patched), untyped."""
    return getattr(module, name)


def step_until(lp: Loop, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        assert remaining > 0, "condition not reached in time"
        assert lp.step(remaining), "the loop has nothing left to do"


@pytest.fixture
def plain_listener() -> Iterator[socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener


# ------------------------------------------------------- mirrors the stdlib


def test_every_name_of_the_stdlib_socket_module_exists_in_the_drop_in() -> None:
    missing = [name for name in socket.__all__ if not hasattr(dropin, name)]
    assert missing == []


def test_constants_exceptions_and_helpers_are_the_stdlib_objects() -> None:
    different = [
        name
        for name in socket.__all__
        if name not in OWN_NAMES and getattr(dropin, name) is not getattr(socket, name)
    ]
    assert different == []
    module: Any = dropin  # its re-exported names are computed at import
    assert module.error is OSError
    assert module.timeout is socket.timeout
    assert module.gaierror is socket.gaierror
    assert module.AF_INET is socket.AF_INET


def test_the_drop_in_defines_its_own_socket_class_and_functions() -> None:
    same = [name for name in OWN_NAMES if getattr(dropin, name) is getattr(socket, name)]
    assert same == []
    assert dropin.SocketType is socket.SocketType  # the C base type, as in the stdlib
    assert issubclass(dropin.socket, AsyncSocket)


# ------------------------------------------------------------ socket class


def test_socket_class_makes_a_tcp_ipv4_async_socket_by_default() -> None:
    with dropin.socket() as sock:
        assert isinstance(sock, AsyncSocket)
        assert sock.family == socket.AF_INET
        assert sock.type == socket.SOCK_STREAM


def test_socket_class_accept_and_recv_suspend_only_the_calling_thread(loop: Loop) -> None:
    listener = dropin.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    log: list[Any] = []

    def server() -> None:
        log.append("server waits in accept")
        conn, _ = listener.accept()
        with conn:
            log.append(f"server accepted a {type(conn).__name__}")
            log.append(conn.recv(100))

    def client() -> None:
        log.append("client runs")
        with dropin.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.connect(address)
            sock.sendall(b"hello")

    try:
        serving = loop.newthread(server)
        run(loop, client)
        serving.join(10)
    finally:
        listener.close()
    assert log == ["server waits in accept", "client runs", "server accepted a socket", b"hello"]


def test_socket_class_outside_loop_threads_blocks_like_a_plain_socket(
    plain_listener: socket.socket,
) -> None:
    with dropin.socket() as sock:
        sock.settimeout(5)
        sock.connect(plain_listener.getsockname())
        conn, _ = plain_listener.accept()
        with conn:
            conn.sendall(b"plain")
            assert sock.recv(100) == b"plain"
            sock.settimeout(0.2)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                sock.recv(100)
            assert time.monotonic() - started >= 0.15


# -------------------------------------------------- create_connection & co.


def test_create_connection_in_a_loop_thread_suspends_only_that_thread(loop: Loop) -> None:
    log: list[str] = []

    def connector(address: tuple[str, int]) -> None:
        log.append("connect starts")
        try:
            dropin.create_connection(address, timeout=0.5)
        except TimeoutError:
            log.append("connect timed out")

    def other() -> None:
        for i in range(3):
            log.append(f"other {i}")
            loop.sleep(0)

    with hanging_address() as address:
        connecting = loop.newthread(connector, address)
        run(loop, other)
        connecting.join(10)
    assert log == ["connect starts", "other 0", "other 1", "other 2", "connect timed out"]


def test_create_connection_returns_a_drop_in_socket_with_the_timeout_set(
    plain_listener: socket.socket,
) -> None:
    with dropin.create_connection(plain_listener.getsockname(), timeout=3) as sock:
        assert isinstance(sock, dropin.socket)
        assert sock.gettimeout() == 3
        assert sock.getpeername() == plain_listener.getsockname()
    conn, _ = plain_listener.accept()
    conn.close()


def test_create_connection_by_name_in_a_loop_thread(loop: Loop) -> None:
    server = loop.newserver("127.0.0.1", 0, lambda conn: conn.sendall(conn.recv(100)))

    def client() -> bytes:
        with dropin.create_connection(("localhost", server.port)) as sock:
            sock.sendall(b"by name")
            return sock.recv(100)

    assert run(loop, client) == b"by name"
    server.close()
    step_until(loop, lambda: not loop.threads())


@pytest.mark.expect_errors
def test_create_connection_raises_the_connect_error(loop: Loop) -> None:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # nobody listens: refused
        with pytest.raises(ConnectionRefusedError):
            run(loop, dropin.create_connection, bound.getsockname())


def test_create_server_outside_loop_threads_accepts_blocking() -> None:
    with dropin.create_server(("127.0.0.1", 0)) as listener:
        assert isinstance(listener, dropin.socket)
        with socket.create_connection(listener.getsockname(), timeout=5) as client:
            conn, address = listener.accept()
            with conn:
                assert isinstance(conn, AsyncSocket)
                assert address == client.getsockname()


def test_socketpair_in_loop_threads_suspends_only_the_reader(loop: Loop) -> None:
    a, b = dropin.socketpair()
    log: list[Any] = []

    def reader() -> None:
        log.append("reader waits")
        log.append(a.recv(100))

    def writer() -> None:
        log.append("writer writes")
        b.sendall(b"pair")

    with a, b:
        reading = loop.newthread(reader)
        run(loop, writer)
        reading.join(10)
    assert log == ["reader waits", "writer writes", b"pair"]


def test_socketpair_outside_loop_threads_blocks_with_timeouts() -> None:
    a, b = dropin.socketpair()
    with a, b:
        assert isinstance(a, dropin.socket)
        a.sendall(b"x")
        assert b.recv(1) == b"x"
        b.settimeout(0.2)
        with pytest.raises(TimeoutError):
            b.recv(1)


#: The standard socket class itself, whatever is patched.
PLAIN = socket.socket


def test_patched_socketpair_wraps_each_end_once(loop: Loop) -> None:
    with quietly_patched(ssl=False, select=False, time=False):
        a, b = attr(socket, "socketpair")()
    with a, b:
        assert type(a) is dropin.socket
        assert type(a.socket) is PLAIN
        run(loop, b.sendall, b"once")
        assert run(loop, a.recv, 10) == b"once"


def test_patched_create_server_wraps_the_listener_once(loop: Loop) -> None:
    with quietly_patched(ssl=False, select=False, time=False):
        listener = attr(socket, "create_server")(("127.0.0.1", 0))
    with listener:
        assert type(listener) is dropin.socket
        assert type(listener.socket) is PLAIN

        def client() -> bytes:
            with dropin.create_connection(listener.getsockname()) as conn:
                return conn.recv(10)

        reading = loop.newthread(client)
        conn, _ = run(loop, listener.accept)
        with conn:
            run(loop, conn.sendall, b"hello")
        assert reading.join(10) == b"hello"


def test_patched_fromfd_wraps_the_duplicate_once() -> None:
    x, y = socket.socketpair()
    with x, y, quietly_patched(ssl=False, select=False, time=False):
        dup = attr(socket, "fromfd")(x.fileno(), socket.AF_UNIX, socket.SOCK_STREAM)
        with dup:
            assert type(dup) is dropin.socket
            assert type(dup.socket) is PLAIN


def test_wrap_returns_a_socket_made_by_the_patched_class_as_it_is(loop: Loop) -> None:
    with quietly_patched(ssl=False, select=False, time=False):
        sock = attr(socket, "socket")()
    with sock:
        assert loop.wrap(sock) is sock


def test_dup_of_a_drop_in_socket_keeps_its_class() -> None:
    a, b = dropin.socketpair()
    with a, b, a.dup() as copy:
        assert type(copy) is dropin.socket
        assert copy.fileno() != a.fileno()


def test_fromfd_duplicates_the_fd_into_a_cooperative_socket(loop: Loop) -> None:
    x, y = socket.socketpair()
    log: list[Any] = []
    with x, y:
        dup = dropin.fromfd(x.fileno(), socket.AF_UNIX, socket.SOCK_STREAM)
        with dup:
            assert isinstance(dup, dropin.socket)
            assert dup.fileno() != x.fileno()

            def reader() -> None:
                log.append("reader waits")
                log.append(dup.recv(100))

            def writer() -> None:
                log.append("writer writes")
                y.sendall(b"via dup")

            reading = loop.newthread(reader)
            run(loop, writer)
            reading.join(10)
    assert log == ["reader waits", "writer writes", b"via dup"]


# ------------------------------------------------------- resolver functions

RESOLVER_CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("getaddrinfo", ("localhost", 80, 0, socket.SOCK_STREAM)),
    ("gethostbyname", ("localhost",)),
    ("gethostbyname_ex", ("localhost",)),
    ("gethostbyaddr", ("127.0.0.1",)),
    ("getnameinfo", (("127.0.0.1", 80), socket.NI_NUMERICSERV)),
    ("getfqdn", ("localhost",)),
]


@pytest.mark.parametrize(("name", "args"), RESOLVER_CALLS)
def test_resolver_functions_in_loop_threads_answer_like_the_stdlib(
    loop: Loop, name: str, args: tuple[Any, ...]
) -> None:
    assert run(loop, getattr(dropin, name), *args) == getattr(socket, name)(*args)


@pytest.mark.parametrize(("name", "args"), RESOLVER_CALLS)
def test_resolver_functions_in_loop_threads_run_in_the_resolver_pool(
    loop: Loop, name: str, args: tuple[Any, ...]
) -> None:
    before = set(threading.enumerate())
    run(loop, getattr(dropin, name), *args)
    assert new_resolver_threads(before)


@pytest.mark.parametrize(("name", "args"), RESOLVER_CALLS)
def test_resolver_functions_outside_loop_threads_are_plain_blocking_calls(
    name: str, args: tuple[Any, ...]
) -> None:
    before = set(threading.enumerate())
    assert getattr(dropin, name)(*args) == getattr(socket, name)(*args)
    assert new_resolver_threads(before) == []


def test_getaddrinfo_and_gethostbyname_use_the_loop_resolver(loop: Loop) -> None:
    calls: list[Any] = []

    def resolver(
        host: Any, port: Any, family: int, type: int, proto: int, flags: int
    ) -> list[tuple[Any, ...]]:
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.9", port or 0))]

    loop.set_resolver(resolver)
    infos = run(loop, dropin.getaddrinfo, "custom.test", 80)
    address = run(loop, dropin.gethostbyname, "other.test")
    assert infos[0][4] == ("127.0.0.9", 80)
    assert address == "127.0.0.9"
    assert calls == ["custom.test", "other.test"]


def test_gethostbyname_of_a_number_skips_the_resolver(loop: Loop) -> None:
    calls: list[Any] = []

    def resolver(*args: Any) -> list[tuple[Any, ...]]:
        calls.append(args)
        return []

    loop.set_resolver(resolver)
    assert run(loop, dropin.gethostbyname, "127.0.0.1") == "127.0.0.1"
    assert calls == []


# ------------------------------------------------------------------ patching


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_each_patch_switch_replaces_its_pieces_and_unpatch_restores_them(switch: str) -> None:
    originals = {(m, n): getattr(m, n) for m, n in ALL_PATCHED}
    options = dict.fromkeys(SWITCHES, False)
    options[switch] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        socketloop.patch(**options)
    try:
        for module, name in ALL_PATCHED:
            value = getattr(module, name)
            if (module, name) in SWITCHES[switch]:
                assert value is not originals[module, name], f"{module.__name__}.{name}"
            else:
                assert value is originals[module, name], f"{module.__name__}.{name} touched"
    finally:
        socketloop.unpatch()
    for module, name in ALL_PATCHED:
        assert getattr(module, name) is originals[module, name], f"{module.__name__}.{name}"


def test_patch_socket_installs_the_drop_in_module_objects() -> None:
    with quietly_patched(socket=True, ssl=False, select=False, time=False):
        for name in OWN_NAMES:
            assert getattr(socket, name) is getattr(dropin, name), name


def test_patch_ssl_makes_wrap_socket_of_every_context_cooperative() -> None:
    made_before = ssl.create_default_context()
    with quietly_patched(socket=False, ssl=True, select=False, time=False):
        assert ssl.SSLContext.wrap_socket is socketloop.ssl.cooperative_wrap_socket
        made_during = ssl.create_default_context()
        for context in (made_before, made_during):
            assert context.wrap_socket.__func__ is socketloop.ssl.cooperative_wrap_socket  # type: ignore[attr-defined]
    assert ssl.SSLContext.wrap_socket is not socketloop.ssl.cooperative_wrap_socket


def test_patched_ssl_create_default_context_keeps_the_stdlib_settings() -> None:
    with quietly_patched():
        context = ssl.create_default_context()
    assert type(context) is ssl.SSLContext
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


def test_ssl_contexts_made_while_patched_accept_the_usual_settings() -> None:
    # What urllib3's create_urllib3_context and many drivers do to a new context.
    with quietly_patched():
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_COMPRESSION
        context.verify_mode = ssl.CERT_REQUIRED
        context.verify_flags |= ssl.VERIFY_X509_STRICT
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION


def test_patch_select_time_and_threading_install_socketloop_objects() -> None:
    with quietly_patched(threading=True):
        for module, name in SWITCHES["select"] + SWITCHES["time"] + SWITCHES["threading"][:3]:
            assert getattr(module, name).__module__.startswith("socketloop"), name
        assert queue.SimpleQueue is queue._PySimpleQueue  # type: ignore[attr-defined]


def test_patched_restores_the_originals_on_exit_even_after_an_error() -> None:
    originals = {(m, n): getattr(m, n) for m, n in ALL_PATCHED}
    seen: list[Any] = []

    def fail_while_patched() -> None:
        with quietly_patched(threading=True):
            seen.append(attr(socket, "socket"))
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        fail_while_patched()
    assert seen == [dropin.socket]
    for module, name in ALL_PATCHED:
        assert getattr(module, name) is originals[module, name], f"{module.__name__}.{name}"


def test_patched_leaves_an_earlier_patch_in_place() -> None:
    original_sleep = time.sleep
    original_socket = attr(socket, "socket")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        socketloop.patch(socket=True, ssl=False, select=False, time=False)
        try:
            with socketloop.patched(socket=True, ssl=False, select=False, time=True):
                assert time.sleep is not original_sleep
            assert time.sleep is original_sleep  # what patched() added is gone
            assert attr(socket, "socket") is dropin.socket  # the earlier patch stays
        finally:
            socketloop.unpatch()
    assert attr(socket, "socket") is original_socket


def test_patch_warns_naming_a_module_that_imported_an_original_before() -> None:
    name = "socketloop_test_early_importer"
    early = types.ModuleType(name)
    early.create_connection = socket.create_connection  # type: ignore[attr-defined]
    sys.modules[name] = early
    try:
        with pytest.warns(RuntimeWarning, match=name) as record, socketloop.patched():
            pass
    finally:
        del sys.modules[name]
    [message] = [str(w.message) for w in record if name in str(w.message)]
    assert "socket.create_connection" in message


def test_patch_does_not_name_a_module_that_imported_only_the_module() -> None:
    name = "socketloop_test_module_importer"
    polite = types.ModuleType(name)
    polite.socket = socket  # type: ignore[attr-defined]  # plain `import socket`
    sys.modules[name] = polite
    try:
        with warnings.catch_warnings(record=True) as record, socketloop.patched():
            warnings.simplefilter("always")
    finally:
        del sys.modules[name]
    assert [str(w.message) for w in record if name in str(w.message)] == []


# ------------------------------- patched calls outside loop threads


def test_patched_socket_outside_loop_threads_blocks_plainly(
    plain_listener: socket.socket,
) -> None:
    with quietly_patched():
        sock = socket.create_connection(plain_listener.getsockname(), timeout=5)
        conn, _ = plain_listener.accept()
        with sock, conn:
            conn.sendall(b"still blocking")
            assert sock.recv(100) == b"still blocking"
            sock.settimeout(0.2)
            with pytest.raises(TimeoutError):
                sock.recv(100)


def test_patched_time_sleep_outside_loop_threads_blocks() -> None:
    with quietly_patched():
        started = time.monotonic()
        time.sleep(0.1)
        assert time.monotonic() - started >= 0.09


def test_patched_select_outside_loop_threads_waits_for_the_timeout() -> None:
    r, w = socket.socketpair()
    with r, w, quietly_patched():
        started = time.monotonic()
        assert select.select([r], [], [], 0.2) == ([], [], [])
        assert time.monotonic() - started >= 0.15
        w.send(b"x")
        assert select.select([r], [], [], 5) == ([r], [], [])


def test_patched_default_selector_outside_loop_threads_works() -> None:
    r, w = socket.socketpair()
    with r, w, quietly_patched(), selectors.DefaultSelector() as selector:
        selector.register(r, selectors.EVENT_READ)
        assert selector.select(0.1) == []
        w.send(b"x")
        [(key, events)] = selector.select(5)
        assert key.fileobj is r
        assert events == selectors.EVENT_READ


# ------------------------------------- cooperative select, poll, selectors


def wait_with_select(r: socket.socket) -> bool:
    readable, _, _ = select.select([r], [], [], 5)
    return readable == [r]


def wait_with_poll(r: socket.socket) -> bool:
    poller = select.poll()
    poller.register(r, select.POLLIN)
    return [fd for fd, _ in poller.poll(5000)] == [r.fileno()]


def wait_with_selector(r: socket.socket) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(r, selectors.EVENT_READ)
        return [key.fileobj for key, _ in selector.select(5)] == [r]


WAITS = {"select": wait_with_select, "poll": wait_with_poll, "selector": wait_with_selector}


@pytest.mark.parametrize("kind", sorted(WAITS))
def test_patched_readiness_wait_suspends_only_the_calling_thread(loop: Loop, kind: str) -> None:
    r, w = socket.socketpair()
    log: list[Any] = []

    def waiter() -> None:
        log.append("waiter waits")
        log.append(f"waiter sees readable: {WAITS[kind](r)}")

    def other() -> None:
        log.append("other runs")
        w.send(b"x")

    with r, w, quietly_patched():
        waiting = loop.newthread(waiter)
        run(loop, other)
        waiting.join(10)
    assert log == ["waiter waits", "other runs", "waiter sees readable: True"]


def test_patched_select_timeout_in_a_loop_thread_lets_others_run(loop: Loop) -> None:
    r, w = socket.socketpair()
    log: list[str] = []

    def waiter() -> None:
        log.append("waiter waits")
        log.append(f"waiter got {select.select([r], [], [], 0.3)}")

    def other() -> None:
        for i in range(3):
            log.append(f"other {i}")
            loop.sleep(0)

    with r, w, quietly_patched():
        waiting = loop.newthread(waiter)
        run(loop, other)
        waiting.join(10)
    assert log == ["waiter waits", "other 0", "other 1", "other 2", "waiter got ([], [], [])"]


@pytest.mark.expect_errors  # the thread's error is logged, then re-raised by run()
def test_patched_select_in_a_loop_thread_raises_type_error_for_an_object_without_fileno(
    loop: Loop,
) -> None:
    with quietly_patched(), pytest.raises(TypeError):
        run(loop, select.select, [object()], [], [], 1.0)


@pytest.mark.expect_errors  # the thread's error is logged, then re-raised by run()
def test_patched_select_in_a_loop_thread_refuses_a_negative_timeout(loop: Loop) -> None:
    r, w = socket.socketpair()
    with r, w, quietly_patched(), pytest.raises(ValueError, match="non-negative"):
        run(loop, select.select, [r], [], [], -1)


def test_patched_select_in_a_loop_thread_asks_each_fileno_once(loop: Loop) -> None:
    r, w = socket.socketpair()
    calls: list[int] = []

    class Counted:
        def fileno(self) -> int:
            calls.append(1)
            return w.fileno()

    objects = [Counted(), Counted()]
    with r, w, quietly_patched():
        ready = run(loop, select.select, [], objects, [], 1.0)
    assert ready == ([], objects, [])
    assert len(calls) == 2


def test_patched_select_in_a_loop_thread_returns_the_objects_passed_in(loop: Loop) -> None:
    r, w = socket.socketpair()

    def waiter() -> tuple[list[Any], list[Any], list[Any]]:
        return select.select([r, r.fileno()], [], [], 5.0)

    with r, w, quietly_patched():
        waiting = loop.newthread(waiter)
        run(loop, w.sendall, b"x")
        assert waiting.join(10) == ([r, r.fileno()], [], [])


def test_patched_time_sleep_in_loop_threads_is_loop_sleep(loop: Loop) -> None:
    log: list[str] = []

    def sleeper(name: str) -> None:
        log.append(f"{name} sleeps")
        time.sleep(0.3)
        log.append(f"{name} wakes")

    seen: list[Any] = []

    def observer() -> None:
        # Runs while both sleep: they wait on the loop's timers, and the
        # loop (this OS thread) is free to run other threads meanwhile.
        seen.append(([t.state for t in threads], loop.statistics()["timers"]))

    with quietly_patched():
        started = time.monotonic()
        threads = [loop.newthread(sleeper, name) for name in ("a", "b")]
        loop.newthread(observer)
        for thread in threads:
            thread.join(10)
        elapsed = time.monotonic() - started
    assert log[:2] == ["a sleeps", "b sleeps"]
    assert sorted(log[2:]) == ["a wakes", "b wakes"]
    assert seen == [(["waiting", "waiting"], 2)]
    assert elapsed < 5  # a loose guard: the proof of overlap is the observation above


# --------------------------------------------------------- threading=True


def test_patched_threading_lock_suspends_a_waiting_loop_thread(loop: Loop) -> None:
    log: list[str] = []
    with quietly_patched(threading=True):
        lock = threading.Lock()

        def holder() -> None:
            with lock:
                log.append("holder has the lock")
                loop.sleep(0)  # let the other thread try
                log.append("holder releases")

        def waiter() -> None:
            log.append("waiter tries")
            got = lock.acquire(timeout=5)
            log.append(f"waiter got it: {got}")
            if got:
                lock.release()

        threads = [loop.newthread(holder), loop.newthread(waiter)]
        for thread in threads:
            thread.join(10)
    assert log == ["holder has the lock", "waiter tries", "holder releases", "waiter got it: True"]


def test_patched_threading_condition_wakes_a_loop_thread_notified_by_another(loop: Loop) -> None:
    log: list[str] = []
    with quietly_patched(threading=True):
        condition = threading.Condition()

        def waiter() -> None:
            with condition:
                log.append("waiter waits")
                log.append(f"waiter notified: {condition.wait(timeout=5)}")

        def notifier() -> None:
            with condition:
                log.append("notifier notifies")
                condition.notify()

        threads = [loop.newthread(waiter), loop.newthread(notifier)]
        for thread in threads:
            thread.join(10)
    assert log == ["waiter waits", "notifier notifies", "waiter notified: True"]


def test_patched_threading_event_wakes_a_loop_thread_set_by_another(loop: Loop) -> None:
    log: list[str] = []
    with quietly_patched(threading=True):
        event = threading.Event()

        def waiter() -> None:
            log.append("waiter waits")
            log.append(f"waiter woke: {event.wait(5)}")

        def setter() -> None:
            log.append("setter sets")
            event.set()

        threads = [loop.newthread(waiter), loop.newthread(setter)]
        for thread in threads:
            thread.join(10)
    assert log == ["waiter waits", "setter sets", "waiter woke: True"]


def test_patched_queue_hands_an_item_between_loop_threads(loop: Loop) -> None:
    log: list[str] = []
    with quietly_patched(threading=True):
        items: queue.Queue[str] = queue.Queue()

        def getter() -> None:
            log.append("getter waits")
            log.append(f"getter got {items.get(timeout=5)}")

        def putter() -> None:
            log.append("putter puts")
            items.put("item")

        threads = [loop.newthread(getter), loop.newthread(putter)]
        for thread in threads:
            thread.join(10)
    assert log == ["getter waits", "putter puts", "getter got item"]


def test_patched_threading_semaphore_suspends_a_waiting_loop_thread(loop: Loop) -> None:
    log: list[str] = []
    with quietly_patched(threading=True):
        semaphore = threading.Semaphore(0)

        def waiter() -> None:
            log.append("waiter waits")
            log.append(f"waiter acquired: {semaphore.acquire(timeout=5)}")

        def releaser() -> None:
            log.append("releaser releases")
            semaphore.release()

        threads = [loop.newthread(waiter), loop.newthread(releaser)]
        for thread in threads:
            thread.join(10)
    assert log == ["waiter waits", "releaser releases", "waiter acquired: True"]


def test_patched_threading_lock_still_excludes_real_os_threads() -> None:
    results: list[bool] = []
    with quietly_patched(threading=True):
        lock = threading.Lock()
        lock.acquire()
        trying = threading.Thread(target=lambda: results.append(lock.acquire(timeout=0.1)))
        trying.start()
        trying.join(10)
        lock.release()
        waiting = threading.Thread(target=lambda: results.append(lock.acquire(timeout=5)))
        waiting.start()
        waiting.join(10)
    assert results == [False, True]


def test_patched_queue_and_event_still_work_between_real_os_threads() -> None:
    with quietly_patched(threading=True):
        items: queue.Queue[int] = queue.Queue()
        done = threading.Event()
        received: list[int] = []

        def consumer() -> None:
            for _ in range(3):
                received.append(items.get(timeout=5))
            done.set()

        worker = threading.Thread(target=consumer)
        worker.start()
        for i in range(3):
            items.put(i)
        assert done.wait(10)
        worker.join(10)
    assert received == [0, 1, 2]


def test_patched_event_set_by_an_os_thread_wakes_a_loop_thread(loop: Loop) -> None:
    with quietly_patched(threading=True):
        event = threading.Event()
        waiting = loop.newthread(event.wait, 5)
        assert waiting.state == "waiting"
        setter = threading.Thread(target=event.set)
        setter.start()
        assert waiting.join(10) is True
        setter.join(10)


def test_patched_socket_sockettype_stays_the_c_base_of_every_socket(loop: Loop) -> None:
    with quietly_patched(ssl=False, select=False, time=False):
        assert socket.SocketType is PLAIN.__mro__[1]
        sock = attr(socket, "socket")()
    with sock, socket.socket() as plain:
        assert isinstance(sock, socket.SocketType)
        assert isinstance(plain, socket.SocketType)


def test_patched_socket_class_accepts_plain_and_wrapped_sockets_in_isinstance(
    loop: Loop,
) -> None:
    plain = PLAIN()
    wrapped = loop.wrap(PLAIN())
    with plain, wrapped, quietly_patched(ssl=False, select=False, time=False):
        cls = attr(socket, "socket")
        assert isinstance(plain, cls)
        assert isinstance(wrapped, cls)
        assert not isinstance(object(), cls)


def test_patched_socket_repr_is_the_standard_one() -> None:
    with quietly_patched(ssl=False, select=False, time=False):
        sock = attr(socket, "socket")()
    with sock:
        assert repr(sock).startswith("<socket.socket fd=")


def test_drop_in_create_connection_builds_with_a_replaced_socket_class() -> None:
    made: list[tuple[Any, ...]] = []

    class Refusing:
        def __init__(self, *args: Any) -> None:
            made.append(args)

        def connect(self, address: Any) -> None:
            raise TimeoutError("timed out")

        def close(self) -> None:
            pass

    original = socket.socket
    socket.socket = Refusing  # type: ignore[misc, assignment]
    try:
        with pytest.raises(TimeoutError):
            dropin.create_connection(("127.0.0.1", 9))
    finally:
        socket.socket = original  # type: ignore[misc]
    assert made


@pytest.mark.expect_errors
def test_drop_in_getnameinfo_refuses_a_non_tuple_at_once_in_a_loop_thread(loop: Loop) -> None:
    with pytest.raises(TypeError):
        run(loop, dropin.getnameinfo, "127.0.0.1", 0)


def test_drop_in_getnameinfo_refusing_an_argument_keeps_no_reference_to_it(loop: Loop) -> None:
    argument = "not an address"

    def call() -> bool:
        before = sys.getrefcount(argument)
        try:
            dropin.getnameinfo(argument, 0)  # type: ignore[arg-type]
        except TypeError:
            return sys.getrefcount(argument) == before
        return False

    assert run(loop, call)
