"""FoveaClient (sync) and AsyncFoveaClient (asyncio) for the foveal.v1 FeatureService.

    with FoveaClient("127.0.0.1:8001") as client:
        maps = client.extract_image("cat.jpg", "gabor")          # {"simple": (96, 55, 55)}
        for clip in client.extract_clips("talk.mp4", "motion-energy", stride=8):
            clip.index, clip.timestamps, clip.features["energy"]

Results are numpy arrays keyed by layer name (`as_torch=True` for torch tensors). Failed calls
raise FoveaError with the gRPC code and the server's message; calls that fail with UNAVAILABLE
are retried with exponential backoff (RetryPolicy), on another replica where the client has
several: `FoveaClient(["10.0.0.1:8001", "10.0.0.2:8001"])` or
`FoveaClient("dns:///features.internal:8001")` spreads calls round-robin over the ready ones
(see replicas.py). Imports no torch: only numpy, grpcio and protobuf (PyAV when reading video).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from foveal.proto.foveal.v1 import foveal_pb2 as pb

from . import wire
from .connection import MESSAGE_OVERHEAD, MIB, Connection, RetryPolicy
from .errors import FoveaError, from_rpc_error
from .models import ModelSpec
from .replicas import AsyncReplicas, Replicas, SyncReplicas
from .streaming import DONE, PULL, SEND, STALE, WAIT, Attempt, ClipWindow
from .wire import Features

__all__ = ["AsyncFoveaClient", "ClipFeatures", "FoveaClient", "FoveaError", "RetryPolicy"]
log = logging.getLogger("foveal.clients")


@dataclass(frozen=True)
class ClipFeatures:
    """One clip's features: its index in the video, the time (s) of each frame, the maps."""

    index: int
    timestamps: np.ndarray
    features: Features


def _positive_int(value: Any, name: str) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _frames_of(item: Any) -> np.ndarray:
    """A clip's frames: a video Clip's or the item itself (a (T, H, W, C) array)."""
    return getattr(item, "frames", item)


def _read_clips(video: str | Path, spec: ModelSpec, clip_len: int | None, stride: int | None,
                fps: float | None):
    from .video import read_clips

    clip_len = spec.clip_length(clip_len)
    return read_clips(video, clip_len, clip_len if stride is None else stride, fps,
                      spec.frame_size())


