"""Real database drivers on real database servers, in loop threads.

Servers: Debian's ``postgresql`` and ``mariadb-server``, each a throwaway
instance per test module on 127.0.0.1 (see ``_servers``); a missing server
skips its tests unless ``SOCKETLOOP_REQUIRE_SERVERS=1`` (then it fails them).
Drivers, each in the way its row of the README's "Database drivers" table
says: psycopg 3 (``socketloop.extras.psycopg``), psycopg2 (its wait-callback
hook, ``socketloop.extras.psycopg2``), pg8000 and PyMySQL (pure Python: under
``patch()``, and through their hooks for an already connected socket).

What each driver must show:

- concurrency measured at the server: 20 queries that each sleep 0.2 s on
  the server, from 20 loop threads, are all in flight at once (the peak of
  ``pg_stat_activity`` / ``information_schema.PROCESSLIST``, polled from a
  21st connection while they run, is 20) and finish far sooner than 20 x 0.2 s;
- a query cut by ``with loop.timeout(...)`` leaves its connection either
  usable (the next query returns the right answer) or clearly closed (the
  driver's own closed-connection error), never answering with the old result;
- a server session killed mid-query (``pg_terminate_backend`` / ``KILL``)
  gives the driver's own error, never a hang.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pg8000.dbapi  # type: ignore[import-untyped]
import psycopg
import psycopg2  # type: ignore[import-untyped]
import pymysql  # type: ignore[import-untyped]
import pytest

import socketloop
import socketloop.extras.psycopg
import socketloop.extras.psycopg2
from _servers import Database, mariadb_server, postgres_server
from conftest import run
from socketloop import Loop

#: Queries in flight at once in the concurrency tests, and each one's server-side sleep.
CONCURRENT = 20
SLEEP = 0.2

#: The overlap bound: generous, yet far below the serial time (CONCURRENT * SLEEP = 4 s).
OVERLAP_BOUND = 10 * SLEEP


# ------------------------------------------------------------------ servers


@pytest.fixture(scope="module")
def postgres() -> Iterator[Database]:
    with postgres_server() as db:
        yield db


@pytest.fixture(scope="module")
def mariadb() -> Iterator[Database]:
    with mariadb_server() as db:
        yield db


@dataclass(frozen=True)
class Dialect:
    """The SQL a test needs, per server."""

    sleep: Callable[[float], str]
    #: Counts the sessions running a ``sleep`` query (the observer's own excluded).
    in_flight: str
    session_id: str
    kill: Callable[[int], str]


POSTGRES = Dialect(
    sleep=lambda seconds: f"SELECT pg_sleep({seconds})",
    in_flight=(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(%'"
    ),
    session_id="SELECT pg_backend_pid()",
    kill=lambda pid: f"SELECT pg_terminate_backend({pid})",
)

MARIADB = Dialect(
    sleep=lambda seconds: f"SELECT SLEEP({seconds})",
    in_flight=(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP(%'"
    ),
    session_id="SELECT CONNECTION_ID()",
    kill=lambda session: f"KILL {session}",
)


# ------------------------------------------------------------------ drivers


@contextlib.contextmanager
def quietly_patched() -> Iterator[None]:
    """``socketloop.patched()``; its early-import warning is expected (the drivers
    are imported by this module before any patching)."""
    with contextlib.ExitStack() as stack:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            stack.enter_context(socketloop.patched())
        yield


@contextlib.contextmanager
def psycopg_enabled() -> Iterator[None]:
    socketloop.extras.psycopg.enable()
    try:
        yield
    finally:
        socketloop.extras.psycopg.disable()


@contextlib.contextmanager
def psycopg2_enabled() -> Iterator[None]:
    socketloop.extras.psycopg2.enable()
    try:
        yield
    finally:
        socketloop.extras.psycopg2.disable()


def connect_psycopg(lp: Loop, db: Database) -> Any:
    return psycopg.connect(
        host=db.host, port=db.port, user=db.user, dbname=db.database, autocommit=True
    )


def connect_psycopg2(lp: Loop, db: Database) -> Any:
    conn = psycopg2.connect(host=db.host, port=db.port, user=db.user, dbname=db.database)
    # Each query its own transaction: the observer's view of pg_stat_activity
    # would otherwise be the snapshot of its transaction's first query.
    conn.autocommit = True
    return conn


def connect_pg8000(lp: Loop, db: Database) -> Any:
    conn = pg8000.dbapi.connect(user=db.user, host=db.host, port=db.port, database=db.database)
    conn.autocommit = True
    return conn


def connect_pg8000_sock(lp: Loop, db: Database) -> Any:
    sock = lp.connect(db.host, db.port)
    conn = pg8000.dbapi.Connection(user=db.user, database=db.database, sock=sock)
    conn.autocommit = True
    return conn


def connect_pymysql(lp: Loop, db: Database) -> Any:
    return pymysql.connect(host=db.host, port=db.port, user=db.user, autocommit=True)


def connect_pymysql_sock(lp: Loop, db: Database) -> Any:
    conn = pymysql.connections.Connection(
        host=db.host, port=db.port, user=db.user, autocommit=True, defer_connect=True
    )
    conn.connect(sock=lp.connect(db.host, db.port))
    return conn


def scalar(conn: Any, sql: str) -> Any:
    """Run ``sql`` on a DB-API connection; its one value."""
    cursor = conn.cursor()
    try:
        cursor.execute(sql)
        row = cursor.fetchone()
    finally:
        cursor.close()
    assert row is not None
    return row[0]


#: pg8000 reads through the socket's file object and lets its first read's
#: OSError through unwrapped; after a cut read that file refuses to read on
#: ("cannot read from timed out object"), exactly as the standard library's
#: does after a socket timeout.
PG8000_CLOSED = OSError


@dataclass(frozen=True)
class Driver:
    name: str
    server: str  # the fixture: "postgres" or "mariadb"
    dialect: Dialect
    #: Makes the driver cooperative for the test (patching, or a hook's enable()).
    setup: Callable[[], contextlib.AbstractContextManager[None]]
    #: Opens a connection; called in a loop thread.
    connect: Callable[[Loop, Database], Any]
    #: What the connection is after a query cut by a timeout: "usable" or "closed".
    after_timeout: str
    #: The driver's error for a connection it knows to be closed.
    closed_error: type[BaseException]
    #: The driver's error for a session the server ended mid-query.
    lost_error: type[BaseException]


DRIVERS = [
    Driver(
        "psycopg-extras",
        "postgres",
        POSTGRES,
        psycopg_enabled,
        connect_psycopg,
        "closed",
        psycopg.OperationalError,
        psycopg.OperationalError,
    ),
    Driver(
        "psycopg2-wait-callback",
        "postgres",
        POSTGRES,
        psycopg2_enabled,
        connect_psycopg2,
        "closed",
        psycopg2.InterfaceError,
        psycopg2.OperationalError,
    ),
    Driver(
        "pg8000-patched",
        "postgres",
        POSTGRES,
        quietly_patched,
        connect_pg8000,
        "closed",
        PG8000_CLOSED,
        pg8000.dbapi.InterfaceError,
    ),
    Driver(
        "pg8000-sock",
        "postgres",
        POSTGRES,
        contextlib.nullcontext,
        connect_pg8000_sock,
        "closed",
        PG8000_CLOSED,
        pg8000.dbapi.InterfaceError,
    ),
    Driver(
        "pymysql-patched",
        "mariadb",
        MARIADB,
        quietly_patched,
        connect_pymysql,
        "closed",
        pymysql.err.InterfaceError,
        pymysql.err.OperationalError,
    ),
    Driver(
        "pymysql-sock",
        "mariadb",
        MARIADB,
        contextlib.nullcontext,
        connect_pymysql_sock,
        "closed",
        pymysql.err.InterfaceError,
        pymysql.err.OperationalError,
    ),
]


@pytest.fixture(params=DRIVERS, ids=[d.name for d in DRIVERS])
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    spec: Driver = request.param
    with spec.setup():
        yield spec


@pytest.fixture
def db(driver: Driver, request: pytest.FixtureRequest) -> Database:
    server: Database = request.getfixturevalue(driver.server)
    return server


@contextlib.contextmanager
def connections(lp: Loop, driver: Driver, db: Database, count: int) -> Iterator[list[Any]]:
    """``count`` open connections (opened in the calling loop thread), closed afterwards."""
    opened: list[Any] = []
    try:
        for _ in range(count):
            opened.append(driver.connect(lp, db))
        yield opened
    finally:
        for conn in opened:
            with contextlib.suppress(Exception):
                conn.close()


def wait_for_in_flight(lp: Loop, observer: Any, dialect: Dialect, count: int) -> None:
    """Poll the server from ``observer`` until ``count`` sleep queries run (10 s at most)."""
    deadline = time.monotonic() + 10
    while scalar(observer, dialect.in_flight) < count:
        assert time.monotonic() < deadline, f"{count} queries never ran at once"
        lp.sleep(0.01)  # polling the server's view, not synchronising


# ------------------------------------------------------------------- tests


def test_twenty_sleeping_queries_run_at_once_at_the_server(
    loop: Loop, driver: Driver, db: Database
) -> None:
    sleep_sql = driver.dialect.sleep(SLEEP)

    def measure() -> tuple[int, float]:
        with connections(loop, driver, db, CONCURRENT + 1) as conns:
            observer, workers = conns[0], conns[1:]
            started = time.monotonic()
            threads = [loop.newthread(scalar, conn, sleep_sql) for conn in workers]
            peak = 0
            while any(thread.is_alive() for thread in threads):
                peak = max(peak, scalar(observer, driver.dialect.in_flight))
                loop.sleep(0.01)  # sampling interval of the server's view
            for thread in threads:
                thread.join()
            return peak, time.monotonic() - started

    peak, elapsed = run(loop, measure, timeout=30)
    print(f"{driver.name}: peak {peak} in flight at the server, {elapsed:.3f} s")
    assert peak == CONCURRENT
    assert elapsed < OVERLAP_BOUND


def test_query_cut_by_a_timeout_leaves_the_connection_usable_or_closed(
    loop: Loop, driver: Driver, db: Database
) -> None:
    def cut_then_query() -> str:
        with connections(loop, driver, db, 1) as (conn,):
            with pytest.raises(TimeoutError), loop.timeout(0.1):
                scalar(conn, driver.dialect.sleep(1))
            try:
                answer = scalar(conn, "SELECT 42")
            except driver.closed_error:
                return "closed"
            assert answer == 42
            assert scalar(conn, "SELECT 43") == 43
            return "usable"

    assert run(loop, cut_then_query, timeout=30) == driver.after_timeout


def test_session_killed_mid_query_raises_the_drivers_error(
    loop: Loop, driver: Driver, db: Database
) -> None:
    def kill_mid_query() -> None:
        with connections(loop, driver, db, 2) as (victim, killer):
            session = scalar(victim, driver.dialect.session_id)

            def long_query() -> BaseException:
                # Caught here, not left to end the thread: an ending thread's
                # error is logged, and the log would keep the socket alive.
                with pytest.raises(driver.lost_error) as caught:
                    scalar(victim, driver.dialect.sleep(30))
                return caught.value

            query = loop.newthread(long_query)
            wait_for_in_flight(loop, killer, driver.dialect, 1)
            started = time.monotonic()
            killer.cursor().execute(driver.dialect.kill(session))
            error = query.join(10)
            print(f"{driver.name}: {type(error).__name__}: {error}")
            assert time.monotonic() - started < 5

    run(loop, kill_mid_query, timeout=30)


#: Starts a fresh server of each kind, for the tests that kill one.
FRESH_SERVERS: dict[str, Callable[[], contextlib.AbstractContextManager[Database]]] = {
    "postgres": postgres_server,
    "mariadb": mariadb_server,
}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_server_process_killed_mid_query_raises_the_drivers_error(driver: Driver) -> None:
    # SIGKILL, so the server says nothing: the driver only sees the
    # connection end.  One loop kind: each case needs a server of its own.
    lp = Loop()
    try:
        with FRESH_SERVERS[driver.server]() as fresh:

            def kill_mid_query() -> BaseException:
                with connections(lp, driver, fresh, 2) as (victim, observer):

                    def long_query() -> BaseException:
                        with pytest.raises(driver.lost_error) as caught:
                            scalar(victim, driver.dialect.sleep(30))
                        return caught.value

                    query = lp.newthread(long_query)
                    wait_for_in_flight(lp, observer, driver.dialect, 1)
                    os.kill(fresh.pid, signal.SIGKILL)
                    error: BaseException = query.join(10)
                    return error

            error = run(lp, kill_mid_query, timeout=30)
            print(f"{driver.name}: {type(error).__name__}: {error}")
    finally:
        lp.close()


# ----------------------------------------------- the hooks outside loop threads


def test_psycopg_extras_leave_queries_outside_loop_threads_blocking(postgres: Database) -> None:
    with psycopg_enabled():
        assert psycopg.waiting.wait is socketloop.extras.psycopg.wait
        conn = psycopg.connect(
            host=postgres.host, port=postgres.port, user=postgres.user, dbname=postgres.database
        )
        try:
            assert scalar(conn, "SELECT 6 * 7") == 42
        finally:
            conn.close()


def test_psycopg_extras_disable_restores_psycopgs_own_wait() -> None:
    original = psycopg.waiting.wait
    socketloop.extras.psycopg.enable()
    socketloop.extras.psycopg.enable()  # idempotent: the original is kept, not the replacement
    socketloop.extras.psycopg.disable()
    assert psycopg.waiting.wait is original


def test_psycopg2_wait_callback_blocks_plainly_outside_loop_threads(postgres: Database) -> None:
    with psycopg2_enabled():
        assert psycopg2.extensions.get_wait_callback() is socketloop.extras.psycopg2.wait
        conn = psycopg2.connect(
            host=postgres.host, port=postgres.port, user=postgres.user, dbname=postgres.database
        )
        try:
            assert scalar(conn, "SELECT 6 * 7") == 42
        finally:
            conn.close()
    assert psycopg2.extensions.get_wait_callback() is None


def test_psycopg_query_ends_with_an_error_when_another_thread_closes_its_connection(
    loop: Loop, postgres: Database
) -> None:
    def close_mid_query() -> BaseException:
        with connections(loop, DRIVERS[0], postgres, 2) as (conn, observer):

            def long_query() -> BaseException:
                with pytest.raises(psycopg.OperationalError) as caught:
                    scalar(conn, POSTGRES.sleep(30))
                return caught.value

            query = loop.newthread(long_query)
            wait_for_in_flight(loop, observer, POSTGRES, 1)
            conn.close()
            error: BaseException = query.join(5)
            return error

    with psycopg_enabled():
        error = run(loop, close_mid_query, timeout=30)
    print(f"{type(error).__name__}: {error}")
