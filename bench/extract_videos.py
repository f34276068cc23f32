"""End-to-end batch feature extraction from videos: videos/s in each mode, with the time split
into decode, transfer and compute so the bottleneck is visible.

Writes --videos synthetic videos of --seconds each (drifting gratings and moving squares,
--video-size pixels square, H.264), then runs `foveal extract`'s pipeline on them with the
motion-energy model in each --modes:

- server: a `foveal serve` subprocess; clips stream to it over gRPC (--jobs videos at once);
- local:  the model in this process (no gRPC);
- ray:    decoding in Ray tasks, the model in Ray actors (a local Ray instance).

Per mode: wall time, videos/s, clips/s, and busy seconds summed over clips (stages overlap, so
they do not add up to the wall time): `decode` (reading and decoding frames), `compute` (model
executions: measured in-process for local and Ray; for the server, the server's own execution
time from its ModelStatistics) and `transfer` (from a clip decoded to its features back, less
the model execution it waited for: serialisation, network or object store, and queueing).
The loads say which stage limits the rate: the share of the wall time the decoders (--jobs
threads, or the Ray CPUs left to tasks) and the one model were busy.

    python bench/extract_videos.py --videos 8 --seconds 10 --modes server local ray \\
        --out bench/results/pipeline/extract_videos_cpu.json

On a CPU it runs with PyTorch's ops (--backend torch) and measures only this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from foveal.bench.serve_load import _environment, spawn_server
from foveal.bench.synthetic_video import drifting_grating, moving_square, write_video

MODES = ("server", "local", "ray")


def make_videos(folder: Path, count: int, seconds: float, size: int, fps: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    frames = round(seconds * fps)
    paths = []
    for i in range(count):
        if i % 2:
            video = moving_square(frames, size, size, side=size // 6,
                                  velocity=(1.0 + i % 3, 2.0))
        else:
            video = drifting_grating(frames, size, size, period=8.0 + i, speed=1.0 + i % 3)
        paths.append(write_video(folder / f"video{i:03d}.mp4", video, fps=fps))
    return paths


def _models_toml(size: int, frames: int, batch: int) -> str:
    return (f'[[models]]\nname = "bench"\nkind = "motion-energy"\n[models.input]\n'
            f"size = [{size}, {size}]\nframes = {frames}\n[models.batching]\n"
            f"max_batch_size = {batch}\nmax_queue_delay_ms = 2\nmax_queue_size = 1024\n")


def _server_compute(address: str) -> tuple[float, float]:
    """The server's model time so far: per batch, and per item (each waits for its batch)."""
    import grpc

    from foveal.proto import rpc
    from foveal.proto.inference import grpc_service_pb2 as triton

    with grpc.insecure_channel(address) as channel:
        stats = rpc.InferenceServiceStub(channel).ModelStatistics(
            triton.ModelStatisticsRequest(name="bench"), timeout=30).model_stats[0]
    per_batch = sum(b.compute_infer.ns for b in stats.batch_stats) / 1e9
    per_item = sum(b.batch_size * b.compute_infer.ns for b in stats.batch_stats) / 1e9
    return per_batch, per_item


def _row(mode: str, summary, videos: int, decoders: int) -> dict:
    """The mode's rates and stage times; `decode_load` and `compute_load` are the fraction of
    the wall time its decoders (`decoders` in parallel) and its one model were busy: the one
    near 100% is the bottleneck (neither: overheads such as start-up dominate)."""
    times = summary.times
    if summary.ok != videos:
        raise RuntimeError(f"{mode}: {summary.ok} of {videos} videos extracted: "
                           f"{summary.failures}")
    wall = summary.seconds
    return {"mode": summary.mode, "videos": summary.ok, "clips": summary.clips,
            "wall_s": wall, "videos_per_s": summary.ok / wall,
            "clips_per_s": summary.clips / wall, **times.as_dict(), "decoders": decoders,
            "decode_load": times.decode_s / (wall * decoders),
            "compute_load": (times.compute_s or 0.0) / wall}


