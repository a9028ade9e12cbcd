"""The project's own files a newcomer runs first: the Makefile's targets and what they install."""

from __future__ import annotations

import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent


def dry_run(target: str, tmp_path: pathlib.Path) -> str:
    """What ``make TARGET`` would run on a machine without the project's virtualenv."""
    result = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={tmp_path / 'venv'}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_demo_installs_only_the_runtime(tmp_path: pathlib.Path) -> None:
    commands = dry_run("demo", tmp_path)
    assert "pip install --quiet -e ." in commands
    assert "[dev]" not in commands
    assert "[test]" not in commands


def test_make_test_installs_the_dev_extras(tmp_path: pathlib.Path) -> None:
    assert "pip install --quiet -e '.[dev]'" in dry_run("test", tmp_path)
