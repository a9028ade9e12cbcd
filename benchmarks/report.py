"""Turn the results JSON written by run.py into Markdown tables and a PNG chart.

Used by ``run.py`` (``latest.md``, ``latest.png``) and by ``update_readme.py``
(the README section).  Standard library only, except matplotlib for the chart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SATURATED = "†"
ERRORS = "‡"
NOT_BUSY = "§"
SHARED = "¤"
HIGHLIGHT = ("socketloop", "socketloop-coro")


def _label(data: dict[str, Any], wid: str, sid: str) -> str:
    kind = "http" if wid.startswith("http") else "echo"
    return str(data["servers"][kind].get(sid, sid))


def _workloads(data: dict[str, Any]) -> list[dict[str, Any]]:
    return list(data["workloads"])


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "KiB":
        return f"{value:.2f}"
    if unit == "MB/s" or abs(value) < 100:
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def _short(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "KiB":
        return f"{value:.1f}"
    if unit == "MB/s":
        return f"{value:,.0f}"
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _marks(row: dict[str, Any]) -> str:
    marks = ""
    if "saturated" in row.get("flags", []):
        marks += SATURATED
    if "errors" in row.get("flags", []):
        marks += ERRORS
    if "server-not-busy" in row.get("flags", []):
        marks += NOT_BUSY
    if "shared-machine" in row.get("flags", []):
        marks += SHARED
    return marks


def _server_order(data: dict[str, Any]) -> list[str]:
    order = list(data["servers"]["echo"])
    order += [s for s in data["servers"]["http"] if s not in order]
    return order


def header_lines(data: dict[str, Any]) -> list[str]:
    m = data["meta"]
    machine = m["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v and k != "matplotlib")
    wall = m["wall_seconds"]
    lines = [
        f"- **Date**: {m['date']}",
        f"- **Machine**: {machine['cpu']}, {machine['cores']} cores, {machine['kernel']} "
        f"({machine['arch']})",
        f"- **Python**: {m['python']}; {versions}; socketloop revision {m.get('revision', '?')}",
        f"- **Load generator**: {m['loadgen']}"
        + (f"; HTTP: {m['wrk']} (`-t1`)" if m.get("wrk") else "")
        + f"; pinning: {m['pinning']}",
        f"- **Method**: {m['rounds']} interleaved round(s), {m['duration']:g} s measured after "
        f"{m['warmup']:g} s warm-up, a fresh server per run primed with a connect churn; "
        "medians over rounds; ratios are medians of per-round ratios",
        f"- **Command**: `{m['command']}` (wall time {wall // 60} min {wall % 60} s)",
    ]
    if m.get("quick"):
        lines.append("- **Quick smoke run**: too short to compare servers; use `make bench`")
    for note in m.get("notes", []):
        lines.append(f"- **Note**: {note}")
    return lines


def targets_table(data: dict[str, Any]) -> list[str]:
    titles = {w["id"]: w["title"] for w in _workloads(data)}
    lines = [
        "| workload | target | socketloop | socketloop.coro |",
        "|---|---|---:|---:|",
    ]
    for t in data["targets"]:
        if t["workload"] == "*":
            continue
        if t["workload"] not in titles:
            continue
        cells = []
        for sid in HIGHLIGHT:
            res = t["results"].get(sid, {})
            value = res.get("value")
            if value is None:
                cells.append("-")
                continue
            shown = f"{value:.1f} µs" if "µs" in t["target"] else _ratio(value)
            if "KiB" in t["target"]:
                shown = f"{value:.2f} KiB"
            verdict = "met" if res["met"] else "**not met**"
            if res.get("invalid"):
                verdict += f" ({SATURATED} load generator saturated)"
            cells.append(f"{shown} {verdict}")
        lines.append(
            f"| {titles[t['workload']]}: {t['what']} | {t['target']} | " + " | ".join(cells)
        )
    for t in data["targets"]:
        if t["workload"] != "*" or not t["per_workload"]:
            continue
        worst = min(  # memory: lower is better, so its ratio counts inverted
            t["per_workload"].items(),
            key=lambda kv: 1 / kv[1]["value"] if kv[0] == "idle-10k" else kv[1]["value"],
        )
        failing = [titles.get(w, w) for w, r in t["per_workload"].items() if not r["met"]]
        verdict = "met" if not failing else "**not met**: " + "; ".join(failing)
        lines.append(
            f"| every workload: {t['what']} | {t['target']} | - | "
            f"worst {worst[1]['value']:.2f}x ({worst[0]}); {verdict} |"
        )
    return [line if line.endswith("|") else line + " |" for line in lines]


def hosted_targets_table(data: dict[str, Any]) -> list[str]:
    """Issue 11's targets (socketloop hosted on asyncio/uvloop), when measured."""
    targets = data.get("hosted_targets") or []
    if not any(t["value"] is not None for t in targets):
        return []
    lines = [
        "| ping-pong 64 B, 100 connections | target | result |",
        "|---|---|---:|",
    ]
    for t in targets:
        if t["value"] is None:
            cell = "-"
        else:
            cell = f"{_ratio(t['value'])} {'met' if t['met'] else '**not met**'}"
        lines.append(f"| {t['what']} | {t['target']} | {cell} |")
    return lines


