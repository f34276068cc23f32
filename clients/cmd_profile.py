"""`foveal profile`: the autotuner's candidates for one op call, the chosen config, and the
compiled kernels' registers, spills and shared memory; --ncu prints the Nsight Compute command.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "profile", help="autotuning candidates and compiled-kernel resources for one op call",
        description="Run one op once with fresh autotuning and report, per kernel launch, the "
                    "candidate configs with their times, the chosen one, and its registers, "
                    "spills, shared memory, warps and stages. Give the layer as a workload "
                    "name (--workload) or as an op and its arguments, e.g.: foveal profile "
                    "conv2d --batch 32 --dtype float16 --layout channels_last --shape "
                    "in_channels=64 out_channels=64 size=56x56 kernel=3 padding=1 "
                    "activation=relu")
    p.add_argument("op", nargs="?", help="op name, e.g. conv2d (not needed with --workload)")
    p.add_argument("--workload", metavar="NAME", help="a workload from bench/workloads.toml")
    p.add_argument("--shape", nargs="+", default=[], metavar="KEY=VALUE",
                   help="the op's arguments as in workloads.toml; sizes as 56x56")
    p.add_argument("--batch", type=int, help="batch size (default: the workload's, else 1)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"),
                   help="default: the workload's first dtype, else float16 on a GPU and "
                        "float32 on a CPU")
    p.add_argument("--layout", choices=("contiguous", "channels_last"),
                   help="memory layout (default: the workload's, else contiguous)")
    p.add_argument("--backward", action="store_true", help="profile forward and backward")
    p.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda if present)")
    p.add_argument("--arch", choices=("sm_90", "sm_80"),
                   help="no GPU needed: compile each launch's candidate configs for this "
                        "architecture with Triton's real compiler and show their registers, "
                        "spills, shared memory and occupancy (no timings)")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    p.add_argument("--ncu", action="store_true",
                   help="print the Nsight Compute command that profiles this call's kernels")
    p.add_argument("--workloads-file", metavar="PATH", help="another workloads TOML file")
    p.set_defaults(func=run)


def _fail(message: str) -> SystemExit:
    return SystemExit(f"foveal profile: {message}")


def _workload(args: argparse.Namespace, on_gpu: bool):
    """The layer to profile, from --workload or from OP and --shape."""
    from foveal.bench import workloads as wl

    if args.workload:
        if args.shape:
            raise _fail("give either --workload or --shape, not both")
        found = wl.load_workloads(args.workloads_file or wl.DEFAULT_FILE)
        matches = [w for w in found if w.name == args.workload]
        if not matches:
            raise _fail(f"no workload named {args.workload!r} (see foveal bench --list)")
        base = matches[0]
        if args.op and args.op != base.op:
            raise _fail(f"workload {base.name!r} is a {base.op}, not a {args.op}")
        entry = {**base.describe(), **base.args, "dtypes": list(base.dtypes)}
        entry.pop("args")
    else:
        if not args.op:
            raise _fail("name an op (e.g. conv2d) with --shape, or give --workload")
        if not args.shape:
            raise _fail(f"--shape is needed to describe the {args.op} layer, e.g. "
                        "in_channels=64 out_channels=64 size=56x56 kernel=3")
        entry = {"name": f"{args.op} (command line)", "op": args.op, "batch": 1,
                 "dtypes": ["float16" if on_gpu else "float32"], "layout": "contiguous",
                 **wl.parse_assignments(args.shape)}
    if args.batch is not None:
        entry["batch"] = args.batch
    if args.layout:
        entry["layout"] = args.layout
    if args.dtype:
        entry["dtypes"] = [args.dtype]
    return wl.parse_workload(entry)


def run(args: argparse.Namespace) -> int:
    if args.arch:
        return _run_offline(args)
    from foveal.bench.device import select_device

    try:
        device = select_device(args.device)  # before foveal.kernels is imported
    except (ValueError, RuntimeError) as err:
        raise _fail(str(err)) from None
    from foveal.bench.ops import ADAPTERS
    from foveal.bench.workloads import WorkloadError

    try:
        workload = _workload(args, device.type == "cuda")
        if workload.op not in ADAPTERS:
            raise _fail(f"unknown op {workload.op!r}; known: {sorted(ADAPTERS)}")
        ADAPTERS[workload.op].check(workload)
    except WorkloadError as err:
        raise _fail(str(err)) from None

    from foveal.bench.profile import format_report, ncu_command, profile_op

    report = profile_op(ADAPTERS[workload.op], workload, workload.dtypes[0], device,
                        backward=args.backward)
    print(format_report(report))
    if args.json:
        import json
        from pathlib import Path

        Path(args.json).write_text(json.dumps(report.to_json(), indent=1, default=str) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.ncu:
        print("\nNsight Compute (profiles only the final call, inside NVTX range "
              "'foveal_profile'):")
        print("  " + ncu_command(workload, workload.dtypes[0], backward=args.backward,
                                 device=args.device))
        if device.type != "cuda":
            print("  (needs a CUDA GPU and Nsight Compute; this machine has no GPU)")
    return 0


def _run_offline(args: argparse.Namespace) -> int:
    """--arch: the launches a GPU of that architecture would make, compiled here."""
    from foveal.clients.cmd_compilecheck import use_real_compiler

    if args.device or args.ncu:
        raise _fail("--arch compiles without a device: drop --device and --ncu")
    use_real_compiler()
    from foveal.bench import compile_report, compilecheck
    from foveal.bench.ops import ADAPTERS
    from foveal.bench.workloads import WorkloadError

    try:
        workload = _workload(args, on_gpu=True)
        if workload.op not in ADAPTERS:
            raise _fail(f"unknown op {workload.op!r}; known: {sorted(ADAPTERS)}")
        ADAPTERS[workload.op].check(workload)
    except WorkloadError as err:
        raise _fail(str(err)) from None
    mode = "training" if args.backward else "inference"
    result = compilecheck.run_check([workload], dtypes=workload.dtypes[:1], archs=[args.arch],
                                    modes=[mode])
    print(compile_report.format_launches(result))
    if args.json:
        import json
        from pathlib import Path

        settings = {"workloads": [workload.name], "dtypes": workload.dtypes[:1],
                    "modes": [mode], "quick": False}
        document = compile_report.document(result, args.arch, settings)
        Path(args.json).write_text(json.dumps(document, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 1 if compile_report.violations(result) else 0
