"""Put the latest benchmark table into the top-level README.md.

Replaces what lies between ``<!-- bench:start -->`` and ``<!-- bench:end -->``
with the section rendered from ``benchmarks/results/latest.json``, plus, when
present beside it, ``micro.json``, ``wsgi.json`` (``wsgi_bench.py --out``) and
``hosted/latest.json`` (a focused run of the hosted servers, shown when the
main run has none).  Changes
nothing else: without README.md or without both markers it prints why and
leaves everything as it is.

usage: python benchmarks/update_readme.py [--results FILE] [--readme FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402  (benchmarks/report.py, next to this file)

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(HERE / "results" / "latest.json"))
    p.add_argument("--readme", default=str(HERE.parent / "README.md"))
    args = p.parse_args(argv)
    readme, results = Path(args.readme), Path(args.results)
    if not results.exists():
        print(f"{results}: no results yet (run benchmarks/run.py first); README unchanged")
        return 0
    if not readme.exists():
        print(f"{readme} does not exist; nothing updated")
        return 0
    text = readme.read_text()
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start:
        print(f"{readme}: markers {START} ... {END} not found; README unchanged")
        return 0

    def optional(path: Path) -> dict[str, Any] | None:
        return json.loads(path.read_text()) if path.exists() else None

    micro = optional(results.parent / "micro.json")
    hosted_run = optional(results.parent / "hosted" / "latest.json")
    wsgi = optional(results.parent / "wsgi.json")
    if wsgi is not None and "meta" not in wsgi:
        wsgi = None  # the rows of an older wsgi_bench.py: no same-run ratios to show
    section = report.render_readme_section(
        json.loads(results.read_text()), micro, hosted_run=hosted_run, wsgi=wsgi
    )
    new = text[: start + len(START)] + "\n" + section + "\n" + text[end:]
    if new == text:
        print(f"{readme}: already up to date")
    else:
        readme.write_text(new)
        print(f"{readme}: benchmark section updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
