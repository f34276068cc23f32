"""Messages of the foveal.v1 protocol built from and turned into numpy arrays.

numpy only (no torch at import time): images become `Image` messages, clips become chunks
under the message limit, and feature maps come back as arrays keyed by layer name.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foveal.proto.foveal.v1 import foveal_pb2 as pb

OUTPUT_DTYPES = {"float32": pb.DATA_TYPE_FLOAT32, "float16": pb.DATA_TYPE_FLOAT16,
                 "bfloat16": pb.DATA_TYPE_BFLOAT16}
Features = dict[str, Any]  # layer name -> numpy array (or torch tensor on request)


def output_dtype(name: str) -> int:
    if name not in OUTPUT_DTYPES:
        raise ValueError(f"output_dtype must be one of {list(OUTPUT_DTYPES)}, got {name!r}")
    return OUTPUT_DTYPES[name]


def check_outputs(outputs: Sequence[str] | None) -> list[str]:
    """The output layers asked for (empty: the model's defaults)."""
    if outputs is None:
        return []
    if isinstance(outputs, str) or not all(isinstance(o, str) and o for o in outputs):
        raise TypeError(f"outputs must be a list of layer names, got {outputs!r}")
    return list(outputs)


def _raw_tensor(pixels: np.ndarray, what: str) -> pb.Tensor:
    if pixels.dtype == np.uint8:
        dtype = pb.DATA_TYPE_UINT8
    elif np.issubdtype(pixels.dtype, np.floating):
        pixels, dtype = pixels.astype("<f4"), pb.DATA_TYPE_FLOAT32
    else:
        raise TypeError(f"{what}: pixels must be uint8 (0-255) or float (0-1), "
                        f"got dtype {pixels.dtype}")
    return pb.Tensor(shape=list(pixels.shape), dtype=dtype,
                     data=np.ascontiguousarray(pixels).tobytes())


def _torch_tensor_type():
    torch = sys.modules.get("torch")  # a tensor can only exist if torch was imported
    return torch.Tensor if torch is not None else None


def image_message(image: Any, what: str = "image") -> pb.Image:
    """One image as a foveal.v1 Image.

    Accepts a path (str or Path) or bytes of a JPEG/PNG file (sent as is; the server decodes),
    a numpy array (height, width, channels) uint8 or float in [0, 1], a PIL image (converted to
    RGB), or a torch tensor (channels, height, width) as torchvision lays images out.
    """
    if isinstance(image, str | Path):
        return pb.Image(encoded=Path(image).read_bytes())
    if isinstance(image, bytes | bytearray | memoryview):
        if not len(image):
            raise ValueError(f"{what}: empty image bytes")
        return pb.Image(encoded=bytes(image))
    if isinstance(image, np.ndarray):
        if image.ndim != 3:
            raise ValueError(f"{what}: a numpy image must be (height, width, channels), got "
                             f"shape {image.shape}")
        return pb.Image(pixels=_raw_tensor(image, what))
    if type(image).__module__.startswith("PIL.") and hasattr(image, "convert"):
        return pb.Image(pixels=_raw_tensor(np.asarray(image.convert("RGB")), what))
    tensor_type = _torch_tensor_type()
    if tensor_type is not None and isinstance(image, tensor_type):
        if image.dim() != 3:
            raise ValueError(f"{what}: a torch image must be (channels, height, width), got "
                             f"shape {tuple(image.shape)}")
        pixels = image.detach().cpu().permute(1, 2, 0)
        if pixels.is_floating_point():
            pixels = pixels.float()
        return pb.Image(pixels=_raw_tensor(pixels.contiguous().numpy(), what))
    raise TypeError(f"{what}: expected a path, JPEG/PNG bytes, a numpy array (H, W, C), a PIL "
                    f"image or a torch tensor (C, H, W), got {type(image).__name__}")


def to_array(tensor: pb.Tensor) -> np.ndarray:
    """A feature tensor as numpy: float32 or float16 (bfloat16 is widened to float32, exactly)."""
    shape = tuple(tensor.shape)
    if tensor.dtype == pb.DATA_TYPE_BFLOAT16:
        bits = np.frombuffer(tensor.data, "<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    dtype = {pb.DATA_TYPE_FLOAT32: "<f4", pb.DATA_TYPE_FLOAT16: "<f2",
             pb.DATA_TYPE_UINT8: "u1"}.get(tensor.dtype)
    if dtype is None:
        raise ValueError(f"unknown tensor dtype {tensor.dtype} in a reply")
    return np.frombuffer(tensor.data, dtype).reshape(shape).copy()  # writable, owns its data


def features(maps: Sequence[pb.FeatureMap], as_torch: bool = False,
             bfloat16: bool = False) -> Features:
    """Layer name -> array, in the order the server sent them."""
    arrays = {m.name: to_array(m.tensor) for m in maps}
    return to_torch(arrays, bfloat16) if as_torch else arrays


def to_torch(arrays: Mapping[str, np.ndarray], bfloat16: bool = False) -> Features:
    import torch

    tensors = {name: torch.from_numpy(a) for name, a in arrays.items()}
    if bfloat16:
        tensors = {name: t.to(torch.bfloat16) for name, t in tensors.items()}
    return tensors


def clip_chunks(frames: np.ndarray, clip_id: str, model: str, outputs: Sequence[str],
                dtype: int, chunk_bytes: int) -> Iterator[pb.ClipChunk]:
    """One clip as ClipChunks: the header with the first `chunk_bytes`, then the rest."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4:
        raise ValueError(f"clip {clip_id}: frames must be a numpy array (frames, height, width, "
                         f"channels), got {getattr(frames, 'shape', type(frames).__name__)}")
    tensor = _raw_tensor(frames, f"clip {clip_id}")
    header = pb.ClipHeader(model=model, outputs=outputs, output_dtype=dtype,
                           shape=list(frames.shape), dtype=tensor.dtype, clip_id=clip_id)
    data = memoryview(tensor.data)
    yield pb.ClipChunk(header=header, data=bytes(data[:chunk_bytes]))
    for start in range(chunk_bytes, len(data), chunk_bytes):
        yield pb.ClipChunk(data=bytes(data[start:start + chunk_bytes]))


def image_requests(images: Sequence[Any], model: str, outputs: Sequence[str], dtype: int,
                   max_items: int, max_bytes: int) -> Iterator[pb.ExtractImageRequest]:
    """Requests of at most `max_items` images (the model's max_batch_size), each under
    `max_bytes`, in the images' order. Converts images lazily, one request at a time."""
    batch: list[pb.Image] = []
    size = 0
    for i, image in enumerate(images):
        message = image_message(image, f"images[{i}]")
        item_bytes = message.ByteSize() + 8  # field tag and length
        if item_bytes > max_bytes:
            raise ValueError(f"images[{i}] is {item_bytes} bytes, over the message limit "
                             f"({max_bytes} bytes for the images of one request); send it "
                             f"encoded (JPEG/PNG) or raise max_message_bytes")
        if batch and (len(batch) == max_items or size + item_bytes > max_bytes):
            yield pb.ExtractImageRequest(model=model, images=batch, outputs=outputs,
                                         output_dtype=dtype)
            batch, size = [], 0
        batch.append(message)
        size += item_bytes
    if batch:
        yield pb.ExtractImageRequest(model=model, images=batch, outputs=outputs,
                                     output_dtype=dtype)
