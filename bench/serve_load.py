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

Scaling (issue 16): `--instances N` and/or `--replicas R` compare, with batching on, one
server with one instance against one server with N instances (spread over `--devices`) and
against R server processes (replica r on device r of `--devices`, round-robin) that one
AsyncFoveaClient given every address balances over. Target on a machine with N GPUs:
throughput >= 0.9 x N of one instance.

    python bench/serve_load.py --instances 2 --replicas 2 --devices cuda:0,cuda:1
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
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np


def _model_toml(size: int, batch: int, delay_ms: float, queue: int,
                instances: int | None = None, devices: Sequence[str] = ()) -> str:
    placement = (f"instances = {instances}\n" if instances else "") + (
        f"devices = {json.dumps(list(devices))}\n" if devices else "")
    return (f'[[models]]\nname = "bench"\nkind = "gabor"\n{placement}[models.input]\n'
            f"size = [{size}, {size}]\nresize = false\n[models.batching]\n"
            f"max_batch_size = {batch}\nmax_queue_delay_ms = {delay_ms}\n"
            f"max_queue_size = {queue}\n")


class ServerProcess:
    """`foveal serve` in a subprocess on a free port. Its JSON log is read in a thread (so a
    chatty server never blocks on a full pipe) and kept in `events`."""

    def __init__(self, models_file: str, backend: str, extra: Sequence[str] = ()):
        command = [sys.executable, "-m", "foveal.clients.cli", "serve", "--port", "0",
                   "--no-metrics", "--models", models_file, "--backend", backend,
                   "--log-format", "json", "--log-level", "info", *extra]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self.port: int | None = None
        self._serving = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        for line in self.process.stderr:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                self.events.append(event)
                if event.get("event") == "serving":
                    self.port = event["port"]
                    self._serving.set()
        self._serving.set()  # it exited: wait_serving reports that

    def wait_serving(self, timeout: float = 120.0) -> str:
        """Its address once it logs that it is serving."""
        if not self._serving.wait(timeout):
            raise RuntimeError("foveal serve did not start in time")
        if self.port is None:
            raise RuntimeError(f"foveal serve exited with {self.process.wait()} before serving")
        return self.address

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def spawn_servers(count: int, models_file: str, backend: str,
                  extra: Sequence[Sequence[str]] | None = None,
                  timeout: float = 120.0) -> Iterator[list[ServerProcess]]:
    """`count` servers started side by side (server i gets `extra[i]`), once all serve."""
    servers = []
    try:
        for i in range(count):
            servers.append(ServerProcess(models_file, backend, extra[i] if extra else ()))
        for server in servers:
            server.wait_serving(timeout)
        yield servers
    finally:
        for server in servers:
            server.stop()


@contextlib.contextmanager
def spawn_server(models_file: str, backend: str, timeout: float = 120.0) -> Iterator[str]:
    """`foveal serve` on a free port; yields its address once it logs that it is serving."""
    with spawn_servers(1, models_file, backend, timeout=timeout) as (server,):
        yield server.address


async def _sweep_point(call, concurrency: int, requests: int) -> dict:
    """`concurrency` clients awaiting `call()` back to back until `requests` are answered."""
    latencies: list[float] = []
    remaining = requests

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies),
            "throughput_images_per_s": len(latencies) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99))}


def _pixels(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)


async def _load(address: str, size: int, concurrency: int, requests: int) -> dict:
    """One server, a hand-built request on a plain channel (no client library overhead)."""
    import grpc

    from foveal.proto import rpc
    from foveal.proto.foveal.v1 import foveal_pb2 as pb

    request = pb.ExtractImageRequest(model="bench", images=[pb.Image(pixels=pb.Tensor(
        shape=[size, size, 3], dtype=pb.DATA_TYPE_UINT8, data=_pixels(size).tobytes()))])
    async with grpc.aio.insecure_channel(address) as channel:
        stub = rpc.FeatureServiceStub(channel)
        await stub.ExtractImage(request)  # warm-up
        return await _sweep_point(lambda: stub.ExtractImage(request), concurrency, requests)


