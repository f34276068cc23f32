"""Prometheus metrics and Triton-style per-model statistics, one set per server.

Each server owns a CollectorRegistry (several servers can live in one process, as in tests).
`/metrics` is served over plain HTTP by a small asyncio handler on the metrics port.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("foveal_requests", "Requests handled, by method and model",
                                ["method", "model"], registry=r)
        self.failures = Counter("foveal_request_failures", "Failed requests by gRPC status code",
                                ["method", "model", "code"], registry=r)
        self.latency = Histogram("foveal_request_seconds", "Time from arrival to response",
                                 ["method", "model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("foveal_queue_seconds", "Time an item waited for its batch",
                                    ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.compute_time = Histogram("foveal_compute_seconds", "Time one batch ran on the "
                                      "device, by model instance", ["model", "instance"],
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("foveal_batch_size", "Items per model execution, by model "
                                    "instance", ["model", "instance"], buckets=_BATCH_BUCKETS,
                                    registry=r)
        self.executions = Counter("foveal_executions", "Model executions (batches) by model "
                                  "instance", ["model", "instance"], registry=r)
        self.instances = Gauge("foveal_instance_info", "1 for each model instance, with its "
                               "device", ["model", "instance", "device"], registry=r)
        self.queue_depth = Gauge("foveal_queue_depth", "Items waiting for a batch", ["model"],
                                 registry=r)
        self.dropped = Counter("foveal_items_dropped", "Items dropped before reaching the "
                               "device (cancelled or past their deadline)", ["model", "reason"],
                               registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)


@dataclass
class ModelStats:
    """What inference.ModelStatistics reports; updated by the batcher and the handlers."""

    inference_count: int = 0      # items
    execution_count: int = 0      # batches
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, Duration] = field(default_factory=lambda: defaultdict(Duration))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_batch(self, size: int, seconds: float) -> None:
        with self.lock:
            self.inference_count += size
            self.execution_count += 1
            self.last_inference_ms = int(time.time() * 1000)
            self.compute_infer.add(seconds, size)
            self.batches[size].add(seconds)

    def record_request(self, ok: bool, seconds: float) -> None:
        with self.lock:
            (self.success if ok else self.fail).add(seconds)


async def serve_metrics(metrics: Metrics, host: str, port: int) -> asyncio.Server:
    """A minimal HTTP/1.1 server answering GET /metrics with the Prometheus text format."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/metrics":
                status, content_type, body = "200 OK", CONTENT_TYPE_LATEST, metrics.exposition()
            else:
                status, content_type, body = "404 Not Found", "text/plain", b"try /metrics\n"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                         .encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
