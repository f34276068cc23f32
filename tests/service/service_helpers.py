"""Helpers for the service tests: servers of their own, inputs, independent decoding."""

from __future__ import annotations

import contextlib
import io
import math
import time

import grpc
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from foveal.proto import rpc
from foveal.proto.foveal.v1 import foveal_pb2 as pb
from foveal.proto.grpc.health.v1 import health_pb2
from foveal.service.models import gabor as gabor_module
from foveal.service.runner import ServerThread
from foveal.service.server import MIB, ServerSettings

MODELS_TOML = """
[[models]]
name = "gabor"
kind = "gabor"
[models.batching]
max_batch_size = 4
max_queue_delay_ms = 20

[[models]]
name = "gabor-small"
kind = "gabor"
[models.input]
size = [32, 32]
resize = false
max_pixels = 4096
[models.batching]
max_batch_size = 4
max_queue_delay_ms = 5

[[models]]
name = "motion"
kind = "motion-energy"
[models.input]
size = [24, 24]
frames = 8
[models.batching]
max_batch_size = 4
max_queue_delay_ms = 5
"""
MAX_MESSAGE = 4 * MIB


def settings(**overrides) -> ServerSettings:
    values = {"port": 0, "metrics_port": 0, "backend": "torch", "grace_seconds": 5.0,
              "preprocess_threads": 2}
    return ServerSettings(**{**values, **overrides})


@contextlib.contextmanager
def running(models: list[tuple] | None = None, **overrides):
    """A server of its own for one test (custom models, security settings...)."""
    server = ServerThread(settings(**overrides), models)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=1.0)


def assert_healthy(channel: grpc.Channel) -> None:
    """The server still answers health checks and a small real request."""
    status = rpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    pixels = np.full((32, 32, 3), 100, np.uint8)
    reply = rpc.FeatureServiceStub(channel).ExtractImage(pb.ExtractImageRequest(
        model="gabor-small", images=[raw_image(pixels)]), timeout=30)
    assert list(reply.images[0].features[0].tensor.shape) == [96, 6, 6]


def raw_image(pixels: np.ndarray) -> pb.Image:
    dtype = pb.DATA_TYPE_UINT8 if pixels.dtype == np.uint8 else pb.DATA_TYPE_FLOAT32
    return pb.Image(pixels=pb.Tensor(shape=list(pixels.shape), dtype=dtype,
                                     data=pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()))


def encode(pixels: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def to_numpy(tensor: pb.Tensor) -> np.ndarray:
    """Decode a foveal.v1 Tensor independently of the server's codec."""
    if tensor.dtype == pb.DATA_TYPE_BFLOAT16:
        bits = np.frombuffer(tensor.data, "<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(tuple(tensor.shape))
    dtype = {pb.DATA_TYPE_FLOAT32: "<f4", pb.DATA_TYPE_FLOAT16: "<f2",
             pb.DATA_TYPE_UINT8: "u1"}[tensor.dtype]
    return np.frombuffer(tensor.data, dtype).reshape(tuple(tensor.shape)).astype(np.float32)


def grating(orientation_deg: float, wavelength: float, size: int) -> np.ndarray:
    """A grey sinusoidal grating, uint8 (size, size, 3), varying along orientation_deg
    (degrees from +x towards +y, image coordinates)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    theta = math.radians(orientation_deg)
    u = x * math.cos(theta) + y * math.sin(theta)
    value = 0.5 + 0.4 * np.cos(2 * math.pi * u / wavelength)
    return np.repeat((value * 255).round().astype(np.uint8)[:, :, None], 3, axis=2)


def drifting_grating(direction_deg: float, wavelength: float, frames: int, size: int,
                     speed: float = 1.0) -> np.ndarray:
    """uint8 (frames, size, size, 3): a grating moving `speed` px/frame in direction_deg
    (0 rightward, 90 upward = towards row 0)."""
    t, y, x = np.mgrid[0:frames, 0:size, 0:size].astype(np.float64)
    theta = math.radians(direction_deg)
    u = x * math.cos(theta) - y * math.sin(theta)
    value = 0.5 + 0.4 * np.cos(2 * math.pi * (u - speed * t) / wavelength)
    return np.repeat((value * 255).round().astype(np.uint8)[..., None], 3, axis=3)


def gabor_responses(images: np.ndarray) -> np.ndarray:
    """The built-in Gabor bank's raw responses z in float64, on (N, H, W, 3) uint8 images or
    floats in [0, 1], normalised as the default input spec says: `simple` is relu(z), `energy`
    the norm of each (even, odd) pair."""
    x = torch.from_numpy(images).double()
    if images.dtype == np.uint8:
        x = x / 255
    bank, _ = gabor_module.filter_bank()
    return F.conv2d(((x - 0.5) / 0.25).permute(0, 3, 1, 2), bank, stride=4).numpy()


def labels(channel_label: str) -> dict[str, str]:
    return dict(part.split("=") for part in channel_label.split())


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)

