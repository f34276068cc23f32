"""Regenerate the committed `*_pb2.py` / `*_pb2.pyi` modules from the .proto sources.

`make proto` runs `python -m foveal.proto.generate`; a test regenerates into a temporary folder
and checks the committed files are identical. This module is the one place that knows how the
generated code is adapted to foveal, in three rewrites of protoc's output:

1. Imports. protoc names a dependency by its .proto path (`from inference import
   model_config_pb2`); our modules live under `foveal.proto`, so every import of one of our
   protocol packages, and each module's registered name, gets the `foveal.proto.` prefix.
2. Descriptor pool. Descriptors go to `foveal.proto.pool.POOL` instead of protobuf's default
   pool, so tritonclient's own copy of `inference.*` can be imported beside ours.
3. Runtime version check. protoc 30 (grpcio-tools 1.72.2, the version pinned in `dev`) stamps
   its gencode 6.30.0 and rejects protobuf 5.x runtimes, while foveal supports protobuf 5.26 to
   6.x (the GPU hosts bring their own). The code it emits uses only the builder API that 5.26
   introduced, so the check is removed. gRPC stubs are not generated at all: grpcio-tools'
   `_pb2_grpc` modules need a grpcio as new as the tools; `foveal.proto.rpc` builds stubs and
   server handlers from the descriptors instead, on any grpcio foveal supports.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
SOURCES = (
    "foveal/v1/foveal.proto",
    "grpc/health/v1/health.proto",
    "inference/model_config.proto",
    "inference/grpc_service.proto",
)
PYTHON_PREFIX = "foveal.proto"
NOTE = ("# Adapted by foveal.proto.generate: foveal.proto imports, foveal.proto.pool.POOL, "
        "no runtime version check.\n")

_PACKAGES = sorted({str(Path(s).parent).replace("/", ".") for s in SOURCES}, key=len,
                   reverse=True)
_PACKAGE_PATTERN = "|".join(re.escape(p) for p in _PACKAGES)
_IMPORT = re.compile(rf"^from ({_PACKAGE_PATTERN}) import ", re.MULTILINE)
_MODULE_NAME = re.compile(
    rf"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')(({_PACKAGE_PATTERN})\.)")
_VERSION_CHECK = re.compile(r"^_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:.*\n)*?\)\n",
                            re.MULTILINE)
_VERSION_IMPORT = "from google.protobuf import runtime_version as _runtime_version\n"
_POOL_IMPORT = "from google.protobuf import descriptor_pool as _descriptor_pool\n"


def adapt_module(text: str) -> str:
    """Apply the three rewrites to one generated `_pb2.py` module."""
    if _VERSION_IMPORT not in text or not _VERSION_CHECK.search(text):
        raise RuntimeError("protoc's output no longer has the runtime version check this script "
                           "removes; check the grpcio-tools version (pinned in pyproject.toml)")
    text = text.replace(_VERSION_IMPORT, "")
    text = _VERSION_CHECK.sub("", text, count=1)
    text = text.replace(_POOL_IMPORT, _POOL_IMPORT + "from foveal.proto.pool import POOL as "
                        "_foveal_pool\n")
    text = text.replace("_descriptor_pool.Default().AddSerializedFile(",
                        "_foveal_pool.AddSerializedFile(")
    text = _MODULE_NAME.sub(rf"\g<1>{PYTHON_PREFIX}.\g<2>", text)
    text = _IMPORT.sub(rf"from {PYTHON_PREFIX}.\g<1> import ", text)
    first_line_end = text.index("\n") + 1
    return text[:first_line_end] + NOTE + text[first_line_end:]


def adapt_stub(text: str) -> str:
    """The `.pyi` type stubs only need the import rewrite."""
    return _IMPORT.sub(rf"from {PYTHON_PREFIX}.\g<1> import ", text)


def generated_paths(source: str) -> tuple[str, str]:
    stem = source.removesuffix(".proto")
    return f"{stem}_pb2.py", f"{stem}_pb2.pyi"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every source into `out_dir` (laid out like PROTO_ROOT); return the files."""
    from grpc_tools import protoc  # dev dependency, needed only to regenerate

    include = Path(protoc.__file__).parent / "_proto"  # protobuf's well-known types
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for source in SOURCES:
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_dir}",
                f"--pyi_out={out_dir}", source]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {source}")
        module, stub = (out_dir / p for p in generated_paths(source))
        module.write_text(adapt_module(module.read_text()))
        stub.write_text(adapt_stub(stub.read_text()))
        written += [module, stub]
    return written


def stale_files(root: Path = PROTO_ROOT) -> list[str]:
    """Generated files under `root` that differ from a fresh generation (empty: all current)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for path in fresh:
            committed = root / path.relative_to(tmp)
            if not committed.exists() or committed.read_bytes() != path.read_bytes():
                stale.append(str(committed.relative_to(root)))
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT,
                        help="where to write (default: next to the sources)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a committed file is out of date")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"out of date: {name} (run `make proto`)", file=sys.stderr)
        return 1 if stale else 0
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
