"""Model instances: copies of one model that each take batches from the model's one queue.

As Triton's instance groups: a model runs several instances placed over its devices
(`ModelConfig.instance_devices`). Instances on one device share one loaded model, so weights are
loaded once per device; each instance has its own worker thread (and, on a GPU, its own CUDA
stream), so while one instance computes a batch another can take the next.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

import foveal.kernels as fk

from .models.base import ServedModel

ItemResult = dict[str, torch.Tensor]


def _current(device: torch.device) -> contextlib.AbstractContextManager:
    """`device` as the thread's current CUDA device: Triton launches on the current one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def run_batch(model: ServedModel, backend: str, tensors: list[torch.Tensor],
              outputs: frozenset[str]) -> list[ItemResult]:
    """One forward for the whole batch of same-shape items, split back per item (on the host).

    Also used by the clients' in-process mode, so both compute exactly the same features.
    """
    with fk.use_backend(backend), torch.inference_mode(), _current(model.device):
        batch = torch.stack(tensors).to(device=model.device, dtype=model.dtype)
        results = model.forward(batch, outputs)
        on_host = {name: t.cpu() for name, t in results.items()}
    return [{name: t[i] for name, t in on_host.items()} for i in range(len(tensors))]


class Instance:
    """One instance: a model (shared with the other instances on its device) and a thread."""

    def __init__(self, index: int, model: ServedModel):
        self.index = index
        self.label = str(index)   # the `instance` label of its metrics
        self.model = model
        self._executor = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix=f"foveal-{model.name}-{index}")
        # Its own stream, so that instances on one GPU overlap.
        self._stream = (torch.cuda.Stream(model.device) if model.device.type == "cuda"
                        else None)

    def _compute(self, backend: str, tensors: list[torch.Tensor],
                 outputs: frozenset[str]) -> list[ItemResult]:
        on_stream = (torch.cuda.stream(self._stream) if self._stream is not None
                     else contextlib.nullcontext())
        with on_stream:
            return run_batch(self.model, backend, tensors, outputs)

    async def run(self, backend: str, tensors: list[torch.Tensor],
                  outputs: frozenset[str]) -> list[ItemResult]:
        """Run one batch on this instance's thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._compute, backend, tensors, outputs)

    async def close(self) -> None:
        """Wait for the running batch, then free the thread."""
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)


def devices_of(models: Sequence[ServedModel]) -> list[tuple[torch.device, int]]:
    """Each device the instances run on, in order of first use, with its instance count."""
    counts: dict[torch.device, int] = {}
    for model in models:
        counts[model.device] = counts.get(model.device, 0) + 1
    return list(counts.items())
