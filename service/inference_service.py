"""inference.GRPCInferenceService: Triton's KServe v2 protocol over the same models.

An image model has one input, `images`, of shape (N, H, W, C); a video model one input,
`clips`, of shape (N, T, H, W, C); UINT8 or FP32 either way. Outputs are the model's outputs
by name, (N, C, H', W') or (N, C, T', H', W'), FP32 unless the request parameter
`output_datatype` asks for "FP16" or "BF16"; a request naming no outputs gets all of them, as
the KServe v2 specification says. Every model has the single version "1".
"""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from foveal.proto.inference import grpc_service_pb2 as pb
from foveal.proto.inference import model_config_pb2 as mc

from . import __version__, codec
from .calls import deadline_of
from .errors import invalid, not_found
from .models.base import VIDEO, ServedModel
from .preprocess import prepare_clip, prepare_image
from .state import Served, ServingState

VERSION = "1"
PLATFORM = "foveal"
OUTPUT_DATATYPE_PARAMETER = "output_datatype"
MAX_STREAM_REQUESTS_IN_FLIGHT = 16
_CONFIG_TYPES = {"UINT8": mc.TYPE_UINT8, "FP32": mc.TYPE_FP32, "FP16": mc.TYPE_FP16,
                 "BF16": mc.TYPE_BF16}
_TYPED_CONTENTS = {"UINT8": "uint_contents", "FP32": "fp32_contents"}


def input_name(model: ServedModel) -> str:
    return "clips" if model.input_spec.kind == VIDEO else "images"


def _input_dims(model: ServedModel) -> list[int]:
    """The input's shape without the batch dimension; -1 where any size is accepted."""
    spec = model.input_spec
    any_size = spec.resize or not spec.fixed_size
    spatial = [-1, -1] if any_size else [spec.height, spec.width]
    frames = [spec.frames] if spec.kind == VIDEO else []
    return [*frames, *spatial, spec.channels]


def _output_dims(model: ServedModel, name: str) -> list[int]:
    item = model.item_shape()
    if item is not None:
        return list(model.output_shape(name, item))
    rank = 4 if model.input_spec.kind == VIDEO else 3
    return [len(model.outputs[name].channels)] + [-1] * (rank - 1)


def _input_datatype(model: ServedModel) -> str:
    return codec.BY_NAME[model.input_spec.dtypes[0]].triton


def _instance_groups(served: Served) -> list[mc.ModelInstanceGroup]:
    """One group per device, as Triton's instance_group reports them."""
    groups = []
    for i, (device, count) in enumerate(served.devices):
        gpu = device.type == "cuda"
        groups.append(mc.ModelInstanceGroup(
            name=f"{served.model.name}_{i}", count=count,
            kind=mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU,
            gpus=[device.index or 0] if gpu else []))
    return groups


def _check_version(name: str, version: str) -> None:
    if version not in ("", VERSION):
        raise not_found(f"model {name!r} has no version {version!r}; it has version {VERSION}")