class _Client:
    """Settings and request building shared by both clients; the I/O is theirs."""

    _replicas: Replicas

    def __init__(self, address: str | Sequence[str], *, timeout: float | None = 60.0,
                 retry: RetryPolicy | None = None, tls: bool = False,
                 root_certificates: bytes | str | Path | None = None,
                 certificate_chain: bytes | str | Path | None = None,
                 private_key: bytes | str | Path | None = None, token: str | None = None,
                 max_message_bytes: int = 64 * MIB, compression: str | None = None,
                 chunk_bytes: int | None = None, clips_in_flight: int = 8,
                 requests_in_flight: int = 4):
        """`address` is one server (`host:port`), any gRPC target (`dns:///name:port`,
        `ipv4:a:port,b:port`) or a list of them; calls go round-robin to the ready ones.
        `timeout` (seconds) bounds each unary call; clip streams take their own (none by
        default: the server bounds each clip). `tls` uses the system's roots unless
        `root_certificates` is given; `certificate_chain` and `private_key` are for mutual TLS.
        `token` is sent as `authorization: Bearer <token>`. `compression` is None, "gzip" or
        "deflate". Clips travel in chunks of `chunk_bytes` (default 1 MiB); at most
        `clips_in_flight` clips of a stream and `requests_in_flight` image requests are
        unanswered at once."""
        self.connection = Connection.make(
            address, timeout=timeout, retry=retry, tls=tls, root_certificates=root_certificates,
            certificate_chain=certificate_chain, private_key=private_key, token=token,
            max_message_bytes=max_message_bytes, compression=compression,
            chunk_bytes=chunk_bytes)
        self.clips_in_flight = _positive_int(clips_in_flight, "clips_in_flight")
        self.requests_in_flight = _positive_int(requests_in_flight, "requests_in_flight")
        self._specs: dict[str, ModelSpec] = {}

    @property
    def retry(self) -> RetryPolicy:
        return self.connection.retry

    def _call_options(self, timeout: float | None, stream: bool = False) -> dict[str, Any]:
        return {"timeout": timeout if stream else self.connection.deadline(timeout),
                "metadata": self.connection.metadata(),
                "compression": self.connection.grpc_compression()}

    def _image_requests(self, images: Sequence[Any], spec: ModelSpec,
                        outputs: Sequence[str] | None, output_dtype: str):
        if isinstance(images, str | bytes | Path | np.ndarray):
            raise TypeError("images must be a list of images; use extract_image for one")
        return wire.image_requests(
            images, spec.name, wire.check_outputs(outputs), wire.output_dtype(output_dtype),
            spec.max_batch_size, self.connection.max_message_bytes - MESSAGE_OVERHEAD)

    def _retry_delay(self, method: str, err: grpc.RpcError, attempt: int, replica: int,
                     resume: str = "") -> float:
        """After failed attempt `attempt` on `replica`: raise unless it is worth another;
        else say so in the log and return how long to wait."""
        if not self.retry.should_retry(err.code(), attempt):
            raise from_rpc_error(err, method, attempt) from None
        delay = self.retry.delay(attempt)
        where = " on another replica" if len(self._replicas.targets) > 1 else ""
        log.info("%s on %s failed with %s (%s); retrying%s%s in %.2f s", method,
                 self._replicas.targets[replica], err.code().name, err.details(), resume, where,
                 delay)
        return delay

    def _stream_retry_delay(self, window: ClipWindow, err: grpc.RpcError, failures: int,
                            replica: int) -> float:
        """After a broken stream: raise what ended it, or resume at its first unanswered clip."""
        if window.error is not None:  # our own clips failed first: that is the news
            raise window.error from None
        return self._retry_delay("ExtractClips", err, failures, replica,
                                 f" from clip {window.first}")

    def _clip_requests(self, entries: Iterable[tuple[str, Any]], fail, model: str,
                       outputs: list[str], dtype: int) -> Iterator[pb.ClipChunk]:
        """The chunks of each clip; an error making them ends the stream cleanly (the clips
        already sent are still answered) and is raised to the caller afterwards."""
        try:
            for clip_id, item in entries:
                yield from wire.clip_chunks(_frames_of(item), clip_id, model, outputs, dtype,
                                            self.connection.chunk_bytes)
        except Exception as err:
            fail(err)