def run_mode(mode: str, videos: list[Path], models_file: Path, out: Path,
             args: argparse.Namespace) -> dict:
    from foveal.clients.extract import ExtractSettings, run_extraction
    from foveal.clients.outputs import OutputStore

    decoders = args.jobs if mode != "ray" else max((args.ray_cpus or os.cpu_count()) - 1, 1)
    settings = ExtractSettings(stride=args.stride)
    store = OutputStore(out / mode)
    if mode == "server":
        from foveal.clients.client import FoveaClient

        with spawn_server(str(models_file), args.backend) as address, \
                FoveaClient(address) as client:
            before = _server_compute(address)
            summary = run_extraction(videos, client, "bench", store, settings, jobs=args.jobs,
                                     mode="server", progress=False)
            after = _server_compute(address)
        summary.times.compute_s = after[0] - before[0]
        summary.times.item_compute_s = after[1] - before[1]
    elif mode == "local":
        from foveal.clients.local import LocalModel

        model = LocalModel("bench", models_file, backend=args.backend)
        summary = run_extraction(videos, model, "bench", store, settings, jobs=args.jobs,
                                 mode="local", progress=False)
    else:
        from foveal.clients.ray_pipeline import RayOptions, run_ray

        summary = run_ray([str(v) for v in videos], "bench", store, settings, RayOptions(
            models_file=str(models_file), backend=args.backend, num_cpus=args.ray_cpus),
            progress=False)
    return _row(mode, summary, len(videos), decoders)


def _print(results: dict) -> None:
    env, s = results["environment"], results["settings"]
    print(f"{s['videos']} videos of {s['seconds']} s at {s['fps']} fps, {s['video_size']}px, "
          f"motion-energy {s['model_size']}px x {s['frames']} frames, stride {s['stride']}; "
          f"device {env['device']}, backend {s['backend']}")
    print("busy seconds summed over clips; load: share of the wall time the decoders and the "
          "model were busy")
    print(f"{'mode':<8} {'videos/s':>9} {'clips/s':>9} {'wall s':>8} {'decode s':>9} "
          f"{'transfer s':>11} {'compute s':>10} {'decode load':>12} {'compute load':>13}")
    for key, row in results["modes"].items():
        print(f"{key:<8} {row['videos_per_s']:>9.2f} {row['clips_per_s']:>9.1f} "
              f"{row['wall_s']:>8.2f} {row['decode_s']:>9.2f} {row['transfer_s'] or 0:>11.2f} "
              f"{row['compute_s'] or 0:>10.2f} {row['decode_load']:>12.0%} "
              f"{row['compute_load']:>13.0%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each video")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--video-size", type=int, default=128, help="frame height and width")
    parser.add_argument("--model-size", type=int, default=112, help="model input size")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--stride", type=int, default=16, help="frames between clip starts")
    parser.add_argument("--batch", type=int, default=8, help="clips per model execution")
    parser.add_argument("--jobs", type=int, default=4, help="videos in flight (server, local)")
    parser.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--backend", default="auto", choices=("auto", "triton", "torch"))
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)

    results = {"environment": _environment(), "settings": vars(args) | {"out": str(args.out)},
               "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        videos = make_videos(folder / "videos", args.videos, args.seconds, args.video_size,
                             args.fps)
        results["settings"]["video_write_s"] = time.perf_counter() - start
        models_file = folder / "models.toml"
        models_file.write_text(_models_toml(args.model_size, args.frames, args.batch))
        outputs = {}
        for mode in args.modes:
            results["modes"][mode] = run_mode(mode, videos, models_file, folder / "out", args)
            outputs[mode] = {p.name: np.load(next(p.glob("energy.npy")))
                             for p in (folder / "out" / mode).iterdir() if p.is_dir()}
        first = next(iter(outputs.values()))
        results["identical_outputs"] = all(
            outs.keys() == first.keys() and all(np.array_equal(outs[k], first[k]) for k in first)
            for outs in outputs.values())
    _print(results)
    print(f"identical features in every mode: {results['identical_outputs']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
