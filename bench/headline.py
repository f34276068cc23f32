"""The performance table's rows: one real layer per kind of kernel foveal offers, in fp16
channels_last, against the library a user would otherwise call (cuDNN through PyTorch, or
torchvision for deformable convolution); and FP8 ResNet-50 3x3 against cuDNN's fp16, since
PyTorch has no FP8 convolution.

`make gpu-check` measures these rows before the rest of the suite, and the results page opens
with them, so both read the rows from here. Each row names its full-suite workload and a smoke
stand-in of the same kind that the CPU interpreter can run (the same plan without a GPU).
A row measured in several directions (DCNv2 forward+backward) adds its cases' times.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import FOVEAL, PYTORCH
from .table import render_markdown
from .workloads import Workload, WorkloadError


@dataclass(frozen=True)
class HeadlineRow:
    title: str
    workload: str  # full-suite workload (a GPU run)
    smoke: str  # smoke-suite stand-in of the same kind (the CPU interpreter)
    directions: tuple[str, ...] = ("forward",)
    dtype: str = "float16"  # on the GPU; the smoke stand-in runs in its own dtype
    baseline: str = "cuDNN"  # what the `pytorch` variant is for this op

    def workload_for(self, suite: str) -> str:
        return self.smoke if suite == "smoke" else self.workload


ROWS: tuple[HeadlineRow, ...] = (
    HeadlineRow("ResNet-50 3x3", "resnet50.layer1.0.conv2", "smoke.conv2d.bottleneck"),
    HeadlineRow("ResNet-50 3x3, FP8 e4m3 (cuDNN in fp16)", "resnet50.layer1.0.conv2.fp8",
                "smoke.conv2d_fp8", dtype="float8_e4m3fn", baseline="cuDNN fp16"),
    HeadlineRow("ResNet-50 1x1 (+residual)", "resnet50.layer1.0.conv3", "smoke.conv2d.pointwise"),
    HeadlineRow("ResNeXt-50 grouped 3x3 (g=32)", "resnext50.layer2.1.conv2",
                "smoke.conv2d.grouped"),
    HeadlineRow("MobileNetV2 depthwise 3x3", "mobilenet_v2.features.3.conv.1.0",
                "smoke.conv2d.depthwise"),
    HeadlineRow("MobileNetV2 fused depthwise-separable block", "mobilenet_v2.features.3.fused",
                "smoke.depthwise_separable_conv2d"),
    HeadlineRow("RepLKNet 31x31 depthwise", "replknet31b.stage1.dw31x31",
                "smoke.conv2d.large_kernel"),
    HeadlineRow("conv_transpose 4x4 stride 2 (DCGAN)", "dcgan.up", "smoke.conv_transpose2d"),
    HeadlineRow("R3D-18 conv3d 3x3x3", "r3d18.layer2.0.conv2.0", "smoke.conv3d.r3d"),
    HeadlineRow("DCNv2 forward", "dcnv2.res4", "smoke.deform_conv2d.dcnv2",
                baseline="torchvision"),
    HeadlineRow("DCNv2 forward+backward", "dcnv2.res4", "smoke.deform_conv2d.dcnv2",
                directions=("forward", "backward"), baseline="torchvision"),
)

Case = tuple[Workload, str, str]  # (workload, dtype, direction), as the harness runs them


def row_cases(row: HeadlineRow, workloads: dict[str, Workload], suite: str) -> list[Case]:
    """The cases that measure `row` in `suite` (the smoke stand-in in its own first dtype)."""
    name = row.workload_for(suite)
    if name not in workloads:
        raise WorkloadError(f"headline row {row.title!r}: no workload {name!r}")
    workload = workloads[name]
    dtype = workload.dtypes[0] if suite == "smoke" else row.dtype
    if dtype not in workload.dtypes:
        raise WorkloadError(f"headline row {row.title!r}: {name} does not run in {dtype}")
    return [(workload, dtype, direction) for direction in row.directions]


def headline_cases(workloads: Iterable[Workload], suite: str,
                   rows: Sequence[HeadlineRow] = ROWS) -> list[Case]:
    """Every row's cases, each once, forward ones first (as the harness orders a run)."""
    by_name = {w.name: w for w in workloads}
    seen: dict[tuple[str, str, str], Case] = {}
    for row in rows:
        for case in row_cases(row, by_name, suite):
            seen.setdefault((case[0].name, case[1], case[2]), case)
    return sorted(seen.values(), key=lambda c: c[2] != "forward")


# -- the headline table of measured results ---------------------------------------------------
def _variant(result: dict[str, Any], name: str) -> dict[str, Any]:
    return result["variants"].get(name) or {}


def measure_row(row: HeadlineRow, document: dict[str, Any]) -> dict[str, Any] | None:
    """The row's figures from one result document, or None when it lacks a case or foveal or
    the baseline was not timed there. Times of a several-direction row add up; its fraction of
    the roofline is the sum of the cases' floor times over the sum of their times."""
    results = {(r["workload"], r["dtype"], r["direction"]): r for r in document["results"]}
    found = []
    for direction in row.directions:
        matches = [r for (name, _dtype, d), r in results.items()
                   if name in (row.workload, row.smoke) and d == direction
                   and (name == row.smoke or _dtype == row.dtype)]
        if not matches:
            return None
        found.append(matches[0])
    ours = [_variant(r, FOVEAL).get("time_ms") for r in found]
    theirs = [_variant(r, PYTORCH).get("time_ms") for r in found]
    if not all(ours) or not all(theirs):
        return None
    floors = [_variant(r, FOVEAL).get("fraction_of_roofline") for r in found]
    foveal_ms, baseline_ms = sum(ours), sum(theirs)
    roofline = (sum(t * f for t, f in zip(ours, floors, strict=True)) / foveal_ms
                if all(f is not None for f in floors) else None)
    return {"row": row.title, "workload": found[0]["workload"], "dtype": found[0]["dtype"],
            "layout": found[0]["layout"], "directions": list(row.directions),
            "foveal_ms": foveal_ms, "baseline": row.baseline, "baseline_ms": baseline_ms,
            "speedup": baseline_ms / foveal_ms, "fraction_of_roofline": roofline}


HEADERS = ["row", "workload", "dtype", "foveal ms", "baseline", "baseline ms", "speedup",
           "roofline", "device", "measured"]


def headline_table(runs: Sequence[tuple[Path, dict[str, Any]]]) -> str:
    """Each row from the first of `runs` (give them newest first) that measured it, as
    Markdown; figures from a run whose timings mean nothing (CPU) are marked *."""
    cells = []
    for row in ROWS:
        found = next(((path, doc, figures) for path, doc in runs
                      if (figures := measure_row(row, doc)) is not None), None)
        if found is None:
            cells.append([row.title, row.workload, row.dtype, "-", row.baseline, "-", "-", "-",
                          "-", "not measured yet"])
            continue
        path, doc, f = found
        mark = "" if doc["meaningful"] else "*"
        roofline = ("-" if f["fraction_of_roofline"] is None
                    else f"{100 * f['fraction_of_roofline']:.0f}%{mark}")
        cells.append([row.title, f["workload"], f["dtype"], f"{f['foveal_ms']:.4g}{mark}",
                      row.baseline, f"{f['baseline_ms']:.4g}{mark}", f"{f['speedup']:.3g}x{mark}",
                      roofline, str(doc["environment"].get("device")),
                      f"{doc['environment'].get('date', '')[:10]}, `{path.name}`"])
    return render_markdown(HEADERS, cells)
