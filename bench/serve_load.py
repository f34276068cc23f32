"""Load test of the feature service: a concurrency sweep, batching on and off, beside offline.

For each setting (dynamic batching on: max_batch_size=B; off: max_batch_size=1) it starts
`foveal serve` in a subprocess on a free port, then for each concurrency C runs C clients that
send ExtractImage requests (one raw uint8 image each) back to back until --requests have been
answered, and reports throughput (images/s) and p50/p90/p99 latency. Beside it, the model's
offline throughput: the same model called directly on batches of B in this process.

    python bench/serve_load.py --size 227 --batch 8 --concurrency 1 4 16 64 --requests 400

Targets on a GPU (issue 7): throughput at high concurrency >= 85% of offline; at concurrency 1,
p99 <= max_queue_delay + 1.5x one batch's compute. On CPU it runs with PyTorch's ops (for CI);
its numbers say nothing about the GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _model_toml(size: int, batch: int, delay_ms: float, queue: int) -> str:
    return (f'[[models]]\nname = "bench"\nkind = "gabor"\n[models.input]\nsize = [{size}, {size}]\n'
            f"resize = false\n[models.batching]\nmax_batch_size = {batch}\n"
            f"max_queue_delay_ms = {delay_ms}\nmax_queue_size = {queue}\n")


@contextlib.contextmanager
def spawn_server(models_file: str, backend: str, timeout: float = 120.0):
    """`foveal serve` on a free port; yields its address once it logs that it is serving."""
    command = [sys.executable, "-m", "foveal.clients.cli", "serve", "--port", "0", "--no-metrics",
               "--models", models_file, "--backend", backend, "--log-format", "json",
               "--log-level", "info"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        port = None
        while port is None:
            line = process.stderr.readline()
            if not line:
                raise RuntimeError(f"foveal serve exited with {process.wait()} before serving")
            if time.monotonic() > deadline:
                raise RuntimeError("foveal serve did not start in time")
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "serving":
                    port = event["port"]
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


async def _load(address: str, size: int, concurrency: int, requests: int) -> dict:
    import grpc

    from foveal.proto import rpc
    from foveal.proto.foveal.v1 import foveal_pb2 as pb

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8).tobytes()
    request = pb.ExtractImageRequest(model="bench", images=[pb.Image(pixels=pb.Tensor(
        shape=[size, size, 3], dtype=pb.DATA_TYPE_UINT8, data=pixels))])
    latencies: list[float] = []
    remaining = requests
    async with grpc.aio.insecure_channel(address) as channel:
        stub = rpc.FeatureServiceStub(channel)
        await stub.ExtractImage(request)  # warm-up

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                await stub.ExtractImage(request)
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies),
            "throughput_images_per_s": len(latencies) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99))}


def offline_throughput(size: int, batch: int, backend: str, repeats: int) -> dict:
    """Images/s of the model called directly on batches of `batch` (no server, no decoding)."""
    import torch

    import foveal.kernels as fk
    from foveal.service.models import KINDS, build_model
    from foveal.service.server import choose_backend, resolve_device

    device = resolve_device("auto")
    preference, running, _ = choose_backend(backend, device)
    spec = KINDS["gabor"].default_input.__class__(height=size, width=size)
    model = build_model("bench", "gabor", spec, device, torch.float32)
    x = torch.randn(batch, 3, size, size, device=device)
    outputs = frozenset(model.default_outputs)
    with fk.use_backend(preference), torch.inference_mode():
        model.forward(x, outputs)  # warm-up (and autotuning on a GPU)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            model.forward(x, outputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / repeats
    return {"batch": batch, "backend": running, "device": str(device),
            "batch_ms": seconds * 1000, "throughput_images_per_s": batch / seconds}


def _environment() -> dict:
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    return {"device": device or "cpu", "torch": torch.__version__,
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=227, help="image height and width")
    parser.add_argument("--batch", type=int, default=8, help="max_batch_size with batching on")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="max_queue_delay_ms")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency")
    parser.add_argument("--offline-repeats", type=int, default=20)
    parser.add_argument("--backend", default="auto", choices=("auto", "triton", "torch"))
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)

    results = {"environment": _environment(), "settings": vars(args) | {"out": str(args.out)},
               "offline": offline_throughput(args.size, args.batch, args.backend,
                                             args.offline_repeats), "served": {}}
    queue = max(args.concurrency) * 2
    with tempfile.TemporaryDirectory() as tmp:
        for label, batch in (("batching", args.batch), ("no-batching", 1)):
            models = Path(tmp) / f"{label}.toml"
            models.write_text(_model_toml(args.size, batch, args.delay_ms, queue))
            with spawn_server(str(models), args.backend) as address:
                results["served"][label] = [
                    asyncio.run(_load(address, args.size, c, args.requests))
                    for c in args.concurrency]

    offline = results["offline"]
    print(f"device {results['environment']['device']}, backend {offline['backend']}, "
          f"{args.size}x{args.size} images, gabor")
    print(f"offline: batch {args.batch}: {offline['batch_ms']:.2f} ms per batch, "
          f"{offline['throughput_images_per_s']:.1f} images/s")
    print(f"{'setting':<12} {'conc':>5} {'images/s':>10} {'of offline':>10} {'p50 ms':>8} "
          f"{'p90 ms':>8} {'p99 ms':>8}")
    for label, rows in results["served"].items():
        for row in rows:
            share = row["throughput_images_per_s"] / offline["throughput_images_per_s"]
            print(f"{label:<12} {row['concurrency']:>5} {row['throughput_images_per_s']:>10.1f} "
                  f"{share:>10.0%} {row['p50_ms']:>8.2f} {row['p90_ms']:>8.2f} "
                  f"{row['p99_ms']:>8.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
