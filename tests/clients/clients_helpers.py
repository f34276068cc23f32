"""Helpers for the client tests: a small model repository, servers, videos, reference calls."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np

from foveal.proto import rpc
from foveal.proto.foveal.v1 import foveal_pb2 as pb
from foveal.service.runner import ServerThread
from foveal.service.server import ServerSettings
from synthetic_video import drifting_grating, frame_index_video, moving_square, write_video

# Small models so the tests run quickly on a CPU with PyTorch's ops.
MODELS_TOML = """
[[models]]
name = "motion"
kind = "motion-energy"
[models.input]
size = [24, 24]
frames = 8
[models.batching]
max_batch_size = 4
max_queue_delay_ms = 5

[[models]]
name = "gabor"
kind = "gabor"
[models.input]
size = [32, 32]
[models.batching]
max_batch_size = 3
max_queue_delay_ms = 5
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models_file: str | Path, **overrides) -> ServerThread:
    values = {"port": 0, "metrics_port": None, "backend": "torch", "grace_seconds": 1.0,
              "preprocess_threads": 2, "models_file": str(models_file)}
    return ServerThread(ServerSettings(**{**values, **overrides})).start()


@contextlib.contextmanager
def running(models_file: str | Path, **overrides):
    server = start_server(models_file, **overrides)
    try:
        yield server
    finally:
        server.stop(grace=0.5)


def make_videos(folder: Path) -> list[Path]:
    """Three short synthetic videos of different lengths and content (32x48, 25 fps)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_video(folder / "grating.mp4", drifting_grating(30, 32, 48), fps=25),
            write_video(folder / "square.mkv", moving_square(41, 32, 48), fps=25),
            write_video(folder / "index.mp4", frame_index_video(24, 32, 48), fps=25)]


def corrupt_video(path: Path) -> Path:
    """A video whose second half is cut off."""
    write_video(path, drifting_grating(60, 32, 48), fps=25)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def raw_features(channel: grpc.Channel, model: str, pixels: np.ndarray) -> np.ndarray:
    """A model's default output for one raw image, asked with a request built by hand."""
    request = pb.ExtractImageRequest(model=model, images=[pb.Image(pixels=pb.Tensor(
        shape=list(pixels.shape), dtype=pb.DATA_TYPE_UINT8, data=pixels.tobytes()))])
    tensor = rpc.FeatureServiceStub(channel).ExtractImage(request, timeout=30) \
        .images[0].features[0].tensor
    return np.frombuffer(tensor.data, "<f4").reshape(tuple(tensor.shape)).copy()


def raw_clip_features(channel: grpc.Channel, model: str, clips: list[np.ndarray]
                      ) -> list[np.ndarray]:
    """The default output of each clip, over one stream built by hand (one chunk per clip)."""
    chunks = (pb.ClipChunk(header=pb.ClipHeader(model=model, shape=list(c.shape),
                                                dtype=pb.DATA_TYPE_UINT8, clip_id=str(i)),
                           data=c.tobytes()) for i, c in enumerate(clips))
    replies = rpc.FeatureServiceStub(channel).ExtractClips(chunks, timeout=60)
    return [np.frombuffer(r.features[0].tensor.data, "<f4").reshape(
        tuple(r.features[0].tensor.shape)) for r in replies]


def foveal_cli(*args: str, timeout: float = 180, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "foveal.clients.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def load_output(path: Path) -> dict[str, np.ndarray]:
    """An output written by `foveal extract`, read with numpy or the safetensors library."""
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    return {p.stem: np.load(p) for p in path.glob("*.npy")}
