"""The results table, built from a result JSON: rich in a terminal when rich is installed,
plain text otherwise, and Markdown for the results page. One set of columns serves all three;
a whole-network run (kind "models") has its own columns: throughput, kernel launches, and
foveal's time as a fraction of each baseline's."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from .device import NOT_MEANINGFUL
from .harness import FOVEAL
from .report import MODELS_KIND

_MARK = "*"  # suffix of a timing that is not meaningful (CPU interpreter)
_DIRECTIONS = {"forward": "fwd", "backward": "bwd"}


def _ms(value: float | None, meaningful: bool) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" + ("" if meaningful else _MARK)


def _si(value: float, unit: str) -> str:
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _rate(variant: dict[str, Any], bound: str | None, meaningful: bool) -> str:
    mark = "" if meaningful else _MARK
    if bound == "memory" and variant.get("gbps") is not None:
        return _si(variant["gbps"] * 1e9, "B/s") + mark
    if variant.get("tflops") is not None:
        return _si(variant["tflops"] * 1e12, "FLOP/s") + mark
    return "-"


def _fraction(value: float | None, meaningful: bool) -> str:
    return "-" if value is None else f"{100 * value:.0f}%" + ("" if meaningful else _MARK)


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _speedup(value: float | None, meaningful: bool) -> str:
    return "-" if value is None else f"{value:.3g}x" + ("" if meaningful else _MARK)


def _ratio(value: float | None, meaningful: bool) -> str:
    return "-" if value is None else f"{value:.3g}" + ("" if meaningful else _MARK)


def _throughput(value: float | None, unit: str, meaningful: bool) -> str:
    if value is None:
        return "-"
    shown = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    return f"{shown} {unit}/s" + ("" if meaningful else _MARK)


def _launches(row: dict[str, Any]) -> str:
    before, after = row.get("launches_before"), row.get("launches_after")
    return "-" if before is None or after is None else f"{before} -> {after}"


def _status(row: dict[str, Any]) -> str:
    bad = [f"{name} {v['status']}" for name, v in row["variants"].items() if v["status"] != "ok"]
    if not row["variants"]:
        return "skipped"
    return "; ".join(bad) if bad else "ok"


def baselines(document: dict[str, Any]) -> list[str]:
    """Baseline names in first-seen order, PyTorch first."""
    names: dict[str, None] = {}
    for row in document["results"]:
        names.update((n, None) for n in row["variants"] if n != FOVEAL)
    return list(names)


def columns(document: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the results table."""
    if document.get("kind") == MODELS_KIND:
        return model_columns(document)
    meaningful = bool(document["meaningful"])
    others = baselines(document)
    headers = ["workload", "dtype", "dir", "foveal ms", "rate", "roofline", "peak MiB"]
    for name in others:
        headers += [f"{name} ms", f"vs {name}"]
    headers.append("check")
    rows = []
    for row in document["results"]:
        ours = row["variants"].get(FOVEAL, {})
        cells = [row["workload"], row["dtype"], _DIRECTIONS.get(row["direction"], row["direction"]),
                 _ms(ours.get("time_ms"), meaningful), _rate(ours, row["bound"], meaningful),
                 _fraction(ours.get("fraction_of_roofline"), meaningful),
                 _mib(ours.get("peak_memory_bytes"))]
        for name in others:
            cells += [_ms(row["variants"].get(name, {}).get("time_ms"), meaningful),
                      _speedup(row["speedup"].get(name), meaningful)]
        cells.append(_status(row))
        rows.append(cells)
    return headers, rows


