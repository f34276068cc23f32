"""The plan of `make gpu-check`: its phases in priority order, the cases each runs and the time
limit each gets inside the budget (`GPU_CHECK_BUDGET_S`, default 480 s).

A lent GPU comes with minutes, not hours, so the first call must answer the most important
questions first: does every kernel compile and compute right on the device (priority 1), what
do the compiled kernels use against what the CPU compile check predicted (2), how fast is each
kind of kernel against the library a user would otherwise call (3), and then as much of the
rest as time allows (4). Limits are handed out in that order, so a smaller budget drops the
lowest priorities first; a budget above the default goes to priority 4. At run time a phase
that ends early passes its unused seconds on to the next one.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

from .headline import ROWS, headline_cases
from .workloads import Workload, load_workloads, select

DEFAULT_BUDGET_S = 480
MIN_PHASE_S = 20  # a phase given less is left out: starting Python and torch takes ~10 s
SELFCHECK_DTYPES = ("float16", "bfloat16", "float32")
SUITES = ("full", "smoke")

# The gpu-marked correctness tests at one real size per op family (pytest node ids).
GPU_TESTS: tuple[str, ...] = (
    "tests/kernels/test_conv_gpu.py::test_image_layers[resnet50.layer1.conv3x3-torch.float16]",
    "tests/kernels/test_conv_gpu.py::test_image_layers[resnext50.layer1.grouped-torch.float16]",
    "tests/kernels/test_conv_gpu.py::test_video_layers[r3d18.layer2-torch.float16]",
    "tests/kernels/test_conv_gpu.py::test_backward_resnet_layer[torch.float16]",
    "tests/kernels/test_conv_transpose_gpu.py::test_layers[dcgan.up-torch.float16]",
    "tests/kernels/test_conv_transpose_gpu.py::test_backward_unet_layer[torch.float16]",
    "tests/kernels_depthwise/test_pointwise_conv.py::"
    "test_gpu_mobilenet_pointwise_layers[32-144-24-56]",
    "tests/kernels_depthwise/test_depthwise_conv.py::test_gpu_real_layers[32-144-56-3-1]",
    "tests/kernels_depthwise/test_depthwise_conv.py::test_gpu_real_layers[8-128-56-31-1]",
    "tests/kernels_depthwise/test_depthwise_conv.py::test_gpu_backward_mobilenet_layer",
    "tests/kernels_depthwise/test_depthwise_separable.py::"
    "test_gpu_real_blocks[32-144-32-56-3-2]",
    "tests/kernels_depthwise/test_separable_conv.py::test_gpu_gaussian_blur_per_channel",
    "tests/kernels_depthwise/test_local_conv.py::test_gpu_face_verification_layer",
    "tests/kernels_deform/test_deform_gpu.py::"
    "test_detector_layers_match_torchvision[True-dtype0-stage4 256ch 64x64]",
    "tests/kernels_deform/test_deform_gpu.py::"
    "test_deterministic_input_gradient_repeats_bitwise_and_matches[dtype0]",
    "tests/kernels_fp8/test_fp8_gpu.py::"
    "test_real_layers_against_float64[resnet50.layer1.conv3x3]",
    "tests/kernels/test_launch_plans_gpu.py::"
    "test_meta_tensors_plan_the_launches_cuda_tensors_do[conv3x3-training]",
    "tests/kernels/test_launch_plans_gpu.py::"
    "test_meta_tensors_plan_the_launches_cuda_tensors_do[deform-training]",
)


@dataclass(frozen=True)
class PhaseSpec:
    name: str
    priority: int
    title: str
    wanted_s: int  # its limit at the default budget


PHASES: tuple[PhaseSpec, ...] = (
    PhaseSpec("selfcheck", 1, "every kernel compiled and run once: foveal selfcheck in fp16, "
                              "bf16 and fp32", 75),
    PhaseSpec("tests", 1, "the gpu-marked correctness tests at one real size per op family", 75),
    PhaseSpec("kernels", 2, "registers, spills and shared memory of the kernels loaded so far, "
                            "beside the CPU compile check's for the same configs", 45),
    PhaseSpec("headline", 3, "one benchmark per row of the performance table (fp16, "
                             "channels_last) beside cuDNN / torchvision", 150),
    PhaseSpec("suite", 4, "the rest of the layer suite: forward, then backward", 50),
    PhaseSpec("models", 4, "whole networks: optimize()d foveal against PyTorch eager", 55),
    PhaseSpec("compile", 4, "torch.compile baselines (max-autotune) of the headline layers", 30),
)
PHASE_NAMES = tuple(p.name for p in PHASES)
BENCH_PHASES = ("headline", "suite", "compile")  # layer benchmarks: one result file each


@dataclass
class PlannedPhase:
    spec: PhaseSpec
    limit_s: int
    count: int = 0  # how many cases (checks, tests, kernels, benchmark cases)
    lines: list[str] = field(default_factory=list)  # what --plan lists of them

    @property
    def name(self) -> str:
        return self.spec.name


def allocate(budget_s: int, specs: Sequence[PhaseSpec]) -> dict[str, int]:
    """Seconds per phase: wanted limits in priority order while the budget lasts (a phase
    left under MIN_PHASE_S gets 0: not run), then any surplus to priority 4 pro rata."""
    if budget_s < 0:
        raise ValueError(f"GPU_CHECK_BUDGET_S must not be negative, got {budget_s}")
    limits, left = {}, budget_s
    for spec in sorted(specs, key=lambda s: s.priority):
        given = min(spec.wanted_s, left)
        limits[spec.name] = given if given >= MIN_PHASE_S else 0
        left -= limits[spec.name]
    last = [s for s in specs if s.priority == max(p.priority for p in specs) and limits[s.name]]
    wanted = sum(s.wanted_s for s in last)
    for spec in last:
        limits[spec.name] += left * spec.wanted_s // wanted
    if last:
        limits[last[0].name] += budget_s - sum(limits.values())
    return limits


# -- the cases of each phase ------------------------------------------------------------------
Case = tuple[Workload, str, str]


def suite_cases(workloads: Sequence[Workload], suite: str, skip: Sequence[Case]) -> list[Case]:
    """The suite beyond the headline cases: forward in each workload's first dtype, then
    backward in it, then the other dtypes forward and backward; none an op does not have (an
    FP8 op's backward)."""
    from .ops import ADAPTERS

    chosen = select(workloads, suite=suite)
    done = {(w.name, d, direction) for w, d, direction in skip}
    order = [(w, w.dtypes[0], "forward") for w in chosen]
    order += [(w, w.dtypes[0], "backward") for w in chosen]
    order += [(w, d, "forward") for w in chosen for d in w.dtypes[1:]]
    order += [(w, d, "backward") for w in chosen for d in w.dtypes[1:]]
    return [c for c in order if (c[0].name, c[1], c[2]) not in done
            and ADAPTERS[c[0].op].runs(c[1], c[2] == "backward")]


def compile_cases(headline: Sequence[Case]) -> list[Case]:
    """The forward headline cases of ops for which torch.compile is a meaningful baseline."""
    from .ops import ADAPTERS

    return [c for c in headline if c[2] == "forward" and ADAPTERS[c[0].op].compiles]


def layer_cases(phase: str, suite: str, workloads: Sequence[Workload] | None = None
                ) -> list[Case]:
    """The (workload, dtype, direction) cases of a layer benchmark phase."""
    workloads = list(workloads) if workloads is not None else load_workloads()
    headline = headline_cases(workloads, suite)
    if phase == "headline":
        return headline
    if phase == "suite":
        return suite_cases(workloads, suite, headline)
    if phase == "compile":
        return compile_cases(headline)
    raise ValueError(f"{phase!r} is not a layer benchmark phase ({BENCH_PHASES})")


def model_cases(suite: str) -> list[Case]:
    from .models import select_models

    return [(w, w.dtypes[0], "forward") for w in select_models(suite=suite)]


def case_key(case: Case) -> str:
    workload, dtype, direction = case
    return f"{workload.name} {dtype} {direction}"


def _grouped(cases: Sequence[Case]) -> list[str]:
    """Layer cases as lines per (direction, dtype), workloads comma-separated."""
    groups: dict[tuple[str, str], list[str]] = {}
    for workload, dtype, direction in cases:
        groups.setdefault((direction, dtype), []).append(workload.name)
    return [f"{direction} {dtype} ({len(names)}): " + ", ".join(names)
            for (direction, dtype), names in groups.items()]


def _headline_lines(suite: str, workloads: Sequence[Workload]) -> list[str]:
    by_name = {w.name: w for w in workloads}
    lines = []
    for row in ROWS:
        name = row.workload_for(suite)
        dtype = by_name[name].dtypes[0] if suite == "smoke" else row.dtype
        lines.append(f"{row.title}: {name} {dtype} {'+'.join(row.directions)} "
                     f"(vs {row.baseline})")
    return lines


def phase_cases(name: str, suite: str, workloads: Sequence[Workload]) -> tuple[int, list[str]]:
    """(how many cases, the lines --plan lists of them) for a phase."""
    if name == "selfcheck":
        from foveal.kernels.selfcheck import CHECKS

        return (len(CHECKS) * len(SELFCHECK_DTYPES),
                [f"{check}: {' '.join(SELFCHECK_DTYPES)}" for check in CHECKS])
    if name == "tests":
        return len(GPU_TESTS), list(GPU_TESTS)
    if name == "kernels":
        return 0, ["every kernel the selfcheck and tests loaded: matched with "
                   "bench/results/compile/triton-<version>_<arch>.json where kept, the rest "
                   "compiled from the same specialization by the compile check's compiler"]
    if name == "headline":
        return len(layer_cases(name, suite, workloads)), _headline_lines(suite, workloads)
    if name in ("suite", "compile"):
        cases = layer_cases(name, suite, workloads)
        return len(cases), _grouped(cases)
    if name == "models":
        cases = model_cases(suite)
        return len(cases), [f"{w.name} batch {w.batch} {dtype} forward (torch.compile left to "
                            "the compile phase)" for w, dtype, _ in cases]
    raise ValueError(f"unknown phase {name!r}; known: {PHASE_NAMES}")


def make_plan(budget_s: int = DEFAULT_BUDGET_S, suite: str = "full",
              phases: Sequence[str] | None = None) -> list[PlannedPhase]:
    """The phases to run (all, or those named) with their limits and cases."""
    if suite not in SUITES:
        raise ValueError(f"BENCH_SUITE must be one of {SUITES}, got {suite!r}")
    unknown = [p for p in phases or () if p not in PHASE_NAMES]
    if unknown:
        raise ValueError(f"unknown phase(s) {unknown}; known: {' '.join(PHASE_NAMES)}")
    specs = [s for s in PHASES if phases is None or s.name in phases]
    limits = allocate(budget_s, specs)
    workloads = load_workloads()
    return [PlannedPhase(s, limits[s.name], *phase_cases(s.name, suite, workloads))
            for s in specs]


def format_plan(plan: Sequence[PlannedPhase], budget_s: int, suite: str,
                autotune_configs: int) -> str:
    cap = (f"at most {autotune_configs} autotuning configs per launch"
           if autotune_configs else "autotuning not capped")
    lines = [f"gpu-check plan: budget {budget_s} s, suite {suite}, {cap}"]
    for phase in plan:
        state = f"{phase.limit_s} s" if phase.limit_s else "not run: no time left in the budget"
        count = f"; {phase.count} case(s)" if phase.count else ""
        lines.append(f"[{phase.spec.priority}] {phase.name} ({state}): {phase.spec.title}{count}")
        for line in phase.lines:  # lists of workloads wrap at their commas, nothing else
            lines += (textwrap.wrap(line, 100, initial_indent="    - ", subsequent_indent="      ",
                                    break_on_hyphens=False, break_long_words=False)
                      if ", " in line else [f"    - {line}"])
    lines.append(f"total: {sum(p.limit_s for p in plan)} s")
    return "\n".join(lines)
