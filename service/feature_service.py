"""foveal.v1.FeatureService: list and describe models, extract features of images and clips."""

from __future__ import annotations

import asyncio
import math

import torch

from foveal.proto.foveal.v1 import foveal_pb2 as pb

from . import codec
from .calls import deadline_of
from .errors import invalid
from .models.base import IMAGE, VIDEO, ServedModel
from .preprocess import decode_image, prepare_clip, prepare_image
from .state import ServingState

MAX_CLIPS_IN_FLIGHT = 4  # per stream: clips being prepared or computed while more arrive


def _info(model: ServedModel, state: ServingState) -> pb.ModelInfo:
    spec = model.input_spec
    served = state.served[model.name]
    item = model.item_shape()
    outputs = []
    for name, output in model.outputs.items():
        shape = model.output_shape(name, item) if item else ()
        if not item:  # any input size: only the channel count is known
            shape = (len(output.channels),) + (-1,) * (3 if spec.kind == VIDEO else 2)
        outputs.append(pb.OutputInfo(name=name, shape=shape, description=output.description,
                                     is_default=output.default, channels=output.channels))
    policy = served.batcher.policy
    return pb.ModelInfo(
        name=model.name, kind=model.kind, description=model.description,
        input=pb.InputSpec(
            kind=pb.INPUT_KIND_VIDEO if spec.kind == VIDEO else pb.INPUT_KIND_IMAGE,
            height=spec.height, width=spec.width, channels=spec.channels, frames=spec.frames,
            resize=spec.resize, mean=spec.mean, std=spec.std, max_pixels=spec.max_pixels,
            dtypes=[codec.BY_NAME[d].proto for d in spec.dtypes]),
        outputs=outputs,
        batching=pb.Batching(max_batch_size=policy.max_batch_size,
                             max_queue_delay_ms=policy.max_queue_delay_ms,
                             max_queue_size=policy.max_queue_size, timeout_ms=policy.timeout_ms),
        precision=codec.BY_TORCH[model.dtype].proto, device=served.device_names,
        backend=state.backend, weights=model.weights, ready=state.ready)


def _features(outputs: tuple[str, ...], result: dict[str, torch.Tensor],
              wire: codec.WireType) -> list[pb.FeatureMap]:
    return [pb.FeatureMap(name=name, tensor=codec.to_proto_tensor(result[name], wire))
            for name in outputs]


def _pixels(model: ServedModel, tensor: pb.Tensor, what: str) -> torch.Tensor:
    given = pb.DataType.Name(tensor.dtype) if tensor.dtype in pb.DataType.values() else str(
        tensor.dtype)
    wire = ServingState.check_dtype(model, codec.BY_PROTO.get(tensor.dtype), what, given)
    if not tensor.shape:
        raise invalid(f"{what}: shape is required")
    return codec.decode(tensor.data, tuple(tensor.shape), wire, what)


def _prepare_image(model: ServedModel, image: pb.Image, what: str) -> torch.Tensor:
    source = image.WhichOneof("source")
    if source is None:
        raise invalid(f"{what}: set either encoded (JPEG/PNG bytes) or pixels (a raw tensor)")
    if source == "encoded":
        pixels = decode_image(image.encoded, model.input_spec, what)
    else:
        pixels = _pixels(model, image.pixels, what)
    return prepare_image(pixels, model.input_spec, what)


class _Clip:
    """A clip being received: its header, the model, and the bytes so far."""

    def __init__(self, index: int, header: pb.ClipHeader, state: ServingState):
        what = f"clip {index}"
        self.index, self.header, self.what = index, header, what
        served = state.get(header.model)
        self.model = served.model
        state.check_kind(self.model, VIDEO, "send images with ExtractImage")
        self.outputs = state.outputs(self.model, header.outputs)
        self.output_wire = codec.output_wire(header.output_dtype)
        given = pb.DataType.Name(header.dtype) if header.dtype in pb.DataType.values() else str(
            header.dtype)
        self.wire = state.check_dtype(self.model, codec.BY_PROTO.get(header.dtype), what, given)
        shape = tuple(header.shape)
        if len(shape) != 4 or any(d <= 0 for d in shape):
            raise invalid(f"{what}: shape must be 4 positive sizes (frames, height, width, "
                          f"channels), got {list(shape)}")
        spec = self.model.input_spec
        if shape[0] > spec.frames:
            raise invalid(f"{what}: too many frames: {shape[0]}; model {self.model.name!r} "
                          f"takes clips of exactly {spec.frames}")
        if shape[1] * shape[2] > spec.max_pixels:
            raise invalid(f"{what}: {shape[1]}x{shape[2]} frames have too many pixels; "
                          f"at most {spec.max_pixels}")
        self.shape = shape
        self.expected = math.prod(shape) * self.wire.itemsize
        self.data = bytearray()

    def add(self, data: bytes) -> bool:
        """Append a chunk; True once the clip is complete."""
        self.data += data
        if len(self.data) > self.expected:
            raise invalid(f"{self.what}: received {len(self.data)} bytes but shape "
                          f"{list(self.shape)} of {self.wire.name} needs {self.expected}")
        return len(self.data) == self.expected

    def tensor(self) -> torch.Tensor:
        frames = codec.decode(bytes(self.data), self.shape, self.wire, self.what)
        return prepare_clip(frames, self.model.input_spec, self.what)


