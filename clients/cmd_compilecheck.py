"""`foveal compilecheck`: compile every kernel launch of the benchmark workloads for sm_90 and
sm_80 with Triton's real compiler, on a machine without a GPU, and check the machine code."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compilecheck", help="compile every kernel launch for real GPUs, without one",
        description="Plan each workload's kernel launches as a GPU run would make them (meta "
                    "tensors, no GPU), compile every config each autotuner keeps for each "
                    "target architecture with Triton's real compiler, and report registers, "
                    "spills, stack, shared memory, tensor-core and vector-load use and "
                    "occupancy. Exits 1 when a kernel fails to compile, overflows shared "
                    "memory, runs fp16/bf16 tl.dot without tensor cores, or spills.")
    p.add_argument("--workloads", nargs="+", metavar="NAME",
                   help="workload names or shell patterns (default: the whole suite)")
    p.add_argument("--tags", nargs="+", metavar="TAG", help="only workloads with these tags")
    p.add_argument("--suite", default="full", choices=("full", "smoke"),
                   help="which suite when no names are given (default: full)")
    p.add_argument("--quick", action="store_true",
                   help="the quick subset `make test` gates on: workloads tagged compile-gate")
    p.add_argument("--dtypes", type=_list, default=None, metavar="LIST",
                   help="comma-separated (default: float16,bfloat16,float32, and "
                        "float8_e4m3fn for the workloads that list it; each op is checked in "
                        "the dtypes it runs)")
    p.add_argument("--arch", type=_list, default=None, metavar="LIST",
                   help="target architectures, comma-separated (default: sm_90,sm_80)")
    p.add_argument("--modes", type=_list, default=None, metavar="LIST",
                   help="inference, training, deterministic (default: all three; with --quick "
                        "training and deterministic)")
    p.add_argument("--jobs", type=int, default=None,
                   help="compiler processes (default: one per CPU)")
    p.add_argument("--no-cache", action="store_true",
                   help="compile everything again (default: reuse the results of unchanged "
                        "kernels kept under bench/results/compile/ or cached in "
                        "$FOVEAL_COMPILE_CACHE or ~/.cache/foveal/compilecheck)")
    p.add_argument("--json", metavar="PATH", help="also write every result as JSON")
    p.add_argument("--save", action="store_true",
                   help="keep the results under bench/results/compile/ (Triton version and "
                        "arch in the name) and regenerate bench/README.md's compile section")
    p.add_argument("--workloads-file", metavar="PATH", help="another workloads TOML file")
    p.set_defaults(func=run)


def _fail(message: str) -> SystemExit:
    return SystemExit(f"foveal compilecheck: {message}")


def use_real_compiler() -> None:
    """The check needs Triton's compiler, not its interpreter; kernels must not be loaded yet."""
    if os.environ.pop("TRITON_INTERPRET", "0") == "1" and "foveal.kernels" in sys.modules:
        from foveal.kernels.backend import INTERPRETED

        if INTERPRETED:
            raise _fail("foveal.kernels was imported under TRITON_INTERPRET=1; run the check "
                        "in a process without it")


def run(args: argparse.Namespace) -> int:
    use_real_compiler()
    from foveal.bench import compile_report, compilecheck
    from foveal.bench import workloads as wl

    try:
        found = wl.load_workloads(args.workloads_file or wl.DEFAULT_FILE)
        tags = [compilecheck.GATE_TAG] if args.quick else args.tags
        chosen = wl.select(found, suite=args.suite, names=args.workloads, tags=tags)
    except wl.WorkloadError as err:
        raise _fail(str(err)) from None
    if not chosen:
        raise _fail("no workload selected")
    dtypes = args.dtypes  # None: each workload's default (case_dtypes)
    modes = args.modes or list(compilecheck.QUICK_MODES if args.quick else compilecheck.MODES)
    for dtype in dtypes or ():
        if dtype not in compilecheck.CHECKABLE_DTYPES:
            raise _fail(f"--dtypes: {dtype!r} is not one of {compilecheck.CHECKABLE_DTYPES}")
    for mode in modes:
        if mode not in compilecheck.MODES:
            raise _fail(f"--modes: {mode!r} is not one of {compilecheck.MODES}")
    if args.jobs is not None and args.jobs < 1:
        raise _fail(f"--jobs must be at least 1, got {args.jobs}")
    try:
        result = compilecheck.run_check(
            chosen, dtypes=dtypes, archs=args.arch or list(compilecheck.oc.ARCHS), modes=modes,
            workers=args.jobs, use_cache=not args.no_cache,
            progress=lambda line: print(f"compilecheck: {line}", file=sys.stderr, flush=True))
    except ValueError as err:
        raise _fail(str(err)) from None
    violations = compile_report.violations(result)
    print(compile_report.format_report(result, violations))
    settings = {"workloads": [w.name for w in chosen],
                "dtypes": sorted({c.dtype for c, _ in result.cases}), "modes": modes,
                "quick": args.quick}
    if args.json:
        documents = [compile_report.document(result, arch, settings) for arch in result.archs]
        Path(args.json).write_text(json.dumps({"runs": documents}, indent=1) + "\n")
    if args.save:
        from foveal.bench import compile_page, results_page

        for path in compile_report.write_results(result, compile_page.RESULTS_DIR, settings):
            print(f"kept {path}")
        results_page.main([])
    return 1 if violations else 0
