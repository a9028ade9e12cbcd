"""Introspection: loop.statistics(), loop.dump() and the blocking watchdog."""

from __future__ import annotations

import logging
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import fill_send_buffer
from socketloop import AsyncSocket, Event, Loop, Thread

Pair = tuple[AsyncSocket, AsyncSocket]
WAIT = 10.0


def burn_cpu(seconds: float) -> None:
    """Keep the loop from switching: CPU work inside a loop thread."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def watchdog_reports(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "socketloop" and r.levelno == logging.WARNING and "blocked" in r.getMessage()
    ]


@pytest.fixture
def watched(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="socketloop"):
        yield caplog


# ----------------------------------------------------------------- statistics


def test_statistics_of_a_fresh_loop_are_all_zero(loop: Loop) -> None:
    stats = loop.statistics()
    assert stats["threads"] == 0
    assert set(stats["threads_by_state"].values()) == {0}
    for key in (
        "waiting_readers",
        "waiting_writers",
        "timers",
        "ready",
        "callbacks",
        "external_waits",
        "pool_active",
    ):
        assert stats[key] == 0, key


def test_statistics_count_threads_by_state_and_what_they_wait_on(loop: Loop, pair: Pair) -> None:
    a, _ = pair
    release = threading.Event()
    fill_send_buffer(a)  # b has data to read; a has none, and no room to write
    threads = [
        loop.newthread(loop.suspend),
        loop.newthread(loop.sleep, 60),
        loop.newthread(a.recv, 10),
        loop.newthread(a.sendall, b"x" * 65536),
        loop.newthread(loop.run_in_thread, release.wait, WAIT),
        loop.spawn(lambda: None),
    ]
    stats = loop.statistics()
    assert stats["threads"] == 6
    by_state = stats["threads_by_state"]
    assert (by_state["suspended"], by_state["waiting"], by_state["ready"]) == (1, 4, 1)
    assert by_state["dead"] == 0
    assert stats["waiting_readers"] == 1
    assert stats["waiting_writers"] == 1
    assert stats["timers"] == 1
    assert stats["ready"] == 1
    assert stats["pool_active"] == 1
    assert stats["external_waits"] == 1
    release.set()
    for thread in threads:
        thread.kill()
    stats = loop.statistics()
    assert stats["threads"] == 0
    assert stats["pool_active"] == 0
    assert stats["external_waits"] == 0


def test_statistics_show_the_running_thread_and_the_one_resuming_it(loop: Loop) -> None:
    seen: list[dict[str, int]] = []

    def inner() -> None:
        seen.append(dict(loop.statistics()["threads_by_state"]))

    loop.newthread(lambda: loop.newthread(inner))
    by_state = seen[0]
    assert by_state["running"] == 1
    assert by_state["normal"] == 1


def test_statistics_count_timers_and_callbacks(loop: Loop) -> None:
    handle = loop.call_later(60, lambda: None)
    loop.call_later(60, lambda: None).cancel()
    loop.call_soon(lambda: None)
    worker = threading.Thread(target=loop.call_soon_threadsafe, args=(lambda: None,))
    worker.start()
    worker.join(WAIT)
    stats = loop.statistics()
    assert stats["timers"] == 1  # the cancelled one does not count
    assert stats["callbacks"] == 2
    handle.cancel()
    loop.step(0)
    stats = loop.statistics()
    assert (stats["timers"], stats["callbacks"]) == (0, 0)


def test_statistics_count_the_waiters_of_primitives_as_waiting_threads(loop: Loop) -> None:
    event = Event()
    threads = [loop.newthread(event.wait) for _ in range(3)]
    assert loop.statistics()["threads_by_state"]["waiting"] == 3
    event.set()
    loop.start()
    assert not any(t.is_alive() for t in threads)
    assert loop.statistics()["threads"] == 0


def test_module_statistics_describe_the_default_loop(api: types.ModuleType) -> None:
    thread = api.newthread(api.sleep, 60)
    stats = api.statistics()
    assert stats["threads"] == 1
    assert stats["timers"] == 1
    thread.kill()
    assert api.statistics()["threads"] == 0


# ----------------------------------------------------------------------- dump


def test_dump_names_each_thread_with_its_state_and_wait(loop: Loop, pair: Pair) -> None:
    a, _ = pair
    fill_send_buffer(a)  # a has nothing to read and no room to write

    def sleeping_handler() -> None:
        loop.sleep(60)

    def reading_handler() -> None:
        a.recv(10)

    def writing_handler() -> None:
        a.sendall(b"x" * 65536)

    def suspended_handler() -> None:
        loop.suspend()

    threads: dict[str, Thread[Any]] = {}
    for name, handler in [
        ("the-sleeper", sleeping_handler),
        ("the-reader", reading_handler),
        ("the-writer", writing_handler),
        ("the-suspended", suspended_handler),
    ]:
        threads[name] = loop.newthread(handler)
        threads[name].name = name
    threads["the-joiner"] = loop.newthread(threads["the-sleeper"].join)
    threads["the-joiner"].name = "the-joiner"
    text = loop.dump()
    lines = text.splitlines()

    def header(name: str) -> str:
        [line] = [line for line in lines if line.startswith(f"{name}:")]
        return line

    assert "sleep" in header("the-sleeper")
    assert "waiting" in header("the-sleeper")
    assert f"fd {a.fileno()} (read)" in header("the-reader")
    assert f"fd {a.fileno()} (write)" in header("the-writer")
    assert "suspended" in header("the-suspended")
    assert "join of 'the-sleeper'" in header("the-joiner")
    for handler_name in (
        "sleeping_handler",
        "reading_handler",
        "writing_handler",
        "suspended_handler",
    ):
        assert handler_name in text, f"{handler_name} missing from the stacks"
    for thread in threads.values():
        thread.kill()


def test_dump_shows_the_stack_of_each_thread_under_its_name(loop: Loop) -> None:
    def first_handler() -> None:
        loop.sleep(60)

    def second_handler() -> None:
        loop.suspend()

    one = loop.newthread(first_handler)
    one.name = "one"
    two = loop.newthread(second_handler)
    two.name = "two"
    text = loop.dump()
    one_part = text[text.index("one:") : text.index("two:")]
    two_part = text[text.index("two:") :]
    assert "first_handler" in one_part
    assert "second_handler" not in one_part
    assert "second_handler" in two_part
    one.kill()
    two.kill()


def test_dump_from_inside_a_thread_shows_its_own_stack_as_running(loop: Loop) -> None:
    def introspecting_handler() -> str:
        return loop.dump()

    thread = loop.newthread(introspecting_handler)
    text = thread.join()
    assert "running" in text
    assert "introspecting_handler" in text


def test_dump_of_an_idle_loop_is_one_line(loop: Loop) -> None:
    assert loop.dump() == repr(loop)


def test_module_dump_describes_the_default_loop(api: types.ModuleType) -> None:
    def dumped_handler() -> None:
        api.sleep(60)

    thread = api.newthread(dumped_handler)
    text = api.dump()
    assert thread.name in text
    assert "dumped_handler" in text
    thread.kill()


# ------------------------------------------------------------------- watchdog


def test_watchdog_reports_a_thread_blocking_the_loop_once_and_names_it(
    loop: Loop, watched: pytest.LogCaptureFixture
) -> None:
    loop.watchdog(0.05)
    try:
        thread = loop.spawn(burn_cpu, 0.3)
        thread.name = "cpu-hog"
        loop.start(WAIT)
    finally:
        loop.watchdog(None)
    reports = watchdog_reports(watched)
    assert len(reports) == 1
    message = reports[0].getMessage()
    assert "cpu-hog" in message
    assert "burn_cpu" in message  # the stack shows where it blocks


def test_watchdog_reports_each_blocking_episode(
    loop: Loop, watched: pytest.LogCaptureFixture
) -> None:
    def two_episodes() -> None:
        burn_cpu(0.15)
        loop.sleep(0.01)  # the loop polls in between
        burn_cpu(0.15)

    loop.watchdog(0.05)
    try:
        loop.spawn(two_episodes)
        loop.start(WAIT)
    finally:
        loop.watchdog(None)
    assert len(watchdog_reports(watched)) == 2


def test_watchdog_does_not_report_while_the_loop_polls(
    loop: Loop, watched: pytest.LogCaptureFixture
) -> None:
    loop.watchdog(0.02)
    try:
        loop.newthread(loop.sleep, 0.2)  # the loop waits in the poller meanwhile
        loop.start(WAIT)
    finally:
        loop.watchdog(None)
    assert watchdog_reports(watched) == []


def test_watchdog_does_not_report_while_the_loop_is_idle(
    loop: Loop, watched: pytest.LogCaptureFixture
) -> None:
    loop.watchdog(0.02)
    try:
        loop.newthread(loop.sleep, 60)
        burn_cpu(0.2)  # busy outside the loop: the loop is not dispatching
    finally:
        loop.watchdog(None)
        for thread in loop.threads():
            thread.kill()
    assert watchdog_reports(watched) == []


def test_watchdog_names_a_blocking_callback(loop: Loop, watched: pytest.LogCaptureFixture) -> None:
    loop.watchdog(0.05)
    try:
        loop.call_soon(burn_cpu, 0.3)
        loop.start(WAIT)
    finally:
        loop.watchdog(None)
    [report] = watchdog_reports(watched)
    assert "callback" in report.getMessage()


def test_watchdog_none_stops_the_monitoring_thread(
    loop: Loop, watched: pytest.LogCaptureFixture
) -> None:
    loop.watchdog(0.05)
    assert [t for t in threading.enumerate() if t.name == "socketloop-watchdog"]
    loop.watchdog(None)
    assert not [t for t in threading.enumerate() if t.name == "socketloop-watchdog"]
    loop.spawn(burn_cpu, 0.2)
    loop.start(WAIT)
    assert watchdog_reports(watched) == []


def test_watchdog_called_again_replaces_the_previous_one(loop: Loop) -> None:
    loop.watchdog(0.05)
    loop.watchdog(0.1)
    try:
        assert len([t for t in threading.enumerate() if t.name == "socketloop-watchdog"]) == 1
    finally:
        loop.watchdog(None)


def test_module_watchdog_watches_the_default_loop(
    api: types.ModuleType, watched: pytest.LogCaptureFixture
) -> None:
    api.watchdog(0.05)
    try:
        thread = api.spawn(burn_cpu, 0.3)
        thread.name = "module-hog"
        api.start()
    finally:
        api.watchdog(None)
    [report] = watchdog_reports(watched)
    assert "module-hog" in report.getMessage()
