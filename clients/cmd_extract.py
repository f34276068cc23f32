"""`foveal extract`: features of many images or videos to disk, resumable.

    foveal extract videos/ --model motion-energy --server 127.0.0.1:8001 --out features/
    foveal extract videos/ --model motion-energy --server dns:///features.internal:8001 ...
    foveal extract list.txt --model gabor --local --out features/ --format safetensors
    foveal extract videos/ --model motion-energy --ray --out features/

Exits 0 when every input was extracted (now or in an earlier run), 1 when some failed (they
are in the manifest with their errors), 2 on a usage or set-up error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from foveal.service.cmd_serve import _positive, _positive_int

DEFAULT_SERVER = "127.0.0.1:8001"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract", help="extract features of images or videos to .npy/.safetensors files",
        description="Extract features of image or video files (files, folders searched "
                    "recursively, or .txt/.lst files listing paths) with a served model "
                    "(--server, the default), in this process (--local) or on Ray (--ray). "
                    "Writes one output per input and a JSONL manifest into --out; a rerun "
                    "skips the inputs already done. Unreadable inputs are recorded and "
                    "skipped; the exit code is 1 if any failed.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image or video file, folder, or .txt/.lst file of paths")
    p.add_argument("--model", required=True, help="model name (e.g. motion-energy, gabor)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--format", choices=("npy", "safetensors"), default="npy",
                   help="npy: a folder of <layer>.npy per input; safetensors: one file")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--server", metavar="ADDRESS", action="append",
                      help="a foveal server: HOST:PORT or any gRPC target (dns:///NAME:PORT, "
                           "ipv4:A:PORT,B:PORT); repeat it or join HOST:PORTs with commas to "
                           "spread calls round-robin over several replicas, a failed one's "
                           f"calls moving to the others (default {DEFAULT_SERVER}, or "
                           "$FOVEAL_SERVER)")
    mode.add_argument("--local", action="store_true", help="run the model in this process")
    mode.add_argument("--ray", action="store_true",
                      help="decode in Ray tasks and run the model in Ray actors (one per GPU)")
    video = p.add_argument_group("video")
    video.add_argument("--clip-len", type=_positive_int,
                       help="frames per clip (default: the model's)")
    video.add_argument("--stride", type=_positive_int,
                       help="frames between clip starts (default: the clip length)")
    video.add_argument("--fps", type=_positive,
                       help="resample to this frame rate (default: the file's frames)")
    p.add_argument("--outputs", help="comma-separated output layers (default: the model's)")
    p.add_argument("--output-dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--jobs", type=_positive_int, default=4,
                   help="inputs in flight at once (server and local modes; default 4)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="draw a progress line (default: when stderr is a terminal)")
    server = p.add_argument_group("server mode")
    server.add_argument("--tls", action="store_true", help="connect with TLS")
    server.add_argument("--root-cert", help="PEM roots to trust (default: the system's)")
    server.add_argument("--client-cert", help="PEM client certificate (mutual TLS)")
    server.add_argument("--client-key", help="PEM client key (mutual TLS)")
    server.add_argument("--token-file", help="file holding the bearer token "
                        "(default: $FOVEAL_AUTH_TOKEN)")
    server.add_argument("--compression", choices=("gzip", "deflate"))
    server.add_argument("--max-message-mb", type=_positive_int, default=64)
    server.add_argument("--timeout", type=_positive, default=60.0,
                        help="seconds for each unary call (model lookup, images)")
    local = p.add_argument_group("local and Ray modes")
    local.add_argument("--models", help="TOML model repository (default: the built-in models)")
    local.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto")
    local.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    local.add_argument("--batch-size", type=_positive_int,
                       help="clips or images per model execution (default: the model's)")
    ray = p.add_argument_group("Ray mode")
    ray.add_argument("--ray-address", help="a Ray cluster (default: start a local Ray)")
    ray.add_argument("--ray-actors", type=_positive_int,
                     help="model actors (default: one per GPU, or one CPU actor)")
    p.set_defaults(func=run, parser=p)


def _check(args: argparse.Namespace) -> None:
    parser = args.parser
    if (args.ray_address or args.ray_actors) and not args.ray:
        parser.error("--ray-address and --ray-actors need --ray")
    remote_only = [flag for flag, value in (("--tls", args.tls), ("--token-file", args.token_file),
                                            ("--compression", args.compression)) if value]
    if (args.local or args.ray) and remote_only:
        parser.error(f"{', '.join(remote_only)} apply to --server mode only")
    if not (args.local or args.ray) and (args.models or args.batch_size):
        parser.error("--models and --batch-size apply to --local and --ray modes; the server "
                     "has its own (foveal serve --models)")


def _client(args: argparse.Namespace):
    from .client import FoveaClient

    token = None
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
    elif os.environ.get("FOVEAL_AUTH_TOKEN"):
        token = os.environ["FOVEAL_AUTH_TOKEN"]
    return FoveaClient(args.server or [os.environ.get("FOVEAL_SERVER", DEFAULT_SERVER)],
                       timeout=args.timeout, tls=args.tls, root_certificates=args.root_cert,
                       certificate_chain=args.client_cert, private_key=args.client_key,
                       token=token, compression=args.compression,
                       max_message_bytes=args.max_message_mb * 1024 * 1024)


def run(args: argparse.Namespace) -> int:
    _check(args)
    logging.basicConfig(level=logging.WARNING, format="foveal extract: %(message)s")
    from .errors import FoveaError
    from .outputs import OutputStore

    outputs = tuple(o.strip() for o in args.outputs.split(",") if o.strip()) \
        if args.outputs else ()
    try:
        store = OutputStore(args.out, args.format)
        summary = _extract(args, store, outputs)
    except (ValueError, OSError, ImportError, FoveaError) as err:
        print(f"foveal extract: error: {err}", file=sys.stderr)
        return 2
    print(summary.text())
    print(f"outputs and {store.manifest_path.name} in {store.directory}")
    return summary.exit_code


def _extract(args: argparse.Namespace, store, outputs: tuple[str, ...]):
    from .extract import ExtractSettings, run_extraction
    from .inputs import collect_inputs

    settings = ExtractSettings(args.clip_len, args.stride, args.fps, outputs, args.output_dtype)
    if args.ray:
        from .ray_pipeline import RayOptions, run_ray

        return run_ray(args.inputs, args.model, store, settings, RayOptions(
            address=args.ray_address, actors=args.ray_actors, models_file=args.models,
            backend=args.backend, device=args.device, batch_size=args.batch_size),
            progress=args.progress)
    if args.local:
        from .local import LocalModel

        extractor = LocalModel(args.model, args.models, backend=args.backend,
                               device=args.device, batch_size=args.batch_size)
        mode = f"local, {extractor.spec.backend} on {extractor.spec.device}"
    else:
        extractor = _client(args)
        mode = f"server {extractor.connection.address}"
    try:
        kind = extractor.describe(args.model).kind
        return run_extraction(collect_inputs(args.inputs, kind), extractor, args.model, store,
                              settings, jobs=args.jobs, mode=mode, progress=args.progress)
    finally:
        if hasattr(extractor, "close"):
            extractor.close()