async def _balanced_load(addresses: list[str], size: int, concurrency: int,
                         requests: int) -> dict:
    """Every server's address given to one AsyncFoveaClient, which balances over them."""
    from foveal.clients import AsyncFoveaClient

    pixels = _pixels(size)
    async with AsyncFoveaClient(addresses) as client:
        for _ in addresses:  # warm-up, one call per replica in turn
            await client.extract_image(pixels, "bench")
        return await _sweep_point(lambda: client.extract_image(pixels, "bench"), concurrency,
                                  requests)


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
    parser.add_argument("--instances", type=int, default=1,
                        help="scaling mode: model instances in one server (spread over --devices)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="scaling mode: server processes behind one balancing client")
    parser.add_argument("--devices", default="auto",
                        help="comma-separated devices for the instances and replicas")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.instances < 1 or args.replicas < 1:
        parser.error("--instances and --replicas must be at least 1")

    results = {"environment": _environment(), "settings": vars(args) | {"out": str(args.out)}}
    if args.instances > 1 or args.replicas > 1:
        results["scaling"] = scaling(args)
        _print_scaling(results, args)
    else:
        results["offline"] = offline_throughput(args.size, args.batch, args.backend,
                                                args.offline_repeats)
        results["served"] = sweep(args)
        _print_sweep(results, args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


def sweep(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Batching on and off, one server each, over the concurrency sweep."""
    served = {}
    queue = max(args.concurrency) * 2
    with tempfile.TemporaryDirectory() as tmp:
        for label, batch in (("batching", args.batch), ("no-batching", 1)):
            models = Path(tmp) / f"{label}.toml"
            models.write_text(_model_toml(args.size, batch, args.delay_ms, queue))
            with spawn_server(str(models), args.backend) as address:
                served[label] = [asyncio.run(_load(address, args.size, c, args.requests))
                                 for c in args.concurrency]
    return served


def scaling(args: argparse.Namespace) -> dict[str, dict]:
    """One instance, N instances in one server, R replicas: each behind one AsyncFoveaClient.

    Every setting's servers start at once (they idle while another setting is measured)."""
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    queue = max(args.concurrency) * 2 * max(args.instances, args.replicas)
    settings = [("1 instance", 1, [devices[0]], 1)]
    if args.instances > 1:
        settings.append((f"{args.instances} instances", args.instances,
                         devices[:args.instances], 1))
    if args.replicas > 1:
        settings.append((f"{args.replicas} replicas", 1, [], args.replicas))
    results = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        started = []
        for i, (label, instances, placed, replicas) in enumerate(settings):
            models = Path(tmp) / f"{i}.toml"
            models.write_text(_model_toml(args.size, args.batch, args.delay_ms, queue,
                                          instances, placed))
            replica_devices = [devices[r % len(devices)] for r in range(replicas)]
            servers = [ServerProcess(str(models), args.backend, ["--device", device])
                       for device in replica_devices]
            for server in servers:
                stack.callback(server.stop)
            started.append((label, instances, placed or replica_devices, servers))
        for label, instances, placed, servers in started:
            addresses = [server.wait_serving() for server in servers]
            rows = [asyncio.run(_balanced_load(addresses, args.size, c, args.requests))
                    for c in args.concurrency]
            results[label] = {"instances": instances, "replicas": len(servers),
                              "devices": placed, "rows": rows}
    return results


def _print_scaling(results: dict, args: argparse.Namespace) -> None:
    print(f"device {results['environment']['device']}, backend {args.backend}, "
          f"{args.size}x{args.size} images, gabor, batch {args.batch}; one AsyncFoveaClient")
    base = {r["concurrency"]: r["throughput_images_per_s"]
            for r in results["scaling"]["1 instance"]["rows"]}
    print(f"{'setting':<14} {'conc':>5} {'images/s':>10} {'x one':>7} {'of N x one':>10} "
          f"{'p50 ms':>8} {'p99 ms':>8}")
    for label, setting in results["scaling"].items():
        copies = setting["instances"] * setting["replicas"]
        for row in setting["rows"]:
            speedup = row["throughput_images_per_s"] / base[row["concurrency"]]
            print(f"{label:<14} {row['concurrency']:>5} {row['throughput_images_per_s']:>10.1f} "
                  f"{speedup:>7.2f} {speedup / copies:>10.0%} {row['p50_ms']:>8.2f} "
                  f"{row['p99_ms']:>8.2f}")


def _print_sweep(results: dict, args: argparse.Namespace) -> None:
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


if __name__ == "__main__":
    sys.exit(main())
