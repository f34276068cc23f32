"""The dynamic batcher: one queue per model, one device worker thread per model.

A batch starts when `max_batch_size` items of one shape are waiting, or when the oldest item
has waited `max_queue_delay_ms`; it takes up to `max_batch_size` items of the oldest item's
shape (others wait for a later batch). Items whose request was cancelled or whose deadline
passed are dropped before the batch reaches the device. The queue holds at most
`max_queue_size` items: past that a request fails at once with RESOURCE_EXHAUSTED. A batch
that raises fails its own requests with INTERNAL; the next batch runs as usual.

The model runs in a worker thread, so the event loop keeps accepting requests and answering
health checks during a long batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import torch

import foveal.kernels as fk

from .errors import RequestError
from .metrics import Metrics, ModelStats
from .models.base import ServedModel
from .repository import BatchPolicy

log = logging.getLogger("foveal.service.batcher")

ItemResult = dict[str, torch.Tensor]


@dataclass
class _Item:
    tensor: torch.Tensor
    outputs: frozenset[str]
    future: asyncio.Future
    enqueued: float
    deadline: float
    request_id: str


def run_batch(model: ServedModel, backend: str, tensors: list[torch.Tensor],
              outputs: frozenset[str]) -> list[ItemResult]:
    """One forward for the whole batch of same-shape items, split back per item (on the host).

    Also used by the clients' in-process mode, so both compute exactly the same features.
    """
    with fk.use_backend(backend), torch.inference_mode():
        batch = torch.stack(tensors).to(device=model.device, dtype=model.dtype)
        results = model.forward(batch, outputs)
        on_host = {name: t.cpu() for name, t in results.items()}
    return [{name: t[i] for name, t in on_host.items()} for i in range(len(tensors))]


class DynamicBatcher:
    def __init__(self, model: ServedModel, policy: BatchPolicy, backend: str, metrics: Metrics,
                 stats: ModelStats):
        self.model = model
        self.policy = policy
        self.backend = backend          # the kernels' preference: "triton" or "torch"
        self.metrics = metrics
        self.stats = stats
        self._queue: collections.deque[_Item] = collections.deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix=f"foveal-{model.name}")
        self._task: asyncio.Task | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(),
                                                            name=f"batcher-{self.model.name}")

    def check_request_size(self, items: int) -> None:
        if items > self.policy.max_batch_size:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{items} items in one request; model {self.model.name!r} takes "
                               f"at most {self.policy.max_batch_size} (max_batch_size)")

    async def infer(self, tensors: list[torch.Tensor], outputs: frozenset[str], deadline: float,
                    request_id: str) -> list[ItemResult]:
        """Queue one request's items; wait for their results (in order) until `deadline`.

        `deadline` is on time.monotonic(); the policy's timeout_ms caps it.
        """
        name, policy = self.model.name, self.policy
        if self._closing:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        self.check_request_size(len(tensors))
        if len(self._queue) + len(tensors) > policy.max_queue_size:
            self.metrics.dropped.labels(name, "queue_full").inc(len(tensors))
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"model {name!r} has {len(self._queue)} items queued (limit "
                               f"{policy.max_queue_size}); retry later")
        now = time.monotonic()
        deadline = min(deadline, now + policy.timeout_ms / 1000)
        loop = asyncio.get_running_loop()
        items = [_Item(t, outputs, loop.create_future(), now, deadline, request_id)
                 for t in tensors]
        self._queue.extend(items)
        self.metrics.queue_depth.labels(name).set(len(self._queue))
        self._wake.set()
        futures = [item.future for item in items]
        try:
            return await asyncio.wait_for(asyncio.gather(*futures), max(deadline - now, 0))
        except asyncio.TimeoutError:
            raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"model {name!r} did not answer within the deadline "
                               f"({(deadline - now) * 1000:.0f} ms)") from None
        finally:
            for future in futures:  # on cancellation or timeout: drop what has not run
                future.cancel()

    async def _loop(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = await self._collect()
            if batch:
                await self._execute(batch)

    def _same_shape_count(self, shape: torch.Size) -> int:
        return sum(1 for item in self._queue if item.tensor.shape == shape)

    async def _collect(self) -> list[_Item]:
        """Wait until a batch is full or the oldest item's delay is over; take the batch."""
        oldest = self._queue[0]
        shape, policy = oldest.tensor.shape, self.policy
        while not self._closing and self._same_shape_count(shape) < policy.max_batch_size:
            remaining = oldest.enqueued + policy.max_queue_delay_ms / 1000 - time.monotonic()
            if remaining <= 0 or oldest.future.done():
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                break
        batch, kept = [], collections.deque()
        now = time.monotonic()
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():
                self.metrics.dropped.labels(self.model.name, "cancelled").inc()
            elif item.deadline <= now:
                self.metrics.dropped.labels(self.model.name, "deadline").inc()
                item.future.set_exception(RequestError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"deadline passed after {(now - item.enqueued) * 1000:.0f} ms in the queue"))
            elif item.tensor.shape == shape and len(batch) < policy.max_batch_size:
                batch.append(item)
            else:
                kept.append(item)
        self._queue = kept
        self.metrics.queue_depth.labels(self.model.name).set(len(kept))
        return batch

    async def warm_up(self) -> list[int]:
        """Run each power-of-two batch size up to max_batch_size once on the worker thread.

        The kernels' autotuning keys bucket output rows by powers of two, so these sizes tune
        every bucket any batch can fall into: no request pays for compiling and tuning. Returns
        the sizes run (none for a model without a fixed input size).
        """
        shape = self.model.item_shape()
        if shape is None:
            return []
        limit = self.policy.max_batch_size
        sizes = sorted({min(1 << i, limit) for i in range(limit.bit_length() + 1)})
        generator = torch.Generator().manual_seed(0)
        loop = asyncio.get_running_loop()
        for size in sizes:
            items = [torch.randn(shape, generator=generator) for _ in range(size)]
            await loop.run_in_executor(self._executor, self._compute, items,
                                       frozenset(self.model.outputs))
        return sizes

    def _compute(self, tensors: list[torch.Tensor], outputs: frozenset[str]) -> list[ItemResult]:
        """Runs in the worker thread."""
        return run_batch(self.model, self.backend, tensors, outputs)

    async def _execute(self, batch: list[_Item]) -> None:
        name = self.model.name
        start = time.monotonic()
        for item in batch:
            self.metrics.queue_time.labels(name).observe(start - item.enqueued)
            self.stats.queue.add(start - item.enqueued)
        outputs = frozenset().union(*(item.outputs for item in batch))
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._compute,
                                                 [item.tensor for item in batch], outputs)
        except Exception as err:  # a failing batch fails only its own requests
            log.exception("batch failed", extra={"fields": {
                "model": name, "batch_size": len(batch),
                "request_ids": sorted({item.request_id for item in batch})}})
            error = RequestError(grpc.StatusCode.INTERNAL,
                                 f"model {name!r} failed on a batch of {len(batch)}: "
                                 f"{type(err).__name__}: {err}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        seconds = time.monotonic() - start
        self.metrics.compute_time.labels(name).observe(seconds)
        self.metrics.batch_size.labels(name).observe(len(batch))
        self.stats.record_batch(len(batch), seconds)
        log.debug("batch", extra={"fields": {"model": name, "batch_size": len(batch),
                                             "compute_ms": round(seconds * 1000, 3)}})
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result({k: v for k, v in result.items() if k in item.outputs})

    async def close(self) -> None:
        """Stop batching: fail what is still queued, wait for the running batch, free the thread."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(RequestError(grpc.StatusCode.UNAVAILABLE,
                                                       "the server is shutting down"))
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