def summary_table(data: dict[str, Any], key: str = "value") -> list[str]:
    """Servers x workloads: the median (and x gevent), or the CPU per request."""
    ws = _workloads(data)
    if key == "server_cpu_us":
        ws = [w for w in ws if w["mode"] != "idle"]
    head = "| server | " + " | ".join(
        f"{w['id']} ({'µs/req' if key == 'server_cpu_us' else w['unit']})" for w in ws
    )
    lines = [head + " |", "|---|" + "---:|" * len(ws)]
    for sid in _server_order(data):
        cells = []
        present = False
        for w in ws:
            row = data["summary"].get(w["id"], {}).get(sid)
            if not row or row.get(key) is None:
                cells.append("-")
                continue
            present = True
            if key == "server_cpu_us":
                cells.append(f"{row[key]:.1f}{_marks(row)}")
            else:
                ratio = row.get("x_gevent")
                extra = f" ({ratio:.2f}x)" if ratio is not None and sid != "gevent" else ""
                cells.append(f"{_short(row[key], w['unit'])}{extra}{_marks(row)}")
        if present:
            name = _label(data, "pp", sid) if sid in data["servers"]["echo"] else sid
            if sid in HIGHLIGHT:
                name = f"**{name}**"
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def workload_table(data: dict[str, Any], w: dict[str, Any]) -> list[str]:
    rows = data["summary"].get(w["id"], {})
    unit = w["unit"]
    if w["mode"] == "idle":
        lines = [
            "| server | KiB per idle connection | x gevent | RSS before → after (KiB) | rounds |",
            "|---|---:|---:|---|---:|",
        ]
    else:
        per = "chunk" if w["mode"] == "stream" else "conn" if w["mode"] == "connect" else "req"
        lines = [
            f"| server | {unit} | x gevent | x C | x ceiling | server CPU µs/{per} | "
            "CPU x gevent | server CPU % | p50 µs | p99 µs | load gen CPU % | other programs "
            "CPU % | spread | rounds |",
            "|---|" + "---:|" * 13,
        ]
    for sid in _server_order(data):
        row = rows.get(sid)
        if not row:
            continue
        name = _label(data, w["id"], sid)
        if sid in HIGHLIGHT:
            name = f"**{name}**"
        spread = (
            f"{100 * (row['max'] - row['min']) / row['value']:.0f} %"
            if row.get("value") and row.get("max") is not None
            else "-"
        )
        rounds = f"{row['rounds']}{_marks(row)}"
        if w["mode"] == "idle":
            rss = [
                f"{r['rss_before_kib']:,} → {r['rss_after_kib']:,}"
                for r in data["runs"]
                if r["workload"] == w["id"] and r["server"] == sid and "rss_after_kib" in r
            ]
            lines.append(
                f"| {name} | {_num(row['value'], 'KiB')} | {_ratio(row.get('x_gevent'))} | "
                f"{rss[0] if rss else '-'} | {rounds} |"
            )
            continue
        lines.append(
            f"| {name} | {_num(row['value'], unit)} | {_ratio(row.get('x_gevent'))} | "
            f"{_ratio(row.get('x_c'))} | {_ratio(row.get('x_ceiling'))} | "
            f"{_num(row.get('server_cpu_us'))} | {_ratio(row.get('cpu_x_gevent'))} | "
            f"{_num(row.get('server_cpu_pct'))} | {_num(row.get('p50_us'))} | "
            f"{_num(row.get('p99_us'))} | {_num(row.get('loadgen_cpu_pct'))} | "
            f"{_num(row.get('others_pct'))} | {spread} | {rounds} |"
        )
    problems = [
        f"- {_label(data, w['id'], sid)}: {'; '.join(sorted(set(row['errors'])))}"
        for sid, row in rows.items()
        if row.get("errors")
    ]
    notes = [
        f"- {_label(data, w['id'], sid)}: {'; '.join(row['notes'])}"
        for sid, row in rows.items()
        if row.get("notes")
    ]
    return lines + (["", *problems] if problems else []) + (["", *notes] if notes else [])


