"""`foveal bench`: foveal's kernels against PyTorch (and torch.compile) on real layer shapes;
`foveal bench-models`: whole networks, optimize()d, against PyTorch eager and torch.compile.

Every output (and gradient, with --backward) is checked against float64 PyTorch before it is
timed. Without a GPU the smoke workloads run through Triton's interpreter: that proves the
harness and the kernels correct, and every timing is marked not meaningful.

The networks have their own command rather than a `bench --models` flag: they select from a
different list, always compare with torch.compile, run forward only, and half of `bench`'s
options (--ops, --tags, --backward, --input-sets, --workloads-file) mean nothing for them. The
options both share are defined once below, as is everything after the run (table, JSON, plot,
exit status).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads inside the commands: `foveal --help` stays fast
    import torch

    from foveal.bench.harness import BenchReport

_MODEL_DTYPES = ("float16", "bfloat16", "float32")
_DTYPES = (*_MODEL_DTYPES, "float8_e4m3fn")  # FP8 workloads: their ops' own dtype


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark foveal's kernels against PyTorch on real layer shapes",
        description="Check then time foveal's kernels against PyTorch eager (cuDNN, the same "
                    "epilogue as separate ops) and optionally torch.compile, on the named "
                    "layer shapes of bench/workloads.toml. Prints a table; writes JSON and a "
                    "plot on request. Exit status 1 when any output is wrong or fails.")
    p.add_argument("--workloads", nargs="+", metavar="NAME",
                   help="workload names or shell patterns (e.g. 'resnet50.*'); default: the "
                        "suite's workloads")
    p.add_argument("--ops", nargs="+", metavar="OP", help="only these ops (e.g. conv2d)")
    p.add_argument("--tags", nargs="+", metavar="TAG", help="only workloads with these tags")
    _suite_and_dtype(p, _DTYPES)
    p.add_argument("--backward", action="store_true",
                   help="also check and time the backward pass (gradients of every input)")
    p.add_argument("--no-forward", action="store_true", help="skip the forward rows")
    p.add_argument("--compile", action="store_true",
                   help="add torch.compile of the PyTorch version as a baseline (slow to "
                        "compile: minutes per workload)")
    p.add_argument("--input-sets", type=int, default=8,
                   help="most input sets to rotate among while timing (default: %(default)s)")
    p.add_argument("--workloads-file", metavar="PATH", help="another workloads TOML file")
    _run_options(p, label="bench", warmup_ms=25, rep_ms=100)
    p.set_defaults(func=run)

    m = subparsers.add_parser(
        "bench-models", help="benchmark whole networks: optimize()d foveal against PyTorch "
                             "eager and torch.compile",
        description="End-to-end forward time of torchvision networks (resnet50 and "
                    "mobilenet_v2 at batch 32, r3d_18 at batch 8; fp16, channels_last) run "
                    "as foveal.kernels.optimize(model) against PyTorch eager and "
                    "torch.compile, after checking each output against the network in "
                    "float64. Prints a table; writes JSON on request. Exit status 1 when any "
                    "output is wrong or fails.")
    m.add_argument("--models", nargs="+", metavar="NAME",
                   help="network names or shell patterns (default: the suite's networks)")
    _suite_and_dtype(m, _MODEL_DTYPES)
    m.add_argument("--no-compile", action="store_true",
                   help="leave torch.compile out (it compiles for minutes per network)")
    _run_options(m, label="models", warmup_ms=100, rep_ms=1000)
    m.set_defaults(func=run_models)


def _suite_and_dtype(p: argparse.ArgumentParser, dtypes: tuple[str, ...]) -> None:
    p.add_argument("--suite", choices=("full", "smoke"),
                   help="workload suite (default: full on a GPU, smoke on a CPU)")
    p.add_argument("--dtype", nargs="+", choices=dtypes,
                   help="dtypes to run (default: each workload's own)")


def _run_options(p: argparse.ArgumentParser, *, label: str, warmup_ms: int,
                 rep_ms: int) -> None:
    """Options of both commands: how to time, what to write, when to stop."""
    p.add_argument("--compile-mode", default="max-autotune-no-cudagraphs",
                   help="torch.compile mode (default: %(default)s; CUDA graphs would time "
                        "copies of the rotated inputs)")
    p.add_argument("--json", metavar="OUT", help="write every figure to this JSON file")
    p.add_argument("--plot", metavar="OUT.png", help="plot speedups per workload (matplotlib)")
    p.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda if present)")
    p.add_argument("--max-minutes", type=float,
                   help="stop starting new cases after this many minutes (the rest are "
                        "reported as skipped)")
    p.add_argument("--warmup-ms", type=int, default=warmup_ms,
                   help="do_bench warm-up (ms, default: %(default)s)")
    p.add_argument("--rep-ms", type=int, default=rep_ms,
                   help="do_bench repetition time (ms, default: %(default)s)")
    p.add_argument("--label", default=label,
                   help="run label kept in the JSON; the results page shows the latest run "
                        "per device and label (default: %(default)s)")
    p.add_argument("--list", action="store_true", help="list the selected workloads and exit")
    p.add_argument("--plain", action="store_true", help="plain-text table even if rich exists")


def _fail(message: str, command: str = "bench") -> SystemExit:
    return SystemExit(f"foveal {command}: {message}")


def _device(args: argparse.Namespace, command: str) -> torch.device:
    """The device, chosen before foveal.kernels is imported (the interpreter switch); a bad
    --max-minutes is refused as early."""
    from foveal.bench.device import select_device

    try:
        device = select_device(args.device)
    except (ValueError, RuntimeError) as err:
        raise _fail(str(err), command) from None
    if args.max_minutes is not None and args.max_minutes < 0:
        raise _fail(f"--max-minutes must not be negative, got {args.max_minutes}", command)
    return device


def _check_run_options(args: argparse.Namespace, device: torch.device, command: str) -> None:
    """Refuse a plot that cannot be drawn before a long run; say when timings mean nothing."""
    if args.plot:
        from foveal.bench.plot import PlotUnavailable, require_matplotlib

        try:
            require_matplotlib()
        except PlotUnavailable as err:
            raise _fail(str(err), command) from None
    if device.type != "cuda":
        print(f"foveal {command}: no GPU: kernels run in Triton's interpreter; timings are not "
              "meaningful on CPU", file=sys.stderr)


def _finish(report: BenchReport, document: dict[str, Any], args: argparse.Namespace) -> int:
    """Table, JSON and plot from the result document; the exit status from the report:
    1 when any output was wrong or failed, 130 when interrupted (what ran is still written)."""
    from foveal.bench.report import write_json
    from foveal.bench.table import print_table

    print_table(document, use_rich=False if args.plain else None)
    if args.json:
        print(f"wrote {write_json(document, args.json)}", file=sys.stderr)
    if args.plot:
        from foveal.bench.plot import plot_speedups

        print(f"wrote {plot_speedups(document, args.plot)}", file=sys.stderr)
    if report.failures:
        return 1
    return 130 if report.interrupted else 0


def run(args: argparse.Namespace) -> int:
    device = _device(args, "bench")
    from foveal.bench import workloads as wl

    if args.input_sets < 1:
        raise _fail(f"--input-sets must be at least 1, got {args.input_sets}")
    if args.no_forward and not args.backward:
        raise _fail("--no-forward leaves nothing to run without --backward")
    suite = args.suite or ("full" if device.type == "cuda" else "smoke")
    try:
        found = wl.load_workloads(args.workloads_file or wl.DEFAULT_FILE)
        chosen = wl.select(found, suite=suite, names=args.workloads, ops=args.ops,
                           tags=args.tags)
    except wl.WorkloadError as err:
        raise _fail(str(err)) from None
    if not chosen:
        raise _fail("no workload matches the selection (see --list)")
    if args.list:
        for w in chosen:
            shape = ", ".join(f"{k}={v}" for k, v in w.args.items())
            print(f"{w.name:<44} {w.op:<8} batch {w.batch:<3} {'/'.join(w.dtypes):<17} "
                  f"{w.layout:<13} {shape}")
        return 0
    _check_run_options(args, device, "bench")

    from foveal.bench.harness import Settings, print_progress, run_benchmark
    from foveal.bench.report import to_json

    settings = Settings(device=device, dtypes=tuple(args.dtype) if args.dtype else None,
                        forward=not args.no_forward, backward=args.backward,
                        compile=args.compile, compile_mode=args.compile_mode,
                        max_input_sets=args.input_sets, max_minutes=args.max_minutes,
                        label=args.label)
    from foveal.bench.device import default_timer

    try:
        report = run_benchmark(chosen, settings, progress=print_progress,
                               timer=default_timer(device, args.warmup_ms, args.rep_ms))
    except (wl.WorkloadError, ValueError) as err:
        raise _fail(str(err)) from None
    return _finish(report, to_json(report), args)


def run_models(args: argparse.Namespace) -> int:
    command = "bench-models"
    device = _device(args, command)
    from foveal.bench import models as bm
    from foveal.bench.workloads import WorkloadError

    suite = args.suite or ("full" if device.type == "cuda" else "smoke")
    try:
        chosen = bm.select_models(suite=suite, names=args.models)
    except WorkloadError as err:
        raise _fail(str(err), command) from None
    if not chosen:
        raise _fail("no network matches the selection (see --list)", command)
    if args.list:
        for w in chosen:
            item = "x".join(map(str, w.args["input"]))
            print(f"{w.name:<20} {w.model:<14} batch {w.batch:<3} {item:<14} "
                  f"{'/'.join(w.dtypes):<8} {w.layout:<17} {w.note}".rstrip())
        return 0
    _check_run_options(args, device, command)

    from foveal.bench.device import default_timer
    from foveal.bench.harness import print_progress

    settings = bm.model_settings(device, dtypes=tuple(args.dtype) if args.dtype else None,
                                 compile=not args.no_compile, compile_mode=args.compile_mode,
                                 max_minutes=args.max_minutes, label=args.label)
    try:
        run = bm.run_model_benchmark(chosen, settings, progress=print_progress,
                                     timer=default_timer(device, args.warmup_ms, args.rep_ms))
    except (WorkloadError, ValueError) as err:
        raise _fail(str(err), command) from None
    return _finish(run.report, run.to_json(), args)
