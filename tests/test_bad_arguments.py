"""A wrong argument raises at the call, not later in a thread or callback where it is logged."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from typing import Any

import pytest

from socketloop import Loop

NOT_CALLABLE: Any = 42
NOT_A_NUMBER: Any = "2"

CALLS: dict[str, Callable[[Loop], object]] = {
    "newthread": lambda lp: lp.newthread(NOT_CALLABLE),
    "spawn": lambda lp: lp.spawn(NOT_CALLABLE),
    "call_soon": lambda lp: lp.call_soon(NOT_CALLABLE),
    "call_later": lambda lp: lp.call_later(0, NOT_CALLABLE),
    "call_at": lambda lp: lp.call_at(0, NOT_CALLABLE),
    "call_soon_threadsafe": lambda lp: lp.call_soon_threadsafe(NOT_CALLABLE),
    "on_signal": lambda lp: lp.on_signal(signal.SIGUSR1, NOT_CALLABLE),
    "newserver": lambda lp: lp.newserver("127.0.0.1", 0, NOT_CALLABLE),
    "set_resolver": lambda lp: lp.set_resolver(NOT_CALLABLE),
    "resume_threadsafe": lambda lp: lp.resume_threadsafe(NOT_CALLABLE),
    "timeout": lambda lp: lp.timeout(NOT_A_NUMBER),
    "move_on_after": lambda lp: lp.move_on_after(NOT_A_NUMBER),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_wrong_argument_raises_type_error_at_the_call(loop: Loop, call: str) -> None:
    with pytest.raises(TypeError, match=r"must be (callable|a number)|expects a Thread"):
        CALLS[call](loop)
    assert loop.step(0) is False, "something was scheduled anyway"
    assert loop.threads() == []


def test_newthread_of_a_non_callable_names_what_it_got(loop: Loop) -> None:
    with pytest.raises(TypeError, match="the thread's handler must be callable, not int"):
        loop.newthread(NOT_CALLABLE)


def test_module_newthread_of_a_non_callable_raises_type_error(api: Any) -> None:
    with pytest.raises(TypeError, match="must be callable"):
        api.newthread(NOT_CALLABLE)


def test_a_server_refused_for_its_handler_leaves_no_port_bound(loop: Loop) -> None:
    # The leak check after the test sees the fd; here: the port can be bound again.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TypeError):
        loop.newserver("127.0.0.1", port, NOT_CALLABLE)
    server = loop.newserver("127.0.0.1", port, lambda conn: None)
    server.close()
    loop.step(0)


def test_on_signal_refused_for_its_handler_leaves_the_previous_handler(loop: Loop) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(TypeError):
        loop.on_signal(signal.SIGUSR1, NOT_CALLABLE)
    assert signal.getsignal(signal.SIGUSR1) is before


def test_kill_with_a_non_exception_raises_type_error_and_leaves_the_thread_suspended(
    loop: Loop,
) -> None:
    thread = loop.newthread(loop.suspend)
    with pytest.raises(TypeError, match="expects an exception class or instance"):
        thread.kill(NOT_CALLABLE)
    assert thread.state == "suspended"
    thread.kill()
    assert thread.state == "dead"


@pytest.mark.parametrize(("threshold", "interval"), [(-1.0, None), (0.0, None), (0.1, 0.0)])
def test_watchdog_refuses_a_threshold_or_interval_that_is_not_positive(
    loop: Loop, threshold: float, interval: float | None
) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        loop.watchdog(threshold, interval)
