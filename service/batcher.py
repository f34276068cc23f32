"""The dynamic batcher: one queue per model, feeding each of the model's instances.

A batch starts when `max_batch_size` items of one shape are waiting, or when the oldest item
has waited `max_queue_delay_ms`; it takes up to `max_batch_size` items of the oldest item's
shape (others wait for a later batch). A batch is formed only when an instance is free to run
it, so items keep gathering while every instance is busy; with several instances, each runs its
own batches while the others compute. Items whose request was cancelled or whose deadline
passed are dropped before the batch reaches the device. The queue holds at most
`max_queue_size` items: past that a request fails at once with RESOURCE_EXHAUSTED. A batch
that raises fails its own requests with INTERNAL; the next batch runs as usual.

Each instance runs its batches in its own worker thread, so the event loop keeps accepting
requests and answering health checks during long batches.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import torch

from .errors import RequestError
from .instances import Instance, ItemResult
from .metrics import Metrics, ModelStats
from .models.base import ServedModel
from .repository import BatchPolicy

log = logging.getLogger("foveal.service.batcher")


@dataclass
class _Item:
    tensor: torch.Tensor
    outputs: frozenset[str]
    future: asyncio.Future
    enqueued: float
    deadline: float
    request_id: str


class DynamicBatcher:
    """`models` holds each instance's model: the same object for instances on one device."""

    def __init__(self, models: Sequence[ServedModel], policy: BatchPolicy, backend: str,
                 metrics: Metrics, stats: ModelStats):
        if not models or len({m.name for m in models}) != 1:
            raise ValueError("a batcher needs one or more instances of one model")
        self.model = models[0]          # what every instance serves: name, input, outputs
        self.instances = [Instance(i, model) for i, model in enumerate(models)]
        self.policy = policy
        self.backend = backend          # the kernels' preference: "triton" or "torch"
        self.metrics = metrics
        self.stats = stats
        self._queue: collections.deque[_Item] = collections.deque()
        self._wake = asyncio.Event()
        self._idle: asyncio.Queue[Instance] = asyncio.Queue()
        for instance in self.instances:
            self._idle.put_nowait(instance)
        self._running: set[asyncio.Task] = set()
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
        """Take a free instance, wait for items, form a batch, start it; again."""
        while True:
            instance = await self._idle.get()
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = await self._collect()
            if not batch:
                self._idle.put_nowait(instance)
                continue
            task = asyncio.get_running_loop().create_task(self._execute(instance, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

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
        for instance in self.instances:  # one after another: tuning wants the device alone
            for size in sizes:
                items = [torch.randn(shape, generator=generator) for _ in range(size)]
                await instance.run(self.backend, items, frozenset(self.model.outputs))
        return sizes

    async def _execute(self, instance: Instance, batch: list[_Item]) -> None:
        try:
            await self._run_on(instance, batch)
        finally:
            self._idle.put_nowait(instance)

    async def _run_on(self, instance: Instance, batch: list[_Item]) -> None:
        name, label = self.model.name, instance.label
        start = time.monotonic()
        for item in batch:
            self.metrics.queue_time.labels(name).observe(start - item.enqueued)
            self.stats.queue.add(start - item.enqueued)
        outputs = frozenset().union(*(item.outputs for item in batch))
        try:
            results = await instance.run(self.backend, [item.tensor for item in batch], outputs)
        except Exception as err:  # a failing batch fails only its own requests
            log.exception("batch failed", extra={"fields": {
                "model": name, "instance": instance.index, "batch_size": len(batch),
                "request_ids": sorted({item.request_id for item in batch})}})
            error = RequestError(grpc.StatusCode.INTERNAL,
                                 f"model {name!r} failed on a batch of {len(batch)}: "
                                 f"{type(err).__name__}: {err}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        seconds = time.monotonic() - start
        self.metrics.compute_time.labels(name, label).observe(seconds)
        self.metrics.batch_size.labels(name, label).observe(len(batch))
        self.metrics.executions.labels(name, label).inc()
        self.stats.record_batch(len(batch), seconds)
        log.debug("batch", extra={"fields": {"model": name, "instance": instance.index,
                                             "batch_size": len(batch),
                                             "compute_ms": round(seconds * 1000, 3)}})
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result({k: v for k, v in result.items() if k in item.outputs})

    async def close(self) -> None:
        """Stop batching: fail what is still queued, let running batches finish, free the
        instances' threads."""
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
        if self._running:
            await asyncio.wait(self._running)
        for instance in self.instances:
            await instance.close()
