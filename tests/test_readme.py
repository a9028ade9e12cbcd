"""The README's code runs as written: every fenced python block, and the calls of its API table.

The tutorial of the documentation site (docs/tutorial) is held to the same rule.

Each block runs in a fresh interpreter, exactly as a reader would paste it
(the examples are self-contained on loopback), so a drift between the
README and the library fails here.
"""

from __future__ import annotations

import ast
import inspect
import pathlib
import re
import subprocess
import sys
from typing import Any

import pytest

import socketloop

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TUTORIAL = ROOT / "docs" / "tutorial" / "index.md"


def python_blocks(path: pathlib.Path = README) -> dict[str, str]:
    """The fenced python blocks, keyed by the heading above them (numbered when repeated)."""
    blocks: dict[str, str] = {}
    heading = "top"
    lines = path.read_text().splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.strip() == "```python":
            end = lines.index("```\n", i + 1)
            key, n = heading, 2
            while key in blocks:
                key, n = f"{heading} ({n})", n + 1
            blocks[key] = "".join(lines[i + 1 : end])
            i = end
        i += 1
    return blocks


BLOCKS = python_blocks()
TUTORIAL_BLOCKS = python_blocks(TUTORIAL)


def run_block(source: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=50, check=False
    )


def test_the_sections_with_code_each_have_a_runnable_block() -> None:
    headings = set(BLOCKS)
    for section in (
        "Example: concurrent `http.client` fetches",
        "Threads and time",
        "Threads and time (2)",
        "TLS, names, Unix, UDP",
        "Using existing libraries",
    ):
        assert section in headings, f"no python block under {section!r}: {sorted(headings)}"


@pytest.mark.parametrize("heading", sorted(BLOCKS))
def test_the_readme_block_runs_as_written(heading: str) -> None:
    result = run_block(BLOCKS[heading])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("heading", sorted(TUTORIAL_BLOCKS))
def test_the_tutorial_block_runs_as_written(heading: str) -> None:
    result = run_block(TUTORIAL_BLOCKS[heading])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_the_http_client_example_fetches_ten_slow_pages_in_about_one_pages_time() -> None:
    result = run_block(BLOCKS["Example: concurrent `http.client` fetches"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("200 b'you asked for /page") == 10
    seconds = float(re.findall(r"10 pages in ([\d.]+) s", result.stdout)[0])
    # Sequentially 2 s; a dropped SYN (a listen queue too short) would add a 1 s retry.
    assert seconds < 1.0


# ---------------------------------------------------------------- the API table


def table_rows() -> list[tuple[str, str]]:
    """(call, example) of each row of the API table whose call is a loop function."""
    rows = []
    for line in README.read_text().splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 3 and re.match(r"`(loop|socketloop\.coro)\.\w+\(", cells[0]):
            rows.append((cells[0].strip("`"), cells[2].strip("`")))
    return rows


def function_of(call: str) -> Any:
    name = call.split("(", maxsplit=1)[0].rsplit(".", maxsplit=1)[-1]
    return getattr(socketloop.coro if call.startswith("socketloop.coro") else socketloop, name)


def test_the_api_table_lists_the_functions() -> None:
    names = [call.split("(")[0] for call, _ in table_rows()]
    assert "loop.connect" in names
    assert "socketloop.coro.transfer" in names
    assert len(names) >= 12


@pytest.mark.parametrize("call", [call for call, _ in table_rows()])
def test_the_api_table_shows_real_parameters_and_defaults(call: str) -> None:
    signature = inspect.signature(function_of(call))
    shown = call.split(" -> ", maxsplit=1)[0]
    parameters = shown[shown.index("(") + 1 : shown.rindex(")")]
    tree = ast.parse(f"def f({parameters}): pass")
    shown_function = tree.body[0]
    assert isinstance(shown_function, ast.FunctionDef)
    arguments = shown_function.args
    positional = arguments.posonlyargs + arguments.args
    defaults = [None] * (len(positional) - len(arguments.defaults)) + list(arguments.defaults)
    for argument, default in zip(positional, defaults, strict=True):
        assert argument.arg in signature.parameters, f"{call}: no parameter {argument.arg}"
        real = signature.parameters[argument.arg]
        assert real.kind is not inspect.Parameter.KEYWORD_ONLY, f"{argument.arg} is keyword-only"
        if default is not None:
            assert real.default == ast.literal_eval(default), argument.arg
    for argument, kw_default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True):
        assert argument.arg in signature.parameters, f"{call}: no parameter {argument.arg}"
        real = signature.parameters[argument.arg]
        assert real.kind is inspect.Parameter.KEYWORD_ONLY, f"{argument.arg} is not keyword-only"
        if kw_default is not None:
            assert real.default == ast.literal_eval(kw_default), argument.arg


@pytest.mark.parametrize(("call", "example"), table_rows())
def test_the_api_table_example_binds_to_the_function(call: str, example: str) -> None:
    function = function_of(call)
    name = call.split("(", maxsplit=1)[0].rsplit(".", maxsplit=1)[-1]
    calls = [
        node
        for node in ast.walk(ast.parse(example.replace("\\|", "|")))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == name
    ]
    assert calls, f"the example does not call {name}: {example}"
    node = calls[0]
    inspect.signature(function).bind(
        *[object() for _ in node.args], **{k.arg: object() for k in node.keywords if k.arg}
    )