def model_columns(document: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of a whole-network run: per baseline its time and foveal/baseline
    (foveal's time as a fraction of the baseline's: below 1 means foveal is faster)."""
    meaningful = bool(document["meaningful"])
    others = baselines(document)
    headers = ["model", "batch", "dtype", "foveal ms", "throughput", "launches", "peak MiB"]
    for name in others:
        headers += [f"{name} ms", f"foveal/{name}"]
    headers.append("check")
    rows = []
    for row in document["results"]:
        ours = row["variants"].get(FOVEAL, {})
        cells = [row["workload"], str(row["batch"]), row["dtype"],
                 _ms(ours.get("time_ms"), meaningful),
                 _throughput(ours.get("items_per_s"), row["unit"], meaningful), _launches(row),
                 _mib(ours.get("peak_memory_bytes"))]
        for name in others:
            cells += [_ms(row["variants"].get(name, {}).get("time_ms"), meaningful),
                      _ratio(row["time_ratio"].get(name), meaningful)]
        cells.append(_status(row))
        rows.append(cells)
    return headers, rows


def _target_notes(document: dict[str, Any]) -> list[str]:
    """Whether each network meets its targets (judged only on meaningful timings)."""
    if not document["meaningful"]:
        return ["targets (foveal/baseline time below a bound) are judged on a GPU only"]
    lines = []
    for row in document["results"]:
        parts = []
        for name, target in row["targets"].items():
            verdict = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
            ratio = "-" if target["ratio"] is None else f"{target['ratio']:.3g}"
            parts.append(f"{target['goal']} (foveal/{name} {ratio} < {target['below']:g}): "
                         f"{verdict}")
        lines.append(f"{row['workload']} {row['dtype']}: " + "; ".join(parts))
    return lines


def _grouped(reasons: dict[str, list[str]]) -> list[str]:
    """One line per reason with the first few cases it applies to."""
    lines = []
    for message, cases in reasons.items():
        shown = ", ".join(cases[:3]) + (f" and {len(cases) - 3} more" if len(cases) > 3 else "")
        lines.append(f"{message}: {shown}")
    return lines


def notes(document: dict[str, Any]) -> list[str]:
    """Lines under the table: summary, failures, and the CPU warning."""
    lines = [ceilings_line(document)]
    cap = document["environment"].get("autotune_max_configs")
    if cap:
        lines.append(f"autotuning capped at {cap} config(s) per launch (make gpu-check's "
                     "time budget): a full tuning may pick faster ones")
    models = document.get("kind") == MODELS_KIND
    for baseline, groups in document["summary"]["speedup"].items():
        if models:  # the model table shows foveal/baseline: the summary says the same
            parts = [f"{k} {g['geomean_time_ratio']:.3g} ({g['cases']})"
                     for k, g in groups.items()]
            lines.append(f"geomean foveal/{baseline} time: " + ", ".join(parts))
        else:
            parts = [f"{k} {g['geomean_speedup']:.3g}x ({g['cases']})"
                     for k, g in groups.items()]
            lines.append(f"geomean speedup vs {baseline}: " + ", ".join(parts))
    skipped: dict[str, list[str]] = {}  # one line per reason, not one per case
    for row in document["results"]:
        case = f"{row['workload']} {row['dtype']} {row['direction']}"
        for name, v in row["variants"].items():
            if v["status"] == "skipped" and v["message"]:
                skipped.setdefault(f"{name} skipped: {v['message']}", []).append(case)
            elif v["status"] != "ok" and v["message"]:
                lines.append(f"{case} {name}: {v['status']}: {v['message']}")
    for row in document["results"]:
        if row["message"]:
            skipped.setdefault(row["message"], []).append(
                f"{row['workload']} {row['dtype']} {row['direction']}")
    lines += _grouped(skipped)
    if models:
        lines += _target_notes(document)
    if not document["meaningful"]:
        lines.append(f"{_MARK} {NOT_MEANINGFUL}: kernels ran in Triton's interpreter; "
                     "this run checks correctness only")
    return lines


def ceilings_line(document: dict[str, Any]) -> str:
    ceilings = document["ceilings"]
    mark = "" if ceilings["meaningful"] else _MARK
    copy = ceilings["copy_bytes_per_s"]
    matmul = ", ".join(f"{dtype} {_si(rate, 'FLOP/s')}{mark}"
                       for dtype, rate in ceilings["matmul_flops_per_s"].items())
    return (f"measured ceilings: copy {_si(copy, 'B/s') if copy else '?'}{mark} (read + write), "
            f"matmul {matmul or '?'}")


def title(document: dict[str, Any]) -> str:
    env = document["environment"]
    command = "bench-models" if document.get("kind") == MODELS_KIND else "bench"
    text = (f"foveal {command} on {env.get('device')} - torch {env.get('torch')}, triton "
            f"{env.get('triton')}, {env.get('date')}")
    return text if document["meaningful"] else f"{text} - timings {NOT_MEANINGFUL}"


def render_plain(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))
    return "\n".join([line(headers), "  ".join("-" * w for w in widths),
                      *(line(r) for r in rows)])


def render_markdown(headers: list[str], rows: list[list[str]]) -> str:
    escape = lambda c: str(c).replace("|", "\\|")
    lines = ["| " + " | ".join(map(escape, headers)) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(escape, r)) + " |" for r in rows]
    return "\n".join(lines)


def print_table(document: dict[str, Any], file: TextIO | None = None, *,
                use_rich: bool | None = None) -> None:
    """Print the table, its title and notes; rich when importable unless use_rich=False."""
    file = file or sys.stdout
    headers, rows = columns(document)
    if use_rich is not False:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            if use_rich:
                raise
        else:
            table = Table(*headers, title=title(document))
            for row in rows:
                table.add_row(*row)
            widest = [max(len(c) for c in column) for column in zip(headers, *rows, strict=True)]
            console = Console(file=file, width=max(100, sum(w + 3 for w in widest) + 1))
            console.print(table)
            for line in notes(document):
                console.print(line, highlight=False, markup=False)
            return
    print(title(document), file=file)
    print(render_plain(headers, rows), file=file)
    for line in notes(document):
        print(line, file=file)
