"""`foveal selfcheck`: every kernel once against PyTorch, as a table; exit 1 on any failure."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "selfcheck", help="run every kernel once against PyTorch and print the errors",
        description="Run every kernel once on small random inputs against PyTorch (float64) and "
                    "print op, backend, max error and pass/fail. Without a GPU the kernels run "
                    "in Triton's interpreter (set here automatically).")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda if any)")
    p.add_argument("--dtype", action="append", choices=["float16", "bfloat16", "float32"],
                   help="dtypes to check (repeatable; default all on CUDA, float32 on CPU)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not device.startswith("cuda") and "TRITON_INTERPRET" not in os.environ:
        # Must precede the first import of foveal.kernels: triton.jit reads it then.
        os.environ["TRITON_INTERPRET"] = "1"
    from foveal.kernels.selfcheck import format_table, run_selfcheck

    dtypes = tuple(getattr(torch, d) for d in args.dtype) if args.dtype else None
    results = run_selfcheck(device, dtypes)
    print(format_table(results))
    failed = [r for r in results if not r.passed]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0
