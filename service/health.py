"""grpc.health.v1.Health: the server ("") and every model and service by name.

On shutdown every name turns NOT_SERVING and open Watch streams end after saying so, so they
do not hold the graceful drain open.
"""

from __future__ import annotations

import asyncio

import grpc

from foveal.proto.grpc.health.v1 import health_pb2 as pb

SERVING = pb.HealthCheckResponse.SERVING
NOT_SERVING = pb.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = pb.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer:
    def __init__(self, names: list[str]):
        self._status = dict.fromkeys(["", *names], NOT_SERVING)
        self._watchers: set[asyncio.Queue] = set()
        self._closed = False

    def set_all(self, status: int) -> None:
        for name in self._status:
            self._status[name] = status
        for queue in self._watchers:
            queue.put_nowait(status)

    def shutdown(self) -> None:
        """Everything NOT_SERVING; end every Watch stream."""
        self.set_all(NOT_SERVING)
        self._closed = True
        for queue in self._watchers:
            queue.put_nowait(None)

    async def Check(self, request: pb.HealthCheckRequest, context) -> pb.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown service {request.service!r}; known: "
                                f"{sorted(n for n in self._status if n)}")
        return pb.HealthCheckResponse(status=status)

    async def Watch(self, request: pb.HealthCheckRequest, context):
        queue: asyncio.Queue = asyncio.Queue()
        self._watchers.add(queue)
        try:
            last = None
            while True:
                status = self._status.get(request.service, SERVICE_UNKNOWN)
                if status != last:
                    yield pb.HealthCheckResponse(status=status)
                    last = status
                if self._closed or await queue.get() is None:
                    return
        finally:
            self._watchers.discard(queue)