class InferenceServicer:
    def __init__(self, state: ServingState):
        self.state = state

    def _model(self, name: str, version: str) -> Served:
        served = self.state.get(name)
        _check_version(name, version)
        return served

    async def _run(self, context, method: str, model: str, make):
        async def body(rid: str):
            return make()

        return await self.state.tracker.run(context, method, model, body)

    async def ServerLive(self, request, context) -> pb.ServerLiveResponse:
        return await self._run(context, "ServerLive", "", lambda: pb.ServerLiveResponse(live=True))

    async def ServerReady(self, request, context) -> pb.ServerReadyResponse:
        return await self._run(context, "ServerReady", "",
                               lambda: pb.ServerReadyResponse(ready=self.state.ready))

    async def ModelReady(self, request, context) -> pb.ModelReadyResponse:
        ready = (self.state.ready and request.name in self.state.served
                 and request.version in ("", VERSION))
        return await self._run(context, "ModelReady", request.name,
                               lambda: pb.ModelReadyResponse(ready=ready))

    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:
        extensions = ["model_configuration", "statistics", f"backend:{self.state.backend}"]
        return await self._run(context, "ServerMetadata", "", lambda: pb.ServerMetadataResponse(
            name="foveal", version=__version__, extensions=extensions))

    async def ModelMetadata(self, request, context) -> pb.ModelMetadataResponse:
        def make() -> pb.ModelMetadataResponse:
            model = self._model(request.name, request.version).model
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=model.name, versions=[VERSION], platform=PLATFORM,
                inputs=[tensor(name=input_name(model), datatype=_input_datatype(model),
                               shape=[-1, *_input_dims(model)])],
                outputs=[tensor(name=name, datatype="FP32", shape=[-1, *_output_dims(model, name)])
                         for name in model.outputs])

        return await self._run(context, "ModelMetadata", request.name, make)

    async def ModelConfig(self, request, context) -> pb.ModelConfigResponse:
        def make() -> pb.ModelConfigResponse:
            served = self._model(request.name, request.version)
            model, policy = served.model, served.batcher.policy
            image_format = (mc.ModelInput.FORMAT_NONE if model.input_spec.kind == VIDEO
                            else mc.ModelInput.FORMAT_NHWC)
            parameters = {"kind": model.kind, "compute_backend": self.state.backend,
                          "device": served.device_names, "weights": model.weights,
                          "precision": codec.BY_TORCH[model.dtype].name,
                          "default_outputs": ",".join(model.default_outputs)}
            config = mc.ModelConfig(
                name=model.name, platform=PLATFORM, backend="foveal",
                max_batch_size=policy.max_batch_size,
                input=[mc.ModelInput(name=input_name(model),
                                     data_type=_CONFIG_TYPES[_input_datatype(model)],
                                     format=image_format, dims=_input_dims(model))],
                output=[mc.ModelOutput(name=name, data_type=mc.TYPE_FP32,
                                       dims=_output_dims(model, name)) for name in model.outputs],
                instance_group=_instance_groups(served),
                dynamic_batching=mc.ModelDynamicBatching(
                    max_queue_delay_microseconds=int(policy.max_queue_delay_ms * 1000),
                    default_queue_policy=mc.ModelQueuePolicy(
                        max_queue_size=policy.max_queue_size,
                        default_timeout_microseconds=int(policy.timeout_ms * 1000))),
                parameters={k: mc.ModelParameter(string_value=v) for k, v in parameters.items()})
            return pb.ModelConfigResponse(config=config)

        return await self._run(context, "ModelConfig", request.name, make)

    async def ModelStatistics(self, request, context) -> pb.ModelStatisticsResponse:
        def make() -> pb.ModelStatisticsResponse:
            if request.name:
                names = [self._model(request.name, request.version).model.name]
            else:
                names = list(self.state.served)
            return pb.ModelStatisticsResponse(model_stats=[self._statistics(n) for n in names])

        return await self._run(context, "ModelStatistics", request.name, make)

    def _statistics(self, name: str) -> pb.ModelStatistics:
        s = self.state.served[name].stats

        def duration(d) -> pb.StatisticDuration:
            return pb.StatisticDuration(count=d.count, ns=d.ns)

        with s.lock:
            return pb.ModelStatistics(
                name=name, version=VERSION, last_inference=s.last_inference_ms,
                inference_count=s.inference_count, execution_count=s.execution_count,
                inference_stats=pb.InferStatistics(
                    success=duration(s.success), fail=duration(s.fail), queue=duration(s.queue),
                    compute_input=duration(s.compute_input),
                    compute_infer=duration(s.compute_infer),
                    compute_output=duration(s.compute_output)),
                batch_stats=[pb.InferBatchStatistics(batch_size=size,
                                                     compute_infer=duration(d))
                             for size, d in sorted(s.batches.items())])

    async def RepositoryIndex(self, request, context) -> pb.RepositoryIndexResponse:
        state = "READY" if self.state.ready else "UNAVAILABLE"
        index = pb.RepositoryIndexResponse.ModelIndex
        models = [index(name=name, version=VERSION, state=state) for name in self.state.served
                  if self.state.ready or not request.ready]
        return await self._run(context, "RepositoryIndex", "",
                               lambda: pb.RepositoryIndexResponse(models=models))

    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        async def body(rid: str) -> pb.ModelInferResponse:
            return await self._infer(request, rid, deadline_of(context))

        return await self.state.tracker.run(context, "ModelInfer", request.model_name, body)

    async def ModelStreamInfer(self, request_iterator, context) -> None:
        """Each request runs as it arrives (so one stream's requests batch together); each
        response or error is sent when ready, identified by the request's id."""
        state = self.state

        async def answer(request: pb.ModelInferRequest, rid: str, slots: asyncio.Semaphore,
                         lock: asyncio.Lock) -> None:
            try:
                try:
                    response = pb.ModelStreamInferResponse(
                        infer_response=await self._infer(request, f"{rid}/{request.id}",
                                                         deadline_of(context)))
                except Exception as err:
                    message = getattr(err, "message", None) or f"{type(err).__name__}: {err}"
                    response = pb.ModelStreamInferResponse(
                        error_message=message,
                        infer_response=pb.ModelInferResponse(model_name=request.model_name,
                                                             id=request.id))
                async with lock:
                    await context.write(response)
            finally:
                slots.release()

        async def body(rid: str) -> None:
            slots, lock = asyncio.Semaphore(MAX_STREAM_REQUESTS_IN_FLIGHT), asyncio.Lock()
            tasks = []
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    tasks.append(asyncio.ensure_future(answer(request, rid, slots, lock)))
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()

        await state.tracker.run(context, "ModelStreamInfer", "", body)

    async def _infer(self, request: pb.ModelInferRequest, rid: str,
                     deadline: float) -> pb.ModelInferResponse:
        served = self._model(request.model_name, request.model_version)
        model = served.model
        items = self._input_items(model, request)
        served.batcher.check_request_size(len(items))
        # KServe v2: a request that names no outputs gets every output of the model
        outputs = self.state.outputs(model, [o.name for o in request.outputs] or
                                     list(model.outputs))
        wire = self._output_wire(request)
        prepare = prepare_clip if model.input_spec.kind == VIDEO else prepare_image
        name = input_name(model)
        work = [(item, model.input_spec, f"input {name!r} item {i}") for i, item in
                enumerate(items)]
        tensors = await self.state.prepare(self.state.prepare_all, prepare, work)
        results = await served.batcher.infer(tensors, frozenset(outputs), deadline, rid)
        response = pb.ModelInferResponse(model_name=model.name, model_version=VERSION,
                                         id=request.id)
        for output in outputs:
            stacked = torch.stack([r[output] for r in results]).to(wire.torch_dtype)
            response.outputs.add(name=output, datatype=wire.triton, shape=list(stacked.shape))
            response.raw_output_contents.append(codec.encode(stacked))
        return self.state.check_reply_size(response)

    @staticmethod
    def _output_wire(request: pb.ModelInferRequest) -> codec.WireType:
        parameter = request.parameters.get(OUTPUT_DATATYPE_PARAMETER)
        if parameter is None:
            return codec.BY_NAME["float32"]
        wire = codec.BY_TRITON.get(parameter.string_param)
        if wire is None or wire.name not in codec.FLOAT_OUTPUTS:
            choice = parameter.WhichOneof("parameter_choice")
            given = getattr(parameter, choice) if choice else None
            raise invalid(f"parameter {OUTPUT_DATATYPE_PARAMETER!r} must be the string FP32, "
                          f"FP16 or BF16, got {given!r}")
        return wire

    def _input_items(self, model: ServedModel, request: pb.ModelInferRequest) -> list[torch.Tensor]:
        """The request's one input tensor, checked and split into items."""
        name = input_name(model)
        if len(request.inputs) != 1:
            raise invalid(f"model {model.name!r} takes exactly one input, {name!r}; the request "
                          f"has {len(request.inputs)}")
        tensor = request.inputs[0]
        if tensor.name != name:
            raise invalid(f"unknown input {tensor.name!r}; model {model.name!r} takes {name!r}")
        what = f"input {name!r}"
        wire = self.state.check_dtype(model, codec.BY_TRITON.get(tensor.datatype), what,
                                      repr(tensor.datatype))
        rank = 5 if model.input_spec.kind == VIDEO else 4
        layout = "(N, T, H, W, C)" if rank == 5 else "(N, H, W, C)"
        if len(tensor.shape) != rank:
            raise invalid(f"{what}: shape must be {layout}, got {list(tensor.shape)}")
        if request.raw_input_contents:
            if len(request.raw_input_contents) != len(request.inputs):
                raise invalid(f"raw_input_contents has {len(request.raw_input_contents)} entries "
                              f"for {len(request.inputs)} input(s)")
            data = request.raw_input_contents[0]
        elif tensor.HasField("contents"):
            values = getattr(tensor.contents, _TYPED_CONTENTS[wire.triton])
            data = np.asarray(values, dtype=np.dtype(wire.name).newbyteorder("<")).tobytes()
            if wire.name == "uint8" and any(v > 255 for v in values):
                raise invalid(f"{what}: UINT8 contents must be in [0, 255]")
        else:
            raise invalid(f"{what} has no data: send raw_input_contents or contents")
        batch = codec.decode(data, tuple(tensor.shape), wire, what)
        return list(batch.unbind(0))
