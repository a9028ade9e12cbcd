"""The skip policy: in CI a skip is a failure unless tests/allowed_skips.txt lists it.

A pytest plugin (conftest.py loads it; a test of it loads it by ``-p``).  When
``CI`` is true or ``SOCKETLOOP_REQUIRE_SERVERS=1``, a test that skips, for
whatever reason (a missing server binary or Python package, a resource limit,
a platform), is reported as failed unless its node id matches a line of the
allowed-skips file (``SOCKETLOOP_ALLOWED_SKIPS`` names another file).  Each
line there is ``PATTERN | REASON``: an ``fnmatch`` pattern over the node id and
the reason the skip is acceptable; ``#`` starts a comment.  The file is read
once, at start-up, and a line without a reason stops the run.  Outside CI skips
stay skips, so a developer without, say, nginx still gets a green run.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ALLOWED_SKIPS_ENV = "SOCKETLOOP_ALLOWED_SKIPS"
DEFAULT_ALLOWED_SKIPS = Path(__file__).with_name("allowed_skips.txt")


def strict() -> bool:
    """True when skips must be listed to be accepted (CI, or servers required)."""
    ci = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
    return ci or os.environ.get("SOCKETLOOP_REQUIRE_SERVERS", "") == "1"


def allowed_patterns(path: Path) -> dict[str, str]:
    """``{pattern: reason}`` from the allowed-skips file; a line without a reason is an error."""
    patterns: dict[str, str] = {}
    if not path.exists():
        return patterns
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        pattern, _, reason = line.partition("|")
        if not reason.strip():
            raise pytest.UsageError(f"{path}:{number}: an allowed skip needs a reason: {raw!r}")
        patterns[pattern.strip()] = reason.strip()
    return patterns


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


_PATTERNS = pytest.StashKey[dict[str, str]]()


def allowed_skips_file() -> Path:
    return Path(os.environ.get(ALLOWED_SKIPS_ENV, "") or DEFAULT_ALLOWED_SKIPS)


def pytest_configure(config: pytest.Config) -> None:
    if strict():
        config.stash[_PATTERNS] = allowed_patterns(allowed_skips_file())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not report.skipped or hasattr(report, "wasxfail") or not strict():
        return
    patterns = item.config.stash.get(_PATTERNS, {})
    if any(fnmatch.fnmatchcase(item.nodeid, pattern) for pattern in patterns):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped in CI, and {allowed_skips_file().name} does not list this test: "
        f"{_skip_reason(report)}"
    )