class FoveaClient(_Client):
    """A blocking client. Thread-safe: one client can serve many threads."""

    def __init__(self, address: str | Sequence[str], **settings: Any):
        super().__init__(address, **settings)
        self._replicas = SyncReplicas(self.connection.targets, self.connection.channel)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._replicas.close()

    def __enter__(self) -> FoveaClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _unary(self, method: str, request: Any, timeout: float | None = None) -> Any:
        attempt, replica = 0, None
        while True:
            attempt += 1
            replica = self._replicas.pick(avoid=replica)
            stub = self._replicas.stubs[replica]
            try:
                return getattr(stub, method)(request, **self._call_options(timeout))
            except grpc.RpcError as err:
                delay = self._retry_delay(method, err, attempt, replica)
            time.sleep(delay)

    def list_models(self, timeout: float | None = None) -> list[ModelSpec]:
        reply = self._unary("ListModels", pb.ListModelsRequest(), timeout)
        return [ModelSpec.from_proto(info) for info in reply.models]

    def describe(self, model: str, timeout: float | None = None) -> ModelSpec:
        """The model's input spec, outputs and batching (asked once, then remembered)."""
        if model not in self._specs:
            info = self._unary("GetModel", pb.GetModelRequest(name=model), timeout)
            self._specs[model] = ModelSpec.from_proto(info)
        return self._specs[model]

    def extract_image(self, image: Any, model: str, outputs: Sequence[str] | None = None, *,
                      output_dtype: str = "float32", as_torch: bool = False,
                      timeout: float | None = None) -> Features:
        """Feature maps of one image: layer name -> (C, H, W)."""
        request = pb.ExtractImageRequest(model=model, images=[wire.image_message(image)],
                                         outputs=wire.check_outputs(outputs),
                                         output_dtype=wire.output_dtype(output_dtype))
        self.connection.check_request_size(request.ByteSize(), "the image")
        reply = self._unary("ExtractImage", request, timeout)
        return wire.features(reply.images[0].features, as_torch, output_dtype == "bfloat16")

    def extract_images(self, images: Sequence[Any], model: str,
                       outputs: Sequence[str] | None = None, *, output_dtype: str = "float32",
                       as_torch: bool = False, timeout: float | None = None) -> list[Features]:
        """Feature maps of many images, in order: requests of up to the model's batch size,
        several in flight at once so the server's batcher has work."""
        requests = self._image_requests(images, self.describe(model, timeout), outputs,
                                        output_dtype)
        results: list[Features] = []
        in_flight: collections.deque[Future] = collections.deque()

        def drain(keep: int) -> None:
            while len(in_flight) > keep:
                reply = in_flight.popleft().result()
                results.extend(wire.features(i.features, as_torch, output_dtype == "bfloat16")
                               for i in reply.images)

        pool = self._executor()
        try:
            for request in requests:
                drain(self.requests_in_flight - 1)
                in_flight.append(pool.submit(self._unary, "ExtractImage", request, timeout))
            drain(0)
        finally:
            for future in in_flight:
                future.cancel()
        return results

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.requests_in_flight,
                                                thread_name_prefix="foveal-client")
            return self._pool

    def extract_clips(self, video: str | Path, model: str, clip_len: int | None = None,
                      stride: int | None = None, fps: float | None = None, *,
                      outputs: Sequence[str] | None = None, output_dtype: str = "float32",
                      as_torch: bool = False, timeout: float | None = None
                      ) -> Iterator[ClipFeatures]:
        """Each clip's features, in order, while later clips are still being read and sent.

        Clips of `clip_len` frames (the model's clip length by default) start `stride` frames
        apart (default: clip_len), counted at `fps` if given (else the file's frames); frames
        are decoded at the model's size. A video that turns out corrupt raises VideoReadError
        after the clips before the damage have been yielded.
        """
        spec = self.describe(model)
        clips = _read_clips(video, spec, clip_len, stride, fps)
        for clip, features in self.stream_clips(clips, model, outputs=outputs,
                                                output_dtype=output_dtype, as_torch=as_torch,
                                                timeout=timeout):
            yield ClipFeatures(clip.index, clip.timestamps, features)

    def stream_clips(self, clips: Iterable[Any], model: str, *,
                     outputs: Sequence[str] | None = None, output_dtype: str = "float32",
                     as_torch: bool = False, timeout: float | None = None
                     ) -> Iterator[tuple[Any, Features]]:
        """(clip, features) for each clip of `clips` (uint8 or float (T, H, W, C) arrays, or
        video Clips), in order, over one ExtractClips stream; `timeout` bounds the stream."""
        names, dtype = wire.check_outputs(outputs), wire.output_dtype(output_dtype)
        window, cond = ClipWindow(iter(clips), self.clips_in_flight), threading.Condition()
        failures, replica = 0, None
        while True:
            with cond:
                attempt = window.new_attempt()
                cond.notify_all()
            requests = self._clip_requests(_entries(window, cond, attempt),
                                           lambda err: _fail(window, cond, err), model, names,
                                           dtype)
            replica = self._replicas.pick(avoid=replica if failures else None)
            call = self._replicas.stubs[replica].ExtractClips(
                requests, **self._call_options(timeout, stream=True))
            try:
                for reply in call:
                    with cond:
                        item = window.answered(reply.clip_id)
                        cond.notify_all()
                    failures = 0
                    yield item, wire.features(reply.features, as_torch,
                                              output_dtype == "bfloat16")
            except grpc.RpcError as err:
                failures += 1
                time.sleep(self._stream_retry_delay(window, err, failures, replica))
                continue
            finally:
                call.cancel()  # a no-op once finished; stops the call if the caller stopped
                with cond:
                    window.stop()
                    cond.notify_all()
            _check_complete(window)
            return


