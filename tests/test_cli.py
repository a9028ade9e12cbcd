"""The command line: python -m socketloop demo (what `make demo` runs)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import pytest


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "socketloop", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.timeout(90)
def test_demo_measures_the_one_after_another_figure() -> None:
    began = time.monotonic()
    result = run_cli("demo", "--pages", "5", "--delay", "0.3")
    elapsed = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    total, serial = map(
        float, re.findall(r"total: ([\d.]+) s concurrently; .*?: ([\d.]+) s", result.stdout)[0]
    )
    assert "one after another (measured)" in result.stdout
    # The sequential fetches really ran: the demo took at least both phases.
    assert elapsed >= total + serial
    assert serial >= 5 * 0.3


@pytest.mark.timeout(90)
def test_demo_fetches_every_page_concurrently() -> None:
    result = run_cli("demo", "--pages", "8", "--delay", "0.3")
    assert result.returncode == 0, result.stderr
    pages = re.findall(r"/page(\d+)\s+200\s+(\d+) bytes", result.stdout)
    assert [int(number) for number, _ in pages] == list(range(8))
    sizes = [int(size) for _, size in pages]
    assert sizes == sorted(sizes)  # each page is bigger than the last: bodies are not mixed up
    total, serial = map(
        float, re.findall(r"total: ([\d.]+) s concurrently; .*?: ([\d.]+) s", result.stdout)[0]
    )
    # Eight pages of 0.3 s each: concurrently well under the 2.4 s one after another.
    assert serial >= 2.3
    assert total < serial / 2


@pytest.mark.timeout(90)
def test_demo_dump_shows_the_waiting_threads() -> None:
    result = run_cli("demo", "--pages", "2", "--delay", "0.4", "--dump")
    assert result.returncode == 0, result.stderr
    assert "_fetch" in result.stdout
    assert "waiting on" in result.stdout


def test_get_reports_an_error_and_fails_for_a_refused_connection() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    result = run_cli("get", "--timeout", "5", f"http://127.0.0.1:{port}/")
    assert result.returncode == 1
    assert "refused" in result.stdout.lower()


def test_version_prints_the_package_version() -> None:
    import socketloop

    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"socketloop {socketloop.__version__}"