LEGEND = (
    f"{SATURATED} the load generator used ≥ 90 % of its CPU: it, not the server, set the rate; "
    f"the row is not a valid measurement of the server. {ERRORS} some runs failed (see the "
    f"per-workload tables). {NOT_BUSY} the server used < 80 % of its CPU: neither side was "
    "the limit (wake-up latency of this VM was), so compare CPU per request, not the rate. "
    f"{SHARED} other programs used more than the allowed share of a CPU during the runs "
    "(after retries): the rate is disturbed, CPU per request much less so. "
    "x gevent, x C, x ceiling: the server's figure divided by gevent's, the C reference "
    "server's and the pure-Python epoll server's, measured round by round. Server CPU per "
    "request: the server process's user+system CPU time over the measured window divided by "
    "the requests served (the steadiest figure on a noisy machine). Spread: (max - min) / "
    "median over the rounds."
)


def render_markdown(data: dict[str, Any]) -> str:
    out = ["# socketloop benchmarks: latest results", ""]
    out += header_lines(data)
    out += ["", "## Targets (issue 3)", ""]
    out += targets_table(data)
    hosted = hosted_targets_table(data)
    if hosted:
        out += ["", "## Targets (issue 11: hosted on asyncio and uvloop)", "", *hosted]
    out += ["", "## Summary: medians (x gevent)", ""]
    out += summary_table(data)
    out += ["", "## Server CPU per request (µs)", ""]
    out += summary_table(data, "server_cpu_us")
    out += ["", LEGEND, "", "## Per workload"]
    for w in _workloads(data):
        out += ["", f"### {w['title']} ({w['id']}, {w['unit']})", ""]
        out += workload_table(data, w)
    skipped = data["meta"].get("skipped") or {}
    if skipped:
        out += ["", "## Not measured", ""]
        out += [f"- {k}: {v}" for k, v in skipped.items()]
    out += ["", "Chart: `latest.png`; every run: `latest.json`.", ""]
    return "\n".join(out)


