"""What both protocols share: the served models, their batchers, and request validation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import grpc
import torch
from google.protobuf.message import Message

from . import codec
from .batcher import DynamicBatcher
from .calls import CallTracker
from .errors import RequestError, invalid, not_found
from .instances import devices_of
from .metrics import Metrics, ModelStats
from .models.base import ServedModel

T = TypeVar("T")
MIB = 1024 * 1024


@dataclass
class Served:
    model: ServedModel            # instance 0's: what every instance serves
    batcher: DynamicBatcher
    stats: ModelStats

    @property
    def devices(self) -> list[tuple[torch.device, int]]:
        """The devices the instances run on, with the number of instances on each."""
        return devices_of([instance.model for instance in self.batcher.instances])

    @property
    def device_names(self) -> str:
        """What ModelInfo and ModelConfig report as the device: "cpu", "cuda:0,cuda:1"."""
        return ",".join(str(device) for device, _ in self.devices)


class ServingState:
    def __init__(self, served: dict[str, Served], backend: str, metrics: Metrics,
                 preprocess_threads: int, max_message_bytes: int):
        self.served = served
        self.backend = backend        # what runs the convolutions: triton, interpreter, torch
        self.metrics = metrics
        self.tracker = CallTracker(metrics, {name: s.stats for name, s in served.items()})
        self.ready = False
        self.max_message_bytes = max_message_bytes
        self._preprocess = ThreadPoolExecutor(max_workers=preprocess_threads,
                                              thread_name_prefix="foveal-preprocess")

    def get(self, name: str) -> Served:
        if not name:
            raise invalid("model is required: name one of " + ", ".join(sorted(self.served)))
        served = self.served.get(name)
        if served is None:
            raise not_found(f"model {name!r} is not served here; available: "
                            f"{', '.join(sorted(self.served))}")
        return served

    @staticmethod
    def outputs(model: ServedModel, requested: list[str] | tuple[str, ...]) -> tuple[str, ...]:
        """The outputs a request asked for (the model's defaults if none), validated."""
        if not requested:
            return model.default_outputs
        unknown = [name for name in requested if name not in model.outputs]
        if unknown:
            raise invalid(f"unknown output(s) {unknown} for model {model.name!r}; it has "
                          f"{list(model.outputs)}")
        if len(set(requested)) != len(requested):
            raise invalid(f"outputs name an output more than once: {list(requested)}")
        return tuple(requested)

    @staticmethod
    def check_kind(model: ServedModel, kind: str, hint: str) -> None:
        if model.input_spec.kind != kind:
            raise invalid(f"model {model.name!r} takes {model.input_spec.kind} input, not "
                          f"{kind}; {hint}")

    @staticmethod
    def check_dtype(model: ServedModel, wire: codec.WireType | None, what: str,
                    given: str) -> codec.WireType:
        allowed = model.input_spec.dtypes
        if wire is None or wire.name not in allowed:
            raise invalid(f"{what}: dtype {given} is not accepted; model {model.name!r} takes "
                          f"{' or '.join(allowed)}")
        return wire

    def check_reply_size(self, reply: Message) -> Message:
        """A reply over the send limit would fail in transport; say why instead."""
        size = reply.ByteSize()
        if size > self.max_message_bytes:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"the reply would be {size / MIB:.1f} MiB, over the server's "
                               f"{self.max_message_bytes / MIB:.1f} MiB message limit; ask for "
                               "fewer items or outputs per request, or float16 features")
        return reply

    async def prepare(self, fn: Callable[..., T], *args) -> T:
        """Run CPU-heavy input preparation (decoding, resizing) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._preprocess, fn, *args)

    def prepare_all(self, fn: Callable[..., torch.Tensor], items: list[tuple]) -> list:
        """Prepare every item in one worker-thread call (the first error wins)."""
        return [fn(*args) for args in items]

    def close(self) -> None:
        self._preprocess.shutdown(wait=False, cancel_futures=True)
