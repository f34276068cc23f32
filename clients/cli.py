"""The `foveal` command line. Each subcommand lives in its own module and registers itself.

Modules are imported when the parser is built, so they keep heavy imports (torch, grpc
servers) inside their run functions: `foveal --help` stays fast and the thin client stays thin.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module defines `register(subparsers)`, which adds its parser and sets `func`.
COMMAND_MODULES = (
    "foveal.clients.cmd_shapes",
    "foveal.clients.cmd_selfcheck",
    "foveal.clients.cmd_extract",
    "foveal.service.cmd_serve",
    "foveal.clients.cmd_bench",
    "foveal.clients.cmd_profile",
    "foveal.clients.cmd_compilecheck",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foveal",
        description="Fused convolution kernels, a batching gRPC feature service, and its clients.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