def render_readme_section(
    data: dict[str, Any],
    micro: dict[str, Any] | None = None,
    hosted_run: dict[str, Any] | None = None,
    wsgi: dict[str, Any] | None = None,
) -> str:
    """The README's benchmark section.

    ``hosted_run`` is a focused run of the hosted servers (``results/hosted``),
    shown only when the main run has no hosted rows; ``wsgi`` the document
    ``wsgi_bench.py --out`` writes.
    """
    out = [
        "",
        "Produced by `make bench` (see [benchmarks/README.md](benchmarks/README.md); every "
        "workload in [benchmarks/results/latest.md](benchmarks/results/latest.md)).",
        "",
    ]
    out += header_lines(data)
    out += ["", "Targets of issue 3:", ""]
    out += targets_table(data)
    hosted = hosted_targets_table(data)
    if hosted:
        out += ["", "Targets of issue 11 (socketloop hosted on asyncio and uvloop):", "", *hosted]
    out += ["", "Medians (x gevent):", ""]
    out += summary_table(data)
    out += ["", "Server CPU µs per request:", ""]
    out += summary_table(data, "server_cpu_us")
    out += ["", LEGEND, ""]
    if micro:
        m = micro.get("meta", {})
        when = f"; {m['date']}, {m['cpu']}, revision {m['revision']}" if "date" in m else ""
        out += [
            "Micro-benchmarks (`benchmarks/micro.py`, ns per operation, min of "
            f"repetitions{when}):",
            "",
        ]
        out += micro_table(micro)
        out += [""]
    if not hosted and hosted_run is not None and hosted_targets_table(hosted_run):
        out += [
            "### Hosted on asyncio and uvloop",
            "",
            "A focused run of `benchmarks/run.py` (socketloop native and hosted, and the "
            "asyncio/uvloop streams servers), every figure from that one run:",
            "",
        ]
        out += header_lines(hosted_run)
        out += ["", "Targets of issue 11:", "", *hosted_targets_table(hosted_run)]
        out += ["", "Medians (req/s) and server CPU µs per request:", ""]
        out += summary_table(hosted_run)
        out += [""]
        out += summary_table(hosted_run, "server_cpu_us")
        out += [""]
    if wsgi is not None:
        out += [
            "### WSGI servers",
            "",
            "`benchmarks/wsgi_bench.py` (part of `make bench`): a 14-byte `hello` app and a "
            "`backend` app that makes one blocking 5 ms HTTP call per request, over HTTP/1.1 "
            "keep-alive with 100 connections.  `gevent.pywsgi` as shipped leaves Nagle's "
            "algorithm on and writes headers and body separately, so each keep-alive request "
            "waits ~40 ms for the client's delayed ACK; `gevent.pywsgi-nodelay` is the same "
            "server with `TCP_NODELAY` on each connection, the fair peer the targets use.",
            "",
        ]
        out += wsgi_section(wsgi)
        out += [""]
    return "\n".join(out)


#: Issue 12's targets: (app, workers, server, peer, figure, bound, target text).
WSGI_TARGETS = (
    ("hello", 1, "socketloop.wsgi", "gevent.pywsgi-nodelay", "rps_ratio", 1.5, "≥ 1.5x"),
    ("hello", 1, "socketloop.wsgi", "gevent.pywsgi-nodelay", "cpu_ratio", 0.65, "≤ 0.65x"),
    ("hello", 1, "gunicorn-socketloop", "gunicorn-gevent", "rps_ratio", 1.3, "≥ 1.3x"),
    ("hello", 1, "gunicorn-socketloop", "gunicorn-gthread", "rps_ratio", 1.0, "> 1.0x"),
)


def wsgi_section(doc: dict[str, Any]) -> list[str]:
    """The WSGI rows (``benchmarks/wsgi_bench.py --out``): header, targets, rows, ratios."""
    m = doc["meta"]
    out = [
        f"- **Date**: {m['date']}; socketloop revision {m['revision']}; Python {m['python']}",
        f"- **Method**: {m['rounds']} interleaved round(s) of {m['duration']:g} s, "
        f"`wrk -t1 -c{m['connections']}` on CPU 1, the server on CPU 0 (CPUs 0-1 with 2 "
        "workers, shared with wrk: compare CPU per request there, not the rate); medians "
        "over rounds; ratios are medians of per-round ratios",
        f"- **Command**: `{m['command']}`",
        "- **Workers**: with 2 workers, wrk and the server share this machine's 2 cores, so "
        "the 2-worker rates say nothing about scaling across cores; what they do show is "
        "the CPU per request with a second process (the cost of the supervisor or arbiter "
        "and of two loops) and, in the last column, how the load spread over the "
        "processes (the supervisor or arbiter is the share near 0)",
        "",
    ]
    ratios = {(r["app"], r["workers"], r["server"], r["peer"]): r for r in doc["ratios"]}
    lines = ["| hello app, 1 worker | target | result |", "|---|---|---:|"]
    for app, workers, server, peer, figure, bound, text in WSGI_TARGETS:
        r = ratios.get((app, workers, server, peer))
        value = None if r is None else r[figure]
        what = "req/s" if figure == "rps_ratio" else "server CPU per request"
        if value is None:
            cell = "-"
        else:
            met = {"≥": value >= bound, "≤": value <= bound, ">": value > bound}[text[0]]
            cell = f"{value:.2f}x {'met' if met else '**not met**'}"
        lines.append(f"| {server} vs {peer}: {what} | {text} | {cell} |")
    out += lines
    out += [
        "",
        "| app | workers | server | req/s | server CPU ms per 1,000 requests "
        "| CPU split over its processes |",
        "|---|---:|---|---:|---:|---|",
    ]
    for row in doc["rows"]:
        errors = f" ({row['errors']} errors)" if row.get("errors") else ""
        split = "/".join(f"{share}" for share in row.get("cpu_split") or []) or "-"
        out.append(
            f"| {row['app']} | {row['workers']} | {row['server']}{errors} | {row['rps']:,.0f} | "
            f"{row['cpu_ms_per_1k']:.1f} | {split} % |"
        )
    out += [
        "",
        "| app | workers | server / peer | req/s | CPU per request |",
        "|---|---:|---|---:|---:|",
    ]
    for r in doc["ratios"]:
        rps = "-" if r["rps_ratio"] is None else f"{r['rps_ratio']:.2f}x"
        cpu = "-" if r["cpu_ratio"] is None else f"{r['cpu_ratio']:.2f}x"
        out.append(f"| {r['app']} | {r['workers']} | {r['server']} / {r['peer']} | {rps} | {cpu} |")
    return out


