"""The result file: a BenchReport as JSON, with every derived figure computed once here.

Everything downstream (terminal table, plot, results page) reads this JSON form, so a figure
is derived in one place and a committed result file renders exactly as it did when measured.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from .device import NOT_MEANINGFUL, Ceilings
from .harness import FOVEAL, BenchReport, CaseResult, VariantResult

SCHEMA = "foveal-bench/1"
MODELS_KIND = "models"  # the "kind" of a whole-network run (bench/models.py); absent: layers


def _finite(value: float | None) -> float | None:
    """JSON has no inf or NaN: unmeasurable figures are null."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _bound(case: CaseResult, ceilings: Ceilings) -> str | None:
    """Which ceiling limits this case: the larger of FLOPs/rate and bytes/bandwidth."""
    rate, bandwidth = ceilings.flops_ceiling(case.dtype), ceilings.copy_bytes_per_s
    if not rate or not bandwidth:
        return None
    return "compute" if case.flops / rate >= case.bytes / bandwidth else "memory"


def variant_json(v: VariantResult, case: CaseResult, ceilings: Ceilings) -> dict[str, Any]:
    seconds = v.timing.median_ms * 1e-3 if v.timing and v.timing.median_ms > 0 else None
    rate, bandwidth = ceilings.flops_ceiling(case.dtype), ceilings.copy_bytes_per_s
    flops_per_s = case.flops / seconds if seconds else None
    bytes_per_s = case.bytes / seconds if seconds else None
    compute = flops_per_s / rate if flops_per_s and rate else None
    memory = bytes_per_s / bandwidth if bytes_per_s and bandwidth else None
    roofline = max(compute or 0.0, memory or 0.0) or None
    return {
        "status": v.status,
        "message": v.message,
        "error": _finite(v.error),
        "errors": {k: _finite(e) for k, e in v.errors.items()},
        "tolerance": v.tolerance,
        "time_ms": _finite(v.timing.median_ms) if v.timing else None,
        "time_p20_ms": _finite(v.timing.p20_ms) if v.timing else None,
        "time_p80_ms": _finite(v.timing.p80_ms) if v.timing else None,
        "timing_meaningful": v.timing.meaningful if v.timing else None,
        "timing_note": None if not v.timing or v.timing.meaningful else NOT_MEANINGFUL,
        "tflops": _finite(flops_per_s / 1e12) if flops_per_s else None,
        "gbps": _finite(bytes_per_s / 1e9) if bytes_per_s else None,
        "fraction_of_compute_ceiling": _finite(compute),
        "fraction_of_memory_ceiling": _finite(memory),
        "fraction_of_roofline": _finite(roofline),
        "peak_memory_bytes": v.peak_memory_bytes,
    }


def _speedups(variants: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Baseline time / foveal time per baseline: above 1 means foveal is faster."""
    ours = variants.get(FOVEAL, {}).get("time_ms")
    return {name: (_finite(v["time_ms"] / ours) if ours and v.get("time_ms") else None)
            for name, v in variants.items() if name != FOVEAL}


def case_json(case: CaseResult, ceilings: Ceilings) -> dict[str, Any]:
    w = case.workload
    variants = {name: variant_json(v, case, ceilings) for name, v in case.variants.items()}
    return {
        "workload": w.name, "model": w.model, "op": w.op, "source": w.source,
        "tags": list(w.tags), "batch": w.batch, "layout": w.layout, "args": dict(w.args),
        "dtype": case.dtype, "direction": case.direction, "flops": case.flops,
        "bytes": case.bytes,
        "arithmetic_intensity": case.flops / case.bytes if case.bytes else None,
        "bound": _bound(case, ceilings), "input_sets": case.input_sets, "status": case.status,
        "message": case.message, "variants": variants, "speedup": _speedups(variants),
    }


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts by status and the geometric-mean speedup per baseline, dtype and direction."""
    counts: dict[str, int] = defaultdict(int)
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in results:
        counts[row["status"]] += 1
        for baseline, speedup in row["speedup"].items():
            if speedup:
                groups[baseline][f"{row['dtype']}/{row['direction']}"].append(speedup)
                groups[baseline]["all"].append(speedup)
    geomean = {b: {k: {"cases": len(v), "geomean_speedup": _geomean(v),
                       "geomean_time_ratio": 1 / _geomean(v)} for k, v in sorted(g.items())}
               for b, g in groups.items()}
    return {"cases": len(results), **{s: counts[s] for s in ("ok", "wrong", "error", "skipped")},
            "speedup": geomean}


def to_json(report: BenchReport) -> dict[str, Any]:
    results = [case_json(c, report.ceilings) for c in report.cases]
    return {
        "schema": SCHEMA,
        "label": report.settings.label,
        "meaningful": report.meaningful,
        "interrupted": report.interrupted,
        "timing_note": None if report.meaningful else
        f"{NOT_MEANINGFUL}: kernels ran in Triton's interpreter; this run proves correctness only",
        "environment": report.environment,
        "ceilings": report.ceilings.to_json(),
        "settings": report.settings.to_json(),
        "summary": summarize(results),
        "results": results,
    }


def write_json(document: dict[str, Any], path: str | Path) -> Path:
    """Write `document` whole or not at all (a temporary file renamed over `path`), so a run
    killed while writing leaves the previous complete version."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
    os.replace(partial, path)
    return path


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a result file, refusing files that are not foveal benchmark results."""
    path = Path(path)
    document = json.loads(path.read_text())
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a foveal benchmark result (schema {SCHEMA!r})")
    return document