class FeatureServicer:
    def __init__(self, state: ServingState):
        self.state = state

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        from foveal.service import __version__

        async def body(rid: str) -> pb.ListModelsResponse:
            models = [_info(s.model, self.state) for s in self.state.served.values()]
            return pb.ListModelsResponse(models=models, server_version=__version__)

        return await self.state.tracker.run(context, "ListModels", "", body)

    async def GetModel(self, request: pb.GetModelRequest, context) -> pb.ModelInfo:
        async def body(rid: str) -> pb.ModelInfo:
            return _info(self.state.get(request.name).model, self.state)

        return await self.state.tracker.run(context, "GetModel", request.name, body)

    async def ExtractImage(self, request: pb.ExtractImageRequest,
                           context) -> pb.ExtractImageResponse:
        state = self.state

        async def body(rid: str) -> pb.ExtractImageResponse:
            served = state.get(request.model)
            model = served.model
            state.check_kind(model, IMAGE, "send clips with ExtractClips")
            if not request.images:
                raise invalid("images: at least one image is required")
            served.batcher.check_request_size(len(request.images))
            outputs = state.outputs(model, request.outputs)
            wire = codec.output_wire(request.output_dtype)
            items = [(model, image, f"images[{i}]") for i, image in enumerate(request.images)]
            tensors = await state.prepare(state.prepare_all, _prepare_image, items)
            results = await served.batcher.infer(tensors, frozenset(outputs),
                                                 deadline_of(context), rid)
            images = [pb.ImageFeatures(features=_features(outputs, r, wire)) for r in results]
            return state.check_reply_size(pb.ExtractImageResponse(model=model.name,
                                                                  images=images))

        return await state.tracker.run(context, "ExtractImage", request.model, body)

    async def ExtractClips(self, request_iterator, context) -> None:
        state = self.state

        async def run_clip(clip: _Clip, rid: str, deadline: float) -> pb.ClipFeatures:
            tensor = await state.prepare(clip.tensor)
            served = state.served[clip.model.name]
            (result,) = await served.batcher.infer([tensor], frozenset(clip.outputs), deadline,
                                                   f"{rid}/{clip.index}")
            return state.check_reply_size(pb.ClipFeatures(
                clip_id=clip.header.clip_id, index=clip.index, model=clip.model.name,
                features=_features(clip.outputs, result, clip.output_wire)))

        async def read(queue: asyncio.Queue, rid: str, deadline: float) -> None:
            clip: _Clip | None = None
            index = 0
            async for chunk in request_iterator:
                if chunk.HasField("header"):
                    if clip is not None:
                        raise invalid(f"clip {index}: a new header arrived after "
                                      f"{len(clip.data)} of its {clip.expected} bytes")
                    clip = _Clip(index, chunk.header, state)
                elif clip is None:
                    raise invalid(f"clip {index}: data arrived before a header; each clip "
                                  "starts with a ClipChunk whose header is set")
                if clip.add(chunk.data):
                    await queue.put(asyncio.ensure_future(run_clip(clip, rid, deadline)))
                    clip, index = None, index + 1
            if clip is not None:
                raise invalid(f"clip {index}: the stream ended after {len(clip.data)} of its "
                              f"{clip.expected} bytes")
            await queue.put(None)

        async def write(queue: asyncio.Queue) -> None:
            while (task := await queue.get()) is not None:
                await context.write(await task)

        async def body(rid: str) -> None:
            queue: asyncio.Queue = asyncio.Queue(maxsize=MAX_CLIPS_IN_FLIGHT)
            tasks = [asyncio.ensure_future(read(queue, rid, deadline_of(context))),
                     asyncio.ensure_future(write(queue))]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    if task.exception() is not None:
                        raise task.exception()
            finally:
                for task in tasks:
                    task.cancel()
                while not queue.empty():
                    pending = queue.get_nowait()
                    if pending is not None:
                        pending.cancel()

        await state.tracker.run(context, "ExtractClips", "", body)

