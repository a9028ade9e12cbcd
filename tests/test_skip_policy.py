"""The skip policy of CI (tests/_skip_policy.py), run on a tiny suite in a child pytest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

SKIPPING_SUITE = """
import pytest

def test_needs_a_server() -> None:
    pytest.skip("nginx is not installed")

def test_runs() -> None:
    pass
"""


def run_child_suite(tmp_path: Path, env: dict[str, str], allowed: str | None = None) -> str:
    """Run the skipping suite with the skip policy loaded; return its summary line."""
    (tmp_path / "test_tiny.py").write_text(SKIPPING_SUITE)
    switches = ("CI", "SOCKETLOOP_REQUIRE_SERVERS")
    child_env = {k: v for k, v in os.environ.items() if k not in switches}
    child_env["PYTHONPATH"] = os.pathsep.join([str(HERE), child_env.get("PYTHONPATH", "")])
    if allowed is not None:
        (tmp_path / "allowed.txt").write_text(allowed)
        child_env["SOCKETLOOP_ALLOWED_SKIPS"] = str(tmp_path / "allowed.txt")
    child_env.update(env)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "_skip_policy"]
    result = subprocess.run(
        [*argv, "-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path / "test_tiny.py")],
        cwd=tmp_path,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    return output.splitlines()[-1] + f" (exit {result.returncode})"


def test_a_skip_stays_a_skip_outside_ci(tmp_path: Path) -> None:
    assert run_child_suite(tmp_path, {}).startswith("1 passed, 1 skipped")


@pytest.mark.parametrize("switch", [{"CI": "true"}, {"SOCKETLOOP_REQUIRE_SERVERS": "1"}])
def test_an_unlisted_skip_fails_in_ci(tmp_path: Path, switch: dict[str, str]) -> None:
    summary = run_child_suite(tmp_path, switch)
    assert summary.startswith("1 failed, 1 passed"), summary
    assert summary.endswith("(exit 1)")


def test_a_listed_skip_is_accepted_in_ci(tmp_path: Path) -> None:
    allowed = "# comment\n*::test_needs_a_server | nginx cannot run on this platform\n"
    summary = run_child_suite(tmp_path, {"CI": "true"}, allowed)
    assert summary.startswith("1 passed, 1 skipped"), summary


def test_an_allowed_skip_without_a_reason_is_refused(tmp_path: Path) -> None:
    summary = run_child_suite(tmp_path, {"CI": "true"}, "*::test_needs_a_server\n")
    assert "an allowed skip needs a reason" in summary, summary
    assert not summary.endswith("(exit 0)")
