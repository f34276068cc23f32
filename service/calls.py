"""Every RPC runs through `CallTracker.run`: request id, metrics, a log line, status mapping.

A RequestError becomes its gRPC status and message; any other exception is logged with its
traceback and becomes INTERNAL, so no input can take the server down.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from .errors import RequestError
from .metrics import Metrics, ModelStats

log = logging.getLogger("foveal.service.requests")
REQUEST_ID_KEY = "x-request-id"
INFERENCE_METHODS = ("ExtractImage", "ModelInfer")  # what inference.ModelStatistics counts
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
T = TypeVar("T")


def request_id(context: grpc.aio.ServicerContext) -> str:
    """The client's x-request-id if it sent a sane one, else a fresh one."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID.match(value):
            return value
    return uuid.uuid4().hex[:16]


def deadline_of(context: grpc.aio.ServicerContext) -> float:
    """The client's deadline on time.monotonic() (infinity when it set none)."""
    remaining = context.time_remaining()
    return float("inf") if remaining is None else time.monotonic() + remaining


class CallTracker:
    def __init__(self, metrics: Metrics, stats: dict[str, ModelStats]):
        self.metrics = metrics
        self.stats = stats

    async def run(self, context: grpc.aio.ServicerContext, method: str, model: str,
                  body: Callable[[str], Awaitable[T]]) -> T:
        rid = request_id(context)
        start = time.monotonic()
        code, message = grpc.StatusCode.OK, ""
        try:
            await context.send_initial_metadata(((REQUEST_ID_KEY, rid),))
            return await body(rid)
        except RequestError as err:
            code, message = err.code, err.message
        except asyncio.CancelledError:
            code, message = grpc.StatusCode.CANCELLED, "cancelled by the client"
            raise
        except Exception as err:
            log.exception("unexpected error", extra={"fields": {"request_id": rid,
                                                                "method": method}})
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}: {err}"
        finally:
            self._record(rid, method, model, code, message, time.monotonic() - start)
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    def _record(self, rid: str, method: str, model: str, code: grpc.StatusCode, message: str,
                seconds: float) -> None:
        if model in self.stats and method in INFERENCE_METHODS:
            self.stats[model].record_request(code is grpc.StatusCode.OK, seconds)
        model = model if model in self.stats else ""  # no label per unknown name a client sends
        self.metrics.requests.labels(method, model).inc()
        self.metrics.latency.labels(method, model).observe(seconds)
        fields = {"request_id": rid, "method": method, "model": model, "code": code.name,
                  "ms": round(seconds * 1000, 3)}
        if code is grpc.StatusCode.OK:
            log.debug("request", extra={"fields": fields})
            return
        self.metrics.failures.labels(method, model, code.name).inc()
        level = logging.ERROR if code is grpc.StatusCode.INTERNAL else logging.INFO
        log.log(level, "request failed", extra={"fields": {**fields, "message": message}})
