"""The standard library's own network test suites, run with socketloop in place.

Charter: prove drop-in fidelity with tests nobody here wrote.  For each
CPython ``test.test_*`` module of the network stack it runs the module once
without socketloop (the baseline), once under ``socketloop.patch()`` and once
under ``socketloop.patch(threading=True)`` (and, when an interpreter with
gevent is given, once under gevent's ``monkey.patch_all()`` for comparison),
each in its own subprocess, and compares test by test.  Under socketloop
every test method (its setUp, body and tearDown) runs inside a loop thread of
a fresh loop, driven by that loop's own ``start()``: an exception escaping
the loop, or a test thread left suspended when ``start()`` returns, counts as
that test's error.  A test still running after ``--test-timeout`` seconds is
interrupted and reported as hung; a subprocess that stops answering is killed
after ``--module-timeout`` seconds and resumed after the test it was in.

Every test that passes in the baseline and not with socketloop must be listed
in ``known_failures.txt`` beside this file, with its reason; anything else
fails the run (exit status 1).  Listed tests that now pass are reported so the
list can shrink.  What it must not do: import socketloop in the parent or in
the baseline/gevent children (they must measure the plain standard library).

Usage (from the repository root; ``make stdlib-tests`` runs the default set)::

    python tests/stdlib/run.py [--modules test_socket,test_ssl] [--gevent PYTHON]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import unittest
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KNOWN_FAILURES = HERE / "known_failures.txt"

#: The network client and server modules of the standard library whose test
#: suites exist on CPython 3.10-3.12 (absent ones are reported and left out).
DEFAULT_MODULES = (
    "test_socket",
    "test_ssl",
    "test_selectors",
    "test_select",
    "test_httplib",
    "test_httpservers",
    "test_socketserver",
    "test_urllib2_localnet",
    "test_smtplib",
    "test_ftplib",
    "test_poplib",
    "test_imaplib",
    "test_telnetlib",
    "test_xmlrpc",
    "test_docxmlrpc",
    "test_wsgiref",
    "test_asyncore",
    "test_asynchat",
)
SOCKETLOOP_MODES = ("patch", "threading")
#: Resources a module asks for although its tests only talk to loopback.
LOOPBACK_RESOURCES = {"test_socketserver": ("network",)}
PASSED = frozenset({"pass", "xfail"})
FAILED = frozenset({"fail", "error", "hung", "xpass"})
_RANK = {"pass": 0, "xfail": 0, "skip": 1, "xpass": 2, "fail": 3, "error": 4, "hung": 5}


# ====================================================================== child


class HungTest(BaseException):
    """Raised in the main OS thread when a test outlives its time bound."""


class _Watchdog:
    """An OS thread that interrupts the main thread when a test takes too long.

    Built from ``_thread`` directly, before any patching, so that neither
    socketloop's nor gevent's patches touch it.  After the first interruption
    it interrupts again every few seconds (a test may swallow one); after
    five it gives up and ends the process, which the parent notices.
    """

    def __init__(self, timeout: float, on_abort: Callable[[], None]) -> None:
        import _thread

        self._timeout = timeout
        self._on_abort = on_abort
        self._main = _thread.get_ident()
        self._sleep = time.sleep  # the original: taken before any patching
        #: (generation, deadline) of the running test, or None between tests.
        self._armed: tuple[int, float] | None = None
        self._generation = 0
        self._lock = _thread.allocate_lock()
        self.fired = False
        signal.signal(signal.SIGUSR2, self._interrupt)
        _thread.start_new_thread(self._watch, ())

    def _interrupt(self, signum: int, frame: Any) -> None:
        if self.fired:
            raise HungTest(f"test still running after {self._timeout:g} s")

    def arm(self) -> None:
        with self._lock:
            self._generation += 1
            self.fired = False
            self._armed = (self._generation, time.monotonic() + self._timeout)

    def disarm(self) -> None:
        with self._lock:
            self._armed = None
            self.fired = False

    def _watch(self) -> None:
        tries = 0
        last = -1
        while True:
            self._sleep(0.1)
            armed = self._armed
            if armed is None or time.monotonic() < armed[1]:
                continue
            generation = armed[0]
            tries = tries + 1 if generation == last else 1
            last = generation
            if tries > 5:
                self._on_abort()
                os._exit(3)
            with self._lock:
                if self._armed is not armed:
                    continue  # the test ended meanwhile
                self.fired = True
                self._armed = (generation, time.monotonic() + 3.0)  # again, if swallowed
            signal.pthread_kill(self._main, signal.SIGUSR2)


class _Recorder(unittest.TestResult):
    """Writes one JSON line per test outcome (the parent reads them as they come)."""

    def __init__(self, out: Any) -> None:
        super().__init__()
        self._out = out
        self._outcome: dict[str, tuple[str, str]] = {}

    def emit(self, record: dict[str, Any]) -> None:
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()

    def _note(self, test: Any, outcome: str, detail: str = "") -> None:
        test_id = test.id()
        old = self._outcome.get(test_id)
        if old is None or _RANK[outcome] > _RANK[old[0]]:
            self._outcome[test_id] = (outcome, detail)
        if not isinstance(test, unittest.TestCase):
            # setUpClass/setUpModule errors come on a stand-in, never started.
            self._flush(test_id)

    def _flush(self, test_id: str) -> None:
        outcome, detail = self._outcome.pop(test_id, ("pass", ""))
        self.emit({"event": "end", "id": test_id, "outcome": outcome, "detail": detail[-1500:]})

    def startTest(self, test: Any) -> None:
        super().startTest(test)
        self.emit({"event": "start", "id": test.id()})

    def stopTest(self, test: Any) -> None:
        super().stopTest(test)
        self._flush(test.id())

    def _text(self, err: Any) -> str:
        if isinstance(err, str):
            return err
        return "".join(traceback.format_exception(*err))

    def addSuccess(self, test: Any) -> None:
        self._note(test, "pass")

    def addError(self, test: Any, err: Any) -> None:
        hung = not isinstance(err, str) and err[0] is not None and issubclass(err[0], HungTest)
        self._note(test, "hung" if hung else "error", self._text(err))

    def addFailure(self, test: Any, err: Any) -> None:
        self._note(test, "fail", self._text(err))

    def addSkip(self, test: Any, reason: str) -> None:
        self._note(test, "skip", reason)

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        self._note(test, "xfail")

    def addUnexpectedSuccess(self, test: Any) -> None:
        self._note(test, "xpass")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        if err is not None:
            failure = issubclass(err[0], test.failureException)
            self._note(test, "fail" if failure else "error", self._text(err))


def _iter_tests(suite: Any) -> Iterator[unittest.TestCase]:
    for item in suite:
        if isinstance(item, unittest.TestCase):
            yield item
        else:
            yield from _iter_tests(item)


def _run_in_loop_thread(
    test: unittest.TestCase, run: Callable[..., Any], result: _Recorder, coro: bool
) -> None:
    """Run one test method inside a thread of a fresh loop, driven by its ``start()``."""
    import socketloop

    loop = socketloop.CoroLoop() if coro else socketloop.Loop()
    thread = None
    try:
        thread = loop.newthread(run, result)
        loop.start()
    except HungTest:
        result.addError(test, sys.exc_info())
    except BaseException:
        info = sys.exc_info()
        text = "an exception escaped the loop:\n" + "".join(traceback.format_exception(*info))
        result.addError(test, text)
    else:
        if not thread.dead:
            result.addError(
                test,
                f"start() returned while the test's thread was still {thread.state} "
                "(a lost wake-up)",
            )
    finally:
        if thread is not None and not thread.dead:
            result.stopTest(test)  # the thread never got to report its end
        try:
            loop.close()
        except BaseException as exc:  # a half-finished loop: leave it to the collector
            result.emit({"event": "note", "id": test.id(), "text": f"loop.close(): {exc!r}"})


def child_main(args: argparse.Namespace) -> int:
    """Run one module in one mode, writing JSON lines to ``args.out``."""
    mode: str = args.mode
    out = open(args.out, "a", encoding="utf-8")  # noqa: SIM115 (kept open until exit)
    recorder = _Recorder(out)
    current: list[str] = []

    def abort() -> None:
        recorder.emit({"event": "abort", "id": current[0] if current else ""})

    watchdog = _Watchdog(args.test_timeout, abort)
    if mode == "gevent":
        importlib.import_module("gevent.monkey").patch_all()
    elif mode in SOCKETLOOP_MODES:
        import socketloop

        socketloop.patch(threading=mode == "threading")
    # No internet; tests guarded by other resources (cpu, ...) are left out too.
    support: Any = importlib.import_module("test.support")
    support.use_resources = list(LOOPBACK_RESOURCES.get(args.module, ()))
    exclude = set(Path(args.exclude).read_text().split()) if args.exclude else set()
    try:
        module = importlib.import_module(f"test.{args.module}")
    except unittest.SkipTest as exc:
        recorder.emit({"event": "module-skip", "reason": str(exc)})
        recorder.emit({"event": "done"})
        return 0
    suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    in_loop = mode in SOCKETLOOP_MODES
    for case in _iter_tests(suite):
        original = case.run

        def run(
            result: Any = None,
            _case: unittest.TestCase = case,
            _run: Callable[..., Any] = original,
        ) -> Any:
            test_id = _case.id()
            if test_id in exclude:
                return None
            current[:] = [test_id]
            watchdog.arm()
            try:
                if in_loop:
                    _run_in_loop_thread(_case, _run, recorder, args.coro)
                    return None
                try:
                    return _run(result)
                except HungTest:
                    recorder.addError(_case, sys.exc_info())
                    recorder.stopTest(_case)
                    return None
            finally:
                watchdog.disarm()

        case.run = run  # type: ignore[method-assign]
    try:
        suite.run(recorder)
    except HungTest:  # in a setUpClass/tearDownModule: the rest of the module is lost
        recorder.emit({"event": "abort", "id": current[0] if current else ""})
    recorder.emit({"event": "done"})
    out.close()
    return 0


# ===================================================================== parent


@dataclass
class Run:
    """The outcomes of one module in one mode."""

    outcomes: dict[str, str] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""

    def count(self, kinds: frozenset[str]) -> int:
        return sum(1 for outcome in self.outcomes.values() if outcome in kinds)


def _supervise(
    command: list[str], env: dict[str, str], out: Path, stderr_path: Path, args: argparse.Namespace
) -> tuple[str, int]:
    """Run one child; kill it when one test (or the whole module) outlives its bound.

    The child's own watchdog interrupts a test after ``--test-timeout``; this
    is for a child that cannot be interrupted (a loop that never returns to
    Python, as gevent's does while it polls).  Returns (stderr, exit code),
    the code -1 when the child was killed.
    """
    deadline = time.monotonic() + args.module_timeout
    grace = args.test_timeout + 15.0
    running: str | None = None
    since = time.monotonic()
    offset = 0
    with stderr_path.open("wb") as stderr_file:
        proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
        )
        try:
            while proc.poll() is None:
                time.sleep(0.25)
                with out.open("rb") as stream:
                    stream.seek(offset)
                    chunk = stream.read()
                complete = chunk[: chunk.rfind(b"\n") + 1]
                offset += len(complete)
                for line in complete.splitlines():
                    record = json.loads(line)
                    if record["event"] == "start":
                        running, since = record["id"], time.monotonic()
                    elif record["event"] == "end":
                        running = None
                now = time.monotonic()
                if now > deadline or (running is not None and now - since > grace):
                    proc.kill()
                    proc.wait()
                    return stderr_path.read_text(errors="replace"), -1
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return stderr_path.read_text(errors="replace"), proc.returncode


def run_child(
    python: str,
    module: str,
    mode: str,
    args: argparse.Namespace,
    env: dict[str, str],
) -> Run:
    """One module in one mode, resumed after any test that takes its process down."""
    result = Run()
    started_at = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stdlib-") as tmp:
        out = Path(tmp) / "out.jsonl"
        exclude = Path(tmp) / "exclude.txt"
        exclude.write_text("")
        for _attempt in range(8):
            out.write_text("")
            command = [python, str(Path(__file__).resolve()), "--child", module, "--mode", mode]
            command += ["--out", str(out), "--exclude", str(exclude)]
            command += ["--test-timeout", str(args.test_timeout)]
            if args.coro:
                command.append("--coro")
            stderr, code = _supervise(command, env, out, Path(tmp) / "stderr.txt", args)
            started: str | None = None
            done = False
            for line in out.read_text().splitlines():
                record = json.loads(line)
                event = record["event"]
                if event == "start":
                    started = record["id"]
                elif event == "end":
                    result.outcomes[record["id"]] = record["outcome"]
                    if record["detail"] and record["outcome"] in FAILED:
                        result.details[record["id"]] = record["detail"]
                    if record["id"] == started:
                        started = None
                elif event == "module-skip":
                    result.note = "module skipped: " + record["reason"]
                elif event == "done":
                    done = True
            if done:
                break
            if started is None:
                result.note = f"process ended early (exit {code}): {stderr.strip()[-300:]}"
                break
            result.outcomes[started] = "hung"
            why = "no answer" if code == -1 else f"process ended (exit {code})"
            result.details[started] = f"{why}; the module went on after this test"
            exclude.write_text("\n".join(result.outcomes))
    result.seconds = time.monotonic() - started_at
    return result


@dataclass
class Known:
    test_id: str
    modes: frozenset[str]
    kind: str
    reason: str


def read_known_failures(path: Path) -> list[Known]:
    """``test id | modes | kind | reason`` lines; ``#`` starts a comment."""
    entries = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [part.strip() for part in line.split("|", 3)]
        if len(parts) != 4 or parts[2] not in ("deliberate", "not-yet-fixed") or not parts[3]:
            raise SystemExit(f"{path}:{number}: expected 'test id | modes | kind | reason'")
        modes = frozenset(SOCKETLOOP_MODES if parts[1] == "all" else parts[1].split(","))
        entries.append(Known(parts[0], modes, parts[2], parts[3]))
    return entries


def find_gevent(spec: str) -> str | None:
    """The interpreter to run gevent's figures with, or None."""
    if spec == "none":
        return None
    candidates = [spec] if spec != "auto" else [".gevent-venv/bin/python", ".bench-venv/bin/python"]
    for python in candidates:
        if not Path(python).exists():
            continue
        probe = subprocess.run(
            [python, "-c", "import gevent, test.support"], capture_output=True, check=False
        )
        if probe.returncode == 0:
            return python
        if spec != "auto":
            raise SystemExit(f"{python} cannot import gevent and test.support")
    return None


def check_test_package(python: str) -> None:
    probe = subprocess.run(
        [python, "-c", "import test.support, test.test_socket"], capture_output=True, check=False
    )
    if probe.returncode:
        raise SystemExit(
            f"{python} has no standard-library test package (test.test_socket). A source "
            "build (pyenv, python.org) installs it; Debian's python3 needs the "
            "libpython3.X-testsuite package (`make stdlib-tests` installs it with apt-get)."
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", default=",".join(DEFAULT_MODULES))
    parser.add_argument("--modes", default="unpatched,patch,threading")
    parser.add_argument("--gevent", default="auto", help="interpreter with gevent, auto or none")
    parser.add_argument("--test-timeout", type=float, default=20.0)
    parser.add_argument("--module-timeout", type=float, default=240.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--coro", action="store_true", help="symmetric loops (socketloop.coro)")
    parser.add_argument("--json", help="write every outcome to this file")
    parser.add_argument("--details", action="store_true", help="print new failures' tracebacks")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--exclude", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.module = args.child
        return child_main(args)

    began = time.monotonic()
    python = sys.executable
    check_test_package(python)
    env = dict(os.environ)
    src = str(HERE.parent.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    modes = args.modes.split(",")
    gevent = find_gevent(args.gevent)
    if gevent:
        modes.append("gevent")
    modules = []
    for name in args.modules.split(","):
        probe = subprocess.run(
            [python, "-c", f"import importlib.util as u; exit(not u.find_spec('test.{name}'))"],
            check=False,
        )
        if probe.returncode == 0:
            modules.append(name)
        else:
            print(f"{name}: not in this Python's test package, left out")
    jobs = [(module, mode) for module in modules for mode in modes]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = {
            job: pool.submit(
                run_child, gevent if job[1] == "gevent" and gevent else python, *job, args, env
            )
            for job in jobs
        }
        runs = {job: future.result() for job, future in futures.items()}
    known = read_known_failures(KNOWN_FAILURES)
    return report(modules, modes, runs, known, args, time.monotonic() - began)


def report(
    modules: list[str],
    modes: list[str],
    runs: dict[tuple[str, str], Run],
    known: list[Known],
    args: argparse.Namespace,
    seconds: float,
) -> int:
    """Print the table and the verdict; 1 when a failure is not in the known list."""
    known_ids = {(entry.test_id, mode): entry for entry in known for mode in entry.modes}
    header = "| module | " + " | ".join(modes) + " | new failures (listed) |"
    print("\nrun / passed / failed / skipped per mode\n")
    print(header)
    print("|---" * (len(modes) + 2) + "|")
    unexpected: list[tuple[str, str, str]] = []
    listed_hits: set[tuple[str, str]] = set()
    for module in modules:
        base = runs[(module, "unpatched")] if "unpatched" in modes else None
        cells = []
        regressions = 0
        listed = 0
        for mode in modes:
            run = runs[(module, mode)]
            total = len(run.outcomes)
            cell = (
                f"{total} / {run.count(PASSED)} / {run.count(FAILED)} / "
                f"{run.count(frozenset({'skip'}))}"
            )
            cells.append(cell + (f" ({run.note})" if run.note else ""))
            if base is None or mode in ("unpatched", "gevent"):
                continue
            for test_id, outcome in sorted(run.outcomes.items()):
                if outcome in FAILED and base.outcomes.get(test_id) in PASSED:
                    regressions += 1
                    if (test_id, mode) in known_ids:
                        listed += 1
                        listed_hits.add((test_id, mode))
                    else:
                        unexpected.append((mode, test_id, run.details.get(test_id, outcome)))
        print(f"| {module} | " + " | ".join(cells) + f" | {regressions} ({listed}) |")
    print("\nseconds per module and mode\n")
    print("| module | " + " | ".join(modes) + " |")
    print("|---" * (len(modes) + 1) + "|")
    for module in modules:
        print(
            f"| {module} | " + " | ".join(f"{runs[(module, m)].seconds:.0f}" for m in modes) + " |"
        )
    if "gevent" in modes and "unpatched" in modes:
        total = 0
        for module in modules:
            base, run = runs[(module, "unpatched")], runs[(module, "gevent")]
            total += sum(
                1
                for test_id, outcome in run.outcomes.items()
                if outcome in FAILED and base.outcomes.get(test_id) in PASSED
            )
        print(f"\ngevent: {total} tests fail under monkey.patch_all() that pass unpatched")
    kinds = {entry.kind for entry in known}
    for kind in sorted(kinds):
        print(f"known failures, {kind}: {sum(1 for e in known if e.kind == kind)}")
    ran = {(test_id, mode) for (_, mode), run in runs.items() for test_id in run.outcomes}
    stale = [
        f"{entry.test_id} [{mode}]"
        for entry in known
        for mode in sorted(entry.modes)
        if (entry.test_id, mode) in ran
        and (entry.test_id, mode) not in listed_hits
        and mode in modes
    ]
    if stale:
        print("\nlisted as known failures but passing now (remove them):")
        for line in stale:
            print("  " + line)
    if args.json:
        data = {f"{module}:{mode}": run.outcomes for (module, mode), run in runs.items()}
        Path(args.json).write_text(json.dumps(data, indent=1, sort_keys=True))
    print(f"\ntotal time {seconds:.0f} s")
    if unexpected:
        print(f"\n{len(unexpected)} failures with socketloop that pass unpatched and are not")
        print(f"listed in {KNOWN_FAILURES.name}:")
        for mode, test_id, detail in unexpected:
            print(f"  {test_id} [{mode}]")
            if args.details:
                print("    " + detail.strip().replace("\n", "\n    "))
        return 1
    print("stdlib conformance: every failure is a listed known difference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
