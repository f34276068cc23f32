"""Tensors to and from raw little-endian bytes, for both protocols.

One table maps foveal.v1's DataType enum and Triton's datatype strings to numpy and torch
dtypes; bfloat16 travels as the upper 16 bits of float32 (numpy has no bfloat16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from foveal.proto.foveal.v1 import foveal_pb2

from .errors import invalid


@dataclass(frozen=True)
class WireType:
    name: str            # "float32"
    proto: int           # foveal_pb2.DataType value
    triton: str          # "FP32"
    torch_dtype: torch.dtype
    itemsize: int


WIRE_TYPES = (
    WireType("uint8", foveal_pb2.DATA_TYPE_UINT8, "UINT8", torch.uint8, 1),
    WireType("float16", foveal_pb2.DATA_TYPE_FLOAT16, "FP16", torch.float16, 2),
    WireType("bfloat16", foveal_pb2.DATA_TYPE_BFLOAT16, "BF16", torch.bfloat16, 2),
    WireType("float32", foveal_pb2.DATA_TYPE_FLOAT32, "FP32", torch.float32, 4),
)
BY_NAME = {w.name: w for w in WIRE_TYPES}
BY_PROTO = {w.proto: w for w in WIRE_TYPES}
BY_TRITON = {w.triton: w for w in WIRE_TYPES}
BY_TORCH = {w.torch_dtype: w for w in WIRE_TYPES}
FLOAT_OUTPUTS = ("float32", "float16", "bfloat16")


def decode(data: bytes, shape: tuple[int, ...], wire: WireType, what: str) -> torch.Tensor:
    """A CPU tensor viewing `data`, after checking the byte count matches the shape."""
    if any(d <= 0 for d in shape):
        raise invalid(f"{what}: every dimension must be positive, got shape {list(shape)}")
    expected = math.prod(shape) * wire.itemsize
    if len(data) != expected:
        raise invalid(f"{what}: {len(data)} bytes do not match shape {list(shape)} of "
                      f"{wire.name} ({expected} bytes expected)")
    if wire.torch_dtype is torch.bfloat16:
        array = np.frombuffer(data, dtype="<i2").reshape(shape)
        return torch.from_numpy(array.astype(np.int16)).view(torch.bfloat16)
    array = np.frombuffer(data, dtype=np.dtype(wire.name).newbyteorder("<")).reshape(shape)
    return torch.from_numpy(array.copy())


def encode(t: torch.Tensor) -> bytes:
    """Little-endian C-order bytes of a CPU tensor (bfloat16 as its 16 raw bits)."""
    t = t.detach().cpu().contiguous()
    if t.dtype is torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    return t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes()


def output_wire(proto_dtype: int) -> WireType:
    """The float dtype a client asked its features in (unspecified: float32)."""
    if proto_dtype == foveal_pb2.DATA_TYPE_UNSPECIFIED:
        return BY_NAME["float32"]
    wire = BY_PROTO.get(proto_dtype)
    if wire is None or wire.name not in FLOAT_OUTPUTS:
        raise invalid(f"output_dtype must be FLOAT32, FLOAT16 or BFLOAT16, got "
                      f"{foveal_pb2.DataType.Name(proto_dtype) if wire else proto_dtype}")
    return wire


def to_proto_tensor(t: torch.Tensor, wire: WireType) -> foveal_pb2.Tensor:
    return foveal_pb2.Tensor(shape=list(t.shape), dtype=wire.proto,
                             data=encode(t.to(wire.torch_dtype)))