def _check_complete(window: ClipWindow) -> None:
    """After a stream that ended well: raise what stopped the clips, or a missing reply."""
    if window.error is not None:
        raise window.error
    if not window.finished:
        raise window.unanswered_error()


def _entries(window: ClipWindow, cond: threading.Condition,
             attempt: Attempt) -> Iterator[tuple[str, Any]]:
    """What one call sends (run by grpc's sending thread): unanswered clips, then new ones,
    reading the source outside the lock so replies are handled while a clip decodes."""
    while True:
        with cond:
            action, entry = window.next_action(attempt)
            while action == WAIT:
                cond.wait()
                action, entry = window.next_action(attempt)
        if action in (STALE, DONE):
            return
        if action == SEND:
            yield entry
            continue
        assert action == PULL
        try:
            item = next(window.source)
        except StopIteration:
            outcome: dict[str, Any] = {"end": True}
        except Exception as err:
            outcome = {"error": err}
        else:
            outcome = {"item": item}
        with cond:
            window.pulled(**outcome)
            cond.notify_all()


def _fail(window: ClipWindow, cond: threading.Condition, err: BaseException) -> None:
    with cond:
        window.fail(err)
        cond.notify_all()


class AsyncFoveaClient(_Client):
    """The asyncio client (grpc.aio); the same methods as FoveaClient, as coroutines (and an
    async iterator for clips). Create it inside the event loop that uses it."""

    def __init__(self, address: str | Sequence[str], **settings: Any):
        super().__init__(address, **settings)
        self._replicas = AsyncReplicas(self.connection.targets, self.connection.aio_channel)

    async def close(self) -> None:
        await self._replicas.close()

    async def __aenter__(self) -> AsyncFoveaClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _unary(self, method: str, request: Any, timeout: float | None = None) -> Any:
        attempt, replica = 0, None
        while True:
            attempt += 1
            replica = self._replicas.pick(avoid=replica)
            stub = self._replicas.stubs[replica]
            try:
                return await getattr(stub, method)(request, **self._call_options(timeout))
            except grpc.RpcError as err:
                delay = self._retry_delay(method, err, attempt, replica)
            await asyncio.sleep(delay)

    async def list_models(self, timeout: float | None = None) -> list[ModelSpec]:
        reply = await self._unary("ListModels", pb.ListModelsRequest(), timeout)
        return [ModelSpec.from_proto(info) for info in reply.models]

    async def describe(self, model: str, timeout: float | None = None) -> ModelSpec:
        if model not in self._specs:
            info = await self._unary("GetModel", pb.GetModelRequest(name=model), timeout)
            self._specs[model] = ModelSpec.from_proto(info)
        return self._specs[model]

    async def extract_image(self, image: Any, model: str, outputs: Sequence[str] | None = None,
                            *, output_dtype: str = "float32", as_torch: bool = False,
                            timeout: float | None = None) -> Features:
        request = pb.ExtractImageRequest(model=model, images=[wire.image_message(image)],
                                         outputs=wire.check_outputs(outputs),
                                         output_dtype=wire.output_dtype(output_dtype))
        self.connection.check_request_size(request.ByteSize(), "the image")
        reply = await self._unary("ExtractImage", request, timeout)
        return wire.features(reply.images[0].features, as_torch, output_dtype == "bfloat16")

    async def extract_images(self, images: Sequence[Any], model: str,
                             outputs: Sequence[str] | None = None, *,
                             output_dtype: str = "float32", as_torch: bool = False,
                             timeout: float | None = None) -> list[Features]:
        spec = await self.describe(model, timeout)
        requests = self._image_requests(images, spec, outputs, output_dtype)
        results: list[Features] = []
        in_flight: collections.deque[asyncio.Task] = collections.deque()

        async def drain(keep: int) -> None:
            while len(in_flight) > keep:
                reply = await in_flight.popleft()
                results.extend(wire.features(i.features, as_torch, output_dtype == "bfloat16")
                               for i in reply.images)

        try:
            for request in requests:
                await drain(self.requests_in_flight - 1)
                in_flight.append(asyncio.ensure_future(self._unary("ExtractImage", request,
                                                                   timeout)))
            await drain(0)
        finally:
            for task in in_flight:
                task.cancel()
        return results

    async def extract_clips(self, video: str | Path, model: str, clip_len: int | None = None,
                            stride: int | None = None, fps: float | None = None, *,
                            outputs: Sequence[str] | None = None, output_dtype: str = "float32",
                            as_torch: bool = False, timeout: float | None = None
                            ) -> AsyncIterator[ClipFeatures]:
        """As FoveaClient.extract_clips; decoding runs in a worker thread."""
        spec = await self.describe(model)
        clips = _read_clips(video, spec, clip_len, stride, fps)
        async for clip, features in self.stream_clips(clips, model, outputs=outputs,
                                                      output_dtype=output_dtype,
                                                      as_torch=as_torch, timeout=timeout):
            yield ClipFeatures(clip.index, clip.timestamps, features)

    async def stream_clips(self, clips: Iterable[Any], model: str, *,
                           outputs: Sequence[str] | None = None, output_dtype: str = "float32",
                           as_torch: bool = False, timeout: float | None = None
                           ) -> AsyncIterator[tuple[Any, Features]]:
        names, dtype = wire.check_outputs(outputs), wire.output_dtype(output_dtype)
        window, cond = ClipWindow(iter(clips), self.clips_in_flight), asyncio.Condition()
        failures, replica = 0, None
        while True:
            async with cond:
                attempt = window.new_attempt()
                cond.notify_all()

            requests = _async_chunks(self, _async_entries(window, cond, attempt), window.fail,
                                     model, names, dtype)
            replica = self._replicas.pick(avoid=replica if failures else None)
            call = self._replicas.stubs[replica].ExtractClips(
                requests, **self._call_options(timeout, stream=True))
            try:
                async for reply in call:
                    async with cond:
                        item = window.answered(reply.clip_id)
                        cond.notify_all()
                    failures = 0
                    yield item, wire.features(reply.features, as_torch,
                                              output_dtype == "bfloat16")
            except grpc.RpcError as err:
                failures += 1
                await asyncio.sleep(self._stream_retry_delay(window, err, failures, replica))
                continue
            finally:
                call.cancel()
                async with cond:
                    window.stop()
                    cond.notify_all()
            _check_complete(window)
            return


_END = object()


async def _async_entries(window: ClipWindow, cond: asyncio.Condition,
                         attempt: Attempt) -> AsyncIterator[tuple[str, Any]]:
    while True:
        async with cond:
            action, entry = window.next_action(attempt)
            while action == WAIT:
                await cond.wait()
                action, entry = window.next_action(attempt)
        if action in (STALE, DONE):
            return
        if action == SEND:
            yield entry
            continue
        try:  # decoding is CPU work: off the event loop
            item = await asyncio.to_thread(next, window.source, _END)
        except Exception as err:
            outcome: dict[str, Any] = {"error": err}
        else:
            outcome = {"end": True} if item is _END else {"item": item}
        async with cond:
            window.pulled(**outcome)
            cond.notify_all()


async def _async_chunks(client: _Client, entries: AsyncIterator[tuple[str, Any]], fail,
                        model: str, outputs: list[str], dtype: int) -> AsyncIterator[pb.ClipChunk]:
    try:
        async for clip_id, item in entries:
            for chunk in wire.clip_chunks(_frames_of(item), clip_id, model, outputs, dtype,
                                          client.connection.chunk_bytes):
                yield chunk
    except Exception as err:
        fail(err)