def micro_table(micro: dict[str, Any]) -> list[str]:
    """The rows of micro.json: operation, loop, min and median ns per operation."""
    lines = ["| operation | loop | min ns/op | median ns/op |", "|---|---|---:|---:|"]
    for r in micro["rows"]:
        lines.append(f"| {r['bench']} | {r['loop']} | {r['min_ns']:,.0f} | {r['median_ns']:,.0f} |")
    return lines


def render_chart(data: dict[str, Any], path: Path) -> str:
    """Draw one bar panel per workload; return what was done."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart"
    ws = [w for w in _workloads(data) if data["summary"].get(w["id"])]
    if not ws:
        return "nothing measured: no chart"
    cols = 2
    nrows = (len(ws) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(13, 3.4 * nrows), squeeze=False)
    for ax, w in zip(axes.flat, ws, strict=False):
        rows = data["summary"][w["id"]]
        order = [s for s in _server_order(data) if s in rows and rows[s].get("value") is not None]
        values = [rows[s]["value"] for s in order]
        lows = [rows[s]["value"] - rows[s]["min"] for s in order]
        highs = [rows[s]["max"] - rows[s]["value"] for s in order]
        colors = [
            "#d62728"
            if s == "socketloop"
            else "#ff9896"
            if s == "socketloop-coro"
            else "#555555"
            if s == "gevent"
            else "#9ecae1"
            for s in order
        ]
        y = list(range(len(order)))
        bars = ax.barh(y, values, xerr=[lows, highs], color=colors, capsize=2)
        for bar, s in zip(bars, order, strict=True):
            if "saturated" in rows[s]["flags"]:
                bar.set_hatch("//")
            cpu = rows[s].get("server_cpu_us")
            if cpu is not None:  # the steadier figure, written on the bar
                ax.text(
                    bar.get_x() + 0.01 * max(values),
                    bar.get_y() + bar.get_height() / 2,
                    f"{cpu:.1f} µs",
                    va="center",
                    fontsize=6.5,
                    color="white" if s in ("socketloop", "gevent") else "black",
                )
        ax.set_yticks(y)
        ax.set_yticklabels([_label(data, w["id"], s) for s in order], fontsize=8)
        ax.invert_yaxis()
        better = "lower is better" if w["mode"] == "idle" else "higher is better"
        ax.set_title(f"{w['title']}", fontsize=9)
        ax.set_xlabel(f"{w['unit']}{' per connection' if w['mode'] == 'idle' else ''} ({better})")
        ax.tick_params(axis="x", labelsize=8)
        if "gevent" in rows and rows["gevent"].get("value"):
            ax.axvline(rows["gevent"]["value"], color="#555555", linestyle=":", linewidth=1)
    for ax in list(axes.flat)[len(ws) :]:
        ax.axis("off")
    m = data["meta"]
    fig.suptitle(
        f"socketloop benchmarks, {m['date']}: {m['machine']['cpu']}, {m['machine']['cores']} "
        f"cores; {m['python']}; load generator {m['loadgen']}\n"
        f"medians of {m['rounds']} round(s), whiskers: min-max; hatched: load generator "
        "saturated; dotted line: gevent; on the bars: server CPU per request",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"wrote {path.name}"
